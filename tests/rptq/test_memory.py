"""rptq/memory.py: each stage gets its own peak, exact from VmHWM where Linux has it, sampled elsewhere."""
import mmap
import sys
import time

import pytest

from rptq import memory

MIB = 2 ** 20


def _hold(mib, seconds=0.0):
    """mib MiB of pages new to the process, written (so resident), then returned: a mapping of its own, whatever the
    allocator kept from the tests before (freed memory it reuses would not raise the resident set)."""
    pages = mmap.mmap(-1, mib * MIB)
    pages.write(b"\1" * (mib * MIB))
    time.sleep(seconds)
    pages.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_each_stage_gets_its_own_peak():
    peaks = memory.PeakMemory()
    with peaks.stage("big"):
        _hold(256)
    with peaks.stage("small"):
        _hold(16)
    big, small = peaks.by_stage["big"], peaks.by_stage["small"]
    assert big["rss_source"] == "VmHWM" and "cuda" not in big  # no CUDA ran here
    assert big["rss"] - big["rss_at_start"] >= 250
    assert small["rss"] < big["rss"] - 200  # the high-water mark was reset between the stages
    assert small["anon_at_end"] > 0 and small["file_at_end"] > 0


def test_without_a_resettable_high_water_mark_a_thread_samples_the_peak(monkeypatch):
    monkeypatch.setattr(memory, "_reset_high_water_mark", lambda: False)
    peaks = memory.PeakMemory()
    with peaks.stage("big"):
        _hold(256, seconds=0.2)
    big = peaks.by_stage["big"]
    assert big["rss_source"] == "sampled" and big["rss"] - big["rss_at_start"] >= 250
