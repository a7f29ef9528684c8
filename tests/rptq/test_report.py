"""rptq/report.py: the Markdown table of a sweep, from fabricated records, beside the paper's numbers."""
import math
import statistics

import pytest

from rptq import report
from rptq.record import RunRecord
from rptq.report import PAPER_DIR, format_table, load_paper

MODEL = "opt-1.3b"
RESULT = {"ppl": None, "ppl_ci95": None, "nll": 0.0, "nll_sem": None, "windows": 0, "windows_total": 0,
          "seqlen": 2048, "seconds": 0.0, "seconds_per_window": 0.0, "nlls": []}


def render(table, model, records, *args):
    """report.render on fabricated records written as their JSON would be (only the fields a test sets)."""
    def record(data):
        data = {"weights": "", "family": "opt", "data": [], "quantization": None, "versions": {}, **data}
        return RunRecord.from_json({**data, "ppl": {k: {**RESULT, **v} for k, v in data.get("ppl", {}).items()}})

    return report.render(table, model, {n: r and record(r) for n, r in records.items()}, *args)


def test_stdout_table_pads_columns_under_a_rule():
    assert format_table(["eval", "value"], [["wikitext2", "12.50"], ["c4", "9"]]).splitlines() == [
        "eval       value", "---------  -----", "wikitext2  12.50", "c4         9"]


def ppl_record(setting, status="complete", quantized=True):
    settings = {"model": MODEL, "seqlen": 2048, "limit": 2, "nsamples": 16, "calib_dataset": "mix", "seed": 2,
                "dtype": "float32", "device": "cpu"}
    quantization = {"grid": "paper", "bit_mode": "reference", "w_quantizer": "gptq", "reorder": "12345",
                    "clusters": {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}} if quantized else None
    res = {"windows": 2, "windows_total": 141, "ppl_ci95": [14.01, 16.333]}
    return {"model": MODEL, "label": setting, "status": status, "settings": settings, "quantization": quantization,
            "ppl": {"wikitext2": {"ppl": 15.123, **res}, "c4-proxy": {"ppl": 16.5, "windows": 2, "windows_total": 256}}}


@pytest.fixture
def paper_dir():
    if not (PAPER_DIR / "table1_ppl_paper.csv").is_file():
        pytest.skip(f"the paper's CSV files are not in {PAPER_DIR}")
    return PAPER_DIR


def test_ppl_table_puts_the_papers_numbers_beside_ours(paper_dir, markdown_row):
    records = {"FP16": ppl_record("FP16", quantized=False), "W4A8": None, "W4A4": ppl_record("W4A4", "running")}
    paper, note = load_paper(paper_dir, "ppl", MODEL)
    text = render("ppl", MODEL, records, paper, note)
    header = markdown_row(text, "setting")
    assert header == ["setting", "wikitext2", "paper wikitext2", "c4-proxy", "paper c4"]  # the sets measured
    assert markdown_row(text, "FP16") == ["FP16", "15.12 [14.01-16.33]", "14.63", "16.50", "14.72"]
    assert markdown_row(text, "W4A8") == ["W4A8", "-", "15.39", "-", "15.48"]
    assert markdown_row(text, "W4A4 (incomplete)")[1:3] == ["15.12 [14.01-16.33]", "16.88"]
    for expected in ("windows run/total wikitext2 2/141, c4-proxy 2/256", "seqlen 2048", "--limit 2",
                     "calibration: mix, 16 windows of 2048 tokens, seed 2", "float32 on cpu", "grid paper",
                     "reorder 12345", "clusters R1:32 R2:4 R3:4 R4:32 R5:32", "FP16: float model, no RPTQ",
                     "not run yet (-): W4A8", "table1_ppl_paper.csv", "c4-proxy is not the paper's data set"):
        assert expected in text, expected


def test_rows_made_by_different_code_or_threads_say_which(paper_dir):
    records = {name: {**ppl_record(name), "versions": {"rptq_commit": commit + "0" * 33, "torch_threads": threads,
                                                       "cpu_capability": "AVX512"}}
               for name, commit, threads in (("W4A4", "dcc67f3", 1), ("W4A8", "dcc67f3", 2), ("W4A4KV", "b2286c9", 1))}
    records["FP16"] = ppl_record("FP16", quantized=False)  # a record from before any of these were kept
    paper, note = load_paper(paper_dir, "ppl", MODEL)
    assert ("code: rptq commit dcc67f3 (W4A4KV: b2286c9; FP16: unknown); torch threads 1 (W4A8: 2; FP16: unknown); "
            "CPU kernels AVX512 (FP16: unknown)" in render("ppl", MODEL, records, paper, note))


