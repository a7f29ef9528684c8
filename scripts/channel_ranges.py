"""The paper's Figure 1: per-channel (max, min) of a layer's activations before and after clustering/reordering.

    python scripts/channel_ranges.py opt-125m --layer 3 --points R1,R4 --nsamples 4
    python scripts/channel_ranges.py out/opt-125m-random --points R1,R2,R5 --clusters 8 --output out/ranges.png

For each chosen reorder point, each site it is clustered on (R2: Q and K) gets two panels: the channels in their
original order, and in the order the RPTQ pipeline gives them (K-means on the same features, same call), coloured
by cluster. The layers before the chosen one run in floating point. A CSV beside the PNG holds the plotted values:
point,site,channel,new_position,cluster,min,max (one row per channel and site).
"""
import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import datautils
from models import model_names
from rptq.base import atomic_write, check_file
from rptq.cli import FilePath, OneLineParser, UsageError, script_main

PROG = "channel_ranges.py"


@dataclass
class SitePanel:
    """One clustering site of a point: its per-channel ranges, and its channel order and clusters after the
    point's reorder (a site holding each K/V head once per query head repeats the head's order per copy)."""
    point: str
    site: str
    mins: torch.Tensor        # [C], original channel order
    maxs: torch.Tensor
    order: torch.Tensor       # channel order[j] goes to position j
    cluster_at: torch.Tensor  # the cluster of each position in the new order
    head_width: int           # channels per head: clusters never cross a multiple of it
    clusters: int             # asked for, per head when the point has heads

    def position_of(self):
        """The new position of each original channel."""
        position = torch.empty_like(self.order)
        position[self.order] = torch.arange(len(self.order))
        return position


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=f"one of {', '.join(model_names())}, or a local model folder")
    p.add_argument("--layer", type=int, default=3, help="decoder layer, counted from 0")
    p.add_argument("--points", default="R1,R4", help="comma list of reorder points")
    p.add_argument("--clusters", type=int, default=None,
                   help="K-means clusters at every chosen point, per head at R2 and R3 (default: the pipeline's "
                        "32, 4, 4, 32, 32 for R1..R5)")
    p.add_argument("--nsamples", type=int, default=4, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window")
    p.add_argument("--seed", type=int, default=2, help="calibration sampling seed")
    p.add_argument("--calib_dataset", choices=datautils.CALIB_SETS, default="mix")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--data_dir", default=None,
                   help="local data folder laid out like shared/offline-data (else $RPTQ_DATA_DIR, else the hub)")
    p.add_argument("--cache_dir", default=None, help="tokenized-data cache (default $RPTQ_CACHE_DIR or ~/.cache/rptq)")
    p.add_argument("--output", type=FilePath, default=None,
                   help="PNG path (default results/figures/MODEL_channel_ranges.png); the CSV goes beside it")
    return p


def check_args(args):
    if args.layer < 0:
        raise UsageError(f"--layer must be at least 0, got {args.layer}")
    for flag in ("nsamples", "seqlen", "clusters"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag} must be at least 1, got {value}")
    if not point_names(args):
        raise UsageError("--points is empty: name reorder points such as R1,R4")


def point_names(args):
    return list(dict.fromkeys(n.strip() for n in args.points.split(",") if n.strip()))


def choose_points(args, model, adapter):
    """The chosen layer's ReorderPoints and their cluster counts, refused with one line before any data runs."""
    from rptq.api import check_positions
    from rptq.config import DEFAULT_CLUSTERS

    layers = adapter.layers(model)
    if args.layer >= len(layers):
        raise UsageError(f"--layer {args.layer} is out of range: {args.model} has layers 0..{len(layers) - 1}")
    check_positions(model.config, args.model, args.seqlen)
    declared = {p.name: p for p in adapter.reorder_points(layers[args.layer])}
    unknown = [n for n in point_names(args) if n not in declared]
    if unknown:
        raise UsageError(f"--points: unknown {', '.join(unknown)} (choose from {', '.join(declared)})")
    chosen = []
    for name in point_names(args):
        point = declared[name]
        k = args.clusters or DEFAULT_CLUSTERS[name]
        per_group = point.channels // point.heads
        if k > per_group:
            where = f" per head ({point.heads} heads)" if point.heads > 1 else ""
            raise UsageError(f"{name} has only {per_group} channels{where} for {k} clusters; lower --clusters")
        chosen.append((point, k))
    return chosen


@torch.no_grad()
def observe(model, adapter, windows, layer_index, points, device):
    """Per-window [S, C] (min, max) at each clustering site of the points, keyed by id(site) as the pipeline's."""
    from tqdm import tqdm

    from rptq.pipeline import capture_layer_inputs, run_layer, use_site_attention
    from rptq.stats import SiteObserver

    sites = [s for p in points for s in p.cluster_on]
    use_site_attention(model, sites)
    # hooks sit on the chosen layer's modules only, so the float layers before it pass through unobserved
    observers = {id(s): SiteObserver(s) for s in sites}
    inputs, layer_kwargs = capture_layer_inputs(model, adapter, windows, device)
    for layer, kwargs in tqdm(list(zip(adapter.layers(model), layer_kwargs))[:layer_index + 1],
                              desc=f"layers 0..{layer_index}", file=sys.stderr):
        layer.to(device)
        inputs = run_layer(layer, inputs, kwargs)
        layer.to("cpu")
    return {key: obs.remove() for key, obs in observers.items()}


