"""Resident memory of the packed W4A4KV SmolLM2 over the FP16 model, on the same prompt: the bytes held by the
parameters and buffers of each loaded model plus its K/V cache after prefilling the same tokens (low-bit cache for
the packed model, the standard float16 cache for FP16). The last line printed is the ratio.

The packed model is saved once by scripts/measure_memory.py's recipe (round-to-nearest weights, one random
calibration window: bytes depend on shapes only) into --work, and reused, twice: as main.py --save writes it by
default (float32 weight scales, which give the weights back exactly) and with --save_dtype float16 (the scales in
float16 too: they round). Its Linears are run by --kernel (quantize/packed.py): "fused" holds the weights in its own
layout instead of the packed buffers, "int4" adds its layout to them. A line per saved model gives the bits per
quantized weight that each part takes; the last line is the ratio of the float16-stored one.

    python bench/packed_memory.py [--setting W4A4KV] [--kernel exact] [--prompt_tokens 2048] [--work out/memory]
"""
import argparse
from pathlib import Path

import torch

import rptq
from quantize.packed import KERNELS, PackedLinear
from scripts.measure_memory import kv_bytes, saved_model, weight_bytes

MODEL = "smollm2-135m"
MIB = 2 ** 20


def resident_bytes(model, adapter, prompt_tokens):
    """(parameters and buffers, each tensor once; K/V cache and its grids after a 1 x prompt_tokens prefill)."""
    return sum(weight_bytes(model, adapter).values()), sum(kv_bytes(model, adapter, 1, prompt_tokens))


def bits_per_weight(model):
    """{what: bits per quantized weight} over the PackedLinears: each of their packed buffers (codes, scale, zero,
    groups), and a faster kernel's layout (the fused one replaces the packed buffers; int4 adds to them)."""
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    weights = sum(m.in_features * m.out_features for m in linears)
    per_weight = {}
    for linear in linears:
        for name, tensor in linear.named_buffers(recurse=False):
            per_weight[name] = per_weight.get(name, 0) + 8 * tensor.nbytes / weights
        if linear.kernel is not None:
            layout = sum(t.nbytes for t in linear.kernel.buffers())
            per_weight["kernel layout"] = per_weight.get("kernel layout", 0) + 8 * layout / weights
    return per_weight


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="W4A4KV")
    p.add_argument("--kernel", default="exact", choices=KERNELS)
    p.add_argument("--prompt_tokens", type=int, default=2048)
    p.add_argument("--work", type=Path, default=Path("out/memory"))
    args = p.parse_args()

    fp16 = rptq.load(MODEL, torch.float16)
    fw, fkv = resident_bytes(fp16.model, fp16.adapter, args.prompt_tokens)
    print(f"{'FP16':28s} weights {fw / MIB:8.1f} MiB  K/V {fkv / MIB:7.1f} MiB  total {(fw + fkv) / MIB:8.1f} MiB")
    for save_dtype in (None, "float16"):
        name = f"{args.setting}-{save_dtype}" if save_dtype else args.setting
        packed = rptq.load(saved_model(MODEL, args.setting, args.work / MODEL / name, save_dtype), torch.float16,
                           kernel=args.kernel)
        pw, pkv = resident_bytes(packed.model, packed.adapter, args.prompt_tokens)
        what = f"packed {args.setting}, scales {'float16' if save_dtype else 'float32'}"
        print(f"{what:28s} weights {pw / MIB:8.1f} MiB  K/V {pkv / MIB:7.1f} MiB  total {(pw + pkv) / MIB:8.1f} MiB"
              f"  ratio {(pw + pkv) / (fw + fkv):.3f}")
        bits = bits_per_weight(packed.model)
        print(f"  bits per quantized weight, {sum(bits.values()):.3f} in all: "
              + ", ".join(f"{name} {value:.3f}" for name, value in bits.items()))
    print(f"resident memory ratio (packed {args.setting} saved with --save_dtype float16, {args.kernel} kernel / "
          f"FP16, {MODEL}, {args.prompt_tokens}-token prompt): {(pw + pkv) / (fw + fkv):.3f}")


if __name__ == "__main__":
    main()
