"""Decoding speed of a saved SmolLM2 setting, its packed Linears run by each kernel asked for, with the low-bit K/V
cache where the setting quantizes K and V, over the float model with the standard cache, on the same prompt and the
same number of new tokens. The last line printed is the ratio of tokens/s of the last kernel listed (by default the
fused one).

All run in the device's default dtype (float32 on the CPU, where float16 matrix products are slower, float16 on
CUDA), one after the other within each repeat, and the best of --repeats is kept for each. Kernels
(quantize/packed.py): "exact" dequantizes every weight at every step and gives the fake-quantized model's logits bit
for bit; "fused" (CPU only) reads the codes in a compiled float32 kernel, and runs the activation quantizers and the
low-bit cache by compiled kernels (the same values) and attention without quantized probabilities by torch's fused
kernel; "int4" runs torch's int4 kernel (bfloat16 activations and scales); both round differently from "exact".

    python bench/decode.py [--setting W4A4KV] [--kernels exact,int4,fused] [--prompt_tokens 256] [--new_tokens 32]
                           [--repeats 5] [--device cpu]
"""
import argparse
from pathlib import Path

import torch

import rptq
from quantize.packed import KERNELS, use_kernel
from rptq.generate import greedy, new_cache
from rptq.placement import dtype_name, resolve_device
from scripts.measure_memory import saved_model

MODEL = "smollm2-135m"


def tokens_per_second(model, adapter, ids, new_tokens):
    _, _, _, seconds = greedy(model, ids, new_cache(model, adapter), new_tokens)
    return (new_tokens - 1) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="W4A4KV")
    p.add_argument("--kernels", default="exact,int4,fused", help=f"comma list of {', '.join(KERNELS)}")
    p.add_argument("--prompt_tokens", type=int, default=256)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default=None)
    p.add_argument("--work", type=Path, default=Path("out/memory"))
    args = p.parse_args()
    kernels = args.kernels.split(",")
    if not kernels or any(k not in KERNELS for k in kernels):
        p.error(f"--kernels takes a comma list of {', '.join(KERNELS)}")

    device, dtype = resolve_device(args.device)
    device = torch.device(device)
    folder = saved_model(MODEL, args.setting, args.work / MODEL / args.setting)
    float_model = rptq.load(MODEL, dtype)
    runs = {"float": (float_model.model.to(device), float_model.adapter)}
    for kernel in kernels:
        packed = rptq.load(folder, dtype)
        use_kernel(packed.model.to(device), kernel)  # after the move: the int4 layout is the device's own
        runs[kernel] = (packed.model, packed.adapter)
    ids = torch.randint(0, len(float_model.tokenizer), (1, args.prompt_tokens),
                        generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    for model, adapter in runs.values():
        tokens_per_second(model, adapter, ids, 2)  # warm-up
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):  # alternate so that machine noise hits all alike
        for name, (model, adapter) in runs.items():
            best[name] = max(best[name], tokens_per_second(model, adapter, ids, args.new_tokens))
    cache = type(new_cache(*runs[kernels[0]])).__name__
    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"float {dtype_name(dtype)}, standard cache: {best['float']:.2f} tokens/s ({where})")
    for kernel in kernels:
        print(f"packed {args.setting}, {kernel} kernel, {cache}: {best[kernel]:.2f} tokens/s, "
              f"{best[kernel] / best['float']:.3f}x float")
    print(f"decode tokens/s ratio (packed {args.setting} {kernels[-1]} kernel, {cache} / float, standard cache, "
          f"{MODEL}, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {where}): "
          f"{best[kernels[-1]] / best['float']:.3f}")


if __name__ == "__main__":
    main()
