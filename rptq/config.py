"""The settings of a run, each declared once: a field of QuantConfig (what RPTQ does to the model) or RunConfig (the
whole run: model, calibration, evaluation, runtime and files), whose metadata is its Option: help, checks, choices,
whether it changes the figures (the label, describe(), the result file's hash), whether a saved model keeps it, and
when it changes nothing. The command line (rptq/cli.py), describe(), the label, the checks and the idle notes are
derived from these declarations, so a new option is one field here plus its use.

Nothing heavy is imported here: a command line is checked before torch loads. Choices held by registries of lower
layers (granularities, range metrics, weight quantizers, data sets) are read from them when first needed.
"""
import dataclasses
import importlib
import re
from dataclasses import dataclass, field, fields
from typing import Callable

from .base import Message, RPTQError, cache_root, check_file, check_folder

FLOAT_BITS = 16  # bits >= 16 mean floating point: no quantizer
POINTS = ("R1", "R2", "R3", "R4", "R5")
ALL_POINTS = "12345"
DEFAULT_CLUSTERS = {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}
PROB_BITS_REFERENCE = 8  # the reference's fixed softmax grid
NORM_BITS_REFERENCE = 8  # the reference keeps LayerNorm outputs at max(8, abits)
BIT_MODES = ("reference", "strict")
DTYPES = ("float32", "float16", "bfloat16")
DEVICE_MAPS = ("auto", "balanced", "sequential")  # accelerate's; auto is balanced, as in transformers
# --max_memory units; B is bytes in any case (accelerate reads a lowercase b as bits), a bare number is bytes
SIZE_UNITS = {"": 1, "b": 1, **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgt")},
              **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")}}
GROUPS = ("quantization", "calibration", "evaluation", "runtime and files")


class ConfigError(RPTQError):
    """A setting whose value cannot be used, or settings that contradict each other."""


class Choices:
    """The names a registry (or constant) of a lower layer holds, imported when first asked for."""

    def __init__(self, module, attribute):
        self.module, self.attribute = module, attribute

    def names(self):
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name):
        return name in self.names()

    def __len__(self):
        return len(self.names())


@dataclass(frozen=True)
class Option:
    help: str
    group: str
    choices: tuple | Choices | None = None
    check: Callable | None = None      # value -> None, or what is wrong with it ("must be at least 1")
    figures: bool = False              # changes the numbers: in describe() or the result file's hash
    saved: bool = False                # fixed when a model is quantized: refused with a saved model
    needed: Callable | None = None     # config -> whether it changes anything in the run (None: always)
    idle_because: str = ""             # what it would need, for its note
    contradiction: bool = False        # changing nothing contradicts the run: refused, not a note
    record: Callable | None = None     # describe()'s value (config -> value); None: the value as it is
    recorded: bool = True              # in describe() under its own name
    metavar: str | None = None
    before: object = None              # the value that records made before the setting existed were made with
    path: str | None = None            # a place the run writes: "file", "folder", or "output" (a .json file or a
    #                                    folder), checked before anything slow


def option(default, help, group, **kw):
    return field(default=default, metadata={"option": Option(help, group, **kw)})


def option_of(f):
    return f.metadata["option"]


def options(cls):
    """(name, Option, default) of each declared setting of a config class, in declaration order."""
    return [(f.name, option_of(f), f.default) for f in fields(cls) if "option" in f.metadata]


# ---- value checks ----

def between(low, high, note=""):
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}{note}"


def at_least(low):
    return lambda v: None if v is None or v >= low else f"must be at least {low}"


def not_negative(v):
    return None if v >= 0 else "must not be negative"


def point_digits(v):
    ok = v is None or re.fullmatch(r"(?!.*(.).*\1)[1-5]*", v)
    return None if ok else "takes distinct digits 1-5 such as 12345 or 13"


def comma_list(text):
    return list(dict.fromkeys(s for s in text.split(",") if s))


def known_sets(text):
    unknown = [s for s in comma_list(text) if s not in Choices("datautils", "EVAL_SETS")]
    return f"unknown {', '.join(unknown)} (choose from {', '.join(Choices('datautils', 'EVAL_SETS'))})" if unknown \
        else None


