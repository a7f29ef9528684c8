"""scripts/channel_ranges.py (Figure 1) on the tiny random OPT, run in-process: a subprocess per case would spend
most of the time budget importing torch again."""
import csv
from collections import defaultdict

import pytest
import torch

from rptq.cluster import cluster_channels
from scripts import channel_ranges

TINY_HEAD_CHANNELS = 16  # tiny_opt and tiny_llama: 64 channels in 4 heads (tiny_llama: 2 K/V heads)


def run_script(model_dir, data_dir, tmp_path, *extra):
    return channel_ranges.main([str(model_dir), "--layer", "1", "--nsamples", "2", "--seqlen", "64",
                                "--device", "cpu", "--data_dir", str(data_dir), "--cache_dir", str(tmp_path / "cache"),
                                "--output", str(tmp_path / "fig" / "ranges.png"), *map(str, extra)])


def assert_valid_reordering(rows, clusters_expected, per_head=False):
    assert [int(r["channel"]) for r in rows] == list(range(len(rows)))
    assert sorted(int(r["new_position"]) for r in rows) == list(range(len(rows)))
    assert all(float(r["min"]) <= float(r["max"]) for r in rows)
    positions = defaultdict(list)
    for r in rows:
        positions[int(r["cluster"])].append(int(r["new_position"]))
    assert all(max(p) - min(p) + 1 == len(p) for p in positions.values())  # contiguous in the new order
    assert len(positions) == clusters_expected
    if per_head:  # no channel leaves its head
        assert all(int(r["new_position"]) // TINY_HEAD_CHANNELS == int(r["channel"]) // TINY_HEAD_CHANNELS
                   for r in rows)


def read_sites(path):
    sites = defaultdict(list)
    with open(path) as f:
        for row in csv.DictReader(f):
            sites[(row["point"], row["site"])].append(row)
    return sites


def test_png_and_csv_hold_a_valid_reordering(tiny_opt_dir, data_dir, tmp_path):
    assert run_script(tiny_opt_dir, data_dir, tmp_path, "--points", "R2,R5", "--clusters", 4) == 0
    folder = tmp_path / "fig"
    assert (folder / "ranges.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in folder.iterdir()) == ["ranges.csv", "ranges.png"]  # no temporary file left

    sites = read_sites(folder / "ranges.csv")
    assert [key for key in sites] == [("R2", "self_attn.q_proj output"), ("R2", "self_attn.k_proj output"),
                                      ("R5", "fc2 input")]
    for (point, _), rows in sites.items():
        heads = 4 if point == "R2" else 1  # R2: 4 clusters in each of 4 heads
        assert_valid_reordering(rows, 4 * heads, per_head=heads > 1)

    # the same order the pipeline would give: cluster_channels on the stacked (max, min) of the CSV's values
    rows = sites[("R5", "fc2 input")]
    features = torch.tensor([[float(r["max"]), float(r["min"])] for r in rows])
    perm, _ = cluster_channels(features, 4)
    assert [int(rows[c]["new_position"]) for c in perm] == list(range(len(rows)))


def test_grouped_query_heads_share_their_kv_heads_order(tiny_llama_dir, data_dir, tmp_path):
    """Llama R2: Q and K observed after the rotation; each query head repeats the order of the K/V head it reads."""
    assert run_script(tiny_llama_dir, data_dir, tmp_path, "--points", "R2", "--clusters", 4) == 0
    sites = read_sites(tmp_path / "fig" / "ranges.csv")
    query, key = sites[("R2", "self_attn query")], sites[("R2", "self_attn key")]
    assert_valid_reordering(query, 4 * 4, per_head=True)
    assert_valid_reordering(key, 2 * 4, per_head=True)
    group = len(query) // len(key)
    for r in query:
        c, head_dim = int(r["channel"]), TINY_HEAD_CHANNELS
        kv_channel = c // (group * head_dim) * head_dim + c % head_dim
        assert int(r["new_position"]) % head_dim == int(key[kv_channel]["new_position"]) % head_dim


@pytest.mark.parametrize("extra, expected", [
    (["--points", "R1,R9"], "--points: unknown R9"),
    (["--layer", "2"], "--layer 2 is out of range"),
    (["--points", "R2", "--clusters", "17"], "R2 has only 16 channels per head"),
    (["--nsamples", "0"], "--nsamples must be at least 1"),
])
def test_bad_input_exits_2_with_one_line(tiny_opt_dir, data_dir, tmp_path, capsys, extra, expected):
    assert run_script(tiny_opt_dir, data_dir, tmp_path, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "fig").exists()
