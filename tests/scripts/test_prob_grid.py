import json

import pytest

from scripts import prob_grid


def test_probability_grid_runs_float_then_each_bit_width(tiny_opt_dir, data_dir, tmp_path):
    out = tmp_path / "grid.json"
    assert prob_grid.main([str(tiny_opt_dir), "--bits", "8,2", "--limit", "1", "--seqlen", "64", "--device", "cpu",
                           "--data_dir", str(data_dir), "--cache_dir", str(tmp_path), "--output", str(out)]) == 0
    ppl = {name: r["ppl"] for name, r in json.loads(out.read_text())["ppl"].items()}
    assert list(ppl) == ["float", "probs 8-bit grid", "probs 2-bit grid"]
    assert ppl["probs 2-bit grid"] != ppl["float"]  # 2 bits zero most probabilities of 64 keys


@pytest.mark.parametrize("bits", ["0", "eight"])
def test_bad_bits_is_one_line(bits, capsys):
    assert prob_grid.main(["smollm2-135m", "--bits", bits]) == 2
    assert capsys.readouterr().err.count("\n") == 1
