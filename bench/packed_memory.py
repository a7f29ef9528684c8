"""Resident memory of the packed W4A4KV SmolLM2 over the FP16 model, on the same prompt: the bytes held by the
parameters and buffers of each loaded model plus its K/V cache after prefilling the same tokens (low-bit cache for
the packed model, the standard float16 cache for FP16). The last line printed is the ratio.

The packed model is saved once by scripts/measure_memory.py's recipe (round-to-nearest weights, one random
calibration window: bytes depend on shapes only) into --work, and reused.

    python bench/packed_memory.py [--setting W4A4KV] [--prompt_tokens 2048] [--work out/memory]
"""
import argparse
from pathlib import Path

import torch

from models import load_model
from quantize.kvcache import cache_nbytes
from rptq import artifact
from rptq.generate import new_cache
from scripts.measure_memory import saved_model

MODEL = "smollm2-135m"
MIB = 2 ** 20


@torch.no_grad()
def resident_bytes(model, adapter, ids):
    """(parameters and buffers, each tensor once; K/V cache after prefilling ids)."""
    tensors = {t.data_ptr(): t.nbytes for t in [*model.parameters(), *model.buffers()]}
    cache = new_cache(model, adapter)
    model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return sum(tensors.values()), cache_nbytes(cache)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="W4A4KV")
    p.add_argument("--prompt_tokens", type=int, default=2048)
    p.add_argument("--work", type=Path, default=Path("out/memory"))
    args = p.parse_args()

    folder = saved_model(MODEL, args.setting, args.work / MODEL / args.setting)
    fp16, tokenizer, fp16_adapter = load_model(MODEL, torch.float16)
    packed, _, packed_adapter, _ = artifact.load(folder, torch.float16)
    ids = torch.randint(0, len(tokenizer), (1, args.prompt_tokens), generator=torch.Generator().manual_seed(0))
    sizes = {"FP16": resident_bytes(fp16, fp16_adapter, ids),
             f"packed {args.setting}": resident_bytes(packed, packed_adapter, ids)}
    for name, (weights, kv) in sizes.items():
        print(f"{name:16s} weights {weights / MIB:8.1f} MiB  K/V {kv / MIB:7.1f} MiB  "
              f"total {(weights + kv) / MIB:8.1f} MiB")
    (fw, fkv), (pw, pkv) = sizes.values()
    print(f"resident memory ratio (packed {args.setting} / FP16, {MODEL}, {args.prompt_tokens}-token prompt): "
          f"{(pw + pkv) / (fw + fkv):.3f}")


if __name__ == "__main__":
    main()
