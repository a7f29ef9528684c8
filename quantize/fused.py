"""The fused CPU kernel for packed Linears of at most 4 bits: y = x W^T for a few rows of x (decoding), reading the
codes once and never building W, in float32: the exact kernel's outputs up to the order of float32 sums (relative
differences near 1e-7).

Its layout, built once when a PackedLinear switches to it, holds the weight in as many bytes as the packed codes:
the input columns in group order (perm; starts [n_groups + 1] bounds each group), the output rows in blocks of
BLOCK_ROWS (rows rounded up to whole blocks; an extra row has scale 0), and the codes of one block as [cols,
BLOCK_ROWS / 2] bytes, contiguous (byte j: row j of the block in the low nibble, row j + BLOCK_ROWS / 2 in the high
one); scale and zero transposed to [n_groups, rows]. The kernel (cpu_kernels.cpp, built by quantize/compiled.py)
runs the blocks in parallel: for each it adds code * x into BLOCK_ROWS float32 sums, which stay in vector registers,
column by column, and then, per group, scale * (sums + (qmin - zero) * the group's sum of x): (q - zero) * scale
with q = code + qmin.

The exact weight, (code + qmin - zero) * scale rounded once, is dequantized from the same layout, bit for bit.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .compiled import cpu_kernels
from .quantizer import qrange

BLOCK_ROWS = 32  # as kBlockRows in cpu_kernels.cpp


def fused_layout(codes, groups, scale, zero):
    """codes uint8 [rows, cols] (0 .. 15), groups [cols], scale and zero [rows, n_groups] -> (pairs uint8
    [rows' / BLOCK_ROWS, cols, BLOCK_ROWS / 2], starts int32 [n_groups + 1], perm int32 [cols], scale float32 and
    zero [n_groups, rows'], zero in its own integer dtype), rows' = rows rounded up to whole blocks."""
    extra = -codes.shape[0] % BLOCK_ROWS
    codes, scale, zero = (F.pad(t, (0, 0, 0, extra)) for t in (codes, scale, zero))
    groups = groups.long()
    perm = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=scale.shape[1])
    starts = F.pad(sizes.cumsum(0), (1, 0))
    halves = codes[:, perm].unflatten(0, (-1, 2, BLOCK_ROWS // 2))  # [blocks, low/high, rows / 2, cols]
    pairs = (halves[:, 0] | halves[:, 1] << 4).transpose(1, 2)  # [blocks, cols, rows / 2]
    return (pairs.contiguous(), starts.int(), perm.int(), scale.float().t().contiguous(), zero.t().contiguous())


class FusedKernel(nn.Module):
    """x [..., cols] -> x W^T [..., rows] (no bias) in x's dtype, by cpu_kernels.cpp; dequantized_weight gives the
    exact W."""

    max_bits = 4  # two codes per byte
    # inputs of more rows (prompts, evaluation windows) run the exact kernel, so that they round as the fake-quantized
    # model does. Speed alone would allow more: a block's codes are read again from L1 for each row (SmolLM2's
    # gate_proj, 2 threads: 32 rows 0.81 ms, 64 rows 1.65 ms, 128 rows 3.56 ms; dequantizing and a float32 matmul
    # 5.5, 6.7 and 4.2 ms)
    max_rows = 32

    def __init__(self, codes, groups, scale, zero, bits):
        """codes uint8 [rows, cols], groups [cols], scale and zero [rows, n_groups], as a PackedLinear holds them."""
        super().__init__()
        assert bits <= self.max_bits, f"the fused kernel takes codes of at most {self.max_bits} bits"
        if codes.device.type != "cpu":
            raise ValueError(f"the fused kernel runs on the CPU, not {codes.device.type}: use the int4 kernel there")
        self.out_features, self.in_features = codes.shape
        self.qmin = qrange(bits)[0]
        pairs, starts, perm, scale_t, zero_t = fused_layout(codes, groups, scale, zero)
        for name, tensor in (("pairs", pairs), ("starts", starts), ("perm", perm), ("scale_t", scale_t),
                             ("zero_t", zero_t)):
            self.register_buffer(name, tensor)
        cpu_kernels()  # built now rather than at the first forward

    def forward(self, x):
        flat = x.reshape(-1, self.in_features).float().contiguous()
        y = cpu_kernels().fused_linear(flat, self.pairs, self.starts, self.perm, self.scale_t, self.zero_t, self.qmin)
        if y.shape[1] != self.out_features:
            y = y[:, :self.out_features]
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self, dtype):
        """[rows, cols] in dtype: (code + (qmin - zero)) * scale in float32, as PackedLinear.dequantized_weight."""
        halves = torch.stack([self.pairs & 15, self.pairs >> 4], 1)  # [blocks, low/high, cols, rows / 2]
        codes = halves.permute(0, 1, 3, 2).flatten(0, 2).float()  # [rows', cols], columns in group order
        group = torch.repeat_interleave(torch.arange(len(self.starts) - 1, device=codes.device),
                                        self.starts.diff().long())
        offset = (self.qmin - self.zero_t.float()).index_select(0, group).t()
        by_row = codes.add_(offset).mul_(self.scale_t.index_select(0, group).t())
        weight = torch.empty(self.out_features, self.in_features, device=codes.device)
        weight[:, self.perm.long()] = by_row[:self.out_features]
        return weight.to(dtype)

    def extra_repr(self):
        return f"groups={len(self.starts) - 1}"
