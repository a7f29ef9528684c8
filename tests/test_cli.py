"""main.py as a user runs it: a subprocess, its exit code, its stderr, its JSON."""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, require_smollm2

from models import ModelError, load_model


def run_main(*args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *map(str, args)], capture_output=True,
                          text=True, env=full_env, timeout=timeout, cwd=ROOT)


def assert_one_line_error(proc, expected):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and expected in lines[0], lines[0]


@pytest.mark.parametrize("args, expected", [
    (["no-such-model", "--eval_ppl"], "unknown model 'no-such-model'"),
    (["opt-125m", "--wbits", "0", "--eval_ppl"], "--wbits must be between 1 and 16"),
    (["opt-125m", "--wbits", "17", "--eval_ppl"], "--wbits must be between 1 and 16"),
    (["opt-125m", "--R3_clusters", "0", "--eval_ppl"], "--R3_clusters must be at least 1"),
    (["opt-125m", "--eval_ppl", "--data_dir", "/no/such/folder"], "/no/such/folder"),
    (["opt-125m", "--wbits", "four"], "invalid int value"),
    (["opt-125m", "--eval_ppl", "--nsamples", "8"], "--nsamples would change nothing"),
    (["opt-125m", "--eval_ppl", "--wbits", "4", "--only_quant_kv"], "--only_quant_kv would change nothing"),
])
def test_bad_input_exits_with_one_clear_line(args, expected):
    assert_one_line_error(run_main(*args), expected)


def test_uncached_hub_model_fails_fast_offline(tmp_path):
    start = time.time()
    proc = run_main("opt-125m", "--eval_ppl", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "pass a local model folder")
    assert time.time() - start < 30


def test_local_folder_loads_through_the_same_path_as_a_hub_model(tiny_opt_dir):
    model, tokenizer, adapter = load_model(str(tiny_opt_dir))
    assert adapter.family == "opt" and type(model).__name__ == "OPTForCausalLM"
    assert len(tokenizer) == model.config.vocab_size
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tiny_opt_dir.parent))


def test_too_many_clusters_is_one_line_before_calibration(tiny_opt_dir, data_dir):
    proc = run_main(tiny_opt_dir, "--eval_ppl", "--wbits", 4, "--abits", 4, "--R2_clusters", 17,
                    "--data_dir", data_dir)
    assert_one_line_error(proc, "R2 asks for 17 clusters but has only 16 channels per head")


def _ppl_run(tiny_opt_dir, data_dir, tmp_path, name, *extra):
    out = tmp_path / f"{name}.json"
    proc = run_main(tiny_opt_dir, "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2, "--seqlen", 256,
                    "--data_dir", data_dir, "--cache_dir", tmp_path / "cache", "--output_path", out, *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


def test_float_and_reordered_float_runs_agree_and_write_json(tiny_opt_dir, data_dir, tmp_path):
    proc, fp = _ppl_run(tiny_opt_dir, data_dir, tmp_path, "fp")
    assert fp["status"] == "complete" and fp["label"] == "FP-float32"
    assert fp["ppl"]["wikitext2"]["windows"] == 2 and fp["ppl"]["wikitext2"]["windows_total"] > 2
    assert "wikitext2" in proc.stdout and f"{fp['ppl']['wikitext2']['ppl']:.2f}" in proc.stdout
    assert {"torch", "transformers", "lm_eval"} <= set(fp["versions"])

    proc, ro = _ppl_run(tiny_opt_dir, data_dir, tmp_path, "ro", "--wbits", 16, "--abits", 16, "--reorder", 12345,
                        "--nsamples", 2, "--R1_clusters", 4, "--R4_clusters", 4, "--R5_clusters", 8)
    assert "every quantizer off" in proc.stderr
    assert ro["label"] == "W16A16" and ro["quantization"]["reorder"] == "12345"
    assert ro["ppl"]["wikitext2"]["ppl"] == pytest.approx(fp["ppl"]["wikitext2"]["ppl"], rel=1e-5)


def test_w4a4_run_records_its_mode_and_stage_timings(tiny_opt_dir, data_dir, tmp_path):
    _, res = _ppl_run(tiny_opt_dir, data_dir, tmp_path, "w4a4", "--wbits", 4, "--abits", 4, "--nsamples", 2,
                      "--R1_clusters", 4, "--R4_clusters", 4, "--R5_clusters", 8, "--calib_dataset", "mix")
    q = res["quantization"]
    assert (res["label"], q["bit_mode"], q["grid"], q["norm_bits"], q["prob_bits"]) == ("W4A4", "reference",
                                                                                         "paper", 8, 8)
    assert {"calibration", "clustering", "weight_quantization", "eval_wikitext2"} <= set(res["timings_s"])
    assert torch.isfinite(torch.tensor(res["ppl"]["wikitext2"]["ppl"]))


def test_smollm2_real_model_short_perplexity_float_and_w4a4(data_dir, tmp_path):
    require_smollm2()
    common = ["--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2, "--seqlen", 256, "--data_dir", data_dir,
              "--cache_dir", tmp_path]
    ppl = {}
    for label, flags in (("fp", []), ("w4a4", ["--wbits", 4, "--abits", 4, "--nsamples", 2])):
        out = tmp_path / f"{label}.json"
        proc = run_main("smollm2-135m", *common, *flags, "--output_path", out, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(out.read_text())
        assert res["family"] == "llama" and res["status"] == "complete"
        ppl[label] = res["ppl"]["wikitext2"]["ppl"]
    assert 3 < ppl["fp"] < 60  # a trained model, unlike a random one (~ vocab size)
    assert ppl["fp"] < ppl["w4a4"] < 10 * ppl["fp"], ppl  # quantized, still a language model (random: ~50k)
