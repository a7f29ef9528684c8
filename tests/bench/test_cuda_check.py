"""bench/cuda_check.py, the one script a GPU machine runs, kept from rotting on machines without one: its runs part
on the CPU in float16 (the "device") against float32, at the CI size."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cuda_check_runs_part_compares_half_precision_with_float32(data_dir, tmp_path):
    output = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "bench/cuda_check.py", "--device", "cpu", "--dtype", "float16",
                           "--size", "ci", "--parts", "runs", "--data_dir", str(data_dir), "--output", str(output)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(output.read_text())
    assert [r["setting"] for r in result["runs"]] == ["W16A16-reorder", "W4A4KV", "W4A4"]
    for row in result["runs"]:
        assert row["ok"] and abs(row["d_log_ppl"]) <= result["tolerances"][row["setting"]]
        assert row["device_ppl"] != row["cpu_float32_ppl"]  # the "device" did run in float16
    assert "cuda_check: passed" in proc.stdout


def test_cuda_check_refuses_unknown_parts():
    proc = subprocess.run([sys.executable, "bench/cuda_check.py", "--device", "cpu", "--parts", "runs,speed"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "cuda_check.py: --parts 'runs,speed': name some of tests, runs, benches, comma-separated"]
