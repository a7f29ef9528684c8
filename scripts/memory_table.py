"""Memory of a model (weights, K/V cache, activations) at given bit widths, batch and sequence length, from its
family's shape (models/: OPT as the paper, and every other registered family), and the RPTQ paper's Table 3 (Yuan
et al. 2023) beside it.

    python scripts/memory_table.py --paper [TABLE3.csv] [--output table3.csv]
    python scripts/memory_table.py --model opt-1.3b          # the paper's settings, batches and lengths
    python scripts/memory_table.py --model opt-13b --wbits 4 --abits 8 --batch 1,8 --seqlen 2048,4096
    python scripts/memory_table.py --config path/to/model_folder --wbits 4 --abits 4 --kvbits 4

What Table 3 counts, read off its 189 cells (this model matches all of them within 0.3%):
- Units are GiB (2**30 bytes) though the paper writes GB: W16 minus W4 rows put opt-30b's fp16 weights at
  56.5, i.e. 30.3e9 parameters in GiB; in 10**9 bytes it would be 28.3e9, fewer than its Linear layers hold.
- Weights: every Linear layer (per layer q, k, v, out_proj: 4*h*h; fc1, fc2: 2*h*ffn) plus the token
  embedding and the lm_head (vocab*h each) as two matrices although OPT ties them: only then do the W16
  rows of all three models fit. All at wbits: W4 weights are exactly W16's / 4, so the embeddings are quantized
  too. Biases, LayerNorms and position embeddings are left out (under 0.1%).
- K/V cache: 2*layers*batch*seqlen*h values at kvbits; every layer keeps its own.
- Activations: one layer's only, since layers run one after another. Linear in batch*seqlen: the table is
  linear in seqlen, so the batch*heads*seqlen**2 attention scores are not counted (GiBs at 8192).
  Per token the cells fit exactly ten h-sized tensors: in WxAy rows 7 at abits and 3 at 16 bits (the A16,
  A8 and A4 rows fix the split), in WxAyKV rows 2 at kvbits and 8 at 16 bits. Our reading: q (h) and the fc1
  output (ffn = 4h) at abits, k and v (2h) at kvbits, and the residual stream (layer input, attention
  output, layer output) left at 16 bits.
Other families are counted the same way from their shape: q and o_proj hold heads x head_dim channels, k and v
kv_heads x head_dim (grouped-query attention), the MLP two or three matrices.
"""
import argparse
import csv
import re
import sys
from pathlib import Path

from models import ModelShape
from rptq.base import RPTQError, atomic_write
from rptq.cli import FilePath, OneLineParser, check_paths, render

