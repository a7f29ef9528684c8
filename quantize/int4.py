"""The fast, approximate kernel for packed Linears: torch's int4 matrix kernels (tinygemm on CUDA, its port on the
CPU), which read 4-bit codes with one bfloat16 (scale, zero) per output row and per group of KERNEL_GROUP input
columns, and compute in float32 from bfloat16 activations, rounding the output to bfloat16.

RPTQ's column groups (the input's clusters) have any size and need not be contiguous, so a layout is chosen once,
when a PackedLinear switches to this kernel: the columns of each group are gathered together and padded up to whole
kernel groups, the padding reading an appended zero activation (so its codes contribute nothing). The grid's weight
(q - z) * s, with q = c + qmin for a code c, is (c - MID_CODE) * s + m with m = (qmin + MID_CODE - z) * s. The
kernel runs the first term with a zero of 0; the second, m times the sum of each kernel group's activations, is a
small float32 product beside it: m is as large as the weight itself in the groups RPTQ gives an outlier channel
alone (scale at its 1e-4 floor, a zero point in the tens of thousands), where bfloat16 would lose it. It still
rounds differently from the exact kernel: bfloat16 scales, activations and outputs of the first term.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .quantizer import qrange

KERNEL_GROUP = 32  # the smallest group the kernels take (32, 64, 128 or 256 columns)
KERNEL_ROWS = 16  # the kernels take output rows in multiples of this: the weight gets rows of zero codes
KERNEL_BITS = 4
MID_CODE = 2 ** (KERNEL_BITS - 1)
CUDA_INNER_K_TILES = 2  # tinygemm's K tiling: it needs the padded columns to be a multiple of 16 * 2


def int4_layout(codes, groups, scale, zero, bits):
    """The kernel's layout of one weight. codes uint8 [rows, cols] (0 .. 2^bits - 1), groups [cols], scale and
    zero [rows, n_groups] -> (src int64 [padded]: the input column each kernel column reads, cols for padding;
    kernel codes int32 [rows', padded]; scale and offset m, float32 [rows', padded / KERNEL_GROUP]: one per kernel
    group), rows' = rows rounded up to KERNEL_ROWS."""
    assert bits <= KERNEL_BITS, f"the int4 kernels take codes of at most {KERNEL_BITS} bits"
    extra = -codes.shape[0] % KERNEL_ROWS
    codes, scale, zero = (F.pad(t, (0, 0, 0, extra)) for t in (codes, scale, zero))
    rows, cols = codes.shape
    groups = groups.long()
    sizes = torch.bincount(groups, minlength=scale.shape[1])
    padded = (sizes + KERNEL_GROUP - 1) // KERNEL_GROUP * KERNEL_GROUP
    order = torch.argsort(groups, stable=True)  # each group's columns together, in their own order
    ordered = groups[order]
    rank = torch.arange(cols, device=codes.device) - (sizes.cumsum(0) - sizes)[ordered]
    dest = (padded.cumsum(0) - padded)[ordered] + rank  # where each column lands among the padded ones
    src = torch.full((int(padded.sum()),), cols, dtype=torch.long, device=codes.device)
    src[dest] = order
    kernel_codes = codes.new_zeros(rows, len(src), dtype=torch.int32)
    kernel_codes[:, dest] = codes[:, order].int()
    owner = torch.repeat_interleave(torch.arange(len(sizes), device=codes.device), padded // KERNEL_GROUP)
    s = scale.float()[:, owner]
    return src, kernel_codes, s, ((qrange(bits)[0] + MID_CODE) - zero.float()[:, owner]) * s


def kernel_weight(kernel_codes):
    """int32 codes [rows, padded] -> the packed weight of the int4 kernel of the codes' device."""
    if kernel_codes.device.type == "cuda":  # tinygemm takes byte pairs, the even column in the high nibble
        pairs = (kernel_codes[:, ::2] << 4 | kernel_codes[:, 1::2]).to(torch.uint8)
        return torch.ops.aten._convert_weight_to_int4pack(pairs, CUDA_INNER_K_TILES)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(kernel_codes, 1)


class Int4Kernel(nn.Module):
    """x [..., cols] -> x W^T [..., rows] (no bias) in x's dtype, by the int4 kernel of the device it was built on."""

    max_bits = KERNEL_BITS
    # inputs of more rows run the exact kernel: the CPU kernel's time grows with every row (256 rows of SmolLM2's
    # gate_proj: 12x a float32 matmul, 37 ms), while dequantizing costs the same for any number
    max_rows = 32

    def __init__(self, codes, groups, scale, zero, bits):
        """codes uint8 [rows, cols], groups [cols], scale and zero [rows, n_groups], as a PackedLinear holds them."""
        super().__init__()
        self.out_features, self.in_features = codes.shape
        src, kernel_codes, s, offset = int4_layout(codes, groups, scale, zero, bits)
        self.register_buffer("src", src)
        self.register_buffer("weight", kernel_weight(kernel_codes))
        # the kernel's (scale, zero) [padded / KERNEL_GROUP, rows', 2], its zeros 0: the offsets run beside it
        self.register_buffer("scale_and_zero", torch.stack((s, torch.zeros_like(s)), -1).transpose(0, 1)
                             .to(torch.bfloat16).contiguous())
        self.register_buffer("offset_t", offset.t().contiguous())  # [padded / KERNEL_GROUP, rows']: addmm's order
        self.on_cuda = kernel_codes.is_cuda

    def forward(self, x):
        flat = F.pad(x.reshape(-1, self.in_features).float(), (0, 1))  # the padding's zero column
        picked = flat.index_select(1, self.src)
        low = picked.to(torch.bfloat16)
        if self.on_cuda:
            y = torch.ops.aten._weight_int4pack_mm(low, self.weight, KERNEL_GROUP, self.scale_and_zero)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(low, self.weight, KERNEL_GROUP, self.scale_and_zero)
        sums = picked.view(len(picked), -1, KERNEL_GROUP).sum(-1)  # [n, padded / KERNEL_GROUP]
        y = torch.addmm(y.float(), sums, self.offset_t)
        return y[:, :self.out_features].to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        return f"padded_in={len(self.src)}, group={KERNEL_GROUP}"
