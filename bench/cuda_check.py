"""One check of a CUDA machine, all told in a few minutes: the tests that run on a device (tests/test_device.py),
W16A16-reorder, W4A4 and W4A4KV on a random OPT of opt-125m's shape and on SmolLM2 on the device in its dtype beside
the same on the CPU in float32, the overhead, pipeline and decode benches on the device, and peak CUDA memory. It
writes one JSON and prints a short table, and exits 1 when a device figure is not within its tolerance of the CPU
one (TOLERANCES: |log-perplexity difference|; float16 rounding, which K-means and GPTQ can amplify, sets them).

    python bench/cuda_check.py --output results/cuda_check.json                 # on a GPU machine (float16)
    python bench/cuda_check.py --device cpu --dtype float16 --size ci           # CI: the same steps, tiny sizes

--size ci uses a random OPT of a tiny shape and tiny windows (the benches still load SmolLM2), so that the script
cannot rot on machines without a GPU: there the "device" runs are the CPU in --dtype. The test suite runs its
"runs" part (tests/bench/test_cuda_check.py); --parts picks the parts.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"W16A16-reorder": {"reorder": "12345"}, "W4A4KV": {"wbits": 4, "abits": 4, "only_quant_kv": True},
            "W4A4": {"wbits": 4, "abits": 4}}
TOLERANCES = {"W16A16-reorder": 0.01, "W4A4KV": 0.05, "W4A4": 0.15}  # |d log-ppl|, device dtype against float32
SIZES = {  # per size: the models, and the run and bench sizes
    "full": {"models": {"opt-125m-random": ["--layers", "12", "--hidden", "768", "--heads", "12", "--ffn", "3072"],
                        "smollm2-135m": None},
             "run": {"nsamples": 8, "seqlen": 512, "limit": 8},
             "benches": {"overhead": ["--seqlen", "2048", "--repeats", "3"],
                         "pipeline": ["--nsamples", "8", "--seqlen", "2048"],
                         "decode": ["--prompt_tokens", "256", "--new_tokens", "32", "--repeats", "3"]}},
    "ci": {"models": {"opt-tiny-random": ["--layers", "2", "--hidden", "64", "--heads", "4", "--ffn", "256"]},
           "run": {"nsamples": 2, "seqlen": 128, "limit": 2, "R1_clusters": 4, "R4_clusters": 4, "R5_clusters": 8},
           "benches": {"overhead": ["--seqlen", "128", "--repeats", "1"],
                       "pipeline": ["--nsamples", "1", "--seqlen", "128"],
                       "decode": ["--prompt_tokens", "16", "--new_tokens", "4", "--repeats", "1"]}},
}


def last_line(command, env):
    """Run a bench; its last line (the ratio it reports) and its seconds."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{command[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.strip().splitlines()[-1], time.perf_counter() - start


def model_folder(name, shape, work):
    """A model to run: a random OPT of the shape made once in work, or a model main.py knows by name."""
    if shape is None:
        return name
    folder = work / name
    if not (folder / "config.json").is_file():
        subprocess.run([sys.executable, "scripts/make_random_opt.py", str(folder), *shape], cwd=ROOT, check=True,
                       capture_output=True)
    return str(folder)


def run_setting(model, settings, device, dtype, size, data_dir):
    """One rptq.run of a setting: its WikiText-2 log-perplexity and the peak CUDA memory of its stages (MiB)."""
    import rptq

    record = rptq.run(rptq.RunConfig(model=model, device=device, dtype=dtype, eval_ppl=True,
                                     ppl_datasets="wikitext2", data_dir=data_dir, output_path=None,
                                     **size["run"], **settings), progress=False, log=lambda message: None)
    cuda = [m for stage in record.peak_memory_mb.values() for m in stage.get("cuda", {}).values()]
    return math.log(record.ppl["wikitext2"].ppl), max(cuda, default=None)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    p.add_argument("--size", default="full", choices=tuple(SIZES))
    p.add_argument("--data_dir", default=None, help="as main.py's (default $RPTQ_DATA_DIR)")
    p.add_argument("--output", default=None, help="the JSON (default: printed only)")
    p.add_argument("--parts", default="tests,runs,benches", help="which of tests, runs, benches to do (comma list)")
    args = p.parse_args()
    import torch

    size, started, parts = SIZES[args.size], time.perf_counter(), set(args.parts.split(","))
    if not parts or parts - {"tests", "runs", "benches"}:
        sys.exit(f"cuda_check.py: --parts {args.parts!r}: name some of tests, runs, benches, comma-separated")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("cuda_check.py: no CUDA device here; run it on a GPU machine, or with --device cpu")
    env = {**os.environ, "RPTQ_TEST_DEVICE": args.device, "RPTQ_TEST_DTYPE": args.dtype}
    result = {"device": args.device, "dtype": args.dtype, "size": args.size, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "tolerances": TOLERANCES}

    rows, failed = [], False
    if "tests" in parts:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "tests/test_device.py"], cwd=ROOT, env=env, capture_output=True, text=True)
        result["tests"] = {"exit_code": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
        failed = tests.returncode != 0
    with tempfile.TemporaryDirectory(prefix="cuda-check-") as work:
        for name, shape in (size["models"] if "runs" in parts else {}).items():
            model = model_folder(name, shape, Path(work))
            for setting, settings in SETTINGS.items():
                on_device, peak = run_setting(model, settings, args.device, args.dtype, size, args.data_dir)
                on_cpu, _ = run_setting(model, settings, "cpu", "float32", size, args.data_dir)
                ok = abs(on_device - on_cpu) <= TOLERANCES[setting]
                failed |= not ok
                rows.append({"model": name, "setting": setting, "device_ppl": math.exp(on_device),
                             "cpu_float32_ppl": math.exp(on_cpu), "d_log_ppl": on_device - on_cpu, "ok": ok,
                             "peak_cuda_mib": peak})
    result["runs"] = rows
    dtype = ["--dtype", args.dtype]  # decode.py runs in the device's default dtype (float16 on CUDA)
    benches = {"overhead": ["bench/overhead.py", "--model", "opt", *dtype], "pipeline": ["bench/pipeline.py", *dtype],
               "decode": ["bench/decode.py", "--kernels", "exact,int4" if args.device != "cpu" else "exact,fused"]}
    result["benches"] = {}
    for name, command in (benches if "benches" in parts else {}).items():
        line, seconds = last_line([*command, *size["benches"][name], "--device", args.device], env)
        result["benches"][name] = {"last_line": line, "seconds": seconds}
    result["seconds"] = time.perf_counter() - started

    if "tests" in result:
        print(f"tests/test_device.py on {args.device} {args.dtype}: {' '.join(result['tests']['summary'])}")
    print(f"{'model':18s} {'setting':15s} {args.device + ' ' + args.dtype:>16s} {'cpu float32':>12s} "
          f"{'d log-ppl':>10s} {'tolerance':>9s}  peak CUDA MiB")
    for r in rows:
        print(f"{r['model']:18s} {r['setting']:15s} {r['device_ppl']:16.3f} {r['cpu_float32_ppl']:12.3f} "
              f"{r['d_log_ppl']:+10.4f} {TOLERANCES[r['setting']]:9.2f}  {r['peak_cuda_mib'] or '-'}"
              + ("" if r["ok"] else "  OUT OF TOLERANCE"))
    for name, bench in result["benches"].items():
        print(f"{name}: {bench['last_line']} ({bench['seconds']:.0f} s)")
    print(f"cuda_check: {'FAILED' if failed else 'passed'} in {result['seconds']:.0f} s")
    if args.output:
        from rptq.base import write_text

        write_text(args.output, json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
