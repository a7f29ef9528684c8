"""RPTQ command line: load a model, quantize it with RPTQ, evaluate perplexity and zero-shot tasks.

Argument parsing and wiring only; the method lives in rptq/, the numerics in quantize/, the families in models/.
"""
import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import datautils
from models import MODEL_NAMES
from quantize import GRANULARITIES, GRIDS
from rptq.tasks import LOCAL_TASKS, local_tasks

FLOAT_BITS = 16  # as rptq.pipeline.FLOAT_BITS; checking arguments must not import the pipeline

DTYPES = ("float32", "float16", "bfloat16")


class UsageError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = OneLineParser(prog="main.py", description=__doc__.splitlines()[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=f"one of {', '.join(MODEL_NAMES)}, or a local model folder")
    g = p.add_argument_group("quantization")
    g.add_argument("--wbits", type=int, default=16, help="weight bits (16: float weights)")
    g.add_argument("--abits", type=int, default=16, help="activation bits (16: float activations)")
    g.add_argument("--w_quantizer", choices=("gptq", "normal"), default="gptq",
                   help="gptq, or normal = round-to-nearest")
    g.add_argument("--percdamp", type=float, default=0.01, help="GPTQ damping, fraction of mean diag(H)")
    g.add_argument("--w_granularity", choices=GRANULARITIES, default="cluster",
                   help="weight scales per output row and per: input cluster (RPTQ), nothing else (channel), or "
                        "--groupsize columns (group)")
    g.add_argument("--groupsize", type=int, default=128, help="columns per weight group with --w_granularity group")
    g.add_argument("--act_order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian diagonal")
    g.add_argument("--metric", choices=("minmax", "ema_minmax"), default="ema_minmax",
                   help="activation range estimator over calibration windows")
    for i, k in enumerate((32, 4, 4, 32, 32), 1):
        g.add_argument(f"--R{i}_clusters", type=int, default=k,
                       help=f"clusters at R{i}" + (" (per attention head; Llama: per K/V head)" if i in (2, 3) else ""))
    g.add_argument("--reorder", default=None,
                   help="which of R1..R5 are clustered and reordered, e.g. 12345 or 145 (default 12345; with "
                        "--wbits 16 --abits 16, giving it runs the pipeline with every quantizer off)")
    g.add_argument("--only_quant_kv", action="store_true", help="quantize weights and the KV cache only (WxAyKV)")
    g.add_argument("--a_dynamic", action="store_true",
                   help="activation ranges from each forward, not calibration (so decoding token by token with "
                        "the KV cache no longer equals a full forward)")
    g.add_argument("--grid", choices=GRIDS, default="paper",
                   help="paper: scale = range / 2^k as the reference; full: range / (2^k - 1)")
    g.add_argument("--bit_mode", choices=("reference", "strict"), default="reference",
                   help="reference: LayerNorm outputs at max(8, abits), softmax on an 8-bit grid; "
                        "strict: every quantized activation at abits")
    c = p.add_argument_group("calibration")
    c.add_argument("--nsamples", type=int, default=128, help="calibration windows")
    c.add_argument("--seed", type=int, default=2, help="calibration sampling seed")
    c.add_argument("--calib_dataset", choices=datautils.CALIB_SETS, default="mix")
    c.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration and evaluation window")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval_ppl", action="store_true", help="perplexity on wikitext2, ptb and c4")
    e.add_argument("--ppl_datasets", default=",".join(datautils.EVAL_SETS), help="comma list for --eval_ppl")
    e.add_argument("--tasks", default="",
                   help="comma list of lm-evaluation-harness tasks, e.g. lambada_openai,piqa; with a data folder "
                        f"holding their files, {', '.join(LOCAL_TASKS)} run offline from it")
    e.add_argument("--num_fewshot", type=int, default=0,
                   help="few-shot examples per task prompt (the paper: 0; local tasks have no training split)")
    e.add_argument("--batch_size", type=int, default=1,
                   help="lm-evaluation-harness batch size (recorded: it moves the numbers slightly)")
    e.add_argument("--limit", type=int, default=None,
                   help="run only the first N perplexity windows / examples per task (averages over those N)")
    r = p.add_argument_group("runtime and files")
    r.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    r.add_argument("--dtype", choices=DTYPES, default=None, help="model dtype (default: float32 on cpu, "
                                                                   "float16 on cuda)")
    r.add_argument("--data_dir", default=None,
                   help="local data folder laid out like shared/offline-data (else $RPTQ_DATA_DIR, else the hub)")
    r.add_argument("--cache_dir", default=None, help="tokenized-data cache (default $RPTQ_CACHE_DIR or "
                                                     "~/.cache/rptq)")
    r.add_argument("--output_path", default="out",
                   help="JSON results: a .json file, or a folder that gets MODEL_LABEL_SETTINGSHASH.json")
    return p


