"""Memory of an OPT model (weights, K/V cache, activations) at given bit widths, batch and sequence length,
and the RPTQ paper's Table 3 (Yuan et al. 2023) beside it.

    python scripts/memory_table.py --paper [TABLE3.csv] [--output table3.csv]
    python scripts/memory_table.py --model opt-1.3b          # the paper's settings, batches and lengths
    python scripts/memory_table.py --model opt-13b --wbits 4 --abits 8 --batch 1,8 --seqlen 2048,4096
    python scripts/memory_table.py --config path/to/config.json --wbits 4 --abits 4 --kvbits 4

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
"""
import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

from rptq.cli import OneLineParser
from rptq.base import atomic_write

PAPER_CSV = Path(__file__).resolve().parents[2] / "shared" / "paper" / "table3_memory_paper.csv"
PAPER_SETTINGS = ("W16A16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
PAPER_BATCHES = (1, 8, 64)
PAPER_SEQLENS = (2048, 4096, 8192)
COLUMNS = ("model", "setting", "batch", "seqlen", "weight_gb", "kv_gb", "activation_gb", "memory_gb", "paper_gb")
GIB = 2 ** 30
FP16_BITS = 16
HF_KEYS = ("hidden_size", "num_hidden_layers", "ffn_dim", "vocab_size", "max_position_embeddings",
           "num_attention_heads")


class OPTShape(NamedTuple):
    """The config.json fields of an OPT model that size it (the names are Hugging Face's). The last two let the
    same counts size a Llama-family model (shape_of): grouped-query K/V heads and a three-matrix (SwiGLU) MLP."""
    hidden_size: int
    num_hidden_layers: int
    ffn_dim: int
    vocab_size: int
    max_position_embeddings: int
    num_attention_heads: int
    word_embed_proj_dim: int  # the embedding width; only opt-350m's differs from hidden_size
    num_key_value_heads: int = 0  # 0: one K/V head per query head (OPT)
    mlp_matrices: int = 2  # fc1, fc2 (Llama: gate, up, down)

    @property
    def kv_width(self):
        """Channels of K (and of V) per token: hidden_size with one K/V head per query head."""
        heads = self.num_key_value_heads or self.num_attention_heads
        return self.hidden_size * heads // self.num_attention_heads


# Published values: the facebook/opt-* config.json files on the Hugging Face hub; opt-175b, which has no hub
# checkpoint, from the OPT paper (Zhang et al. 2022, Table 1: 96 layers, 96 heads, d_model 12288, ffn 4*d).
OPT_SHAPES = {
    "opt-125m": OPTShape(768, 12, 3072, 50272, 2048, 12, 768),
    "opt-350m": OPTShape(1024, 24, 4096, 50272, 2048, 16, 512),
    "opt-1.3b": OPTShape(2048, 24, 8192, 50272, 2048, 32, 2048),
    "opt-2.7b": OPTShape(2560, 32, 10240, 50272, 2048, 32, 2560),
    "opt-6.7b": OPTShape(4096, 32, 16384, 50272, 2048, 32, 4096),
    "opt-13b": OPTShape(5120, 40, 20480, 50272, 2048, 40, 5120),
    "opt-30b": OPTShape(7168, 48, 28672, 50272, 2048, 56, 7168),
    "opt-66b": OPTShape(9216, 64, 36864, 50272, 2048, 72, 9216),
    "opt-175b": OPTShape(12288, 96, 49152, 50272, 2048, 96, 12288),
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
    """Weights of the decoder layers' Linears: q and out_proj h x h, k and v h x kv_width, the MLP's matrices."""
    h = shape.hidden_size
    return shape.num_hidden_layers * (2 * h * h + 2 * h * shape.kv_width + shape.mlp_matrices * h * shape.ffn_dim)


def embedding_weight_count(shape):
    """Embedding and lm_head counted apart (see above); opt-350m projects between embed and h both ways."""
    h, embed = shape.hidden_size, shape.word_embed_proj_dim
    return 2 * shape.vocab_size * embed + (2 * h * embed if embed != h else 0)


def weight_gib(shape, wbits):
    return (linear_weight_count(shape) + embedding_weight_count(shape)) * wbits / 8 / GIB


def kv_cache_gib(shape, kvbits, batch, seqlen):
    return 2 * shape.num_hidden_layers * batch * seqlen * shape.kv_width * kvbits / 8 / GIB


def shape_of(config):
    """The shape of a transformers config of the OPT or Llama family."""
    if config.model_type == "opt":
        return OPTShape(config.hidden_size, config.num_hidden_layers, config.ffn_dim, config.vocab_size,
                        config.max_position_embeddings, config.num_attention_heads, config.word_embed_proj_dim)
    if config.model_type == "llama":
        return OPTShape(config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size,
                        config.max_position_embeddings, config.num_attention_heads, config.hidden_size,
                        config.num_key_value_heads, mlp_matrices=3)
    raise ValueError(f"no memory model for model type {config.model_type!r}")


def activation_gib(shape, abits, kvbits, batch, seqlen):
    h = shape.hidden_size
    bits_per_token = (h + shape.ffn_dim) * abits + 2 * h * kvbits + 3 * h * FP16_BITS
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
    config = json.loads(Path(path).read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not a config object")
    if config.get("model_type", "opt") != "opt":
        raise ValueError(f"{path} is a {config['model_type']!r} config, not an OPT one")
    missing = [key for key in HF_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}")
    shape = OPTShape(*(int(config[key]) for key in HF_KEYS),
                     int(config.get("word_embed_proj_dim", config["hidden_size"])))
    bad = [f"{key} {value}" for key, value in zip((*HF_KEYS, "word_embed_proj_dim"), shape) if value < 1]
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
    source.add_argument("--config", type=Path, help="a local Hugging Face OPT config.json")
    p.add_argument("--wbits", type=int, help="weight bits (default 16)")
    p.add_argument("--abits", type=int, help="activation bits (default 16)")
    p.add_argument("--kvbits", type=int, help="K/V cache bits (default: --abits)")
    p.add_argument("--batch", type=positive_ints, help=f"comma list (default {PAPER_BATCHES})")
    p.add_argument("--seqlen", type=positive_ints, help=f"comma list (default {PAPER_SEQLENS})")
    p.add_argument("--output", type=Path, help="write the CSV here (atomically) instead of stdout")
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
        try:
            return [(args.config.resolve().parent.name, read_hf_config(args.config))]
        except (OSError, ValueError, TypeError) as e:
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
        except OSError as e:
            p.error(f"cannot write {args.output}: {e.strerror or e}")
    if args.paper:
        print(paper_summary(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
