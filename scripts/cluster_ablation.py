"""The paper's Figure 4: W16A4 perplexity against the number of clusters at one reorder point at a time, the
other points keeping their default clusters, one main.py JSON per run, then a CSV and a plot.

    python scripts/cluster_ablation.py opt-1.3b -- --device cuda
    python scripts/cluster_ablation.py opt-125m --clusters 1,4,32 --points 14 -- --nsamples 16 --limit 8
    python scripts/cluster_ablation.py opt-125m --render-only

A point at its default count is the plain W16A4 run: it runs once and every point shares it. The other points
stay clustered because one of them at a single cluster (per-tensor ranges) can ruin A4 on its own, which would
hide what the varied point does. Runs, resume and errors are sweep.py's.
"""
import argparse
import sys
from pathlib import Path

import datautils
from rptq.base import atomic_write, check_folder, write_text
from rptq.cli import FolderPath, OneLineParser, check_paths, guarded
from rptq.config import DEFAULT_CLUSTERS
from rptq.report import csv_text, dataset_base, model_name, summarize
from scripts.sweep import SETTINGS, SweepError, split_extra, sweep

CLUSTERS = (1, 2, 4, 8, 32)
POINTS = "12345"
BASE = "W16A4"  # every point at its default clusters: shared by all points
CSV_HEADER = ("point", "clusters", "dataset", "ppl", "windows")


def run_name(point, clusters):
    return BASE if clusters == DEFAULT_CLUSTERS[f"R{point}"] else f"{BASE}-R{point}-k{clusters}"


def ablation_runs(points, clusters):
    """{run name: settings}: each point at each cluster count, the others at their defaults."""
    return {run_name(p, k): {**SETTINGS[BASE], **({} if run_name(p, k) == BASE else {f"R{p}_clusters": k})}
            for p in points for k in clusters}


def ablation_rows(records, points, clusters, dataset):
    """CSV rows (point, clusters, dataset label, ppl, windows run/total) of the runs that measured dataset."""
    rows = []
    for p in points:
        for k in clusters:
            record = records.get(run_name(p, k))
            ppl = record.ppl if record else {}
            label = next((label for label in ppl if dataset_base(label) == dataset), None)
            if label is not None:
                res = ppl[label]
                rows.append((f"R{p}", k, label, res.ppl, f"{res.windows}/{res.windows_total}"))
    return rows


def plot_title(model, records, rows):
    """Model, setting, data and limits, from the JSONs: the plot says what produced it."""
    done = {n: r for n, r in records.items() if r}
    settings = {n: r.settings for n, r in done.items()}
    label = summarize((n, r.label) for n, r in done.items())
    data = summarize((f"R{p}", f"{name} {windows} windows") for p, _, name, _, windows in rows)
    limits = ", ".join(f"{key} {summarize((n, s.get(key)) for n, s in settings.items())}"
                       for key in ("seqlen", "nsamples", "calib_dataset", "limit", "dtype"))
    return f"{model_name(model)} {label}: perplexity vs clusters at one reorder point\n{data}; {limits}"


def write_outputs(out_dir, model, records, points, clusters, dataset):
    """out_dir/clusters.csv and out_dir/clusters.png, each written atomically; their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = ablation_rows(records, points, clusters, dataset)
    csv_path, png_path = out_dir / "clusters.csv", out_dir / "clusters.png"
    write_text(csv_path, csv_text([CSV_HEADER, *rows]))

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for point in dict.fromkeys(r[0] for r in rows):
        line = [(k, ppl) for p, k, _, ppl, _ in rows if p == point]
        ax.plot(*zip(*line), marker="o", label=point)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(clusters), [str(k) for k in clusters])
    ax.set_xlabel("clusters at the reorder point (R2, R3: per K/V head; others: default)")
    ax.set_yscale("log")  # one cluster can be orders of magnitude worse than a few
    ax.set_ylabel("perplexity (log scale)")
    ax.set_title(plot_title(model, records, rows), fontsize=8)
    if rows:
        ax.legend(title="reorder point")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(png_path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    return csv_path, png_path


def cluster_list(text):
    try:
        clusters = sorted({int(k) for k in text.split(",") if k})
    except ValueError:
        clusters = []
    if not clusters or clusters[0] < 1:
        raise SweepError(f"--clusters takes a comma list of counts >= 1 such as 1,2,4, got '{text}'")
    return clusters


def point_list(text):
    if not text or any(p not in POINTS for p in text) or len(set(text)) < len(text):
        raise SweepError(f"--points takes distinct digits 1-5 such as 12345 or 14, got '{text}'")
    return text


def build_parser():
    p = OneLineParser(prog="cluster_ablation.py", description=__doc__, allow_abbrev=False,
                            usage="%(prog)s MODEL [options] [-- main.py flags]",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="as main.py takes it: a name or a local model folder")
    p.add_argument("--clusters", default=",".join(map(str, CLUSTERS)),
                   help="cluster counts, the x axis (default: %(default)s)")
    p.add_argument("--points", default=POINTS, help="reorder points, one line each (default: %(default)s)")
    p.add_argument("--dataset", choices=datautils.EVAL_SETS, default="wikitext2",
                   help="perplexity set (default: %(default)s)")
    p.add_argument("--out", type=FolderPath, default=None,
                   help="result folder (default: out/cluster_ablation/MODELNAME/DATASET)")
    p.add_argument("--render-only", action="store_true", help="only write the CSV and plot from the JSONs in DIR")
    return p


def main(argv=None, runner=None):
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)

    def body():
        check_paths(parser, args)
        clusters, points = cluster_list(args.clusters), point_list(args.points)
        out_dir = Path(args.out or Path("out") / "cluster_ablation" / model_name(args.model) / args.dataset)
        check_folder(out_dir, "out")
        rc, records = sweep(args.model, ablation_runs(points, clusters),
                            {"eval_ppl": True, "ppl_datasets": args.dataset}, extra, out_dir, args.render_only, runner)
        if rc:
            return rc
        csv_path, png_path = write_outputs(out_dir, args.model, records, points, clusters, args.dataset)
        print(f"\n{csv_path.read_text()}\ncsv: {csv_path}\nplot: {png_path}")
        return 0

    return guarded("cluster_ablation.py", body, "finished runs are kept in their JSON files")


if __name__ == "__main__":
    sys.exit(main())
