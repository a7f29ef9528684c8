"""Quantized weights as integer codes: the grid a weight quantizer chose, and a Linear that keeps its weight
bit-packed and dequantizes it each time it runs.

A fake-quantized weight is (q - zero) * scale exactly (the product rounded once, to the weight's dtype), so the
integer codes q are recovered from it without loss; WeightGrid.codes checks that they are, rather than pack what
would dequantize to another weight.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rptq.base import RPTQError

from .pack import pack_codes, packed_size, unpack_codes
from .quantizer import dequantize, qrange, quantize

# Zero points are integers, unclamped: with the reference's 1e-4 scale floor a one-channel group holding 3.3 needs
# -33,000, beyond int16 (SmolLM2 has such weights), so int32.
ZERO_DTYPE = torch.int32
INDEX_DTYPE = torch.int32


class GridError(RPTQError):
    """A weight that should sit on its quantization grid does not: its codes would not give it back."""


def stored_zero(zero):
    """Zero points as they are stored (ZERO_DTYPE); GridError for one that type cannot hold, rather than wrap it."""
    stored = zero.to(ZERO_DTYPE)
    if not torch.equal(stored.to(zero.dtype), zero):
        raise GridError(f"a zero point ({zero.abs().max().item():.3g}) is beyond {ZERO_DTYPE}")
    return stored


@dataclass
class WeightGrid:
    """One weight's grid: bits, groups [cols] (the group id of each input column) and scale, zero [rows, n_groups]
    (one per output row and column group), exactly as the quantizer chose them."""
    bits: int
    groups: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_expanded(cls, bits, groups, scale, zero):
        """From the [rows, cols] (scale, zero) a weight quantizer returns, constant within each column group."""
        groups, scale, zero = groups.cpu(), scale.float().cpu(), zero.float().cpu()
        n_groups = int(groups.max()) + 1

        def compact(t):  # every column of a group holds the same value, so any of them may be copied
            return t.new_zeros(t.shape[0], n_groups).index_copy_(1, groups, t)

        grid = cls(bits, groups, compact(scale), compact(zero))
        if not (torch.equal(grid.scale[:, groups], scale) and torch.equal(grid.zero[:, groups], zero)):
            raise GridError("the weight scales and zeros vary inside a column group")
        return grid

    def expanded(self):
        """(scale, zero) [rows, cols]."""
        return self.scale[:, self.groups], self.zero[:, self.groups]

    def codes(self, weight):
        """Unsigned codes [rows, cols], 0 .. 2^bits - 1, of a weight on this grid; GridError if it is not on it."""
        scale, zero = self.expanded()
        q = quantize(weight.float(), scale, zero, self.bits)
        back = dequantize(q, scale, zero).to(weight.dtype)
        if not torch.equal(back, weight):
            raise GridError(f"a {tuple(weight.shape)} weight is not on its {self.bits}-bit grid (largest difference "
                            f"{(back.float() - weight.float()).abs().max().item():.3g}): its codes would change it")
        return (q - qrange(self.bits)[0]).to(torch.uint8)


class PackedLinear(nn.Module):
    """A Linear whose weight is held as densely packed `bits`-bit codes with one float32 scale and one integer zero
    per output row and column group; forward dequantizes the codes, then runs F.linear, so its outputs are those of
    the fake-quantized Linear it replaces."""

    def __init__(self, in_features, out_features, bits, n_groups, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.register_buffer("codes", torch.zeros(packed_size(in_features * out_features, bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, n_groups))
        self.register_buffer("zero", torch.zeros(out_features, n_groups, dtype=ZERO_DTYPE))
        self.register_buffer("groups", torch.zeros(in_features, dtype=INDEX_DTYPE))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, grid: WeightGrid):
        weight = linear.weight.detach().cpu()
        packed = cls(linear.in_features, linear.out_features, grid.bits, grid.scale.shape[1],
                     linear.bias is not None, weight.dtype)
        packed.codes.copy_(pack_codes(grid.codes(weight).flatten(), grid.bits))
        packed.scale.copy_(grid.scale)
        packed.zero.copy_(stored_zero(grid.zero))
        packed.groups.copy_(grid.groups)
        if linear.bias is not None:
            packed.bias.copy_(linear.bias.detach())
        return packed

    def weight_grid(self):
        return WeightGrid(self.bits, self.groups.long(), self.scale, self.zero.float())

    def dequantized_weight(self, dtype):
        codes = unpack_codes(self.codes, self.bits, self.out_features * self.in_features)
        q = codes.view(self.out_features, self.in_features).float() + qrange(self.bits)[0]
        return dequantize(q, self.scale[:, self.groups], self.zero.float()[:, self.groups]).to(dtype)

    def forward(self, x):
        return F.linear(x, self.dequantized_weight(x.dtype), self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"groups={self.scale.shape[1]}, bias={self.bias is not None}")
