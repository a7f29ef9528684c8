"""Whole RPTQ pipeline time over one float forward of the same calibration windows (issue #15 target: at most
3.5), with each stage's share. SmolLM2-135M at W4A4 (GPTQ weights, the reference's bits) on --nsamples windows of
the calibration mix (random token ids without a data folder: the timing does not depend on the text). The float
forward and the pipeline run in the same process, one after the other; the last line is the ratio.

    RPTQ_DATA_DIR=../shared/offline-data python bench/pipeline.py [--nsamples 16] [--device cpu] [--dtype float32]
"""
import argparse
import copy
import time

import torch

import datautils
import rptq
from rptq.placement import resolve_device


def float_pass_seconds(model, windows, device):
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    with torch.no_grad():
        model(windows[:1].to(device), use_cache=False)  # warm-up
        sync()
        start = time.perf_counter()
        for window in windows:
            model(window[None].to(device), use_cache=False)
        sync()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    args = p.parse_args()

    device, dtype = resolve_device(args.device, args.dtype)
    loaded = rptq.load("smollm2-135m", dtype)
    dataset = "mix" if datautils.resolve_data_dir(None) is not None else "random"  # timing does not need the text
    windows = rptq.calibration_windows(loaded, dataset, args.nsamples, 2, args.seqlen)
    quantized = rptq.Loaded.of(copy.deepcopy(loaded.model))
    t_float = float_pass_seconds(loaded.model.to(device), windows, device)
    del loaded
    start = time.perf_counter()
    report = rptq.quantize(quantized, windows, rptq.QuantConfig(wbits=4, abits=4), device)
    t_pipeline = time.perf_counter() - start

    print(f"float forward of {args.nsamples} x {args.seqlen} tokens (whole model): {t_float:.1f} s")
    print(f"RPTQ W4A4 pipeline: {t_pipeline:.1f} s")
    for stage, seconds in sorted(report.timings_s.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:<20} {seconds:8.1f} s  {seconds / t_float:5.2f}x float  {seconds / t_pipeline:6.1%}")
    print(f"  {'(moving layers)':<20} {t_pipeline - sum(report.timings_s.values()):8.1f} s")
    print(f"pipeline / float forward ratio (smollm2-135m, W4A4, {args.nsamples} windows, {device}, "
          f"{str(dtype).split('.')[-1]}): {t_pipeline / t_float:.2f}")


if __name__ == "__main__":
    main()
