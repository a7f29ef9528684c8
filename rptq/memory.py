"""Peak memory of each stage of a run, for its record: the process's resident set and, where CUDA runs, the memory
allocated on each GPU.

Linux keeps the resident set's high-water mark (VmHWM) and lets a process reset it (/proc/self/clear_refs), so each
stage's peak is exact there; elsewhere a thread samples the resident set (a spike shorter than its period is
missed). Weights read from safetensors are memory-mapped file pages, which count in the resident set but are
reclaimable: the anonymous and file-backed parts at the end of a stage are recorded beside the peak."""
import contextlib
import ctypes
import threading

MIB = 2 ** 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _status():
    """Byte counts from /proc/self/status (VmRSS, VmHWM, RssAnon, RssFile ...); {} where there is none."""
    try:
        with open("/proc/self/status") as f:
            lines = [line.split() for line in f]
    except OSError:
        return {}
    return {parts[0].rstrip(":"): int(parts[1]) * 1024 for parts in lines if len(parts) == 3 and parts[2] == "kB"}


def _reset_high_water_mark():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    def __init__(self, period=0.005):
        import psutil

        super().__init__(daemon=True)
        self.process, self.period, self.done = psutil.Process(), period, threading.Event()
        self.peak = self.process.memory_info().rss

    def run(self):
        while not self.done.wait(self.period):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self):
        self.done.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss)


def _cuda_devices():
    """GPUs whose peaks mean something: CUDA is in use in this process (never initialized here just to ask)."""
    import torch

    return range(torch.cuda.device_count()) if torch.cuda.is_available() and torch.cuda.is_initialized() else ()


class PeakMemory:
    """Peaks per stage, in MiB: `with peaks.stage("load"): ...` fills peaks.by_stage["load"] with the resident set's
    peak (rss), its size at the start and its anonymous and file-backed parts at the end, and each GPU's peak
    allocation (cuda) where CUDA ran. Stages must not nest: the high-water mark is the process's."""

    def __init__(self):
        self.by_stage = {}

    @contextlib.contextmanager
    def stage(self, name):
        import torch

        for i in _cuda_devices():
            torch.cuda.reset_peak_memory_stats(i)
        start = _status().get("VmRSS")
        sampler = None if _reset_high_water_mark() else _Sampler()
        if sampler:
            sampler.start()
        try:
            yield
        finally:
            status = _status()
            peak = status["VmHWM"] if sampler is None else sampler.stop()
            result = {"rss": peak / MIB, "rss_source": "VmHWM" if sampler is None else "sampled",
                      "rss_at_start": start / MIB if start else None,
                      "anon_at_end": status["RssAnon"] / MIB if "RssAnon" in status else None,
                      "file_at_end": status["RssFile"] / MIB if "RssFile" in status else None}
            cuda = {f"cuda:{i}": torch.cuda.max_memory_allocated(i) / MIB for i in _cuda_devices()}
            self.by_stage[name] = {**result, **({"cuda": cuda} if cuda else {})}


def map_large_allocations():
    """Have glibc serve every allocation of 1 MiB or more with its own memory map, returned to the system when freed:
    otherwise its heap fragments as layers are loaded and freed one after another, and the resident set creeps up
    layer by layer. Returns whether it applied (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc.mallopt(M_MMAP_THRESHOLD, MIB) == 1
    except (OSError, AttributeError):
        return False