def memory_budgets(text):
    """--max_memory as accelerate takes it: {GPU index or "cpu": bytes}; None for None; ConfigError if bad."""
    if text is None:
        return None
    budgets = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not (sep and key and value):
            raise _budget_error("'{item}' is not DEVICE=SIZE (e.g. 0=70GiB,1=70GiB,cpu=200GiB)", item=item)
        device = _budget_device(key)
        if device in budgets:
            raise _budget_error("{key} is given twice", key=key)
        budgets[device] = _budget_bytes(key, value)
    return budgets


def _budget_error(text, **data):
    return ConfigError("{max_memory}: " + text, option="max_memory", **data)


def _budget_device(key):
    if key.lower() == "cpu":
        return "cpu"
    index = re.fullmatch(r"(?:cuda:)?(\d+)", key.lower())
    if index is None:
        raise _budget_error("unknown device '{key}' (GPU indices 0, 1, ... and cpu; disk takes no budget, it holds "
                            "whatever does not fit)", key=key)
    return int(index.group(1))


def _budget_bytes(key, value):
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?i?b)?", value.lower())
    if size is None or (size.group(2) or "") not in SIZE_UNITS or (not size.group(2) and "." in value):
        raise _budget_error("'{value}' for {key} is not a size such as 70GiB, 500MB or a number of bytes",
                            value=value, key=key)
    budget = int(float(size.group(1)) * SIZE_UNITS[size.group(2) or ""])
    if budget <= 0:
        raise _budget_error("{key} gets no memory ({value}); leave the device out instead", key=key, value=value)
    return budget


def _budgets_check(text):
    memory_budgets(text)  # raises with its own message


# ---- when an option changes something ----

def _weights(c):
    return c.wbits < FLOAT_BITS


def _acts(c):
    return c.abits < FLOAT_BITS


def _hessian(c):
    from quantize.gptq import WEIGHT_QUANTIZERS

    return _weights(c) and WEIGHT_QUANTIZERS[c.w_quantizer].uses_hessian


def _static_acts(c):
    return _acts(c) and c.act_ranges == "static"


def _clustered(c):
    """Whether K-means clusters any point (the controls group channels without it)."""
    return c.quantizes and c.a_granularity == "cluster" and bool(c.points)


def _granularity(c):
    from .granularity import GRANULARITIES

    return GRANULARITIES[c.a_granularity]


Q, C, E, R = GROUPS


