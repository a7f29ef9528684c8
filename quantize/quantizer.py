"""Asymmetric uniform quantization as pure functions, plus the per-cluster activation quantizer module.

Grids (RPTQ-METHOD.md section 2), both with 2^k signed levels [-2^(k-1), 2^(k-1) - 1]:
- "paper": s = (max - min) / 2^k, z = -round((max + min) / (2 s)); the top level maps to 2^(k-1) and is
  clamped, so the reference loses one bin. The default, to reproduce the published numbers.
- "full":  s = (max - min) / (2^k - 1), z chosen so that min maps to the lowest level: every level is used.
Scales are clamped to [1e-4, 1e4], as the reference does (its quantizer.py:8, 230): a range of zero (a weight group
of one input channel, a constant activation channel) still gets 2^k levels 1e-4 apart, so GPTQ can move such a
weight column by a few levels. The reference also clamps the zero point to [-1e4, 1e4] (its quantizer.py:231); with
the floor, that puts any value beyond about +-1 in such a group off its grid (SmolLM2 has thousands of weights
beyond 1: W4A16 goes from 35 to 3606), so that clamp is not reproduced.
"""
import torch
from torch import nn

from .compiled import cpu_kernels

GRIDS = ("paper", "full")
MIN_SCALE, MAX_SCALE = 1e-4, 1e4  # the reference's clamps (its CLIPMIN)


def qrange(bits):
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def choose_qparams(xmin, xmax, bits, grid="paper"):
    """Scale and zero point (same shape as xmin/xmax) for the range [xmin, xmax]."""
    xmin, xmax = xmin.float(), xmax.float()
    qmin, _ = qrange(bits)
    if grid == "paper":
        scale = ((xmax - xmin) * 2.0 ** -bits).clamp_(MIN_SCALE, MAX_SCALE)
        zero = (xmax + xmin) * (-0.5 / scale)  # the reference's order of operations: same rounding ties
    elif grid == "full":
        scale = ((xmax - xmin) / (2 ** bits - 1)).clamp_(MIN_SCALE, MAX_SCALE)
        zero = qmin - xmin / scale
    else:
        raise ValueError(f"unknown grid '{grid}' (choose from {GRIDS})")
    return scale, zero.round_()


def quantize(x, scale, zero, bits):
    qmin, qmax = qrange(bits)
    return torch.clamp(torch.round(x / scale) + zero, qmin, qmax)


def dequantize(q, scale, zero):
    return (q - zero) * scale


def fake_quantize(x, scale, zero, bits):
    """dequantize(quantize(x)) in x's dtype, computed in float32 with fewer passes over x: zero is an
    integer, so clamp(round(x / s) + z, qmin, qmax) - z == clamp(round(x / s), qmin - z, qmax - z)."""
    qmin, qmax = qrange(bits)
    zero = torch.as_tensor(zero, dtype=torch.float32)
    return torch.div(x.float(), scale).round_().clamp_(qmin - zero, qmax - zero).mul_(scale).to(x.dtype)


def cluster_index(sizes):
    """Cluster id of each channel when clusters are contiguous with the given sizes: [3, 2] -> [0, 0, 0, 1, 1]."""
    sizes = torch.as_tensor(sizes, dtype=torch.long)
    return torch.repeat_interleave(torch.arange(len(sizes)), sizes)


def cluster_minmax(x, index, n_clusters):
    """Per-cluster min and max of x [..., C] over all tokens and over the channels of each cluster."""
    flat = x.reshape(-1, x.shape[-1]).float()
    return reduce_channels(flat.amin(0), flat.amax(0), index, n_clusters)


def reduce_channels(ch_min, ch_max, index, n_clusters):
    """Per-channel ranges [..., C] -> per-cluster ranges [..., K] (min of mins, max of maxes)."""
    shape = (*ch_min.shape[:-1], n_clusters)
    idx = index.to(ch_min.device).expand_as(ch_min)
    lo = torch.full(shape, float("inf"), device=ch_min.device).scatter_reduce(-1, idx, ch_min.float(), "amin")
    hi = torch.full(shape, float("-inf"), device=ch_min.device).scatter_reduce(-1, idx, ch_max.float(), "amax")
    return lo, hi


