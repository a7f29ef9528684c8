"""Time of GPTQ on the six Linear layers of an OPT-125m-shaped decoder layer over the time of one float forward
of the same calibration tokens through that layer, both measured in this run. The last line is the ratio.

GPTQ time = Hessian accumulation from the layer's inputs (one per input: q/k/v share theirs) + column-by-column
quantization (4 bits, per output row and per input cluster, 32 equal clusters: the timing does not depend on the
cluster sizes).

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

        attn = layer.self_attn
        readers = [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.out_proj], [layer.fc1], [layer.fc2]]  # per input
        gptq = [GPTQ(lins[0].in_features) for lins in readers]  # one Hessian per input, as the pipeline
        hooks = [lins[0].register_forward_pre_hook(lambda m, a, g=g: g.add_batch(a[0]))
                 for lins, g in zip(readers, gptq)]
        start = time.perf_counter()
        for x in inputs:  # the layer runs again only to feed the hooks; its own share is taken out below
            layer(x)
        sync()
        t_hessian = time.perf_counter() - start - t_forward
        for h in hooks:
            h.remove()
        start = time.perf_counter()
        for lins, g in zip(readers, gptq):
            for lin in lins:
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