PAPER_CSV = Path(__file__).resolve().parents[2] / "shared" / "paper" / "table3_memory_paper.csv"
PAPER_SETTINGS = ("W16A16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
PAPER_BATCHES = (1, 8, 64)
PAPER_SEQLENS = (2048, 4096, 8192)
COLUMNS = ("model", "setting", "batch", "seqlen", "weight_gb", "kv_gb", "activation_gb", "memory_gb", "paper_gb")
GIB = 2 ** 30
FP16_BITS = 16


def opt(layers, hidden, heads, ffn, embed=None):
    """The shape of a published OPT config (vocabulary 50272, 2048 positions)."""
    return ModelShape(layers, hidden, heads, heads, hidden // heads, ffn, 2, 50272, embed or hidden, 2048)


# Published values: the facebook/opt-* config.json files on the Hugging Face hub; opt-175b, which has no hub
# checkpoint, from the OPT paper (Zhang et al. 2022, Table 1: 96 layers, 96 heads, d_model 12288, ffn 4*d).
OPT_SHAPES = {
    "opt-125m": opt(12, 768, 12, 3072),
    "opt-350m": opt(24, 1024, 16, 4096, embed=512),
    "opt-1.3b": opt(24, 2048, 32, 8192),
    "opt-2.7b": opt(32, 2560, 32, 10240),
    "opt-6.7b": opt(32, 4096, 32, 16384),
    "opt-13b": opt(40, 5120, 40, 20480),
    "opt-30b": opt(48, 7168, 56, 28672),
    "opt-66b": opt(64, 9216, 72, 36864),
    "opt-175b": opt(96, 12288, 96, 49152),
}

SETTING = re.compile(r"W(\d+)A(\d+)(KV(\d+)?)?", re.IGNORECASE)


def parse_setting(label):
    """Setting label -> (wbits, abits, kvbits).

    WxAy: weights at x bits, all activations and the K/V cache at y (W16A16: nothing quantized).
    WxAyKV: weights at x bits, only the K/V cache at y (main.py --only_quant_kv); other activations 16-bit.
    WxAyKVz: weights x, activations y, K/V cache z: the form setting_label gives bit widths the paper lacks.
    """
    match = SETTING.fullmatch(label.strip())
    if match is None:
        raise ValueError(f"unknown setting {label!r} (expected e.g. W4A8, W4A4KV, W4A8KV4)")
    wbits, abits = int(match[1]), int(match[2])
    if match[4]:
        return wbits, abits, int(match[4])
    if match[3]:
        return wbits, FP16_BITS, abits
    return wbits, abits, abits


def setting_label(wbits, abits, kvbits):
    """The paper's label for these bit widths where it has one; parse_setting reads every label back."""
    if kvbits == abits:
        return f"W{wbits}A{abits}"
    if abits == FP16_BITS:
        return f"W{wbits}A{kvbits}KV"
    return f"W{wbits}A{abits}KV{kvbits}"


def linear_weight_count(shape):
    """Weights of the decoder layers' Linears: q and out_proj h x q_width, k and v h x kv_width, the MLP's matrices."""
    h = shape.hidden
    return shape.layers * (2 * h * shape.q_width + 2 * h * shape.kv_width + shape.mlp_matrices * h * shape.mlp_width)


def embedding_weight_count(shape):
    """Embedding and lm_head counted apart (see above); opt-350m projects between embed and h both ways."""
    h, embed = shape.hidden, shape.embed_width
    return 2 * shape.vocab * embed + (2 * h * embed if embed != h else 0)


def weight_gib(shape, wbits):
    return (linear_weight_count(shape) + embedding_weight_count(shape)) * wbits / 8 / GIB


def kv_cache_gib(shape, kvbits, batch, seqlen):
    return 2 * shape.layers * batch * seqlen * shape.kv_width * kvbits / 8 / GIB


def shape_of(config):
    """The shape of a transformers config, as its family declares it."""
    from models import adapter_for

    return adapter_for(config).shape(config)


def activation_gib(shape, abits, kvbits, batch, seqlen):
    bits_per_token = ((shape.q_width + shape.mlp_width) * abits + 2 * shape.kv_width * kvbits
                      + 3 * shape.hidden * FP16_BITS)
    return batch * seqlen * bits_per_token / 8 / GIB


def memory_parts(shape, wbits, abits, kvbits, batch, seqlen):
    """(weights, K/V cache, activations) in GiB."""
    return (weight_gib(shape, wbits), kv_cache_gib(shape, kvbits, batch, seqlen),
            activation_gib(shape, abits, kvbits, batch, seqlen))


def memory_row(model, shape, bits, batch, seqlen, paper_gb=""):
    # Parts rounded before summing so that the printed columns add up exactly.
    parts = [round(part, 4) for part in memory_parts(shape, *bits, batch, seqlen)]
    values = [f"{value:.4f}" for value in (*parts, sum(parts))]
    return dict(zip(COLUMNS, (model, setting_label(*bits), batch, seqlen, *values, paper_gb)))


def grid_rows(models, settings, batches, seqlens):
    return [memory_row(name, shape, bits, batch, seqlen)
            for name, shape in models for bits in settings for batch in batches for seqlen in seqlens]


def paper_rows(cells):
    """One row per paper cell (dicts with model, setting, batch, seqlen, memory_gb), the paper's value beside."""
    return [memory_row(cell["model"], OPT_SHAPES[cell["model"]], parse_setting(cell["setting"]),
                       int(cell["batch"]), int(cell["seqlen"]), cell["memory_gb"]) for cell in cells]


def relative_error(row):
    return float(row["memory_gb"]) / float(row["paper_gb"]) - 1


def read_paper_cells(path):
    with open(path, newline="") as f:
        cells = list(csv.DictReader(f))
    if not cells:
        raise ValueError(f"{path} holds no cells (an empty file or only a header)")
    for cell in cells:
        if cell["model"] not in OPT_SHAPES:
            raise ValueError(f"{path}: unknown model {cell['model']!r}")
        parse_setting(cell["setting"])
        if not float(cell["memory_gb"]) > 0:
            raise ValueError(f"{path}: memory_gb must be positive, got {cell['memory_gb']!r}")
    return cells


def read_hf_config(path):
    """The shape of the model whose config.json is path (or is in folder path), by its family."""
    from models import load_config

    folder = Path(path).parent if Path(path).is_file() else Path(path)
    config, adapter = load_config(str(folder))
    shape = adapter.shape(config)
    bad = [f"{key} {value}" for key, value in shape._asdict().items() if value < 1]
    if bad:
        raise ValueError(f"{path}: sizes must be positive, got {', '.join(bad)}")
    return shape


def write_csv(rows, file):
    writer = csv.DictWriter(file, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def positive_ints(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser():
    p = OneLineParser(prog="memory_table.py", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--paper", nargs="?", const=PAPER_CSV, type=Path, metavar="CSV",
                        help=f"every cell of Table 3 beside the paper's value (default CSV: {PAPER_CSV})")
    source.add_argument("--model", help=f"comma list of: {', '.join(OPT_SHAPES)}")
    source.add_argument("--config", type=Path, help="a local model folder or its config.json, of any registered family")
    p.add_argument("--wbits", type=int, help="weight bits (default 16)")
    p.add_argument("--abits", type=int, help="activation bits (default 16)")
    p.add_argument("--kvbits", type=int, help="K/V cache bits (default: --abits)")
    p.add_argument("--batch", type=positive_ints, help=f"comma list (default {PAPER_BATCHES})")
    p.add_argument("--seqlen", type=positive_ints, help=f"comma list (default {PAPER_SEQLENS})")
    p.add_argument("--output", type=FilePath, help="write the CSV here (atomically) instead of stdout")
    return p


def chosen_settings(p, args):
    """The bits given, or without any the paper's settings."""
    given = {name: getattr(args, name) for name in ("wbits", "abits", "kvbits")}
    for name, bits in given.items():
        if bits is not None and not 1 <= bits <= FP16_BITS:
            p.error(f"--{name} must be between 1 and {FP16_BITS}, got {bits}")
    if all(bits is None for bits in given.values()):
        return [parse_setting(label) for label in PAPER_SETTINGS]
    abits = args.abits or FP16_BITS
    return [(args.wbits or FP16_BITS, abits, args.kvbits or abits)]


def chosen_models(p, args):
    if args.config:
        folder = args.config.resolve().parent if args.config.is_file() else args.config.resolve()
        try:
            return [(folder.name, read_hf_config(args.config))]
        except (OSError, ValueError, TypeError, RPTQError) as e:
            p.error(f"cannot read {args.config}: {e}")
    names = [name.strip() for name in args.model.split(",")]
    unknown = [name for name in names if name not in OPT_SHAPES]
    if unknown:
        p.error(f"unknown model {unknown[0]!r} (known: {', '.join(OPT_SHAPES)})")
    return [(name, OPT_SHAPES[name]) for name in names]


def paper_table(p, args):
    grid_flags = [f"--{name}" for name in ("wbits", "abits", "kvbits", "batch", "seqlen")
                  if getattr(args, name) is not None]
    if grid_flags:
        p.error(f"--paper takes settings, batches and lengths from the table; drop {', '.join(grid_flags)}")
    try:
        return paper_rows(read_paper_cells(args.paper))
    except (OSError, ValueError, KeyError) as e:
        p.error(f"cannot read the paper's table: {e}")


def paper_summary(rows):
    worst = max(rows, key=lambda row: abs(relative_error(row)))
    return (f"memory_table.py: {len(rows)} cells compared, max abs relative error {abs(relative_error(worst)):.2%} "
            f"({worst['model']} {worst['setting']} batch {worst['batch']} seqlen {worst['seqlen']})")


def main(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        check_paths(p, args)
    except RPTQError as e:
        p.error(render(e))
    if args.paper:
        rows = paper_table(p, args)
    elif args.model or args.config:
        rows = grid_rows(chosen_models(p, args), chosen_settings(p, args), args.batch or PAPER_BATCHES,
                         args.seqlen or PAPER_SEQLENS)
    else:
        p.error("give --paper, --model or --config")
    if args.output is None:
        write_csv(rows, sys.stdout)
    else:
        try:
            atomic_write(args.output, lambda f: write_csv(rows, f))
        except RPTQError as e:
            p.error(render(e))
    if args.paper:
        print(paper_summary(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
