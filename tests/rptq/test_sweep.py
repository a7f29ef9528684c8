"""rptq/sweep.py: settings as main.py flags, what a resumed sweep runs, skips or refuses, and interrupts."""
import json
import signal
import subprocess
import sys
import time

import pytest

from rptq import sweep

MODEL = "opt-1.3b"  # a name main.py knows; the fake runner never loads it


def test_settings_become_main_py_flags_and_idle_extras_are_left_out(tmp_path):
    runs = {n: sweep.SETTINGS[n] for n in ("FP16", "W4A4KV", "W4A4-noreorder")}
    plans = sweep.plan_runs(MODEL, runs, ["--eval_ppl"], ["--nsamples=4", "--limit", "2"], tmp_path)
    fp, kv, noreorder = plans
    assert fp.argv == [MODEL, "--eval_ppl", "--output_path", str(tmp_path / "FP16.json"), "--limit", "2"]
    assert fp.dropped == ["nsamples"] and kv.dropped == noreorder.dropped == []
    assert kv.argv[2:6] == ["--wbits", "4", "--abits", "4"] and "--only_quant_kv" in kv.argv
    assert noreorder.argv[6:8] == ["--reorder", ""] and noreorder.argv[-4:] == ["--nsamples", "4", "--limit", "2"]
    assert [p.action for p in plans] == ["run"] * 3


def test_relative_paths_are_passed_as_given(tmp_path, monkeypatch):
    """main.py runs in the sweep's own folder, so nothing is made absolute (no machine path in the records)."""
    monkeypatch.chdir(tmp_path)
    (plan,) = sweep.plan_runs(MODEL, {"W4A4": sweep.SETTINGS["W4A4"]}, ["--tasks", "no_local_task"],
                              ["--cache_dir", "cache"], sweep.Path("out"))
    assert plan.argv[plan.argv.index("--output_path") + 1] == "out/W4A4.json"
    assert plan.argv[-2:] == ["--cache_dir", "cache"]


def test_a_resumed_setting_made_from_other_data_is_refused(tmp_path, data_dir, fake_main, monkeypatch):
    data = tmp_path / "data"
    (data / "wikitext-2-raw").mkdir(parents=True)
    (data / "wikitext-2-raw/wiki.test.raw").write_bytes((data_dir / "wikitext-2-raw/wiki.test.raw").read_bytes())
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data))  # from the environment: the flags are the same either way
    runs, out = {"FP16": []}, tmp_path / "out"
    flags = ["--eval_ppl", "--ppl_datasets", "wikitext2"]
    (plan,) = sweep.plan_runs(MODEL, runs, flags, [], out)
    fake_main([])(plan.argv)
    assert [p.action for p in sweep.plan_runs(MODEL, runs, flags, [], out)] == ["skip"]
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data_dir))  # the same file, elsewhere: still the same data
    assert [p.action for p in sweep.plan_runs(MODEL, runs, flags, [], out)] == ["skip"]
    (data / "wikitext-2-raw/wiki.test.raw").write_text("other text\n")
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data))
    with pytest.raises(sweep.SweepError, match="FP16.json was made from other data .*wiki.test.raw.*another --out"):
        sweep.plan_runs(MODEL, runs, flags, [], out)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGINT to a sweep started with SIGINT ignored"])
def test_an_interrupt_stops_the_running_setting_and_the_sweep(tmp_path, how):
    """SIGINT or SIGTERM sent to the sweep's own process (not its group): the child is told to stop, and the sweep
    stops. A shell starts background jobs with SIGINT ignored: kill -INT must still work."""
    marker = tmp_path / "child.txt"
    child = (f"import signal, sys, time, pathlib\n"
             f"pathlib.Path({str(marker)!r}).write_text('started')\n"
             f"try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
             f"    pathlib.Path({str(marker)!r}).write_text('interrupted'); sys.exit(130)\n")
    code = (f"import sys\nfrom rptq import sweep\nsweep.MAIN = {str(tmp_path / 'child.py')!r}\n"
            "try:\n    rc = sweep.run_main([])\nexcept KeyboardInterrupt:\n    sys.exit(130)\nsys.exit(rc)\n")
    (tmp_path / "child.py").write_text(child)
    ignored = how.endswith("ignored")
    proc = subprocess.Popen([sys.executable, "-c", code],
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignored else None)
    for _ in range(1800):  # the sweep imports torch and transformers first: slow on a busy machine
        if marker.exists():
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert marker.read_text() == "interrupted"


def test_a_file_that_is_not_a_result_stops_the_sweep(tmp_path):
    (tmp_path / "W4A4.json").write_text(json.dumps([1, 2]))
    with pytest.raises(sweep.SweepError, match="W4A4.json is not a main.py result; move it away"):
        sweep.plan_runs(MODEL, {"W4A4": sweep.SETTINGS["W4A4"]}, ["--eval_ppl"], [], tmp_path)
