"""Greedy generation from a float model or a saved quantized one (main.py --save), with the low-bit KV cache where
the model's K and V have static grids; prints the text, tokens/s and the bytes the cache holds.

    python scripts/generate.py out/smollm2-w4a4kv --prompt "The capital of France is" --max_new_tokens 32
    python scripts/generate.py smollm2-135m --prompt "The capital of France is"      # float, standard cache

Prefill is one forward over the prompt, then one forward per new token; tokens/s counts those decoding steps.
"""
import argparse
import sys

from rptq.cli import OneLineParser, UsageError, script_main
from rptq.config import DTYPES, Choices

PROG = "generate.py"
CACHES = ("auto", "low-bit", "standard")


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="a folder written by main.py --save, or a float model (name or folder)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--cache", choices=CACHES, default="auto",
                   help="low-bit: K/V as packed codes (needs static K/V grids); standard: transformers' float "
                        "cache; auto: low-bit where the model has the grids")
    p.add_argument("--kernel", choices=Choices("quantize.packed", "KERNELS"), default="exact",
                   help="how a saved model's packed Linears run each decoding step: exact (the fake-quantized model's "
                        "numbers), fused (a compiled CPU kernel) or int4 (torch's int4 kernels); the last two are "
                        "faster and round differently")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPES)
    return p


def run(args):
    if args.max_new_tokens < 1:
        raise UsageError("--max_new_tokens must be at least 1")
    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to continue")
    import rptq
    from quantize.kvcache import PackedKVCache, cache_nbytes
    from rptq.generate import greedy, new_cache
    from rptq.placement import resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    from quantize.packed import use_kernel

    loaded = rptq.load(args.model, dtype)
    model, tokenizer, adapter, manifest = loaded.model, loaded.tokenizer, loaded.adapter, loaded.manifest
    use_kernel(model.to(device), args.kernel)  # after the move: a kernel's layout is its device's own
    cache = new_cache(model, adapter, low_bit=args.cache != "standard")
    low_bit = isinstance(cache, PackedKVCache)
    if args.cache == "low-bit" and not low_bit:
        raise UsageError(f"--cache low-bit: {args.model} has no static K/V grids (a saved model whose K and V are "
                         "quantized on calibrated ranges has); use --cache standard")
    ids = tokenizer(args.prompt, return_tensors="pt").input_ids.to(device)
    new, _, prefill_s, decode_s = greedy(model, ids, cache, args.max_new_tokens)
    print(args.prompt + tokenizer.decode(new[0], skip_special_tokens=True))
    label = manifest["label"] if manifest else "float"
    kind = (f"low-bit ({cache.layers[0].key_grid.bits}-bit K, {cache.layers[0].value_grid.bits}-bit V)" if low_bit
            else f"standard ({str(dtype).split('.')[-1]})")
    steps = args.max_new_tokens - 1
    print(f"\n{args.model} ({label}), {device}: prefill {ids.shape[1]} tokens in {prefill_s:.2f} s; "
          f"{steps} decoding steps at {steps / decode_s if steps else float('nan'):.2f} tokens/s")
    print(f"K/V cache, {kind}: {cache_nbytes(cache)} bytes for {cache.get_seq_length()} tokens")
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