def test_zero_shot_table_shows_task_labels_and_readme_numbers_where_the_paper_has_none(paper_dir, markdown_row):
    piqa = {"label": "piqa (local validation files)", "acc": 0.7, "acc_stderr": 0.01, "acc_norm": 0.715,
            "source": {"kind": "local", "files": ["/d/piqa/valid.jsonl", "/d/piqa/valid-labels.lst"], "split": "val"},
            "examples": 50, "examples_total": 1838}
    zero_shot = {"results": {"piqa": piqa, "boolq": {"acc": 0.6, "examples": 50, "examples_total": 3270}},
                 "limit": 50, "num_fewshot": 0, "batch_size": 1, "harness_version": "0.4.13"}
    records = {"FP16": {**ppl_record("FP16", quantized=False), "zero_shot": zero_shot}, "W4A4": None}
    paper, note = load_paper(paper_dir, "zeroshot", MODEL)
    text = render("zeroshot", MODEL, records, paper, note, ["piqa", "boolq"])
    assert markdown_row(text, "setting") == ["setting", "piqa (local validation files) acc", "acc_norm", "paper",
                                    "boolq acc", "README"]  # boolq has no acc_norm here
    assert markdown_row(text, "FP16") == ["FP16", "70.00 ±2.0", "71.50", "72.47", "60.00", "57.73"]
    assert markdown_row(text, "W4A4") == ["W4A4", "-", "-", "68.66", "-", "52.84"]
    for expected in ("examples run/total piqa 50/1838, boolq 50/3270", "limit 50", "harness_version 0.4.13",
                     "piqa data: kind local, files /d/piqa/valid.jsonl, /d/piqa/valid-labels.lst, split val"):
        assert expected in text, expected


def test_a_model_the_paper_lacks_gets_no_paper_columns(paper_dir, markdown_row):
    paper, note = load_paper(paper_dir, "ppl", "/models/tiny-opt")
    assert paper == {} and "no tiny-opt rows" in note
    text = render("ppl", "/models/tiny-opt", {"FP16": None}, paper, note)
    assert markdown_row(text, "setting") == ["setting", "wikitext2", "ptb", "c4"]
    assert markdown_row(text, "FP16") == ["FP16", "-", "-", "-"]


def test_ppl_ratios_to_fp16_are_paired_over_the_same_windows(paper_dir, markdown_row):
    def with_nlls(record, wikitext2, c4):
        for label, nlls in (("wikitext2", wikitext2), ("c4-proxy", c4)):
            record["ppl"][label].update(nlls=nlls, windows=len(nlls), seqlen=2048)
        return record

    fp16 = with_nlls(ppl_record("FP16", quantized=False), [2.0, 3.0, 2.5], [2.2, 2.4, 2.9])
    w4a4 = with_nlls(ppl_record("W4A4"), [2.1, 3.2, 2.55], [2.2, 2.4, 2.9])
    w4a8 = with_nlls(ppl_record("W4A8"), [2.0, 3.0, 2.5], [2.3, 2.5])  # other c4 windows: no ratio there
    records = {"FP16": fp16, "W4A4": w4a4, "W4A8": w4a8, "W4A16": with_nlls(ppl_record("W4A16", "running"), [1] * 3,
                                                                            [1] * 3)}
    paper, note = load_paper(paper_dir, "ppl", MODEL)
    text = render("ppl", MODEL, records, paper, note)
    diffs = [0.1, 0.2, 0.05]
    mean, sem = statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(3)
    expected = f"{math.exp(mean):.3f} [{math.exp(mean - 1.96 * sem):.3f}-{math.exp(mean + 1.96 * sem):.3f}]"
    assert markdown_row(text, "W4A4 / FP16") == ["W4A4 / FP16", expected, "1.000 [1.000-1.000]"]  # same NLLs
    assert markdown_row(text, "W4A8 / FP16") == ["W4A8 / FP16", "1.000 [1.000-1.000]", "-"]
    assert "W4A16 / FP16" not in text and "FP16 / FP16" not in text  # incomplete rows and FP16 itself: none
    del records["FP16"]
    assert "/ FP16" not in render("ppl", MODEL, records, paper, note)
