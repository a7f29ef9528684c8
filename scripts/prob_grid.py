"""Perplexity with only the softmax probabilities on the reference's fixed grid (round(p * (2^b - 1)) / (2^b - 1)),
every other tensor in floating point: how much of a WxA8 loss the probability grid alone explains.

    python scripts/prob_grid.py smollm2-135m --bits 8,6 --limit 4 --output results/smollm2-135m/prob_grid.json

A probability below half a grid step (1 / 510 at 8 bits) becomes 0: over long contexts, heads that spread their
attention over many tokens lose most of it.
"""
import argparse
import dataclasses
import json
import sys

import datautils
from models import model_names
from rptq.base import check_file, write_text
from rptq.cli import FilePath, OneLineParser, UsageError, script_main
from rptq.config import DTYPES

PROG = "prob_grid.py"


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=f"one of {', '.join(model_names())}, or a local model folder")
    p.add_argument("--bits", default="8", help="comma list of probability bits")
    p.add_argument("--dataset", choices=datautils.EVAL_SETS, default="wikitext2")
    p.add_argument("--limit", type=int, default=4, help="first N evaluation windows")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--output", type=FilePath, default=None, help="JSON file, written atomically")
    return p


def bit_list(text):
    try:
        bits = [int(b) for b in text.split(",") if b]
    except ValueError:
        raise UsageError(f"--bits takes a comma list of integers, got '{text}'") from None
    if not bits or not all(1 <= b <= 16 for b in bits):
        raise UsageError(f"--bits must be between 1 and 16, got '{text}'")
    return bits


def run(args):
    bits = bit_list(args.bits)
    if args.limit < 1 or args.seqlen < 1:
        raise UsageError("--limit and --seqlen must be at least 1")
    from models import load_model
    from quantize import ProbQuantizer
    from quantize.attention import ATTN_IMPLEMENTATION
    from quantize.state import state_of
    from rptq import record
    from rptq.api import check_positions
    from rptq.evaluate import perplexity
    from rptq.placement import resolve_device
    from rptq.report import format_table

    device, dtype = resolve_device(args.device, args.dtype)
    data_dir = datautils.resolve_data_dir(args.data_dir)
    datautils.check_sources([args.dataset], None, data_dir)
    if args.output:
        check_file(args.output, "output")
    model, tokenizer, adapter = load_model(args.model, dtype)
    check_positions(model.config, args.model, args.seqlen)
    model.to(device)
    windows = datautils.get_eval_windows(args.dataset, tokenizer, args.seqlen, data_dir, args.cache_dir)
    label = datautils.eval_label(args.dataset, data_dir)
    results = {"float": perplexity(model, windows, device, args.limit, desc="float")}
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    attentions = [adapter.attention(layer) for layer in adapter.layers(model)]
    for b in bits:
        for attn in attentions:
            state_of(attn, create=True).prob_quant = ProbQuantizer(b)
        results[f"probs {b}-bit grid"] = perplexity(model, windows, device, args.limit, desc=f"probs {b} bits")
    print(f"\n{args.model}  {label}, first {args.limit} windows of {args.seqlen} tokens, only the softmax "
          "probabilities quantized")
    print(format_table(["run", "ppl"], [[name, f"{r.ppl:.2f}"] for name, r in results.items()]))
    if args.output:
        write_text(args.output, json.dumps({
            "model": args.model, "dataset": label, "settings": vars(args),
            "data": datautils.describe_sources([args.dataset], None, data_dir),
            "ppl": {name: dataclasses.asdict(r) for name, r in results.items()}, "versions": record.versions()},
            indent=2) + "\n")
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
