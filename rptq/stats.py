"""Calibration statistics: per-sample, per-channel min/max at each site, reduced by the range metric.

Keeping the per-sample values (not a running range) lets the same pass feed both the clustering (per-channel
ranges) and the quantizers (per-cluster ranges, which are only known after clustering) for either metric.
"""
import torch

from quantize import reduce_channels

from .config import METRICS

EMA_DECAY = 0.99


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


def reduce_samples(values, metric, largest):
    """[S, ...] per-sample ranges -> [...]: extreme over samples (minmax), or an EMA where the first sample sets
    the range and each further one moves it by 1 - EMA_DECAY (ema_minmax, the reference's default)."""
    if metric == "minmax":
        return values.amax(0) if largest else values.amin(0)
    if metric == "ema_minmax":
        out = values[0].clone()
        for v in values[1:]:
            out.mul_(EMA_DECAY).add_(v, alpha=1 - EMA_DECAY)
        return out
    raise ValueError(f"unknown metric '{metric}' (choose from {METRICS})")


def channel_ranges(mins, maxs, metric):
    return reduce_samples(mins, metric, largest=False), reduce_samples(maxs, metric, largest=True)


def cluster_ranges(mins, maxs, index, metric):
    """Per-cluster ranges [K] (index [C]: cluster of each channel): per sample over the cluster's channels,
    then the metric."""
    lo, hi = reduce_channels(mins, maxs, index, int(index.max()) + 1)
    return channel_ranges(lo, hi, metric)
