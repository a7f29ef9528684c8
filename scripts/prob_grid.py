"""Perplexity with only the softmax probabilities on the reference's fixed grid (round(p * (2^b - 1)) / (2^b - 1)),
every other tensor in floating point: how much of a WxA8 loss the probability grid alone explains.

    python scripts/prob_grid.py smollm2-135m --bits 8,6 --limit 4 --output results/smollm2-135m/prob_grid.json

A probability below half a grid step (1 / 510 at 8 bits) becomes 0: over long contexts, heads that spread their
attention over many tokens lose most of it.
"""
import sys

from rptq.cli import UsageError, load_with_windows, script_main, window_script_parser, write_window_results

PROG = "prob_grid.py"


def build_parser():
    p = window_script_parser(PROG, __doc__, 4, "first N evaluation windows")
    p.add_argument("--bits", default="8", help="comma list of probability bits")
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
    from quantize import ProbQuantizer
    from quantize.attention import ATTN_IMPLEMENTATION
    from quantize.state import state_of
    from rptq.evaluate import perplexity
    from rptq.report import format_table

    loaded, windows, device, label, sources = load_with_windows(args)
    model, adapter = loaded.model, loaded.adapter
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
    write_window_results(args, label, sources, results)
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
