"""scripts/sweep.py as a user runs it: resume, refusals, failures, and one real sweep on a tiny model."""
import json
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