@dataclass(kw_only=True)
class QuantConfig:
    """What RPTQ does to a model: everything a saved model keeps and its label names. The defaults are the reference's
    method at float bits (W16A16: the reorder alone); QuantConfig(wbits=4, abits=4) is RPTQ W4A4."""
    wbits: int = option(16, "weight bits (16: float weights)", Q, check=between(1, 16, " (16 = floating point)"),
                        figures=True, saved=True)
    abits: int = option(16, "activation bits (16: float activations)", Q,
                        check=between(1, 16, " (16 = floating point)"), figures=True, saved=True)
    w_quantizer: str = option("gptq", "weight quantizer: gptq, or normal = round-to-nearest", Q,
                              choices=Choices("quantize.gptq", "WEIGHT_QUANTIZERS"), figures=True, saved=True,
                              needed=_weights)
    percdamp: float = option(0.01, "GPTQ damping, fraction of mean diag(H)", Q, check=not_negative, figures=True,
                             saved=True, needed=_hessian)
    w_granularity: str = option("cluster", "weight scales per output row and per: input cluster (RPTQ), nothing else "
                                "(channel), or {groupsize} columns (group)", Q,
                                choices=Choices("quantize.gptq", "WEIGHT_GRANULARITIES"), figures=True, saved=True,
                                needed=_weights)
    groupsize: int = option(128, "columns per weight group with {w_granularity} group", Q, check=at_least(1),
                            figures=True, saved=True, needed=lambda c: _weights(c) and c.w_granularity == "group",
                            record=lambda c: c.groupsize if c.w_granularity == "group" else None)
    act_order: bool = option(False, "GPTQ: quantize columns by decreasing Hessian diagonal", Q, figures=True,
                             saved=True, needed=_hessian)
    metric: str = option("ema_minmax", "activation range estimator over calibration windows", Q,
                         choices=Choices("quantize.observer", "RANGE_METRICS"), figures=True, saved=True,
                         needed=_static_acts)
    R1_clusters: int = option(DEFAULT_CLUSTERS["R1"], "clusters at R1", Q, check=at_least(1), figures=True,
                              saved=True, recorded=False, needed=lambda c: c.quantizes and "1" in c.points)
    R2_clusters: int = option(DEFAULT_CLUSTERS["R2"], "clusters at R2 (per attention head; Llama: per K/V head)", Q,
                              check=at_least(1), figures=True, saved=True, recorded=False,
                              needed=lambda c: c.quantizes and "2" in c.points)
    R3_clusters: int = option(DEFAULT_CLUSTERS["R3"], "clusters at R3 (per attention head; Llama: per K/V head)", Q,
                              check=at_least(1), figures=True, saved=True, recorded=False,
                              needed=lambda c: c.quantizes and "3" in c.points)
    R4_clusters: int = option(DEFAULT_CLUSTERS["R4"], "clusters at R4", Q, check=at_least(1), figures=True,
                              saved=True, recorded=False, needed=lambda c: c.quantizes and "4" in c.points)
    R5_clusters: int = option(DEFAULT_CLUSTERS["R5"], "clusters at R5", Q, check=at_least(1), figures=True,
                              saved=True, recorded=False, needed=lambda c: c.quantizes and "5" in c.points)
    reorder: str | None = option(None, "which of R1..R5 are clustered and reordered, e.g. 12345 or 145 (unset: "
                                 "12345; with {wbits} and {abits} 16, setting it runs the pipeline with every "
                                 "quantizer off); a point left out gets one cluster", Q, check=point_digits,
                                 figures=True, saved=True, record=lambda c: c.points)
    only_quant_kv: bool = option(False, "quantize weights and the KV cache only (WxAyKV)", Q, figures=True,
                                 saved=True, needed=_acts, contradiction=True)
    a_dynamic: bool = option(False, "activation ranges from each forward, not calibration (so decoding token by "
                             "token with the KV cache no longer equals a full forward)", Q, figures=True, saved=True,
                             needed=lambda c: _acts(c) and _granularity(c).ranges == "static", contradiction=True)
    a_granularity: str = option("cluster", "activation groups at each reorder point: K-means clusters after a reorder "
                                "(cluster: RPTQ), or the controls: as many contiguous groups in the original order "
                                "(fixed), one per channel (channel), dynamic per-token ranges (token); with the "
                                "controls, weight groups ({w_granularity} cluster) are the fixed groups", Q,
                                choices=Choices("rptq.granularity", "GRANULARITIES"), figures=True, saved=True,
                                needed=lambda c: c.quantizes)
    grid: str = option("paper", "paper: scale = range / 2^k as the reference; full: range / (2^k - 1)", Q,
                       choices=Choices("quantize.quantizer", "GRIDS"), figures=True, saved=True,
                       needed=lambda c: _weights(c) or _acts(c))
    bit_mode: str = option("reference", "reference: LayerNorm outputs at max(8, abits), softmax on an 8-bit grid; "
                           "strict: every quantized activation at abits", Q, choices=BIT_MODES, figures=True,
                           saved=True, needed=lambda c: _acts(c) and not c.only_quant_kv)
    cluster_order: str | None = option(None, "order of the channels inside a cluster, in which GPTQ walks its weight "
                                       "columns: reference, as the authors' code (torch.argsort of the K-means "
                                       "labels, not stable: the same labels give the same order on one torch build), "
                                       "or stable (ascending channel index); unset: reference with {bit_mode} "
                                       "reference, stable with strict", Q, choices=("reference", "stable"),
                                       figures=True, saved=True, needed=_clustered, record=lambda c: c.order,
                                       before="stable")

    @classmethod
    def from_description(cls, description):
        """The settings back from describe()'s output (a saved model's)."""
        values = {name: description[name] for name, opt, _ in options(QuantConfig)
                  if opt.recorded and description.get(name) is not None}
        values.update({f"{p}_clusters": k for p, k in description.get("clusters", {}).items()})
        return cls(**values)

    def quant(self):
        """The QuantConfig part of this config."""
        return QuantConfig(**{name: getattr(self, name) for name, _, _ in options(QuantConfig)})

    @property
    def points(self):
        """The reorder points clustered, as digits."""
        return ALL_POINTS if self.reorder is None else self.reorder

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
        """Clusters (or fixed groups) per head at a reorder point; a point left out of reorder has one."""
        return getattr(self, f"{name}_clusters") if name[1] in self.points else 1

    @property
    def order(self):
        """The order of the channels inside a cluster (see cluster_order)."""
        return self.cluster_order or ("reference" if self.bit_mode == "reference" else "stable")

    @property
    def act_ranges(self):
        """The activation quantizers' ranges: "static" (calibrated), "dynamic" per group, or "token"."""
        ranges = _granularity(self).ranges
        return "dynamic" if ranges == "static" and self.a_dynamic else ranges

    def describe(self):
        """Every quantizer setting that produced a number, for its label and its record."""
        out = {"label": self.label}
        for name, opt, _ in options(QuantConfig):
            if opt.recorded:
                out[name] = opt.record(self) if opt.record else getattr(self, name)
        out.update(clusters={p: self.point_clusters(p) for p in POINTS}, norm_bits=self.site_bits("norm"),
                   prob_bits=self.prob_bits)
        return out

    def mode_line(self):
        """What produced the numbers, in a few words (the record has every setting)."""
        parts = [f"{self.grid} grid"]
        if self.wbits < FLOAT_BITS:
            parts.append(f"{self.w_quantizer} weights per {self.w_granularity}" + (" act-order" if self.act_order
                                                                                  else ""))
        if self.abits < FLOAT_BITS:
            parts.append("KV cache only" if self.only_quant_kv else f"{self.bit_mode} activation bits")
            parts.append({"token": "dynamic ranges per token", "dynamic": "dynamic ranges",
                          "static": f"{self.metric} ranges"}[self.act_ranges])
            parts += _granularity(self).mode_words
        parts.append(f"reorder {self.points or 'none'}" + (f" ({self.order} order)" if self.points else ""))
        return f"({', '.join(parts)})"


