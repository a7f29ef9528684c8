"""scripts/sweep.py as a user runs it: resume, refusals, failures, and one real sweep on a tiny model."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import sweep

MODEL = "opt-1.3b"  # a name main.py knows and the paper has; the fake runner never loads it


def never_called(argv):
    raise AssertionError(f"main.py should not run: {argv}")


def one_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def exit_code(argv, runner=never_called):
    try:
        return sweep.main(argv, runner)
    except SystemExit as e:  # argparse's own errors
        return e.code


def sweep_argv(out, *extra, settings="FP16,W4A4"):
    return [MODEL, "--table", "ppl", "--settings", settings, "--out", str(out), "--", *extra]


def test_resume_skips_complete_reruns_interrupted_and_refuses_other_flags(tmp_path, capsys, fake_main):
    calls = []
    argv = sweep_argv(tmp_path, "--nsamples", "4", "--limit", "2")
    assert sweep.main(argv, fake_main(calls)) == 0
    assert [Path(c[c.index("--output_path") + 1]).name for c in calls] == ["FP16.json", "W4A4.json"]

    interrupted = tmp_path / "W4A4.json"
    interrupted.write_text(json.dumps({**json.loads(interrupted.read_text()), "status": "running"}))
    calls.clear()
    assert sweep.main(argv, fake_main(calls)) == 0
    assert len(calls) == 1 and "W4A4.json" in calls[0][calls[0].index("--output_path") + 1]
    out = capsys.readouterr().out
    assert "FP16: skipped" in out and "W4A4: rerunning" in out

    assert exit_code(sweep_argv(tmp_path, "--nsamples", "8", "--limit", "2")) == 2
    line = one_line(capsys)
    assert "W4A4.json was made with other main.py flags (nsamples 4 there, 8 now)" in line
    assert "another --out" in line


def test_a_failing_setting_stops_the_sweep_with_its_exit_code(tmp_path, capsys):
    calls = []
    assert sweep.main(sweep_argv(tmp_path), lambda argv: calls.append(argv) or 3) == 3
    assert len(calls) == 1
    assert "FP16 failed (main.py exit code 3" in one_line(capsys)
    assert not (tmp_path / "table.md").exists()


@pytest.mark.parametrize("argv, expected", [
    ([MODEL, "--table", "bleu"], "argument --table: invalid choice"),
    ([MODEL, "--table", "ppl", "--settings", "W4A4,W9A9"], "--settings: unknown W9A9"),
    ([MODEL, "--table", "ppl", "--tasks", "piqa"], "--tasks applies to --table zeroshot"),
    ([MODEL, "--table", "ppl", "--", "--wbits", "3"], "-- --wbits: the sweep sets it itself"),
    ([MODEL, "--table", "ppl", "--settings", "FP16", "--", "--nsamples", "4"], "would change nothing in any of FP16"),
    ([MODEL, "--table", "ppl", "--", "--limit", "0"], "FP16: --limit must be at least 1"),
    ([MODEL, "--table", "ppl", "--render-only", "--", "--limit", "2"], "--render-only runs nothing"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert exit_code(argv) == 2
    assert expected in one_line(capsys)


def test_real_sweep_of_two_settings_on_a_tiny_model_then_resumed(tiny_opt_dir, data_dir, tmp_path, capsys,
                                                                  markdown_row):
    argv = [str(tiny_opt_dir), "--table", "ppl", "--settings", "FP16,W4A4", "--out", str(tmp_path / "sweep"), "--",
            "--nsamples", "2", "--seqlen", "64", "--limit", "1", "--ppl_datasets", "wikitext2",
            "--data_dir", str(data_dir), "--cache_dir", str(tmp_path / "cache")]
    assert sweep.main(argv) == 0
    results = {n: json.loads((tmp_path / "sweep" / f"{n}.json").read_text()) for n in ("FP16", "W4A4")}
    assert [r["label"] for r in results.values()] == ["FP-float32", "W4A4"]
    assert all(r["status"] == "complete" for r in results.values())
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert markdown_row(text, "FP16")[1] == f"{results['FP16']['ppl']['wikitext2']['ppl']:.2f}"
    assert markdown_row(text, "W4A4")[1] == f"{results['W4A4']['ppl']['wikitext2']['ppl']:.2f}"
    assert "windows run/total wikitext2 1/" in text and "seqlen 64" in text
    assert text in capsys.readouterr().out

    assert sweep.main(argv, never_called) == 0
    assert capsys.readouterr().out.count(": skipped, complete in") == 2


def test_an_output_folder_that_cannot_be_written_is_refused_before_any_run(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert exit_code(sweep_argv(tmp_path / "file" / "sweep")) == 2
    line = one_line(capsys)
    assert "--out" in line and "cannot be written" in line


def test_settings_become_main_py_flags_and_idle_extras_are_left_out(tmp_path):
    runs = {n: sweep.SETTINGS[n] for n in ("FP16", "W4A4KV", "W4A4-noreorder")}
    plans = sweep.plan_runs(MODEL, runs, {"eval_ppl": True}, ["--nsamples=4", "--limit", "2"], tmp_path)
    fp, kv, noreorder = plans
    assert fp.argv == [MODEL, "--eval_ppl", "--output_path", str(tmp_path / "FP16.json"), "--limit", "2"]
    assert fp.dropped == ["nsamples"] and kv.dropped == noreorder.dropped == []
    assert kv.argv[2:6] == ["--wbits", "4", "--abits", "4"] and "--only_quant_kv" in kv.argv
    assert noreorder.argv[6:8] == ["--reorder", ""] and noreorder.argv[-4:] == ["--nsamples", "4", "--limit", "2"]
    assert [p.action for p in plans] == ["run"] * 3


def test_relative_paths_are_passed_as_given(tmp_path, monkeypatch):
    """main.py runs in the sweep's own folder, so nothing is made absolute (no machine path in the records)."""
    monkeypatch.chdir(tmp_path)
    (plan,) = sweep.plan_runs(MODEL, {"W4A4": sweep.SETTINGS["W4A4"]}, {"tasks": "no_local_task"},
                              ["--cache_dir", "cache"], sweep.Path("out"))
    assert plan.argv[plan.argv.index("--output_path") + 1] == "out/W4A4.json"
    assert plan.argv[-2:] == ["--cache_dir", "cache"]


