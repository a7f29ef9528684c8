"""Forward-time overhead of the fake-quantized W4A4 model over the float model (issue target: <= 1.3).

An OPT-125m-shaped model with random weights (timing does not depend on the weights), quantized by the real
RPTQ pipeline; both models run the same 2048 tokens in the same process, alternately, and the best of
--repeats is kept for each. The last line printed is the ratio.

    python bench/overhead.py [--repeats 5] [--device cpu]
"""
import argparse
import copy
import time

import torch

from models.opt import OPTAdapter
from rptq.config import RPTQConfig
from rptq.pipeline import quantize_model


def best_forward_seconds(model, ids, repeats):
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids, use_cache=False)
            if ids.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seqlen", type=int, default=2048)
    args = p.parse_args()

    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=768, num_attention_heads=12, ffn_dim=3072, num_hidden_layers=12,
                       vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=768)
    float_model = OPTForCausalLM(config).eval()
    quant_model = copy.deepcopy(float_model)
    calib = torch.randint(0, config.vocab_size, (2, args.seqlen))
    cfg = RPTQConfig(wbits=4, abits=4, w_quantizer="normal", device=args.device)  # weights: RTN is enough here
    quantize_model(quant_model, OPTAdapter(), calib, cfg)
    float_model.to(args.device)
    quant_model.to(args.device)

    ids = torch.randint(0, config.vocab_size, (1, args.seqlen), device=args.device)
    best_forward_seconds(float_model, ids, 1)  # warm-up: allocator and kernels
    best_forward_seconds(quant_model, ids, 1)
    t_float, t_quant = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate so that machine noise hits both alike
        t_float = min(t_float, best_forward_seconds(float_model, ids, 1))
        t_quant = min(t_quant, best_forward_seconds(quant_model, ids, 1))
    print(f"float forward   {t_float:.3f} s  ({float_model.config._attn_implementation} attention)")
    print(f"W4A4 forward    {t_quant:.3f} s  ({quant_model.config._attn_implementation} attention, "
          f"{cfg.bit_mode} bits)")
    print(f"overhead ratio (W4A4 / float, {args.seqlen} tokens, {args.device}): {t_quant / t_float:.3f}")


if __name__ == "__main__":
    main()
