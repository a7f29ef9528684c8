"""Time of GPTQ on the six Linear layers of an OPT-125m-shaped decoder layer over the time of one float forward
of the same calibration tokens through that layer, both measured in this run. The last line is the ratio.

GPTQ time = Hessian accumulation from the layer's inputs + column-by-column quantization (4 bits, per output
row and per input cluster, 32 equal clusters: the timing does not depend on the cluster sizes).

    python bench/gptq.py [--nsamples 16] [--device cpu]
"""
import argparse
import time

import torch

from quantize import GPTQ, cluster_index, column_groups


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows of --seqlen tokens")
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    from transformers import OPTConfig
    from transformers.models.opt.modeling_opt import OPTDecoderLayer

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=768, num_attention_heads=12, ffn_dim=3072, _attn_implementation="sdpa")
    layer = OPTDecoderLayer(config, layer_idx=0).eval().to(args.device)
    inputs = [torch.randn(1, args.seqlen, 768, device=args.device) for _ in range(args.nsamples)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    with torch.no_grad():
        layer(inputs[0])  # warm-up
        sync()
        start = time.perf_counter()
        for x in inputs:
            layer(x)
        sync()
        t_forward = time.perf_counter() - start

        linears = [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.out_proj,
                   layer.fc1, layer.fc2]
        gptq = [GPTQ(lin.in_features) for lin in linears]
        hooks = [lin.register_forward_pre_hook(lambda m, a, g=g: g.add_batch(a[0])) for lin, g in zip(linears, gptq)]
        start = time.perf_counter()
        for x in inputs:  # the layer runs again only to feed the hooks; its own share is taken out below
            layer(x)
        sync()
        t_hessian = time.perf_counter() - start - t_forward
        for h in hooks:
            h.remove()
        start = time.perf_counter()
        for lin, g in zip(linears, gptq):
            groups = column_groups("cluster", lin.in_features, cluster_index([lin.in_features // 32] * 32))
            g.quantize(lin, groups, bits=4)
        sync()
        t_quant = time.perf_counter() - start

    total = t_hessian + t_quant
    print(f"float forward of {args.nsamples} x {args.seqlen} tokens: {t_forward:.2f} s")
    print(f"GPTQ: Hessians {t_hessian:.2f} s + quantization {t_quant:.2f} s = {total:.2f} s")
    print(f"GPTQ / float forward ratio ({args.device}): {total / t_forward:.2f}")


if __name__ == "__main__":
    main()
