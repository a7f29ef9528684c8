"""Weight quantization: round-to-nearest and GPTQ with one (scale, zero) per output row and per column group, each
registered by name (WEIGHT_QUANTIZERS), as are the ways of grouping a weight's columns (WEIGHT_GRANULARITIES).

The granularity is data: a group id per input column. RPTQ's default (RPTQ-METHOD.md section 7) makes the groups
the clusters of the activation that feeds the Linear (group quantization with variable group sizes); plain GPTQ
has one group (per output row); the usual alternative is fixed groups of `groupsize` columns.
"""
import math

import torch
from torch import nn

from rptq.base import Registry, RPTQError

from .quantizer import choose_qparams, fake_quantize, qrange, reduce_channels

WEIGHT_GRANULARITIES = Registry("weight granularity")
WEIGHT_QUANTIZERS = Registry("weight quantizer")


class GPTQError(RPTQError):
    """GPTQ cannot run on this Hessian."""


@WEIGHT_GRANULARITIES.register("cluster")
class PerInputCluster:
    """One group per cluster of the Linear's input activation (RPTQ)."""

    def groups(self, columns, clusters, groupsize):
        assert len(clusters) == columns, "one cluster id per input column"
        return clusters


@WEIGHT_GRANULARITIES.register("channel")
class PerOutputRow:
    """One group: a scale per output row only (plain GPTQ)."""

    def groups(self, columns, clusters, groupsize):
        return torch.zeros(columns, dtype=torch.long)


@WEIGHT_GRANULARITIES.register("group")
class FixedColumnGroups:
    """Contiguous groups of `groupsize` input columns."""

    def groups(self, columns, clusters, groupsize):
        return torch.arange(columns) // groupsize


def column_groups(granularity, columns, clusters=None, groupsize=None):
    """Group id of each input column; clusters: the cluster id of each column (its input activation's)."""
    return WEIGHT_GRANULARITIES[granularity].groups(columns, clusters, groupsize)


def weight_qparams(weight, groups, bits, grid="paper"):
    """Scale and zero of shape [rows, cols] from the weight's own ranges, constant within each column group."""
    groups = groups.to(weight.device)
    w = weight.float()
    lo, hi = reduce_channels(w, w, groups, int(groups.max()) + 1)  # [rows, groups]
    scale, zero = choose_qparams(lo, hi, bits, grid)
    return scale[:, groups], zero[:, groups]


@torch.no_grad()
def quantize_rtn(linear: nn.Linear, groups, bits, grid="paper"):
    """Round linear's weight to the nearest level in place; returns its (scale, zero) [rows, cols], as GPTQ."""
    scale, zero = weight_qparams(linear.weight, groups, bits, grid)
    linear.weight.copy_(fake_quantize(linear.weight.float(), scale, zero, bits))
    return scale, zero


class GPTQ:
    """Accumulates the Hessian of one Linear input (shared by every Linear that reads it: q/k/v, gate/up), then
    quantizes those Linears' weights column by column, spreading each column's rounding error over the columns not
    yet quantized."""

    def __init__(self, columns, device="cpu"):
        self.H = torch.zeros(columns, columns, device=device)
        self.tokens = 0

    @torch.no_grad()
    def add_batch(self, x):
        """x [..., columns]: keeps H = 2/n * sum(x x^T) over all n tokens seen so far."""
        x = x.reshape(-1, x.shape[-1]).float()
        n = x.shape[0]
        self.H.mul_(self.tokens / (self.tokens + n))
        self.tokens += n
        x = x * math.sqrt(2 / self.tokens)
        self.H.addmm_(x.t(), x)

    def permute(self, perm):
        """The input's columns were reordered by perm after the statistics were taken."""
        perm = perm.to(self.H.device)
        self.H = self.H[perm][:, perm]

    @torch.no_grad()
    def quantize(self, linear: nn.Linear, groups, bits, grid="paper", percdamp=0.01, blocksize=128, act_order=False):
        """Quantize linear's weight in place; returns its (scale, zero) [rows, cols]. groups: group id per input
        column. act_order: quantize columns by decreasing Hessian diagonal (the columns whose errors matter most
        first); their scales stay those of their own groups."""
        weight = linear.weight
        assert weight.shape[1] == self.H.shape[0], "the Hessian is of another input"
        W = weight.float().clone()
        scale, zero = weight_qparams(W, groups, bits, grid)  # from the original weights, once
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        if act_order:
            order = torch.argsort(torch.diag(H), descending=True)
            W, H, scale, zero = W[:, order], H[order][:, order], scale[:, order], zero[:, order]
        H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
        try:
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
        except torch.linalg.LinAlgError as e:
            raise GPTQError("GPTQ: the Hessian of a {shape} weight is not positive definite ({reason}); raise "
                            "{percdamp}", option="percdamp", shape=tuple(weight.shape), reason=str(e)) from None

        qmin, qmax = qrange(bits)
        lo, hi = qmin - zero, qmax - zero  # fake_quantize's clamp bounds, once for all columns
        Q = torch.empty_like(W)
        cols = W.shape[1]
        for i1 in range(0, cols, blocksize):
            i2 = min(i1 + blocksize, cols)
            W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
            Err1 = torch.empty_like(W1)
            for i in range(i2 - i1):
                c = i1 + i
                q = torch.div(W1[:, i], scale[:, c], out=Q[:, c]).round_().clamp_(lo[:, c], hi[:, c]).mul_(scale[:, c])
                err = torch.sub(W1[:, i], q, out=Err1[:, i]).div_(Hinv1[i, i])
                W1[:, i:].addr_(err, Hinv1[i, i:], alpha=-1)  # lazy update inside the block
            W[:, i2:].addmm_(Err1, Hinv[i1:i2, i2:], alpha=-1)  # one batched update for the rest
        if act_order:
            inverse = torch.argsort(order)
            Q, scale, zero = Q[:, inverse], scale[:, inverse], zero[:, inverse]
        weight.copy_(Q.to(weight.dtype))
        return scale, zero


class WeightQuantizer:
    """How a Linear's weight is put on its grid. uses_hessian: it needs the GPTQ Hessian of the Linear's input."""
    uses_hessian = False

    def quantize(self, linear, groups, bits, grid, hessian=None, percdamp=0.01, act_order=False):
        """Quantize linear's weight in place; return its (scale, zero) [rows, cols]."""
        raise NotImplementedError


@WEIGHT_QUANTIZERS.register("gptq")
class GPTQQuantizer(WeightQuantizer):
    uses_hessian = True

    def quantize(self, linear, groups, bits, grid, hessian=None, percdamp=0.01, act_order=False):
        return hessian.quantize(linear, groups, bits, grid, percdamp, act_order=act_order)


@WEIGHT_QUANTIZERS.register("normal")
class RoundToNearest(WeightQuantizer):
    def quantize(self, linear, groups, bits, grid, hessian=None, percdamp=0.01, act_order=False):
        return quantize_rtn(linear, groups, bits, grid)
