"""scripts/cluster_ablation.py: which runs it asks for, and its CSV and plot from fabricated JSONs."""
import csv

import pytest

from rptq.record import PerplexityResult, RunRecord
from scripts import cluster_ablation


def test_one_point_at_a_time_the_others_at_their_defaults_sharing_the_default_run():
    runs = cluster_ablation.ablation_runs("24", [1, 4, 32])
    assert runs == {
        "W16A4-R2-k1": {"abits": 4, "R2_clusters": 1},
        "W16A4": {"abits": 4},  # R2's default 4 and R4's default 32: the same run
        "W16A4-R2-k32": {"abits": 4, "R2_clusters": 32},
        "W16A4-R4-k1": {"abits": 4, "R4_clusters": 1},
        "W16A4-R4-k4": {"abits": 4, "R4_clusters": 4},
    }


def record(ppl):
    settings = {"seqlen": 2048, "nsamples": 128, "calib_dataset": "mix", "limit": None, "dtype": "float16"}
    result = PerplexityResult(ppl=ppl, ppl_ci95=None, nll=0.0, nll_sem=None, windows=256, windows_total=256,
                              seqlen=2048, seconds=0.0, seconds_per_window=0.0, nlls=[])
    return RunRecord(model="opt-125m", weights="", family="opt", label="W16A4", status="complete", settings=settings,
                     quantization=None, data=[], ppl={"c4-proxy": result})


def test_csv_and_plot_from_fabricated_results(tmp_path):
    points, clusters = "14", [1, 2, 32]
    records = {name: record(10.0 + i) for i, name in enumerate(cluster_ablation.ablation_runs(points, clusters))}
    records["W16A4-R4-k2"] = None  # not run: no row, no point on the line
    csv_path, png_path = cluster_ablation.write_outputs(tmp_path, "opt-125m", records, points, clusters, "c4")

    with csv_path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["point", "clusters", "dataset", "ppl", "windows"]
    assert rows[1:] == [["R1", "1", "c4-proxy", "10.0", "256/256"], ["R1", "2", "c4-proxy", "11.0", "256/256"],
                        ["R1", "32", "c4-proxy", "12.0", "256/256"], ["R4", "1", "c4-proxy", "13.0", "256/256"],
                        ["R4", "32", "c4-proxy", "12.0", "256/256"]]
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clusters.csv", "clusters.png"]  # no temporary left

    title = cluster_ablation.plot_title("opt-125m", records, cluster_ablation.ablation_rows(records, points, clusters,
                                                                                           "c4"))
    assert "opt-125m W16A4" in title and "c4-proxy 256/256 windows" in title and "nsamples 128" in title


@pytest.mark.parametrize("argv, expected", [
    (["opt-125m", "--clusters", "0,2"], "--clusters takes a comma list of counts >= 1"),
    (["opt-125m", "--points", "16"], "--points takes distinct digits 1-5"),
])
def test_bad_input_is_one_line_and_exit_2(argv, expected, capsys):
    assert cluster_ablation.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
