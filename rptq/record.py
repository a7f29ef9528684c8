"""The run record: what a run writes (settings, data, versions, figures, timings) and what the scripts read back.
One JSON per run, rewritten atomically after each finished stage."""
import dataclasses
import hashlib
import json
import math
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .base import RPTQError, write_text

RUNNING, COMPLETE = "running", "complete"


class RecordError(RPTQError):
    """A file that should be a run record is not one."""


Z95 = 1.959964  # two-sided 95% normal quantile


def ppl_interval(nlls):
    """(standard error of the mean window NLL, 95% interval of the perplexity, exp(mean NLL +- 1.96 SE)); None for
    fewer than two windows. Windows of one text are not independent samples, so this is a guide, not a guarantee."""
    n = len(nlls)
    if n < 2:
        return None, None
    mean = sum(nlls) / n
    sem = math.sqrt(sum((x - mean) ** 2 for x in nlls) / (n - 1) / n)
    return sem, [math.exp(mean - Z95 * sem), math.exp(mean + Z95 * sem)]


def paired_ratio(nlls, base_nlls):
    """(perplexity over a baseline's on the same windows, its 95% interval): exp(mean per-window NLL difference).
    What makes a window hard is common to both runs and cancels, so this interval is far tighter than the two
    perplexities' intervals side by side; None for the interval with fewer than two windows."""
    diffs = [a - b for a, b in zip(nlls, base_nlls, strict=True)]
    return math.exp(sum(diffs) / len(diffs)), ppl_interval(diffs)[1]


@dataclass(kw_only=True)
class PerplexityResult:
    """The paper's perplexity over the windows run, with each window's NLL and a 95% interval."""
    ppl: float
    ppl_ci95: list | None      # exp(mean NLL +- 1.96 standard errors); None for one window
    nll: float
    nll_sem: float | None
    windows: int               # run (the first N: --limit)
    windows_total: int         # in the set
    seqlen: int
    seconds: float
    seconds_per_window: float
    nlls: list                 # each window's mean token NLL


@dataclass(kw_only=True)
class RunRecord:
    """One run. settings: every RunConfig setting (device and dtype as resolved); quantization: QuantConfig.describe()
    (None for the float model); data: the files or hub sets read; ppl: PerplexityResult per set label; zero_shot:
    rptq.evaluate.zero_shot's block. The last three fields are left out of the JSON when unset."""
    model: str
    weights: str
    family: str
    label: str
    status: str = RUNNING
    settings: dict
    quantization: dict | None
    data: list
    versions: dict = field(default_factory=lambda: versions())
    timings_s: dict = field(default_factory=dict)
    peak_memory_mb: dict = field(default_factory=dict)
    placement: dict | None = None
    ppl: dict = field(default_factory=dict)
    zero_shot: dict | None = None
    clusters_per_layer: list | None = None
    saved_to: str | None = None
    saved_model: dict | None = None

    OPTIONAL = ("clusters_per_layer", "saved_to", "saved_model")

    @property
    def complete(self):
        return self.status == COMPLETE

    def to_json(self):
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if not (k in self.OPTIONAL and v is None)}

    @classmethod
    def from_json(cls, data):
        """A record as read from its JSON (of any commit since records had settings); RecordError if it is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise RecordError("not a main.py result")
        try:
            record = cls(**{k: v for k, v in data.items() if k in names})
            record.ppl = {name: PerplexityResult(**res) for name, res in (record.ppl or {}).items()}
        except TypeError as e:
            raise RecordError("not a main.py result ({reason})", reason=str(e)) from None
        return record

    def write(self, path):
        write_text(path, json.dumps(self.to_json(), indent=2) + "\n")


def output_file(output_path, model, label, hashed):
    """A .json path as given, or FOLDER/MODEL_LABEL_HASH.json where the hash covers `hashed` (every setting that
    changes the figures), so that runs differing in clusters, grid, seed, ... never overwrite each other."""
    path = Path(output_path)
    if path.suffix == ".json":
        return path
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return path / f"{Path(model.rstrip('/')).name}_{label}_{digest}.json"


def read(path):
    """The run record in path, or None when there is none yet; RecordError for a file that is not one."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    try:
        return RunRecord.from_json(data)
    except RecordError:
        raise RecordError("{path} is not a main.py result", path=str(path)) from None


def versions():
    """The libraries, the commit, torch's thread count, the CPU kernels it picked (AVX2, AVX512...) and the GPU: a
    run is bit-reproducible only with all of them the same (threads and kernels set the order and width of float
    sums, and K-means and GPTQ amplify a last-bit difference)."""
    import datasets
    import lm_eval
    import sklearn
    import torch
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except OSError:
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "lm_eval": lm_eval.__version__, "scikit_learn": sklearn.__version__, "rptq_commit": commit,
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
