"""scripts/sweep.py: settings as main.py flags, resume, the rendered table, one real sweep on a tiny model."""
import json
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import sweep  # noqa: E402

MODEL = "opt-1.3b"  # a name main.py knows and the paper has; the fake runner never loads it


def fake_main(calls):
    """Stands in for main.py: notes its arguments and writes the JSON main.py would, without any model."""
    import main

    def runner(argv):
        calls.append(argv)
        args = main.build_parser().parse_args(argv)
        device, dtype = main.pick_device(args.device, args.dtype)
        record = {"model": args.model, "status": "complete", "quantization": None,
                  "settings": {**vars(args), "device": device, "dtype": str(dtype).split(".")[-1]},
                  "ppl": {"wikitext2": {"ppl": 20.0, "windows": 2, "windows_total": 141}}}
        Path(args.output_path).write_text(json.dumps(record))
        return 0

    return runner


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


def test_settings_become_main_py_flags_and_idle_extras_are_left_out(tmp_path):
    runs = {n: sweep.SETTINGS[n] for n in ("FP16", "W4A4KV", "W4A4-noreorder")}
    plans = sweep.plan_runs(MODEL, runs, ["--eval_ppl"], ["--nsamples=4", "--limit", "2"], tmp_path)
    fp, kv, noreorder = plans
    assert fp.argv == [MODEL, "--eval_ppl", "--output_path", str(tmp_path / "FP16.json"), "--limit", "2"]
    assert fp.dropped == ["nsamples"] and kv.dropped == noreorder.dropped == []
    assert kv.argv[2:6] == ["--wbits", "4", "--abits", "4"] and "--only_quant_kv" in kv.argv
    assert noreorder.argv[6:8] == ["--reorder", ""] and noreorder.argv[-4:] == ["--nsamples", "4", "--limit", "2"]
    assert [p.action for p in plans] == ["run"] * 3


def test_resume_skips_complete_reruns_interrupted_and_refuses_other_flags(tmp_path, capsys):
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


def ppl_record(setting, status="complete", quantized=True):
    settings = {"model": MODEL, "seqlen": 2048, "limit": 2, "nsamples": 16, "calib_dataset": "mix", "seed": 2,
                "dtype": "float32", "device": "cpu"}
    quantization = {"grid": "paper", "bit_mode": "reference", "w_quantizer": "gptq", "reorder": "12345",
                    "clusters": {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}} if quantized else None
    res = {"windows": 2, "windows_total": 141}
    return {"model": MODEL, "label": setting, "status": status, "settings": settings, "quantization": quantization,
            "ppl": {"wikitext2": {"ppl": 15.123, **res}, "c4-proxy": {"ppl": 16.5, "windows": 2, "windows_total": 256}}}


def row(text, setting):
    line = next(line for line in text.splitlines() if line.startswith(f"| {setting} "))
    return [cell.strip() for cell in line.strip("|").split("|")]


@pytest.fixture
def paper_dir():
    if not (sweep.PAPER_DIR / "table1_ppl_paper.csv").is_file():
        pytest.skip(f"the paper's CSV files are not in {sweep.PAPER_DIR}")
    return sweep.PAPER_DIR


def test_ppl_table_puts_the_papers_numbers_beside_ours(paper_dir):
    records = {"FP16": ppl_record("FP16", quantized=False), "W4A8": None, "W4A4": ppl_record("W4A4", "running")}
    paper, note = sweep.load_paper(paper_dir, "ppl", MODEL)
    text = sweep.render("ppl", MODEL, records, paper, note)
    header = row(text, "setting")
    assert header == ["setting", "wikitext2", "paper wikitext2", "c4-proxy", "paper c4"]  # the sets measured
    assert row(text, "FP16") == ["FP16", "15.12", "14.63", "16.50", "14.72"]
    assert row(text, "W4A8") == ["W4A8", "-", "15.39", "-", "15.48"]
    assert row(text, "W4A4 (incomplete)")[1:3] == ["15.12", "16.88"]
    for expected in ("windows run/total wikitext2 2/141, c4-proxy 2/256", "seqlen 2048", "--limit 2",
                     "calibration: mix, 16 windows of 2048 tokens, seed 2", "float32 on cpu", "grid paper",
                     "reorder 12345", "clusters R1:32 R2:4 R3:4 R4:32 R5:32", "FP16: float model, no RPTQ",
                     "not run yet (-): W4A8", "table1_ppl_paper.csv", "c4-proxy is not the paper's data set"):
        assert expected in text, expected


