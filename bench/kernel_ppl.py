"""Perplexity through each packed-Linear kernel as decoding uses them: the first --windows WikiText-2 windows of
--tokens tokens, on SmolLM2 saved at --setting by scripts/measure_memory.py's recipe (round-to-nearest weights, one
random calibration window: a poor model, but the same one for every kernel), scored one token at a time with the
low-bit cache where K/V are quantized, so that every Linear sees one row and runs on the chosen kernel (longer
inputs always take the exact path). The last line printed is the fused (or last listed) kernel's perplexity over
the exact one's.

    RPTQ_DATA_DIR=../shared/offline-data python bench/kernel_ppl.py [--setting W4A4KV] [--kernels exact,int4,fused]
                                                                    [--windows 2] [--tokens 256]
"""
import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import datautils
import rptq
from quantize.packed import KERNELS
from rptq.generate import new_cache
from scripts.measure_memory import saved_model

MODEL = "smollm2-135m"


@torch.no_grad()
def stepwise_nll(model, adapter, window):
    """Mean NLL of window[1:] with the tokens fed one at a time through the model's cache."""
    cache, nll = new_cache(model, adapter), 0.0
    for t in range(window.shape[1] - 1):
        logits = model(window[:, t:t + 1], past_key_values=cache, use_cache=True).logits[0, -1].float()
        nll += F.cross_entropy(logits, window[0, t + 1]).item()
    return nll / (window.shape[1] - 1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="W4A4KV")
    p.add_argument("--kernels", default="exact,int4,fused", help=f"comma list of {', '.join(KERNELS)}")
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--work", type=Path, default=Path("out/memory"))
    args = p.parse_args()
    kernels = args.kernels.split(",")
    if "exact" not in kernels or any(k not in KERNELS for k in kernels) or min(args.windows, args.tokens) < 2:
        p.error(f"--kernels takes a comma list of {', '.join(KERNELS)} with exact; --windows, --tokens at least 2")

    kernels = ["exact"] + [k for k in kernels if k != "exact"]  # the reference the others are compared with
    folder = saved_model(MODEL, args.setting, args.work / MODEL / args.setting)
    ppl = {}
    for kernel in kernels:
        loaded = rptq.load(folder, kernel=kernel)
        windows = datautils.get_eval_windows("wikitext2", loaded.tokenizer, args.tokens,
                                             datautils.resolve_data_dir(None))[:args.windows]
        nlls = [stepwise_nll(loaded.model, loaded.adapter, w.unsqueeze(0)) for w in windows]
        ppl[kernel] = math.exp(sum(nlls) / len(nlls))
        print(f"{args.setting} {kernel:5s} kernel: perplexity {ppl[kernel]:.4f} "
              f"({ppl[kernel] / ppl['exact'] - 1:+.3%} over exact)")
    last = kernels[-1]
    print(f"perplexity ratio ({last} kernel / exact, {MODEL} {args.setting}, token by token, first {args.windows} "
          f"WikiText-2 windows of {args.tokens} tokens): {ppl[last] / ppl['exact']:.5f}")


if __name__ == "__main__":
    main()
