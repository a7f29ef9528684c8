"""The run record: what main.py writes for every run (settings, data, versions, figures, timings) and what the
scripts read back. One JSON per run, rewritten atomically after each finished stage."""
import hashlib
import json
import platform
import subprocess
from pathlib import Path

from .files import atomic_write

RUNNING, COMPLETE = "running", "complete"


class RecordError(Exception):
    """A file that should be a run record is not one."""


def settings_of(args, device, dtype_name):
    """Every main.py setting of a run, as the record keeps it: a resumed sweep compares these."""
    return {**vars(args), "device": device, "dtype": dtype_name}


def output_file(args, label, hashed):
    """A .json path as given, or FOLDER/MODEL_LABEL_HASH.json where the hash covers `hashed` (every setting that
    changes the figures), so that runs differing in clusters, grid, seed, ... never overwrite each other."""
    path = Path(args.output_path)
    if path.suffix == ".json":
        return path
    digest = hashlib.sha1(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return path / f"{Path(args.model.rstrip('/')).name}_{label}_{digest}.json"


def new_record(model, weights, family, label, settings, quantization, data):
    return {"model": model, "weights": weights, "family": family, "label": label, "status": RUNNING,
            "settings": settings, "quantization": quantization, "data": data, "versions": versions(),
            "timings_s": {}, "peak_memory_mb": {}, "placement": None, "ppl": {}, "zero_shot": None}


def write(path, record):
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=2) + "\n"))


def read(path):
    """A run record, or None when there is none yet; RecordError for a file that is not one."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise RecordError(f"{path} is not a main.py result")
    return record


def is_complete(record):
    return bool(record) and record.get("status") == COMPLETE


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
