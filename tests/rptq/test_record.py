"""rptq/record.py: where a run's record goes, the record as a dataclass, and reading one back."""
import json

import pytest
import torch

from rptq import record
from rptq.record import PerplexityResult, RunRecord


def test_a_folder_gets_a_name_per_distinct_setting(tmp_path):
    a = record.output_file(str(tmp_path), "some/dir/tiny-opt/", "W4A4", {"clusters": 32})
    assert a.parent == tmp_path and a.name.startswith("tiny-opt_W4A4_") and a.suffix == ".json"
    assert a == record.output_file(str(tmp_path), "some/dir/tiny-opt/", "W4A4", {"clusters": 32})
    assert a != record.output_file(str(tmp_path), "some/dir/tiny-opt/", "W4A4", {"clusters": 16})
    assert record.output_file("x/run.json", "m", "W4A4", {}).name == "run.json"


def test_a_record_is_written_whole_and_read_back(tmp_path):
    rec = RunRecord(model="m", weights="w", family="opt", label="W4A4", settings={"seed": 2}, quantization=None,
                    data=[{"set": "ptb"}])
    assert rec.status == record.RUNNING and not rec.complete
    rec.status = record.COMPLETE
    rec.ppl["ptb"] = PerplexityResult(ppl=2.0, ppl_ci95=[1.9, 2.1], nll=0.69, nll_sem=0.01, windows=2,
                                      windows_total=45, seqlen=8, seconds=1.0, seconds_per_window=0.5, nlls=[0.6, 0.8])
    path = tmp_path / "a" / "run.json"
    rec.write(path)
    written = json.loads(path.read_text())
    assert list(written)[:5] == ["model", "weights", "family", "label", "status"]  # the JSON's layout is kept
    assert "saved_to" not in written and written["ppl"]["ptb"]["nlls"] == [0.6, 0.8]
    back = record.read(path)
    assert back == rec and back.complete and back.ppl["ptb"].windows_total == 45
    assert back.versions["torch_threads"] == torch.get_num_threads()
    assert back.versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record.read(tmp_path / "none.json") is None


def test_records_of_earlier_commits_read_back(root):
    """Every record in results/ (written by earlier commits) reads as a RunRecord."""
    paths = sorted(root.glob("results/**/*.json"))
    records = [record.read(p) for p in paths if "status" in json.loads(p.read_text())]
    assert len(records) > 40
    assert all(isinstance(result, PerplexityResult) for r in records for result in r.ppl.values())


@pytest.mark.parametrize("content", ["{broken", json.dumps([1]), json.dumps({"settings": 3}), "\udcff"])
def test_anything_else_is_a_record_error(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(record.RecordError, match="is not a main.py result"):
        record.read(path)