def _quantizes(c):
    return c.quantizes


@dataclass(kw_only=True)
class RunConfig(QuantConfig):
    """One run (python main.py MODEL ... is one RunConfig): the model, what RPTQ does to it (QuantConfig's fields),
    its calibration, what is evaluated and where files go. rptq.run(RunConfig(...)) runs it."""
    model: str = option(None, "a model name (a hub alias such as opt-1.3b, or a model shipped in a PyPI package "
                        "such as smollm2-135m), a local model folder, or a folder written by {save} (runs with no "
                        "calibration)", R)
    nsamples: int = option(128, "calibration windows", C, check=at_least(1), figures=True, saved=True,
                           needed=_quantizes)
    seed: int = option(2, "calibration sampling seed", C, figures=True, saved=True, needed=_quantizes)
    calib_dataset: str = option("mix", "calibration text: mix (nsamples split as evenly as possible over wikitext2, "
                                "ptb and c4) or one of those sets", C, choices=Choices("datautils", "CALIB_SETS"),
                                figures=True, saved=True, needed=_quantizes)
    seqlen: int = option(2048, "tokens per calibration and evaluation window", C, check=at_least(1), figures=True)
    eval_ppl: bool = option(False, "perplexity on {ppl_datasets}", E)
    ppl_datasets: str = option("wikitext2,ptb,c4", "comma list of perplexity sets", E, check=known_sets,
                               needed=lambda c: c.eval_ppl, idle_because="no {eval_ppl}")
    tasks: str = option("", "comma list of lm-evaluation-harness tasks, e.g. lambada_openai,piqa; with a data folder "
                        "holding their files, the paper's six run offline from it", E)
    num_fewshot: int = option(0, "few-shot examples per task prompt (the paper: 0; local tasks have no training "
                              "split)", E, check=not_negative, needed=lambda c: bool(c.tasks),
                              idle_because="no {tasks}")
    batch_size: int = option(1, "lm-evaluation-harness batch size (recorded: it moves the numbers slightly)", E,
                             check=at_least(1), needed=lambda c: bool(c.tasks), idle_because="no {tasks}")
    limit: int | None = option(None, "run only the first N perplexity windows / examples per task (the mean is over "
                               "those N)", E, check=at_least(1), figures=True, metavar="N")
    device: str | None = option(None, "cpu, cuda or cuda:N (unset: cuda if available, else cpu)", R)
    dtype: str | None = option(None, "model dtype (unset: float32 on cpu, float16 on cuda)", R, choices=DTYPES,
                               figures=True)
    data_dir: str | None = option(None, "local data folder laid out like shared/offline-data (unset: "
                                  "$RPTQ_DATA_DIR, else the Hugging Face hub)", R)
    cache_dir: str | None = option(None, "tokenized-data cache (unset: $RPTQ_CACHE_DIR or ~/.cache/rptq)", R,
                                   path="folder")
    output_path: str | None = option("out", "JSON results: a .json file, or a folder that gets "
                                     "MODEL_LABEL_SETTINGSHASH.json", R, path="output")
    save: str | None = option(None, "after calibration, write the quantized model (packed weights, quantizer "
                              "parameters, tokenizer) into DIR, a new or empty folder; main.py DIR loads it", R,
                              metavar="DIR", path="folder")
    save_dtype: str | None = option(None, "the dtype of the saved model's float tensors (embeddings, head, norms, "
                                    "biases, float Linears; unset: the run's dtype); float16 also stores the packed "
                                    "weights' scales in 16 bits, which rounds them (see the README)", R,
                                    choices=DTYPES, needed=lambda c: c.save is not None, idle_because="no {save}")
    device_map: str | None = option(None, "evaluate with the model spread by accelerate over GPUs, CPU memory and "
                                    "{offload_folder}, each decoder layer whole on one device (balanced: even over "
                                    "the GPUs, auto: the same; sequential: fill GPU 0 first); the model is then "
                                    "loaded lazily", R, choices=DEVICE_MAPS)
    max_memory: str | None = option(None, "budgets for {device_map}, e.g. 0=70GiB,1=70GiB,cpu=200GiB (GPU indices and "
                                    "cpu; KB..TB or KiB..TiB, B always bytes; unset: what the devices have free); they "
                                    "place the weights only: activations, the K/V cache and the process come on top",
                                    R,
                                    check=_budgets_check, needed=lambda c: c.device_map is not None,
                                    idle_because="no {device_map}")
    offload_folder: str | None = option(None, "load the model lazily (one decoder layer in memory at a time, read "
                                        "from the safetensors or .bin shards), write each quantized layer to this "
                                        "folder, and let {device_map} put layers there; a fresh subfolder per run, "
                                        "removed at the end", R,
                                        needed=lambda c: c.quantizes or c.device_map is not None,
                                        idle_because="no {device_map}", path="folder")

    @property
    def quantizes(self):
        """Whether RPTQ runs: bits below 16, or a reorder asked for; otherwise the float model, no calibration."""
        return self.wbits < FLOAT_BITS or self.abits < FLOAT_BITS or self.reorder is not None

    def ppl_sets(self):
        return comma_list(self.ppl_datasets)

    def task_names(self):
        return comma_list(self.tasks)

    def budgets(self):
        return memory_budgets(self.max_memory)

    def settings(self, device, dtype):
        """Every setting as the run record keeps it (device and dtype as resolved): a resumed sweep compares them."""
        return {**{name: getattr(self, name) for name, _, _ in options(RunConfig)}, "device": device, "dtype": dtype}

    def calibration(self):
        """The calibration settings, for the record and a saved model."""
        return {name: getattr(self, name) for name in ("calib_dataset", "nsamples", "seed")} if self.quantizes else {}

    def run_words(self):
        """The bits of this run, for notes: a Message template and its data."""
        reorder = " {reorder} '{points}'" if self.reorder is not None else ""
        return "{wbits} {w} {abits} {a}" + reorder, {"w": self.wbits, "a": self.abits, "points": self.reorder}


