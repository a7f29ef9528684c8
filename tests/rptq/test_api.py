"""rptq/api.py: the library entry points (load, quantize, save, perplexity, run) as a notebook would use them."""
import json

import pytest
import torch

import rptq
from rptq.api import check_positions, data_of
from rptq.config import ConfigError, RunConfig


def test_run_is_one_whole_run_and_returns_its_record(tiny_opt_dir, data_dir, tmp_path):
    config = RunConfig(model=str(tiny_opt_dir), wbits=4, abits=4, nsamples=2, seqlen=128, R1_clusters=4,
                       R4_clusters=4, R5_clusters=8, eval_ppl=True, ppl_datasets="wikitext2", limit=2,
                       data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), output_path=str(tmp_path / "r.json"),
                       save=str(tmp_path / "saved"))
    record = rptq.run(config, progress=False)
    assert record.complete and record.label == "W4A4" and record.saved_to == str(tmp_path / "saved")
    assert len(record.clusters_per_layer) == 2 and record.ppl["wikitext2"].windows == 2
    assert json.loads((tmp_path / "r.json").read_text()) == record.to_json()  # the same record on disk

    # the saved model, loaded back by the library, gives the run's perplexity
    loaded = rptq.load(str(tmp_path / "saved"))
    assert loaded.quant.label == "W4A4" and loaded.manifest["label"] == "W4A4"
    again = rptq.perplexity(loaded, "wikitext2", seqlen=128, limit=2, data_dir=str(data_dir),
                            cache_dir=str(tmp_path / "cache"), progress=False)
    assert again.nlls == record.ppl["wikitext2"].nlls


def test_the_functions_compose_as_run_does(tiny_opt_dir, data_dir, tmp_path):
    """load, calibration_windows, quantize, perplexity: the same figures as run() for the same settings."""
    settings = dict(wbits=4, abits=4, w_quantizer="normal", R1_clusters=4, R4_clusters=4, R5_clusters=8)
    record = rptq.run(RunConfig(model=str(tiny_opt_dir), nsamples=2, seqlen=128, eval_ppl=True,
                                ppl_datasets="wikitext2", limit=1, data_dir=str(data_dir), output_path=None,
                                **settings), progress=False)
    loaded = rptq.load(str(tiny_opt_dir))
    windows = rptq.calibration_windows(loaded, nsamples=2, seqlen=128, data_dir=str(data_dir))
    report = rptq.quantize(loaded, windows, rptq.QuantConfig(**settings), progress=False)
    result = rptq.perplexity(loaded, "wikitext2", seqlen=128, limit=1, data_dir=str(data_dir), progress=False)
    assert report.clusters_per_layer == record.clusters_per_layer and result.nlls == record.ppl["wikitext2"].nlls


def test_run_refuses_bad_settings_before_loading_anything(tmp_path):
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        rptq.run(RunConfig(model="no-such-model", wbits=4))
    with pytest.raises(ConfigError, match="R3_clusters must be at least 1"):
        rptq.run(RunConfig(model="no-such-model", R3_clusters=0, eval_ppl=True))


def test_a_model_in_memory_can_be_quantized(tiny_opt):
    model = tiny_opt(layers=1)
    calib = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    report = rptq.quantize(rptq.Loaded.of(model), calib, rptq.QuantConfig(abits=4, R1_clusters=4, R4_clusters=4,
                                                                          R5_clusters=8), progress=False)
    assert report.clusters_per_layer[0]["R5"] == 8


def test_data_of_names_files_inside_the_folder(data_dir):
    cfg = RunConfig(model="m", eval_ppl=True, ppl_datasets="ptb", data_dir=str(data_dir))
    (entry,) = data_of(cfg)
    assert entry == {"set": "ptb", "purpose": "eval", "file": "ptb/ptb.valid.txt", "sha256": entry["sha256"]}
    quantized = data_of(RunConfig(model="m", wbits=4, eval_ppl=True, ppl_datasets="ptb", calib_dataset="c4",
                                  data_dir=str(data_dir)))
    assert [(e["set"], e["purpose"]) for e in quantized] == [("ptb", "eval"), ("c4", "calib")]


def test_seqlen_longer_than_the_positions_is_refused(tiny_opt):
    model = tiny_opt(layers=1)
    check_positions(model.config, "tiny", 2048)
    with pytest.raises(ConfigError, match="seqlen 4096 is longer than tiny's 2048 positions"):
        check_positions(model.config, "tiny", 4096)


def test_the_readme_example_runs_as_written(root, smollm2, data_dir, tmp_path):
    """The README's library example, run as a user pastes it: it quantizes SmolLM2 and evaluates it."""
    import os
    import re
    import subprocess
    import sys

    readme = (root / "README.md").read_text()
    code = re.search(r"## Library\n.*?```python\n(.*?)```", readme, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "RPTQ_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    clusters, ppl = re.fullmatch(r"(\{.*\}) (\S+)\n", proc.stdout).groups()
    assert clusters == "{'R1': 32, 'R2': 12, 'R3': 12, 'R4': 32, 'R5': 32}" and 1 < float(ppl) < 1e5