def describe_mode(cfg):
    """What produced the numbers, for the line above the table (the JSON has every setting)."""
    parts = [f"{cfg.grid} grid"]
    if cfg.wbits < FLOAT_BITS:
        parts.append(f"{cfg.w_quantizer} weights per {cfg.w_granularity}" + (" act-order" if cfg.act_order else ""))
    if cfg.abits < FLOAT_BITS:
        parts.append("KV cache only" if cfg.only_quant_kv else f"{cfg.bit_mode} activation bits")
        parts.append("dynamic ranges" if cfg.a_dynamic else f"{cfg.metric} ranges")
    parts.append(f"reorder {cfg.reorder or 'none'}")
    return f"({', '.join(parts)})"


def given_flags(argv):
    return {tok[2:].split("=")[0] for tok in argv if tok.startswith("--")}


def idle_flags(args, given):
    """Flags set on the command line that would change nothing in this run: refused, never ignored."""
    rptq, weights, acts = runs_rptq(args), args.wbits < FLOAT_BITS, args.abits < FLOAT_BITS
    needed = {
        "nsamples": rptq, "seed": rptq, "calib_dataset": rptq,
        "w_quantizer": weights, "w_granularity": weights, "groupsize": weights and args.w_granularity == "group",
        "percdamp": weights and args.w_quantizer == "gptq", "act_order": weights and args.w_quantizer == "gptq",
        "metric": acts and not args.a_dynamic, "only_quant_kv": acts, "a_dynamic": acts,
        "bit_mode": acts and not args.only_quant_kv, "grid": weights or acts,
        "ppl_datasets": args.eval_ppl, "num_fewshot": bool(args.tasks), "batch_size": bool(args.tasks),
        **{f"R{i}_clusters": rptq and str(i) in reorder_points(args) for i in range(1, 6)},
    }
    return [f"--{flag}" for flag, need in needed.items() if flag in given and not need]


def runs_rptq(args):
    """No --wbits/--abits below 16 and no --reorder: the float model, no calibration at all."""
    return args.wbits < FLOAT_BITS or args.abits < FLOAT_BITS or args.reorder is not None


def reorder_points(args):
    return "12345" if args.reorder is None else args.reorder


