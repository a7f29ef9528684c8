"""Where the model runs: the device and dtype of a run, and for evaluation all of the model on the device, or spread
by accelerate over GPUs, CPU memory and an offload folder (device_map), each decoder layer whole on one device
together with its quantizers' buffers."""
import contextlib
import logging
import tempfile
from pathlib import Path

from .base import path_error
from .config import ConfigError

GIB = 2 ** 30


def resolve_device(device=None, dtype=None, here=True):
    """(device, torch dtype) from the device and dtype settings (unset: cuda if available, else cpu; float16 on cuda,
    float32 on cpu); ConfigError if the device is unusable here, checked only when the run is to happen here
    (here=False: a command written for another machine, such as a SLURM task)."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ConfigError("{device} '{value}' is not a torch device (use cpu, cuda or cuda:N)", option="device",
                          value=device) from None
    if parsed.type == "cuda" and here:
        if not torch.cuda.is_available():
            raise ConfigError("{device} {value} asked for but CUDA is not available here; use {device} cpu",
                              option="device", value=device)
        if (parsed.index or 0) >= torch.cuda.device_count():
            raise ConfigError("{device} {value}: only {count} CUDA device(s) here", option="device", value=device,
                              count=torch.cuda.device_count())
    dtype = dtype or ("float16" if parsed.type == "cuda" else "float32")
    return device, getattr(torch, dtype)


def dtype_name(dtype):
    return str(dtype).split(".")[-1]


def check_budgets(max_memory):
    """Refuse a budget for a GPU this machine lacks, before the model loads."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = sorted(d for d in max_memory or {} if isinstance(d, int) and d >= count)
    if missing:
        raise ConfigError("{max_memory} gives GPU {gpu} a budget, but this machine has {count} CUDA device(s)",
                          option="max_memory", gpu=missing[0], count=count)


@contextlib.contextmanager
def scratch_folder(parent):
    """A fresh folder inside parent for this run's offloaded weights, removed at the end (None without a parent):
    runs sharing a parent never read each other's layers."""
    if parent is None:
        yield None
        return
    try:
        Path(parent).mkdir(parents=True, exist_ok=True)
        folder = tempfile.TemporaryDirectory(prefix="rptq-", dir=parent)
    except OSError as e:
        raise path_error(e, parent, "make a folder in") from None
    with folder as path:
        yield Path(path)


def _describe(budgets):
    return ", ".join(f"{device}={size / GIB:.2f}GiB" for device, size in budgets.items())


def plan(model, adapter, kind, max_memory, device, folder):
    """accelerate's device map (module name -> GPU index, "cpu" or "disk") for evaluation, decoder layers never split.

    Made right after loading, before quantization, so that a map that cannot work fails before the slow part; the
    quantizers add about 0.1% to a layer (a few index and scale buffers). Without --max_memory the budgets are what
    accelerate finds free: the CPU's, and the GPUs' when --device is a GPU."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    no_split = sorted({*(model._no_split_modules or ()), type(adapter.layers(model)[0]).__name__})
    budgets = dict(max_memory) if max_memory else {d: size for d, size in get_max_memory().items()
                                                   if d == "cpu" or device.startswith("cuda")}
    try:  # accelerate raises these for budgets it cannot use
        if kind in ("auto", "balanced"):
            budgets = get_balanced_memory(model, budgets, no_split_module_classes=no_split)
        device_map = dict(infer_auto_device_map(model, max_memory=dict(budgets), no_split_module_classes=no_split))
    except (ValueError, RuntimeError, AttributeError) as e:
        raise ConfigError("{device_map} {kind}: accelerate cannot place the model: {reason}", option="device_map",
                          kind=kind, reason=str(e).splitlines()[0]) from None
    disk = [name for name, where in device_map.items() if where == "disk"]
    if len(disk) == len(device_map):
        raise ConfigError("{device_map} {kind}: the budgets ({budgets}) leave room for no module at all, so every "
                          "forward would read the whole model from disk; raise {max_memory}", option="device_map",
                          kind=kind, budgets=_describe(budgets))
    if disk and folder is None:
        raise ConfigError("{device_map} {kind}: {n} module(s) go to disk under the budgets ({budgets}); set "
                          "{offload_folder}, or raise {max_memory}", option="device_map", kind=kind, n=len(disk),
                          budgets=_describe(budgets))
    return device_map


def main_device(device_map):
    """The device that takes the inputs and runs the offloaded modules: the first GPU of the map, else the CPU."""
    return next((f"cuda:{where}" for where in device_map.values() if isinstance(where, int)), "cpu")


def place(model, store, device, device_map=None):
    """Put the model where it is evaluated; returns the device its inputs go to.

    Without a map, all of it on device. With one, each module is read (or moved) straight onto its GPU or into CPU
    memory, the disk ones written to the offload folder unless accelerate can read them in place, and
    accelerate's dispatch runs each module on its device, streaming the offloaded ones to the main device."""
    if device_map is None:
        store.load("", device)
        return device
    from accelerate import dispatch_model

    disk = [name for name, where in device_map.items() if where == "disk"]
    for name, where in device_map.items():
        if where != "disk":
            store.load(name, f"cuda:{where}" if isinstance(where, int) else where)
    for name in disk:
        store.offload(name)
    main = main_device(device_map)
    dispatch_log = logging.getLogger("accelerate.big_modeling")
    level = dispatch_log.level
    dispatch_log.setLevel(logging.ERROR)  # its warning that offloaded weights sit on "meta" is what was asked for
    try:
        dispatch_model(model, device_map, main_device=main, offload_index=store.offload_index(disk) or None)
    finally:
        dispatch_log.setLevel(level)
    return main