def defaults(cls=RunConfig):
    return {name: default for name, _, default in options(cls)}


def recorded_before(name):
    """The value of a setting in a record made before the setting existed (its default, unless declared)."""
    field_ = next((f for f in fields(RunConfig) if f.name == name), None)
    if field_ is None or "option" not in field_.metadata:
        return None
    opt = option_of(field_)
    return opt.before if opt.before is not None else field_.default


def idle(config):
    """The settings that change nothing in this run (its figures are the same whatever their values), in their
    declaration order."""
    return [name for name, opt, _ in options(RunConfig) if opt.needed and not opt.needed(config)]


def check_values(config):
    """Refuse, with one line, a value no run can use: a choice that is not one, a number out of range, a bad budget.
    Quick and without heavy imports but for the registries' names: a command line is checked before the model loads."""
    for name, opt, _ in options(RunConfig):
        value = getattr(config, name)
        if opt.choices is not None and value is not None and value not in opt.choices:
            raise ConfigError("{%s} {value!r} is not one of {choices}" % name, option=name, value=value,
                              choices=", ".join(opt.choices))
        problem = opt.check(value) if opt.check and value is not None else None
        if problem:
            raise ConfigError("{%s} {problem}, got {value!r}" % name, option=name, problem=problem, value=value)


CACHE_FOLDER = "the cache folder ($RPTQ_CACHE_DIR or ~/.cache/rptq)"


