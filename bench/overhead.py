"""Forward-time overhead of the fake-quantized W4A4 model over the float model (issue #15 targets: at most 1.1 on
the OPT shape, 1.25 on SmolLM2).

--model opt: an OPT-125m-shaped model with random weights (timing does not depend on the weights); smollm2: the real
SmolLM2-135M (Llama family: grouped-query attention, Q/K quantized after the rotation). Either is quantized by the real
RPTQ pipeline (round-to-nearest weights: GPTQ changes no timing), then both models run the same 2048 tokens in the
same process, alternately, and the best of --repeats is kept for each. The last line printed is the ratio.
--profile N first prints, for each model, torch.profiler's N operators with the most self time in one forward: where
the W4A4 time goes beyond the float model's.

    python bench/overhead.py [--model opt|smollm2] [--repeats 5] [--device cpu] [--dtype float32] [--profile 15]
"""
import argparse
import copy
import time

import torch

import rptq
from rptq.placement import resolve_device


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


def print_profile(name, model, ids, rows):
    activities = [torch.profiler.ProfilerActivity.CPU]
    if ids.is_cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad(), torch.profiler.profile(activities=activities) as prof:
        model(ids, use_cache=False)
    sort_by = "self_device_time_total" if ids.is_cuda else "self_cpu_time_total"
    print(f"{name}: one forward, operators by self time")
    print(prof.key_averages().table(sort_by=sort_by, row_limit=rows))


def opt_125m_shape(dtype):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=768, num_attention_heads=12, ffn_dim=3072, num_hidden_layers=12,
                       vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=768)
    return OPTForCausalLM(config).to(dtype).eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("opt", "smollm2"), default="opt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print each model's N costliest operators")
    args = p.parse_args()

    device, dtype = resolve_device(args.device, args.dtype)
    float_model = opt_125m_shape(dtype) if args.model == "opt" else rptq.load("smollm2-135m", dtype).model
    quant_model = copy.deepcopy(float_model)  # before quantizing: a copy's hooks would call the original's quantizers
    vocab = float_model.config.vocab_size
    calib = torch.randint(0, vocab, (2, args.seqlen), generator=torch.Generator().manual_seed(0))
    cfg = rptq.QuantConfig(wbits=4, abits=4, w_quantizer="normal")
    rptq.quantize(rptq.Loaded.of(quant_model), calib, cfg, device)
    float_model.to(device)
    quant_model.to(device)

    ids = torch.randint(0, vocab, (1, args.seqlen), generator=torch.Generator().manual_seed(1)).to(device)
    best_forward_seconds(float_model, ids, 1)  # warm-up: allocator and kernels
    best_forward_seconds(quant_model, ids, 1)
    if args.profile:
        print_profile("float", float_model, ids, args.profile)
        print_profile("W4A4", quant_model, ids, args.profile)
    t_float, t_quant = float("inf"), float("inf")
    for _ in range(args.repeats):  # alternate so that machine noise hits both alike
        t_float = min(t_float, best_forward_seconds(float_model, ids, 1))
        t_quant = min(t_quant, best_forward_seconds(quant_model, ids, 1))
    print(f"float forward   {t_float:.3f} s  ({float_model.config._attn_implementation} attention)")
    print(f"W4A4 forward    {t_quant:.3f} s  ({quant_model.config._attn_implementation} attention, "
          f"{cfg.bit_mode} bits)")
    print(f"overhead ratio (W4A4 / float, {args.model}, {args.seqlen} tokens, {device}, "
          f"{str(dtype).split('.')[-1]}): {t_quant / t_float:.3f}")


if __name__ == "__main__":
    main()