def check_args(args, given=frozenset()):
    """Reject bad values with one line before anything slow runs."""
    for flag in ("wbits", "abits"):
        if not 1 <= getattr(args, flag) <= 16:
            raise UsageError(f"--{flag} must be between 1 and 16 (16 = floating point), got {getattr(args, flag)}")
    for i in range(1, 6):
        if getattr(args, f"R{i}_clusters") < 1:
            raise UsageError(f"--R{i}_clusters must be at least 1, got {getattr(args, f'R{i}_clusters')}")
    if args.reorder is not None and not re.fullmatch(r"(?!.*(.).*\1)[1-5]*", args.reorder):
        raise UsageError(f"--reorder takes distinct digits 1-5 such as 12345 or 13, got '{args.reorder}'")
    for flag in ("nsamples", "seqlen", "batch_size", "groupsize"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    if args.percdamp < 0:
        raise UsageError("--percdamp must not be negative")
    unknown = set(ppl_sets(args)) - set(datautils.EVAL_SETS)
    if unknown:
        raise UsageError(f"--ppl_datasets: unknown {', '.join(sorted(unknown))} (choose from "
                         f"{', '.join(datautils.EVAL_SETS)})")
    if not (args.eval_ppl or args.tasks):
        raise UsageError("nothing to evaluate: pass --eval_ppl and/or --tasks")
    idle = idle_flags(args, given)
    if idle:
        run = f"--wbits {args.wbits} --abits {args.abits}" + (f" --reorder '{args.reorder}'" if args.reorder
                                                              is not None else "")
        raise UsageError(f"{', '.join(idle)} would change nothing in this run ({run}"
                         f"{', no --tasks' if {'--num_fewshot', '--batch_size'} & set(idle) else ''}"
                         f"{', no --eval_ppl' if '--ppl_datasets' in idle else ''}): drop it or set what it applies to")
    if args.tasks:
        check_task_sources(args)


def task_names(args):
    return list(dict.fromkeys(t for t in args.tasks.split(",") if t))


def check_task_sources(args):
    """Tasks whose files are in the data folder run offline from them; any other needs the hub or its cache."""
    names = task_names(args)
    if not names:
        raise UsageError("--tasks: no task names given")
    if args.num_fewshot < 0:
        raise UsageError("--num_fewshot must not be negative")
    data_dir = datautils.resolve_data_dir(args.data_dir)
    local = local_tasks(names, data_dir)
    if local and args.num_fewshot:
        raise UsageError(f"--num_fewshot {args.num_fewshot}: the local files of {', '.join(local)} hold only the "
                         "evaluated split, not the training split the stock tasks draw examples from; use 0")
    hub = [name for name in names if name not in local]
    if hub and not datautils.hub_offline() and not datautils.hub_reachable():
        where = f"{data_dir} has no files for {'them' if len(hub) > 1 else 'it'}" if data_dir else \
            "no data folder is given"
        raise UsageError(f"--tasks {','.join(hub)}: the Hugging Face hub cannot be reached and {where}; "
                         f"{', '.join(LOCAL_TASKS)} run offline from --data_dir (or RPTQ_DATA_DIR) laid out like "
                         "shared/offline-data; HF_DATASETS_OFFLINE=1 uses the datasets cache instead")


def ppl_sets(args):
    return [s for s in args.ppl_datasets.split(",") if s]


def pick_device(device=None, dtype=None):
    """(device, torch dtype) from the --device and --dtype values, refused with one line if unusable."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device '{device}' is not a torch device (use cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for but CUDA is not available here; use --device cpu")
        if (parsed.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    dtype = dtype or ("float16" if parsed.type == "cuda" else "float32")
    return device, getattr(torch, dtype)


def check_positions(model, name, seqlen):
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and seqlen > max_positions:
        raise UsageError(f"--seqlen {seqlen} is longer than {name}'s {max_positions} positions")


def output_file(args, label, settings):
    """A .json path as given, or FOLDER/MODEL_LABEL_HASH.json where the hash covers every setting that changes
    the figures, so that runs differing in clusters, grid, seed, ... never overwrite each other."""
    path = Path(args.output_path)
    if path.suffix == ".json":
        return path
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return path / f"{Path(args.model.rstrip('/')).name}_{label}_{digest}.json"


def run(args, given=frozenset()):
    check_args(args, given)
    device, dtype = pick_device(args.device, args.dtype)
    data_dir = datautils.resolve_data_dir(args.data_dir)
    run_rptq = runs_rptq(args)
    datautils.check_sources(ppl_sets(args) if args.eval_ppl else (), args.calib_dataset if run_rptq else None,
                            data_dir)

    from models import load_model, weights_source
    from rptq.evaluate import perplexity, zero_shot
    from rptq.pipeline import RPTQConfig, check_clusters, quantize_model
    from rptq.results import format_table, versions, write_json_atomic
    from rptq.tasks import plan_tasks

    # unknown task names and unreadable task files fail before the model loads
    task_plan = plan_tasks(task_names(args), data_dir) if args.tasks else None

    cfg = RPTQConfig(wbits=args.wbits, abits=args.abits, reorder=reorder_points(args),
                     clusters={f"R{i}": getattr(args, f"R{i}_clusters") for i in range(1, 6)},
                     metric=args.metric, w_quantizer=args.w_quantizer, percdamp=args.percdamp,
                     w_granularity=args.w_granularity, groupsize=args.groupsize, act_order=args.act_order,
                     only_quant_kv=args.only_quant_kv, a_dynamic=args.a_dynamic, grid=args.grid,
                     bit_mode=args.bit_mode, device=device)
    dtype_name = str(dtype).split(".")[-1]
    label = cfg.label if run_rptq else f"FP-{dtype_name}"

    t0 = time.perf_counter()
    model, tokenizer, adapter = load_model(args.model, dtype)
    check_positions(model, args.model, args.seqlen)
    if run_rptq:
        check_clusters(model, adapter, cfg)
    settings = {**vars(args), "device": device, "dtype": dtype_name}
    quantization = cfg.describe() if run_rptq else None
    calibration = {k: settings[k] for k in ("calib_dataset", "nsamples", "seed")} if run_rptq else {}
    out = output_file(args, label, {"quantization": quantization, "dtype": dtype_name, "seqlen": args.seqlen,
                                    "limit": args.limit, **calibration})
    record = {"model": args.model, "weights": weights_source(args.model), "family": adapter.family, "label": label,
              "status": "running", "settings": settings, "quantization": quantization, "versions": versions(),
              "timings_s": {"load": time.perf_counter() - t0}, "ppl": {}, "zero_shot": None}
    ds_kwargs = {"data_dir": data_dir, "seqlen": args.seqlen, "cache_dir": args.cache_dir}

    if run_rptq:
        if args.wbits >= FLOAT_BITS and args.abits >= FLOAT_BITS:
            print(f"{label}: calibrating, clustering and reordering R{','.join(cfg.reorder) or ' none'} "
                  "with every quantizer off", file=sys.stderr)
        t = time.perf_counter()
        calib = datautils.get_calib_windows(args.calib_dataset, tokenizer, args.nsamples, args.seed, **ds_kwargs)
        record["timings_s"]["calibration_data"] = time.perf_counter() - t
        report = quantize_model(model, adapter, calib, cfg)
        record["timings_s"].update(report["timings_s"])
        record["clusters_per_layer"] = report["clusters_per_layer"]
        write_json_atomic(out, record)
    model.to(device)

    rows = []
    if args.eval_ppl:
        for name in ppl_sets(args):
            windows = datautils.get_eval_windows(name, tokenizer, **ds_kwargs)
            name_out = datautils.eval_label(name, data_dir)
            res = perplexity(model, windows, device, args.limit, desc=f"{name_out} ppl")
            record["ppl"][name_out] = res
            record["timings_s"][f"eval_{name_out}"] = res["seconds"]
            write_json_atomic(out, record)
            rows.append([name_out, f"{res['ppl']:.2f}", f"{res['windows']}/{res['windows_total']}",
                         f"{res['seconds_per_window']:.2f}"])
    task_rows = []
    if args.tasks:
        zs = zero_shot(model, tokenizer, task_plan, args.num_fewshot, args.limit, args.batch_size, device)
        record["zero_shot"] = zs
        record["timings_s"]["zero_shot"] = zs["seconds"]
        for task in zs["results"].values():
            percents = [f"{100 * task[m]:.2f}" if m in task else "" for m in ("acc", "acc_norm")]
            task_rows.append([task["label"], *percents, f"{task['perplexity']:.2f}" if "perplexity" in task else "",
                              f"{task['examples']}/{task['examples_total']}"])
    record["status"] = "complete"
    write_json_atomic(out, record)
    print(f"\n{args.model}  {label}  {describe_mode(cfg) if run_rptq else ''}")
    if rows:
        print(format_table(["eval", "value", "windows", "s/window"], rows))
    if task_rows:
        print(format_table(["task", "acc %", "acc_norm %", "ppl", "examples"], task_rows))
        print(f"lm-evaluation-harness {zs['harness_version']}, {zs['num_fewshot']}-shot, batch size {zs['batch_size']}")
    print(f"results: {out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from models import ModelError
    from quantize import GPTQError
    from rptq.cluster import ClusterError
    from rptq.evaluate import TaskError

    try:
        return run(args, given_flags(argv))
    except (UsageError, ModelError, datautils.DataError, ClusterError, TaskError, GPTQError) as e:
        print(f"main.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("main.py: interrupted; results finished so far are in the JSON file", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