def cluster_panels(layer, chosen, stats):
    """Cluster each point exactly as the pipeline does (same features, same call); one panel per clustering site."""
    from quantize import cluster_index
    from rptq.cluster import cluster_channels
    from rptq.pipeline import clustering_features
    from rptq.reorder import per_query_head, per_query_head_clusters
    from rptq.stats import channel_ranges

    module_names = {id(m): n for n, m in layer.named_modules()}
    panels = []
    for point, k in chosen:
        perm, sizes = cluster_channels(clustering_features(point, stats), k, point.heads, point.name)
        for s in point.cluster_on:
            mins, maxs = channel_ranges(*stats[id(s)], "minmax")  # plain extremes: what the clustering saw
            width = len(mins)
            panels.append(SitePanel(point.name, f"{module_names[id(s.module)]} {s.where}", mins, maxs,
                                    per_query_head(perm, point.heads, width),
                                    per_query_head_clusters(cluster_index(sizes), point.heads, width),
                                    point.channels // point.heads, k))
    return panels


def plot(panels, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(panels), 2, figsize=(15, 3.4 * len(panels)), squeeze=False, layout="constrained")
    palette = plt.get_cmap("tab10")
    for (left, right), panel in zip(axes, panels):
        channels = len(panel.mins)
        x = np.arange(channels)
        left.vlines(x, panel.mins, panel.maxs, color="0.6", lw=0.6)
        left.scatter(x, panel.maxs, s=3, color="tab:red", label="max")
        left.scatter(x, panel.mins, s=3, color="tab:blue", label="min")
        left.legend(loc="upper right", markerscale=3, fontsize=8)
        left.set_title(f"{panel.point} ({panel.site}): original order", fontsize=10)
        left.set_xlabel("channel")

        cluster_at = panel.cluster_at.numpy()
        colors = palette(cluster_at % palette.N)  # neighbouring clusters get different colours
        lo, hi = panel.mins[panel.order], panel.maxs[panel.order]
        right.vlines(x, lo, hi, colors=colors, lw=0.8)
        right.scatter(x, hi, s=3, c=colors)
        right.scatter(x, lo, s=3, c=colors)
        for boundary in np.flatnonzero(np.diff(cluster_at)) + 1:
            right.axvline(boundary - 0.5, color="0.4", lw=0.5, ls=":")
        for boundary in range(panel.head_width, channels, panel.head_width):
            right.axvline(boundary - 0.5, color="black", lw=1.2)
        heads = channels // panel.head_width
        asked = f"{panel.clusters} clusters" + (f" per head, {heads} heads" if heads > 1 else "")
        right.set_title(f"{panel.point} ({panel.site}): reordered, {asked}", fontsize=10)
        right.set_xlabel("position after reordering")
        for ax in (left, right):
            ax.set_xlim(-0.5, channels - 0.5)
            ax.set_ylabel("activation")
    fig.suptitle(f"{title}\nright: coloured by cluster, thin lines between clusters, thick lines between heads")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    plt.close(fig)


def write_csv(panels, path):
    def write(f):
        out = csv.writer(f)
        out.writerow(["point", "site", "channel", "new_position", "cluster", "min", "max"])
        for panel in panels:
            position = panel.position_of()
            for c in range(len(panel.mins)):
                j = int(position[c])
                out.writerow([panel.point, panel.site, c, j, int(panel.cluster_at[j]), float(panel.mins[c]),
                              float(panel.maxs[c])])
    atomic_write(path, write)


def run(args):
    check_args(args)
    from rptq.placement import resolve_device

    device, _ = resolve_device(args.device)  # the float model stays float32: it is only observed
    data_dir = datautils.resolve_data_dir(args.data_dir)
    datautils.check_sources(calib_set=args.calib_dataset, data_dir=data_dir)
    model_name = Path(args.model.rstrip("/")).name
    png = Path(args.output or f"results/figures/{model_name}_channel_ranges.png")
    csv_path = png.with_suffix(".csv")
    for path in (png, csv_path):
        check_file(path, "output")

    from models import load_model

    model, tokenizer, adapter = load_model(args.model)
    chosen = choose_points(args, model, adapter)
    windows = datautils.get_calib_windows(args.calib_dataset, tokenizer, args.nsamples, args.seed, args.seqlen,
                                          data_dir, args.cache_dir)
    points = [p for p, _ in chosen]
    stats = observe(model, adapter, windows, args.layer, points, device)
    panels = cluster_panels(adapter.layers(model)[args.layer], chosen, stats)

    source = "local text" if data_dir is not None else "hub"
    title = (f"{model_name}, layer {args.layer}, {', '.join(p.name for p in points)}: per-channel activation range "
             f"over {args.nsamples} {args.calib_dataset} calibration windows of {args.seqlen} tokens ({source})")
    plot(panels, title, png)
    write_csv(panels, csv_path)
    print(f"wrote {png} and {csv_path}")
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
