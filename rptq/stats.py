"""Calibration statistics: per-sample, per-channel min/max at each site, reduced by the range metric.

Keeping the per-sample values (not a running range) lets the same pass feed both the clustering (per-channel
ranges) and the quantizers (per-cluster ranges, which are only known after clustering) for either metric.
"""
import torch

from quantize import reduce_channels
from quantize.observer import reduce_samples


class SiteObserver:
    """Records one [C] min and one [C] max per forward (= per calibration window) of a site's tensor."""

    def __init__(self, site):
        self.mins, self.maxs = [], []
        self.handle = site.register_hook(self._record)

    def _record(self, x):
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        self.mins.append(flat.amin(0).cpu())
        self.maxs.append(flat.amax(0).cpu())

    def remove(self):
        """Stop observing; return the samples as [S, C] min and max tensors."""
        self.handle.remove()
        return torch.stack(self.mins), torch.stack(self.maxs)


def channel_ranges(mins, maxs, metric):
    return reduce_samples(mins, metric, largest=False), reduce_samples(maxs, metric, largest=True)


def cluster_ranges(mins, maxs, index, metric):
    """Per-cluster ranges [K] (index [C]: cluster of each channel): per sample over the cluster's channels,
    then the metric."""
    lo, hi = reduce_channels(mins, maxs, index, int(index.max()) + 1)
    return channel_ranges(lo, hi, metric)