def check_paths(config):
    """Every place the run will write (its declared path settings, and the cache folder of tokenized windows and
    converted models), checked now with one line for one that cannot take it: a file where a folder is expected or
    the reverse, no permission, a read-only filesystem. Quick and without heavy imports."""
    unused = set(idle(config))
    for name, opt, _ in options(RunConfig):
        value = getattr(config, name)
        if opt.path is None or value is None or name in unused:
            continue
        if opt.path == "file" or (opt.path == "output" and str(value).endswith(".json")):
            check_file(value, name)
        else:
            check_folder(value, name)
    check_folder(cache_root(), what=CACHE_FOLDER)


def check(config, given=None, saved_label=None):
    """Refuse a value or a combination that cannot run, with one line, before anything slow; return notes (Messages)
    on settings that change nothing in this run. given: the settings set on purpose (the flags named on a command
    line); None: those that differ from their defaults. saved_label: the label of the saved model that
    config.model names, if it names one."""
    if config.model is None:
        raise ConfigError("no {model} given: name a model, a model folder or a saved folder", option="model")
    given = set(given) if given is not None else {n for n, v in defaults().items() if getattr(config, n) != v}
    check_values(config)
    if saved_label is not None:
        _check_saved_model(config, given, saved_label)
    words, data = config.run_words()
    if not (config.eval_ppl or config.tasks or config.save):
        raise ConfigError("nothing to evaluate: set {eval_ppl} and/or {tasks}", option="eval_ppl")
    if config.save is not None and not config.quantizes and saved_label is None:
        raise ConfigError("{save} writes a quantized model, but this run quantizes nothing (%s); set {wbits}/{abits} "
                          "below 16 or {reorder}" % words, option="save", **data)
    if config.save is not None and config.offload_folder is not None:
        raise ConfigError("{save} needs the quantized layers in memory, but {offload_folder} writes them to disk and "
                          "frees them: drop {offload_folder} (a saved model, packed, loads whole; give it {device_map} "
                          "later)", option="save")
    if config.tasks and not config.task_names():
        raise ConfigError("{tasks}: no task names given", option="tasks")
    unused = [name for name in idle(config) if name in given]
    contradictions = [name for name in unused if option_of(_field(name)).contradiction]
    if contradictions:
        names = ", ".join("{%s}" % name for name in contradictions)
        raise ConfigError(f"{names} needs quantized activations, but this run has none ({words}): drop it or set "
                          "{abits} below 16", option=contradictions[0], **data)
    notes = []
    for name in unused:
        because = option_of(_field(name)).idle_because
        notes.append(Message("{%s} changes nothing in this run (%s%s): ignored" % (
            name, words, f", {because}" if because else ""), option=name, **data))
    return notes


def _field(name):
    return next(f for f in fields(RunConfig) if f.name == name)


def _check_saved_model(config, given, label):
    """A saved model runs as it was saved: no setting may quantize it again, and it is saved already."""
    fixed = [name for name, opt, _ in options(RunConfig) if opt.saved and name in given]
    if fixed:
        names = ", ".join("{%s}" % name for name in fixed)
        raise ConfigError("{path} is a saved {label} model: %s would quantize it again; drop %s (the saved settings "
                          "apply)" % (names, "it" if len(fixed) == 1 else "them"), option=fixed[0],
                          path=config.model, label=label)
    if config.save is not None:
        raise ConfigError("{save}: {path} is a saved model already", option="save", path=config.model)


def replace(config, **changes):
    return dataclasses.replace(config, **changes)
