"""scripts/measure_memory.py: bytes held by a loaded saved model and its cache, beside the analytic model."""
import pytest
import torch

from rptq import artifact
from scripts import measure_memory, memory_table


@pytest.mark.parametrize("label, expected", [("W16A16", (16, 16, False)), ("W4A8", (4, 8, False)),
                                             ("W4A3KV", (4, 3, True)), ("W3A3KV", (3, 3, True))])
def test_settings_become_round_to_nearest_configs(label, expected, tmp_path):
    cfg = measure_memory.setting_config(label, "model", tmp_path / label)
    assert (cfg.wbits, cfg.abits, cfg.only_quant_kv) == expected and cfg.w_quantizer == "normal"
    assert cfg.label == label and cfg.quantizes and cfg.save == str(tmp_path / label)
    assert (cfg.calib_dataset, cfg.nsamples, cfg.output_path) == ("random", 1, None)  # bytes depend on shapes only


def test_measured_bytes_match_the_analytic_linear_weights_and_kv(opt_case, save_quantized, tmp_path):
    model, calib, _ = opt_case
    _, folder = save_quantized(model, calib, tmp_path / "saved", wbits=3, abits=4, only_quant_kv=True,
                               w_quantizer="normal")
    loaded, _, adapter, _ = artifact.load(folder, torch.float16)
    parts = measure_memory.weight_bytes(loaded, adapter)
    every = {t.data_ptr(): t.nbytes for t in [*loaded.parameters(), *loaded.buffers()]}
    assert sum(parts.values()) == sum(every.values())
    shape = memory_table.shape_of(loaded.config)
    assert parts["weight_codes"] == memory_table.linear_weight_count(shape) * 3 // 8  # dense 3-bit codes
    assert parts["linear_float"] == 0 and parts["embeddings"] == (512 + 2050) * 64 * 2  # tied: once, float16
    kv_values, kv_grids = measure_memory.kv_bytes(loaded, adapter, 2, 40)
    assert kv_values == memory_table.kv_cache_gib(shape, 4, 2, 40) * memory_table.GIB
    assert 0 < kv_grids < kv_values


def test_bad_lists_are_one_line(capsys):
    assert measure_memory.main(["--settings", "W4A5"]) == 2
    assert measure_memory.main(["--models", "opt-1.3b", "--seqlen", "256,256"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "unknown W4A5" in err[0] and "one positive length per model" in err[1]


def test_the_script_measures_a_local_model_end_to_end(tiny_opt_dir, tmp_path):
    """The command as a user runs it, on a tiny local model: each setting saved once in --work, reloaded, measured."""
    import csv

    out = tmp_path / "memory.csv"
    argv = ["--models", str(tiny_opt_dir), "--seqlen", "16", "--settings", "FP16,W4A4KV", "--work",
            str(tmp_path / "work"), "--output", str(out)]
    assert measure_memory.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["setting"] for r in rows] == ["FP16", "W4A4KV"]
    assert artifact.is_saved(tmp_path / "work" / tiny_opt_dir.name / "W4A4KV")  # in --work, not the model's folder
    assert int(rows[1]["weight_codes"]) > 0 == int(rows[0]["weight_codes"])
