"""Quantized weights as integer codes: the grid a weight quantizer chose, and a Linear that keeps its weight
bit-packed and runs it by one of three kernels (use_kernel):

- "exact", the default: the codes are dequantized, (q - zero) * scale in float32 rounded once to the input's dtype,
  then F.linear: the outputs of the fake-quantized Linear it replaces, bit for bit.
- "fused" (quantize/fused.py, CPU): a compiled kernel reads the codes from a layout built once, in as many bytes,
  and never builds the weight; float32 throughout, it differs from "exact" by the order of float32 sums. use_kernel
  also moves the rest of a decoding step to compiled kernels (quantize/compiled.py) and torch's fused attention.
- "int4" (quantize/int4.py): torch's int4 matrix kernel (its CPU port, or tinygemm on CUDA) from a layout built
  once, padded; bfloat16 scales, activations and outputs, so it rounds differently.
The last two run inputs of a few rows (decoding) and are asked for by name; longer inputs (a prompt, an evaluation
window) still run the exact kernel, which gives the same weight from either layout.

A fake-quantized weight is (q - zero) * scale exactly (the product rounded once, to the weight's dtype), so the
integer codes q are recovered from it without loss; WeightGrid.codes checks that they are, rather than pack what
would dequantize to another weight.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rptq.base import RPTQError

from .fused import FusedKernel
from .int4 import Int4Kernel
from .pack import WIDE_BITS, pack_codes, pack_wide, packed_size, unpack_codes, unpack_wide
from .quantizer import ActQuantizer, dequantize, qrange, quantize
from .state import FUSED_ATTENTION

# Zero points are integers, unclamped: with the reference's 1e-4 scale floor a one-channel group holding 3.3 needs
# -33,000, beyond int16 (SmolLM2 has such weights). A weight's zeros are stored as zero - zero_offset (its smallest)
# in zero_bits bits, as few as their span takes (SmolLM2: 10 to 17, where int16 and int32 would take 16 or 32).
INDEX_DTYPE = torch.int32
# code + (qmin - zero) is computed in float32: exact, and equal to (code + qmin) - zero, for integers below 2^24
EXACT_INTEGERS = 2 ** 24 - 2 ** 8
KERNELS = ("exact", "fused", "int4")
KERNEL_CLASSES = {"fused": FusedKernel, "int4": Int4Kernel}


class GridError(RPTQError):
    """A weight that should sit on its quantization grid does not: its codes would not give it back."""


def zero_layout(zero):
    """(zero_offset, zero_bits) that hold these zero points (integers); GridError beyond EXACT_INTEGERS."""
    if not torch.equal(zero, zero.round()):
        raise GridError("a zero point is not a whole number")
    low, high = (int(zero.min().item()), int(zero.max().item())) if zero.numel() else (0, 0)
    if max(-low, high) > EXACT_INTEGERS:
        raise GridError(f"a zero point ({max(-low, high):.3g}) is beyond the integers float32 holds exactly")
    return low, max(1, (high - low).bit_length())


def group_bits(n_groups):
    """Bits a column's group id takes."""
    return max(1, (n_groups - 1).bit_length())


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
    """A Linear whose weight is held as densely packed `bits`-bit codes with one float32 (or float16) scale and one
    integer zero per output row and column group, the zeros packed too (zero_layout), run by the exact kernel, and
    by another one for short inputs once set_kernel() chose it."""

    def __init__(self, in_features, out_features, bits, n_groups, bias=True, dtype=None, zero_offset=0,
                 zero_bits=WIDE_BITS, scale_dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.zero_offset, self.zero_bits = zero_offset, zero_bits
        self.register_buffer("codes", torch.zeros(packed_size(in_features * out_features, bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(out_features, n_groups, dtype=scale_dtype))
        self.register_buffer("zero_codes", torch.zeros(packed_size(out_features * n_groups, zero_bits),
                                                       dtype=torch.uint8))
        # the group of each input column, packed at the bits n_groups - 1 takes
        self.register_buffer("group_codes", torch.zeros(packed_size(in_features, group_bits(n_groups)),
                                                        dtype=torch.uint8))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None
        self.kernel = None  # the module of the kernel set_kernel() chose

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, grid: WeightGrid, scale_dtype=torch.float32):
        """The packed Linear of a fake-quantized one; scale_dtype float16 rounds the scales (the weight it then gives
        back is within ~5e-4 of itself, no longer the same)."""
        weight = linear.weight.detach().cpu()
        offset, bits = zero_layout(grid.zero)
        packed = cls(linear.in_features, linear.out_features, grid.bits, grid.scale.shape[1],
                     linear.bias is not None, weight.dtype, offset, bits, scale_dtype)
        packed.codes.copy_(pack_codes(grid.codes(weight).flatten(), grid.bits))
        packed.scale.copy_(grid.scale)
        packed.zero_codes.copy_(pack_wide(grid.zero.flatten().long() - offset, bits))
        packed.group_codes.copy_(pack_wide(grid.groups, group_bits(grid.scale.shape[1])))
        if linear.bias is not None:
            packed.bias.copy_(linear.bias.detach())
        return packed

    @property
    def groups(self):
        """The group of each input column, int32 [cols]."""
        bits = group_bits(self.scale.shape[1])
        return unpack_wide(self.group_codes, bits, self.in_features).to(INDEX_DTYPE)

    @property
    def zero(self):
        """The zero points, int32 [rows, n_groups], unpacked (they take a few bytes per row)."""
        zero = unpack_wide(self.zero_codes, self.zero_bits, self.scale.numel()) + self.zero_offset
        return zero.view_as(self.scale).to(torch.int32)

    def weight_grid(self):
        return WeightGrid(self.bits, self.groups.long(), self.scale, self.zero.float())

    def unpacked_codes(self, dtype=torch.uint8):
        """[rows, cols] in dtype, 0 .. 2^bits - 1."""
        codes = unpack_codes(self.codes, self.bits, self.out_features * self.in_features, dtype)
        return codes.view(self.out_features, -1)

    def dequantized_weight(self, dtype):
        """[rows, cols] in dtype: (code + (qmin - zero)) * scale in float32, the integer sum exact (zero_layout),
        so the same single rounding as the quantizer's (q - zero) * scale."""
        if self.codes is None:  # released for the fused kernel's layout, which gives the same weight
            return self.kernel.dequantized_weight(dtype)
        offset, groups = qrange(self.bits)[0] - self.zero.float(), self.groups
        weight = self.unpacked_codes(torch.float32).add_(offset.index_select(1, groups))
        return weight.mul_(self.scale.index_select(1, groups)).to(dtype)

    @torch.no_grad()
    def set_kernel(self, name):
        """From now on, run inputs of at most the kernel's max_rows rows by kernel `name` ("fused" or "int4"), built
        for the device the buffers are on, in place: hooks and submodules stay. The fused layout replaces the
        packed buffers (it gives the same weight); the int4 one cannot, so they stay beside it."""
        kernel = KERNEL_CLASSES[name]
        assert self.kernel is None and self.bits <= kernel.max_bits, f"one kernel, for at most {kernel.max_bits} bits"
        self.kernel = kernel(self.unpacked_codes(), self.groups, self.scale, self.zero, self.bits)
        if name == "fused":
            for buffer in ("codes", "scale", "zero_codes", "group_codes"):
                setattr(self, buffer, None)

    def forward(self, x):
        if self.kernel is None or x.numel() > self.kernel.max_rows * self.in_features:
            return F.linear(x, self.dequantized_weight(x.dtype), self.bias)
        y = self.kernel(x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"bias={self.bias is not None}, zero_bits={self.zero_bits}")


def use_kernel(model, kernel):
    """Run the model's PackedLinears by `kernel` (KERNELS), in place: "exact" leaves them as they are; "fused" and
    "int4" go to those of at most 4 bits that have no other kernel yet (wider ones stay exact), built for the
    device they are on, so move the model first. "fused" also gives the activation quantizers, and the low-bit
    K/V cache made from them, the compiled CPU kernels, which give the same values bit for bit, and a model with a
    config decodes attention that quantizes no probabilities by torch's fused kernel (quantize/attention.py),
    which rounds differently. Returns how many PackedLinears have a kernel other than the exact one."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel '{kernel}' (choose from {', '.join(KERNELS)})")
    linears = [m for m in model.modules() if isinstance(m, PackedLinear)]
    if kernel == "fused":
        for quantizer in model.modules():
            if isinstance(quantizer, ActQuantizer):
                quantizer.compiled = True
        if hasattr(model, "config"):
            setattr(model.config, FUSED_ATTENTION, True)
    if kernel != "exact":
        for linear in linears:
            if linear.kernel is None and linear.bits <= KERNEL_CLASSES[kernel].max_bits:
                linear.set_kernel(kernel)
    return sum(linear.kernel is not None for linear in linears)
