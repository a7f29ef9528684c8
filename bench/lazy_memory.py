"""Peak memory of main.py quantizing an OPT-2.7b-shaped checkpoint (random weights, float16 shards) with W4A4, loaded
lazily with each quantized layer written to an offload folder, then evaluated with most layers read from that
folder (--device_map sequential under a small CPU budget). Prints main.py's peak resident set per stage beside
the checkpoint's size; the last line is the quantization peak over the checkpoint size.

    python bench/lazy_memory.py [--folder out/opt-2.7b-random] [--layers 32] [--nsamples 2] [--seqlen 512]
                                [--cpu_budget 2GiB] [-- more main.py flags, e.g. --w_quantizer normal]

The checkpoint is made first (scripts/make_random_opt.py) if the folder holds none; --layers makes a shallower one
of the same width, whose quantization peak is the same (tests/test_main.py shows it does not grow with depth) and
takes a fraction of the time. main.py runs in its own process, so that its peaks are its own; it computes in
float32 on the CPU (twice the checkpoint's bytes per layer).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rptq.cli import FolderPath

ROOT = Path(__file__).resolve().parents[1]
OPT_2_7B_WIDTH = ["--hidden", "2560", "--heads", "32", "--ffn", "10240"]
GIB = 2 ** 30


def run(script, *args):
    code = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT).returncode
    if code:
        sys.exit(f"lazy_memory.py: {script} failed with exit code {code}; its message is above")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=FolderPath, default=str(ROOT / "out" / "opt-2.7b-random"))
    p.add_argument("--layers", type=int, default=32, help="decoder layers of a checkpoint made here")
    p.add_argument("--nsamples", type=int, default=2)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--cpu_budget", default="2GiB", help="--max_memory cpu budget for the evaluation")
    p.add_argument("main_flags", nargs="*", help="more main.py flags, after --")
    args = p.parse_args()

    folder = Path(args.folder)
    if not (folder / "model.safetensors.index.json").is_file():
        run("scripts/make_random_opt.py", folder, "--layers", args.layers, *OPT_2_7B_WIDTH, "--dtype", "float16",
            "--max_shard_size", "1GB")
    checkpoint = sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    with tempfile.TemporaryDirectory(prefix="lazy-memory-") as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        run("main.py", folder, "--wbits", 4, "--abits", 4, "--nsamples", args.nsamples, "--seqlen", args.seqlen,
            "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 1, "--offload_folder", Path(tmp) / "offload",
            "--device_map", "sequential", "--max_memory", f"cpu={args.cpu_budget}", "--output_path", out,
            *args.main_flags)
        wall = time.perf_counter() - start
        result = json.loads(out.read_text())

    peaks, timings = result["peak_memory_mb"], result["timings_s"]
    layers = result["placement"]["device_map"]
    print(f"checkpoint {folder}: {checkpoint / GIB:.2f} GiB float16 ({2 * checkpoint / GIB:.2f} GiB in float32); "
          f"evaluation map: {sum(v == 'cpu' for v in layers.values())} modules in CPU memory, "
          f"{sum(v == 'disk' for v in layers.values())} on disk; main.py {wall / 60:.1f} min")
    print(f"{'stage':<18}{'peak RSS GiB':>13}{'at start':>10}{'anon at end':>13}{'seconds':>9}")
    for stage, peak in peaks.items():
        seconds = timings.get(stage, sum(timings.get(k, 0) for k in ("capture", "calibration", "clustering",
                                                                      "weight_quantization", "layer_outputs"))
                              if stage == "quantization" else float("nan"))
        print(f"{stage:<18}{peak['rss'] / 1024:>13.2f}{peak['rss_at_start'] / 1024:>10.2f}"
              f"{peak['anon_at_end'] / 1024:>13.2f}{seconds:>9.0f}")
    print(f"peak RSS while quantizing / checkpoint size: {peaks['quantization']['rss'] * 2 ** 20 / checkpoint:.2f}")


if __name__ == "__main__":
    main()
