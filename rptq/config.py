"""The run configuration: main.py's flags, their checks, and the RPTQ settings they become.

One home for the constants too, so that main.py, the pipeline and the scripts all read the same ones.
"""
import argparse
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import datautils
from models import model_names
from quantize import GRANULARITIES, GRIDS

from .cli import OneLineParser, UsageError

FLOAT_BITS = 16  # bits >= 16 mean floating point: no quantizer
POINTS = ("R1", "R2", "R3", "R4", "R5")
DEFAULT_CLUSTERS = {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}
PROB_BITS_REFERENCE = 8  # the reference's fixed softmax grid
NORM_BITS_REFERENCE = 8  # the reference keeps LayerNorm outputs at max(8, abits)
METRICS = ("minmax", "ema_minmax")
BIT_MODES = ("reference", "strict")
W_QUANTIZERS = ("gptq", "normal")
# Activation groups per reorder point: K-means clusters after a reorder (RPTQ), or the controls: as many contiguous
# fixed groups in the original order (per-vector ranges), one group per channel (static per-channel ranges), or
# dynamic ranges per token (as OmniQuant and QuaRot).
A_GRANULARITIES = ("cluster", "fixed", "channel", "token")
DTYPES = ("float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "sequential")  # accelerate's; auto is balanced, as in transformers
# --max_memory units; B is bytes in any case (accelerate reads a lowercase b as bits), a bare number is bytes
SIZE_UNITS = {"": 1, "b": 1, **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgt")},
              **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")}}
# A mode flag that cannot hold in a run is a contradiction and refused; any other idle flag only gets a note,
# so that shell sweeps can pass the same flags to every setting, as the authors' scripts do.
CONTRADICTIONS = ("only_quant_kv", "a_dynamic")
# What a saved model fixed when it was quantized (the quantization and calibration flags, --seqlen aside, which
# also sets the evaluation windows): given with a saved folder, they are refused rather than silently ignored.
SAVED_FLAGS = ("wbits", "abits", "w_quantizer", "percdamp", "w_granularity", "groupsize", "act_order", "metric",
               *(f"R{i}_clusters" for i in range(1, 6)), "reorder", "only_quant_kv", "a_dynamic", "a_granularity",
               "grid", "bit_mode", "nsamples", "seed", "calib_dataset")


@dataclass
class RPTQConfig:
    wbits: int = 4
    abits: int = 4
    clusters: dict = field(default_factory=lambda: dict(DEFAULT_CLUSTERS))
    reorder: str = "12345"            # which of R1..R5 are clustered; the others get one cluster
    metric: str = "ema_minmax"
    w_quantizer: str = "gptq"         # or "normal": round-to-nearest
    w_granularity: str = "cluster"    # weight scale groups: input clusters, "channel" (per row) or "group"
    groupsize: int = 128              # columns per group with w_granularity="group"
    act_order: bool = False           # GPTQ: columns by decreasing Hessian diagonal
    percdamp: float = 0.01
    only_quant_kv: bool = False       # quantize weights and K/V only (the W4A4KV rows)
    a_dynamic: bool = False
    a_granularity: str = "cluster"    # activation groups: "cluster", "fixed", "channel" or "token"
    grid: str = "paper"               # or "full": the 2^k - 1 grid
    bit_mode: str = "reference"       # or "strict": norm outputs and probabilities at abits too
    device: str = "cpu"

    @classmethod
    def from_description(cls, description):
        """The settings back from describe()'s output (a saved model's), for its label and mode line."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in description.items() if k in names and v is not None})

    @property
    def label(self):
        return f"W{self.wbits}A{self.abits}" + ("KV" if self.only_quant_kv else "")

    def site_bits(self, kind):
        """Bits of an activation site of this kind, None when it stays in floating point (section 6)."""
        if self.abits >= FLOAT_BITS or (self.only_quant_kv and kind != "kv"):
            return None
        if kind == "norm" and self.bit_mode == "reference":
            return max(NORM_BITS_REFERENCE, self.abits)
        return self.abits

    @property
    def prob_bits(self):
        if self.abits >= FLOAT_BITS or self.only_quant_kv:
            return None
        return PROB_BITS_REFERENCE if self.bit_mode == "reference" else self.abits

    def point_clusters(self, name):
        """Clusters (or fixed groups) per head at a reorder point; a point left out of --reorder has one."""
        return self.clusters[name] if name[1] in self.reorder else 1

    @property
    def act_ranges(self):
        """The activation quantizers' ranges: static (calibrated), dynamic per group, or dynamic per token."""
        if self.a_granularity == "token":
            return "token"
        return "dynamic" if self.a_dynamic else "static"

    def describe(self):
        """Every quantizer setting that produced a number, for its label."""
        return {"label": self.label, "wbits": self.wbits, "abits": self.abits, "w_quantizer": self.w_quantizer,
                "w_granularity": self.w_granularity,
                "groupsize": self.groupsize if self.w_granularity == "group" else None,
                "act_order": self.act_order, "percdamp": self.percdamp, "metric": self.metric, "grid": self.grid,
                "bit_mode": self.bit_mode,
                "a_dynamic": self.a_dynamic, "a_granularity": self.a_granularity,
                "only_quant_kv": self.only_quant_kv, "reorder": self.reorder,
                "clusters": {p: self.point_clusters(p) for p in POINTS},
                "norm_bits": self.site_bits("norm"), "prob_bits": self.prob_bits}

    def mode_line(self):
        """What produced the numbers, in a few words (the JSON has every setting)."""
        parts = [f"{self.grid} grid"]
        if self.wbits < FLOAT_BITS:
            parts.append(f"{self.w_quantizer} weights per {self.w_granularity}" + (" act-order" if self.act_order
                                                                                  else ""))
        if self.abits < FLOAT_BITS:
            parts.append("KV cache only" if self.only_quant_kv else f"{self.bit_mode} activation bits")
            parts.append({"token": "dynamic ranges per token", "dynamic": "dynamic ranges",
                          "static": f"{self.metric} ranges"}[self.act_ranges])
            if self.a_granularity in ("fixed", "channel"):
                parts.append(f"{self.a_granularity} activation groups")
        parts.append(f"reorder {self.reorder or 'none'}")
        return f"({', '.join(parts)})"


def build_parser(prog="main.py", description=None):
    """main.py's flags, named as the reference's so that its scripts run here."""
    p = OneLineParser(prog=prog, description=description, allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=f"one of {', '.join(model_names())}, a local model folder, or a folder written by "
                                 "--save (runs with no calibration)")
    g = p.add_argument_group("quantization")
    g.add_argument("--wbits", type=int, default=16, help="weight bits (16: float weights)")
    g.add_argument("--abits", type=int, default=16, help="activation bits (16: float activations)")
    g.add_argument("--w_quantizer", choices=W_QUANTIZERS, default="gptq", help="gptq, or normal = round-to-nearest")
    g.add_argument("--percdamp", type=float, default=0.01, help="GPTQ damping, fraction of mean diag(H)")
    g.add_argument("--w_granularity", choices=GRANULARITIES, default="cluster",
                   help="weight scales per output row and per: input cluster (RPTQ), nothing else (channel), or "
                        "--groupsize columns (group)")
    g.add_argument("--groupsize", type=int, default=128, help="columns per weight group with --w_granularity group")
    g.add_argument("--act_order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian diagonal")
    g.add_argument("--metric", choices=METRICS, default="ema_minmax",
                   help="activation range estimator over calibration windows")
    for i, k in enumerate(DEFAULT_CLUSTERS.values(), 1):
        g.add_argument(f"--R{i}_clusters", type=int, default=k,
                       help=f"clusters at R{i}" + (" (per attention head; Llama: per K/V head)" if i in (2, 3) else ""))
    g.add_argument("--reorder", default=None,
                   help="which of R1..R5 are clustered and reordered, e.g. 12345 or 145 (default 12345; with "
                        "--wbits 16 --abits 16, giving it runs the pipeline with every quantizer off)")
    g.add_argument("--only_quant_kv", action="store_true", help="quantize weights and the KV cache only (WxAyKV)")
    g.add_argument("--a_dynamic", action="store_true",
                   help="activation ranges from each forward, not calibration (so decoding token by token with "
                        "the KV cache no longer equals a full forward)")
    g.add_argument("--a_granularity", choices=A_GRANULARITIES, default="cluster",
                   help="activation groups at each reorder point: K-means clusters after a reorder (RPTQ); as many "
                        "contiguous groups in the original order, no reorder (fixed); one per channel (channel); or "
                        "dynamic per-token ranges (token). With fixed, channel and token, weight groups "
                        "(--w_granularity cluster) are the fixed groups")
    g.add_argument("--grid", choices=GRIDS, default="paper",
                   help="paper: scale = range / 2^k as the reference; full: range / (2^k - 1)")
    g.add_argument("--bit_mode", choices=BIT_MODES, default="reference",
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
                        "holding their files, the paper's six run offline from it")
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
    r.add_argument("--save", default=None, metavar="DIR",
                   help="after calibration, write the quantized model (packed weights, quantizer parameters, "
                        "tokenizer) into DIR, a new or empty folder; `main.py DIR` loads it")
    r.add_argument("--device_map", choices=DEVICE_MAPS, default=None,
                   help="evaluate with the model spread by accelerate over GPUs, CPU memory and --offload_folder, "
                        "each decoder layer whole on one device (balanced: even over the GPUs, auto: the same; "
                        "sequential: fill GPU 0 first); the model is then loaded lazily")
    r.add_argument("--max_memory", default=None,
                   help="budgets for --device_map, e.g. 0=70GiB,1=70GiB,cpu=200GiB (GPU indices and cpu; KB..TB or "
                        "KiB..TiB, B always bytes); default: what the devices have free")
    r.add_argument("--offload_folder", default=None,
                   help="load the model lazily (one decoder layer in memory at a time, read from the safetensors or "
                        ".bin shards), write each quantized layer to this folder, and let --device_map put layers "
                        "there; a fresh subfolder per run, removed at the end")
    return p


def given_flags(argv):
    """The flags named on a command line (--flag or --flag=value)."""
    return {tok[2:].split("=")[0] for tok in argv if tok.startswith("--")}


def runs_rptq(args):
    """No --wbits/--abits below 16 and no --reorder: the float model, no calibration at all."""
    return args.wbits < FLOAT_BITS or args.abits < FLOAT_BITS or args.reorder is not None


def reorder_points(args):
    return "12345" if args.reorder is None else args.reorder


def ppl_sets(args):
    return [s for s in args.ppl_datasets.split(",") if s]


def task_names(args):
    return list(dict.fromkeys(t for t in args.tasks.split(",") if t))


def idle_flags(args, given):
    """Flags set on the command line that would change nothing in this run."""
    rptq, weights, acts = runs_rptq(args), args.wbits < FLOAT_BITS, args.abits < FLOAT_BITS
    needed = {
        "nsamples": rptq, "seed": rptq, "calib_dataset": rptq,
        "w_quantizer": weights, "w_granularity": weights, "groupsize": weights and args.w_granularity == "group",
        "percdamp": weights and args.w_quantizer == "gptq", "act_order": weights and args.w_quantizer == "gptq",
        "metric": acts and not args.a_dynamic and args.a_granularity != "token", "only_quant_kv": acts,
        "a_dynamic": acts and args.a_granularity != "token", "a_granularity": rptq,
        "bit_mode": acts and not args.only_quant_kv, "grid": weights or acts,
        "ppl_datasets": args.eval_ppl, "num_fewshot": bool(args.tasks), "batch_size": bool(args.tasks),
        "max_memory": args.device_map is not None, "offload_folder": rptq or args.device_map is not None,
        **{f"R{i}_clusters": rptq and str(i) in reorder_points(args) for i in range(1, 6)},
    }
    return [f"--{flag}" for flag, need in needed.items() if flag in given and not need]


# what an idle flag would need, for its note
IDLE_BECAUSE = {"--num_fewshot": "no --tasks", "--batch_size": "no --tasks", "--ppl_datasets": "no --eval_ppl",
                "--max_memory": "no --device_map", "--offload_folder": "no --device_map"}


def run_description(args):
    return f"--wbits {args.wbits} --abits {args.abits}" + (f" --reorder '{args.reorder}'" if args.reorder
                                                          is not None else "")


def check_saved_model_args(args, given, label):
    """A saved model runs as it was saved: no flag may quantize it again, and it is saved already."""
    fixed = [f"--{flag}" for flag in SAVED_FLAGS if flag in given]
    if fixed:
        raise UsageError(f"{args.model} is a saved {label} model: {', '.join(fixed)} would quantize it again; drop "
                         f"{'it' if len(fixed) == 1 else 'them'} (the saved settings apply)")
    if args.save is not None:
        raise UsageError(f"--save: {args.model} is a saved model already")


def check_args(args, given=frozenset(), saved_label=None):
    """Reject bad values with one line before anything slow runs; return notes on flags that change nothing.
    saved_label: the label of the saved model that args.model names, if it names one."""
    if saved_label is not None:
        check_saved_model_args(args, given, saved_label)
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
    if args.num_fewshot < 0:
        raise UsageError("--num_fewshot must not be negative")
    unknown = set(ppl_sets(args)) - set(datautils.EVAL_SETS)
    if unknown:
        raise UsageError(f"--ppl_datasets: unknown {', '.join(sorted(unknown))} (choose from "
                         f"{', '.join(datautils.EVAL_SETS)})")
    if not (args.eval_ppl or args.tasks or args.save):
        raise UsageError("nothing to evaluate: pass --eval_ppl and/or --tasks")
    if args.save is not None and not runs_rptq(args):
        raise UsageError(f"--save writes a quantized model, but this run quantizes nothing ({run_description(args)}); "
                         "set --wbits/--abits below 16 or --reorder")
    if args.save is not None and args.offload_folder is not None:
        raise UsageError("--save needs the quantized layers in memory, but --offload_folder writes them to disk and "
                         "frees them: drop --offload_folder (a saved model, packed, loads whole; give it --device_map "
                         "later)")
    if args.tasks and not task_names(args):
        raise UsageError("--tasks: no task names given")
    max_memory(args)
    if args.offload_folder is not None and Path(args.offload_folder).is_file():
        raise UsageError(f"--offload_folder {args.offload_folder} is a file, not a folder")
    idle = idle_flags(args, given)
    contradictions = [f for f in idle if f[2:] in CONTRADICTIONS]
    if contradictions:
        raise UsageError(f"{', '.join(contradictions)} needs quantized activations, but this run has none "
                         f"({run_description(args)}): drop it or set --abits below 16")
    return [f"{flag} changes nothing in this run ({run_description(args)}"
            f"{', ' + IDLE_BECAUSE[flag] if flag in IDLE_BECAUSE else ''}): ignored" for flag in idle]


def max_memory(args):
    """--max_memory as accelerate takes it: {GPU index or "cpu": bytes}; None when not given; UsageError if bad."""
    if args.max_memory is None:
        return None
    budgets = {}
    for item in args.max_memory.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not (sep and key and value):
            raise UsageError(f"--max_memory: '{item}' is not DEVICE=SIZE (e.g. 0=70GiB,1=70GiB,cpu=200GiB)")
        device = _budget_device(key)
        if device in budgets:
            raise UsageError(f"--max_memory: {key} is given twice")
        budgets[device] = _budget_bytes(key, value)
    return budgets


def _budget_device(key):
    if key.lower() == "cpu":
        return "cpu"
    index = re.fullmatch(r"(?:cuda:)?(\d+)", key.lower())
    if index is None:
        raise UsageError(f"--max_memory: unknown device '{key}' (GPU indices 0, 1, ... and cpu; disk takes no "
                         "budget, it holds whatever does not fit)")
    return int(index.group(1))


def _budget_bytes(key, value):
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b)?", value.lower())
    if size is None or (size.group(2) or "") not in SIZE_UNITS or (not size.group(2) and "." in value):
        raise UsageError(f"--max_memory: '{value}' for {key} is not a size such as 70GiB, 500MB or a number of bytes")
    budget = int(float(size.group(1)) * SIZE_UNITS[size.group(2) or ""])
    if budget <= 0:
        raise UsageError(f"--max_memory: {key} gets no memory ({value}); leave the device out instead")
    return budget


def rptq_config(args, device):
    """The pipeline's settings from main.py's arguments."""
    return RPTQConfig(wbits=args.wbits, abits=args.abits, reorder=reorder_points(args),
                      clusters={f"R{i}": getattr(args, f"R{i}_clusters") for i in range(1, 6)},
                      metric=args.metric, w_quantizer=args.w_quantizer, percdamp=args.percdamp,
                      w_granularity=args.w_granularity, groupsize=args.groupsize, act_order=args.act_order,
                      only_quant_kv=args.only_quant_kv, a_dynamic=args.a_dynamic, a_granularity=args.a_granularity,
                      grid=args.grid,
                      bit_mode=args.bit_mode, device=device)


def run_data(args):
    """Which data the run reads (text files and task files by path inside the data folder and sha256, or hub
    sets), for its record and for a resumed sweep to compare; DataError for a missing local file."""
    from .tasks import describe_task_data

    data_dir = datautils.resolve_data_dir(args.data_dir)
    text = datautils.describe_sources(ppl_sets(args) if args.eval_ppl else (),
                                      args.calib_dataset if runs_rptq(args) else None, data_dir)
    return text + (describe_task_data(task_names(args), data_dir) if args.tasks else [])


def data_difference(before, now):
    """The first entry that differs between two run_data() lists, in a few words."""
    def keyed(entries):
        return {(e.get("set") or e.get("task"), e.get("purpose"), e.get("file")): e for e in entries or []}

    def short(value):
        return value[:12] if isinstance(value, str) and len(value) == 64 else value

    old, new = keyed(before), keyed(now)
    for key in sorted(old.keys() | new.keys(), key=str):
        a, b = old.get(key), new.get(key)
        if a != b:
            what = " ".join(str(k) for k in key if k)
            if a is None or b is None:
                return f"{what}: {'absent' if a is None else 'used'} there, {'absent' if b is None else 'used'} now"
            changed = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
            return "; ".join(f"{what}: {k} {short(a.get(k))} there, {short(b.get(k))} now" for k in sorted(changed))
    return "recorded differently"
