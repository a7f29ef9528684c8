"""Decoding speed of the packed W4A4KV SmolLM2 with the low-bit K/V cache over the float model with the standard
cache, on the same prompt and the same number of new tokens. The last line printed is the ratio of tokens/s.

Both run in the device's default dtype (float32 on the CPU, where float16 matrix products are slower, float16 on
CUDA), alternately, and the best of --repeats is kept for each. The packed model dequantizes every weight at every
step, in plain PyTorch: this measures that cost, not a fused low-bit kernel's.

    python bench/decode.py [--setting W4A4KV] [--prompt_tokens 256] [--new_tokens 32] [--repeats 3] [--device cpu]
"""
import argparse
from pathlib import Path

import torch

from models import load_model
from rptq import artifact
from rptq.cli import dtype_name, pick_device
from rptq.generate import greedy, new_cache
from scripts.measure_memory import saved_model

MODEL = "smollm2-135m"


def tokens_per_second(model, adapter, ids, new_tokens):
    _, _, _, seconds = greedy(model, ids, new_cache(model, adapter), new_tokens)
    return (new_tokens - 1) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="W4A4KV")
    p.add_argument("--prompt_tokens", type=int, default=256)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None)
    p.add_argument("--work", type=Path, default=Path("out/memory"))
    args = p.parse_args()

    device, dtype = pick_device(args.device)
    folder = saved_model(MODEL, args.setting, args.work / MODEL / args.setting)
    float_model, tokenizer, float_adapter = load_model(MODEL, dtype)
    packed, _, packed_adapter, _ = artifact.load(folder, dtype)
    float_model.to(device)
    packed.to(device)
    ids = torch.randint(0, len(tokenizer), (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    runs = {"float": (float_model, float_adapter), "packed": (packed, packed_adapter)}
    for model, adapter in runs.values():
        tokens_per_second(model, adapter, ids, 2)  # warm-up
    best = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeats):  # alternate so that machine noise hits both alike
        for name, (model, adapter) in runs.items():
            best[name] = max(best[name], tokens_per_second(model, adapter, ids, args.new_tokens))
    print(f"float {dtype_name(dtype)}, standard cache      {best['float']:7.2f} tokens/s")
    print(f"packed {args.setting}, low-bit cache  {best['packed']:7.2f} tokens/s "
          f"({packed.config._attn_implementation} attention)")
    ratio = best["packed"] / best["float"]
    print(f"decode tokens/s ratio (packed {args.setting} + low-bit cache / float + standard cache, {MODEL}, "
          f"{args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, {device}): {ratio:.3f}")


if __name__ == "__main__":
    main()