def test_zero_shot_table_shows_task_labels_and_readme_numbers_where_the_paper_has_none(paper_dir):
    piqa = {"label": "piqa (local validation files)", "acc": 0.7, "acc_stderr": 0.01, "acc_norm": 0.715,
            "source": {"kind": "local", "files": ["/d/piqa/valid.jsonl", "/d/piqa/valid-labels.lst"], "split": "val"},
            "examples": 50, "examples_total": 1838}
    zero_shot = {"results": {"piqa": piqa, "boolq": {"acc": 0.6, "examples": 50, "examples_total": 3270}},
                 "limit": 50, "num_fewshot": 0, "batch_size": 1, "harness_version": "0.4.13"}
    records = {"FP16": {**ppl_record("FP16", quantized=False), "zero_shot": zero_shot}, "W4A4": None}
    paper, note = sweep.load_paper(paper_dir, "zeroshot", MODEL)
    text = sweep.render("zeroshot", MODEL, records, paper, note, ["piqa", "boolq"])
    assert row(text, "setting") == ["setting", "piqa (local validation files) acc", "acc_norm", "paper",
                                    "boolq acc", "README"]  # boolq has no acc_norm here
    assert row(text, "FP16") == ["FP16", "70.00", "71.50", "72.47", "60.00", "57.73"]
    assert row(text, "W4A4") == ["W4A4", "-", "-", "68.66", "-", "52.84"]
    for expected in ("examples run/total piqa 50/1838, boolq 50/3270", "limit 50", "harness_version 0.4.13",
                     "piqa data: kind local, files /d/piqa/valid.jsonl, /d/piqa/valid-labels.lst, split val"):
        assert expected in text, expected


def test_a_model_the_paper_lacks_gets_no_paper_columns(paper_dir):
    paper, note = sweep.load_paper(paper_dir, "ppl", "/models/tiny-opt")
    assert paper == {} and "no tiny-opt rows" in note
    text = sweep.render("ppl", "/models/tiny-opt", {"FP16": None}, paper, note)
    assert row(text, "setting") == ["setting", "wikitext2", "ptb", "c4"]
    assert row(text, "FP16") == ["FP16", "-", "-", "-"]


def test_real_sweep_of_two_settings_on_a_tiny_model_then_resumed(tiny_opt_dir, data_dir, tmp_path, capsys):
    argv = [str(tiny_opt_dir), "--table", "ppl", "--settings", "FP16,W4A4", "--out", str(tmp_path / "sweep"), "--",
            "--nsamples", "2", "--seqlen", "64", "--limit", "1", "--ppl_datasets", "wikitext2",
            "--data_dir", str(data_dir), "--cache_dir", str(tmp_path / "cache")]
    assert sweep.main(argv) == 0
    results = {n: json.loads((tmp_path / "sweep" / f"{n}.json").read_text()) for n in ("FP16", "W4A4")}
    assert [r["label"] for r in results.values()] == ["FP-float32", "W4A4"]
    assert all(r["status"] == "complete" for r in results.values())
    text = (tmp_path / "sweep" / "table.md").read_text()
    assert row(text, "FP16")[1] == f"{results['FP16']['ppl']['wikitext2']['ppl']:.2f}"
    assert row(text, "W4A4")[1] == f"{results['W4A4']['ppl']['wikitext2']['ppl']:.2f}"
    assert "windows run/total wikitext2 1/" in text and "seqlen 64" in text
    assert text in capsys.readouterr().out

    assert sweep.main(argv, never_called) == 0
    assert capsys.readouterr().out.count(": skipped, complete in") == 2