def test_a_resumed_setting_made_from_other_data_is_refused(tmp_path, data_dir, fake_main, monkeypatch):
    data = tmp_path / "data"
    (data / "wikitext-2-raw").mkdir(parents=True)
    (data / "wikitext-2-raw/wiki.test.raw").write_bytes((data_dir / "wikitext-2-raw/wiki.test.raw").read_bytes())
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data))  # from the environment: the flags are the same either way
    runs, out = {"FP16": {}}, tmp_path / "out"
    flags = {"eval_ppl": True, "ppl_datasets": "wikitext2"}
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
    code = (f"import sys\nfrom scripts import sweep\nsweep.MAIN = {str(tmp_path / 'child.py')!r}\n"
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
        sweep.plan_runs(MODEL, {"W4A4": sweep.SETTINGS["W4A4"]}, {"eval_ppl": True}, [], tmp_path)


def test_data_differences_are_named_in_a_few_words():
    entry = {"set": "ptb", "purpose": "eval", "file": "ptb/ptb.valid.txt", "sha256": "a" * 64}
    assert sweep.data_difference([entry], [{**entry, "sha256": "b" * 64}]) == \
        "ptb eval ptb/ptb.valid.txt: sha256 aaaaaaaaaaaa there, bbbbbbbbbbbb now"
    assert sweep.data_difference([], [entry]) == "ptb eval ptb/ptb.valid.txt: absent there, used now"


def _nlls(folder, names):
    return {n: json.loads((folder / f"{n}.json").read_text())["ppl"]["wikitext2"]["nlls"] for n in names}


def test_jobs_in_parallel_and_slurm_array_tasks_give_the_figures_of_one_job(tiny_opt_dir, data_dir, tmp_path, capsys):
    """4 settings with --jobs 2 and the same 4 with --jobs 1, one thread each: the same figures; then a SLURM array
    script for the settings missing from a third folder, its tasks run here with SLURM_ARRAY_TASK_ID set, fills it
    with the same figures too, and the sweep then renders it."""
    import os
    import shutil

    names = ["FP16", "W4A4", "W4A4KV", "W16A4"]

    def argv(out, *own):
        return [str(tiny_opt_dir), "--table", "ppl", "--settings", ",".join(names), "--out", str(out), *own, "--",
                "--nsamples", "2", "--seqlen", "64", "--limit", "2", "--ppl_datasets", "wikitext2",
                "--R1_clusters", "4", "--R4_clusters", "4", "--R5_clusters", "8", "--data_dir", str(data_dir),
                "--cache_dir", str(tmp_path / "cache")]

    assert sweep.main(argv(tmp_path / "one", "--jobs", "1", "--threads", "1")) == 0
    assert sweep.main(argv(tmp_path / "two", "--jobs", "2", "--threads", "1")) == 0
    out = capsys.readouterr().out
    assert "output in" in out and sorted(p.name for p in (tmp_path / "two").glob("*.log")) == sorted(
        f"{n}.log" for n in names)
    one = _nlls(tmp_path / "one", names)
    assert _nlls(tmp_path / "two", names) == one
    assert {json.loads((tmp_path / "two" / f"{n}.json").read_text())["versions"]["torch_threads"]
            for n in names} == {1}

    third = tmp_path / "array"
    third.mkdir()
    for n in names[:2]:
        shutil.copy(tmp_path / "one" / f"{n}.json", third)
    script = tmp_path / "sweep.sbatch"
    assert sweep.main(argv(third, "--threads", "1", "--slurm", str(script), "--slurm_option=--mem=4G")) == 0
    text = script.read_text()
    assert "#SBATCH --array=0-1" in text and "#SBATCH --mem=4G" in text and "W4A4KV.json" in text
    for task in range(2):
        proc = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (third / f"{names[2 + task]}.log").read_text()[-2000:]
    assert _nlls(third, names) == one
    assert sweep.main(argv(third)) == 0  # every setting complete: nothing runs, the table is rendered
    assert capsys.readouterr().out.count(": skipped, complete in") == 4


def test_print_commands_gives_one_self_contained_command_per_missing_setting(tmp_path, capsys, fake_main,
                                                                            monkeypatch, data_dir):
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data_dir))
    calls = []
    assert sweep.main(sweep_argv(tmp_path, "--limit", "2", settings="FP16"), fake_main(calls)) == 0
    capsys.readouterr()
    assert sweep.main([*sweep_argv(tmp_path, "--limit", "2", settings="FP16,W4A4")[:7], "--print-commands",
                       "--threads", "3", "--", "--limit", "2"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()  # FP16 is complete: only W4A4 is printed
    assert line.startswith(f"cd {Path.cwd()} && RPTQ_DATA_DIR={data_dir} OMP_NUM_THREADS=3 ")
    assert line.endswith(f"main.py {MODEL} --eval_ppl --wbits 4 --abits 4 --output_path {tmp_path}/W4A4.json "
                         "--limit 2")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_a_slurm_script_for_gpus_is_written_on_a_machine_without_one(tmp_path, capsys, monkeypatch, data_dir):
    """The array runs on GPU nodes, the script is written on a login node: --device cuda is not refused there,
    while a run here with it is."""
    monkeypatch.setenv("RPTQ_DATA_DIR", str(data_dir))
    script = tmp_path / "table1.sbatch"
    assert sweep.main([*sweep_argv(tmp_path / "out")[:7], "--slurm", str(script), "--slurm_option=--gpus=1", "--",
                       "--device", "cuda"], never_called) == 0
    text = script.read_text()
    assert "#SBATCH --gpus=1" in text and text.count("--device cuda ;;") == 2
    capsys.readouterr()
    assert sweep.main(sweep_argv(tmp_path / "out", "--device", "cuda"), never_called) == 2
    assert "CUDA is not available here" in capsys.readouterr().err
