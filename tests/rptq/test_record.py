"""rptq/record.py: where a run's record goes, and reading one back."""
import argparse
import json

import pytest
import torch

from rptq import record


def test_a_folder_gets_a_name_per_distinct_setting(tmp_path):
    args = argparse.Namespace(output_path=str(tmp_path), model="some/dir/tiny-opt/")
    a = record.output_file(args, "W4A4", {"clusters": 32})
    assert a.parent == tmp_path and a.name.startswith("tiny-opt_W4A4_") and a.suffix == ".json"
    assert a == record.output_file(args, "W4A4", {"clusters": 32})
    assert a != record.output_file(args, "W4A4", {"clusters": 16})
    assert record.output_file(argparse.Namespace(output_path="x/run.json", model="m"), "W4A4", {}).name == "run.json"


def test_a_record_is_written_whole_and_read_back(tmp_path):
    rec = record.new_record("m", "w", "opt", "W4A4", {"seed": 2}, None, [{"set": "ptb"}])
    assert rec["status"] == record.RUNNING and not record.is_complete(rec)
    path = tmp_path / "a" / "run.json"
    record.write(path, {**rec, "status": record.COMPLETE})
    back = record.read(path)
    assert record.is_complete(back) and back["data"] == [{"set": "ptb"}] and "torch" in back["versions"]
    assert back["versions"]["torch_threads"] == torch.get_num_threads()
    assert back["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record.read(tmp_path / "none.json") is None


@pytest.mark.parametrize("content", ["{broken", json.dumps([1]), json.dumps({"settings": 3}), "\udcff"])
def test_anything_else_is_a_record_error(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(record.RecordError, match="is not a main.py result"):
        record.read(path)