RANGES = ("static", "dynamic", "token")


class ActQuantizer(nn.Module):
    """Fake-quantizes the last dimension of an activation with one (scale, zero) per channel group (cluster).

    ranges: "static": per group, calibrated through set_ranges(); "dynamic": per group, from each forward's own
    tensor (all its tokens); "token": per token over all channels, from each forward (no groups: index unused).
    Its tensors are what a saved model keeps: index int32 [C] (the group of each channel; groups need not be
    contiguous), and per group scale float32 [K] and zero int32 [K]; each forward gathers them per channel.
    compiled (set by use_kernel(model, "fused")): static grids on the CPU run as one compiled pass, the same values
    bit for bit (quantize/compiled.py), rather than as several torch operations.
    """

    def __init__(self, bits, channels, clusters, grid="paper", ranges="static"):
        """An uncalibrated quantizer of `channels` channels in `clusters` groups (its index set by of() or loaded)."""
        super().__init__()
        assert ranges in RANGES, f"ranges is one of {RANGES}"
        self.bits, self.grid, self.ranges, self.n_clusters = bits, grid, ranges, clusters
        self.register_buffer("index", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("scale", torch.ones(clusters, dtype=torch.float32))  # whatever the model's dtype
        self.register_buffer("zero", torch.zeros(clusters, dtype=torch.int32))
        self.calibrated = ranges != "static"
        self.compiled = False

    @classmethod
    def of(cls, bits, index, grid="paper", ranges="static"):
        """index [C]: the group id (0..n-1) of each channel."""
        quantizer = cls(bits, len(index), int(index.max()) + 1, grid, ranges)
        quantizer.index.copy_(index)
        return quantizer

    @torch.no_grad()
    def set_ranges(self, xmin, xmax):
        """xmin, xmax: [n_clusters] ranges."""
        self.set_qparams(*choose_qparams(xmin, xmax, self.bits, self.grid))

    @torch.no_grad()
    def set_qparams(self, scale, zero):
        """scale, zero: [n_clusters], as chosen by calibration; zero holds integers."""
        self.scale.copy_(scale)
        self.zero.copy_(zero.round())
        self.calibrated = True

    def forward(self, x):
        if self.ranges == "token":
            scale, zero = choose_qparams(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), self.bits, self.grid)
            return fake_quantize(x, scale, zero, self.bits)
        if self.ranges == "dynamic":
            index = self.index.long()
            lo, hi = cluster_minmax(x, index, self.n_clusters)
            scale, zero = choose_qparams(lo, hi, self.bits, self.grid)
            return fake_quantize(x, scale[index], zero[index], self.bits)
        if not self.calibrated:
            raise RuntimeError("static activation quantizer used before calibration")
        if self.compiled and x.device.type == "cpu":
            out = cpu_kernels().fake_quantize(x.float().contiguous(), self.index, self.scale.float(), self.zero,
                                              *qrange(self.bits))
            return out.to(x.dtype)
        index = self.index.long()
        return fake_quantize(x, self.scale[index], self.zero[index], self.bits)

    def extra_repr(self):
        groups = "per token" if self.ranges == "token" else f"clusters={self.n_clusters}"
        return f"bits={self.bits}, {groups}, grid={self.grid}, {self.ranges}"


class ProbQuantizer(nn.Module):
    """Softmax probabilities on a fixed grid over [0, 1]: round(p * (2^bits - 1)) / (2^bits - 1)."""

    def __init__(self, bits=8):
        super().__init__()
        self.bits = bits
        self.levels = 2 ** bits - 1

    def forward(self, p):
        return p.mul_(self.levels).round_().div_(self.levels)  # in place: p is a fresh softmax output

    def extra_repr(self):
        return f"bits={self.bits}"
