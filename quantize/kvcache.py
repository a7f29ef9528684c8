"""A low-bit KV cache for transformers: K and V held as densely packed integer codes on the static per-cluster grids
found by calibration, dequantized when attention reads them.

Each layer keeps the codes of every cached token as uint8 [batch, tokens, bytes per token], the channels of a token
packed head-major (the order of a k_proj/v_proj output, in which the grids were calibrated). The sequence stays on
dim -2, so the inherited DynamicLayer bookkeeping (length, masks, crop, beam reorder) works on the codes as they are.
Codes decode to exactly what the fake-quantized forward computes: (q - zero) * scale in float32, then the dtype.
Attention needs every cached token at every step, so all are decoded each time (holding them decoded would undo the
memory saving): codes unpacked straight to float32, then two passes, with the grid expanded per channel once.
"""
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .compiled import cpu_kernels
from .pack import pack_codes, packed_size, unpack_codes
from .packed import EXACT_INTEGERS, INDEX_DTYPE
from .quantizer import ActQuantizer, qrange, quantize


@dataclass
class KVGrid:
    """The static grid of a cached tensor: bits, index [C] (the cluster of each channel, head-major per token) and
    scale, zero [clusters]. compiled: encode and decode on the CPU by the compiled kernels, the same codes and
    values bit for bit (as the quantizer it comes from, ActQuantizer.compiled). source: that quantizer."""
    bits: int
    index: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    compiled: bool = False
    source: ActQuantizer | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, quantizer: ActQuantizer):
        if quantizer.ranges != "static" or not quantizer.calibrated:
            raise ValueError("a low-bit cache stores codes on calibrated static grids; this quantizer's ranges are "
                             f"{quantizer.ranges}")
        scale, zero = quantizer.scale, quantizer.zero.float()
        if zero.abs().max() > EXACT_INTEGERS:
            raise ValueError("a K/V zero point is beyond the integers float32 holds exactly")
        return cls(quantizer.bits, quantizer.index.to(INDEX_DTYPE), scale, zero, quantizer.compiled, quantizer)

    @classmethod
    def joined(cls, first, second):
        """One grid for the channels of `first` followed by those of `second` (the same bits)."""
        assert first.bits == second.bits, "a joined grid has one bit width"
        return cls(first.bits, torch.cat([first.index, second.index + len(first.scale)]),
                   torch.cat([first.scale, second.scale]), torch.cat([first.zero, second.zero]),
                   first.compiled and second.compiled)

    @property
    def channels(self):
        return len(self.index)

    def to(self, device):
        return KVGrid(self.bits, self.index.to(device), self.scale.to(device), self.zero.to(device), self.compiled,
                      self.source)

    def nbytes(self):
        return sum(t.nbytes for t in (self.index, self.scale, self.zero))

    @cached_property
    def per_channel(self):
        """(scale, zero, qmin - zero) [C]: the grid of each channel, kept (a few floats per channel), so that no
        step gathers it again. code + (qmin - zero) is exact in float32 (integers below EXACT_INTEGERS)."""
        scale, zero = self.scale[self.index].float(), self.zero[self.index]
        return scale, zero, qrange(self.bits)[0] - zero

    def encode(self, x):
        """x [b, t, C] -> uint8 [b, t, packed_size(C, bits)]."""
        scale, zero, _ = self.per_channel
        if self.compiled and x.device.type == "cpu":
            flat = x.float().contiguous().view(-1, self.channels)
            return cpu_kernels().kv_encode(flat, scale, zero, self.bits).view(*x.shape[:-1], -1)
        return pack_codes(quantize(x.float(), scale, zero, self.bits) - qrange(self.bits)[0], self.bits)

    def decode(self, codes, dtype, heads=1):
        """uint8 [b, t, bytes] -> [b, heads, t, C / heads] in dtype, as attention holds K and V: (code + qmin -
        zero) * scale."""
        scale, _, offset = self.per_channel
        if self.compiled and codes.device.type == "cpu":
            return cpu_kernels().kv_decode(codes.contiguous(), offset, scale, self.bits, heads).to(dtype)
        flat = unpack_codes(codes, self.bits, self.channels, torch.float32).add_(offset).mul_(scale).to(dtype)
        return flat.unflatten(-1, (heads, -1)).transpose(1, 2)


# A tensor attribute: the quantizer whose output a low-bit cache's keys are. Decoding gives that output bit for bit,
# as when the quantizer runs on the keys a float cache holds, so attention does not run it on them again
# (quantize/attention.py): at every step it would run over every cached token.
ON_GRID = "rptq_on_grid"


def _heads_last(states):
    """[b, heads, t, d] -> [b, t, heads * d], the order of a k_proj/v_proj output."""
    return states.transpose(1, 2).flatten(2)


class PackedKVLayer(DynamicLayer):
    """One decoder layer's K and V as packed codes; update() stores the new tokens' codes and returns every cached
    token dequantized, as attention expects. Where K and V have the same bits and K's codes end on a whole byte,
    they are quantized and decoded together (joint: one grid over both), which halves the small torch operations a
    step costs; the codes are the same. Compiled grids need no joint one: each is one call already."""

    def __init__(self, key_grid: KVGrid, value_grid: KVGrid):
        super().__init__()
        self.key_grid, self.value_grid = key_grid, value_grid
        self.joint = None

    def lazy_initialization(self, key_states, value_states):
        batch, self.heads = key_states.shape[:2]
        self.dtype, self.device = key_states.dtype, key_states.device
        for name, states, grid in (("K", key_states, self.key_grid), ("V", value_states, self.value_grid)):
            if states.shape[1] * states.shape[3] != grid.channels:
                raise ValueError(f"the cache's {name} grid has {grid.channels} channels, the model's {name} "
                                 f"{states.shape[1] * states.shape[3]}")
        self.key_grid, self.value_grid = self.key_grid.to(self.device), self.value_grid.to(self.device)
        self.split = [packed_size(grid.channels, grid.bits) for grid in (self.key_grid, self.value_grid)]
        if (self.key_grid.bits == self.value_grid.bits and self.key_grid.channels * self.key_grid.bits % 8 == 0
                and not self.key_grid.compiled):
            self.joint = KVGrid.joined(self.key_grid, self.value_grid)
        # uint8 from the start: torch.cat with the float empty tensor of DynamicLayer would promote the codes
        self.keys, self.values = (torch.empty(batch, 0, size, dtype=torch.uint8, device=self.device)
                                  for size in self.split)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        grids = (self.key_grid, self.value_grid)
        flat = [_heads_last(states) for states in (key_states, value_states)]
        if self.joint is None:
            new = [grid.encode(x) for grid, x in zip(grids, flat)]
        else:
            new = self.joint.encode(torch.cat(flat, -1)).split(self.split, -1)
        self.keys = torch.cat([self.keys, new[0]], dim=-2)
        self.values = torch.cat([self.values, new[1]], dim=-2)
        if self.joint is None:
            keys, values = (grid.decode(codes, self.dtype, self.heads)
                            for grid, codes in zip(grids, (self.keys, self.values)))
        else:
            both = self.joint.decode(torch.cat([self.keys, self.values], -1), self.dtype)[:, 0]  # [b, t, C_k + C_v]
            keys, values = (x.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                            for x in both.split([grid.channels for grid in grids], -1))
        setattr(keys, ON_GRID, self.key_grid.source)
        return keys, values


class PackedKVCache(Cache):
    """The low-bit cache of a whole model: grids[i] = (K grid, V grid) of decoder layer i."""

    def __init__(self, grids):
        super().__init__(layers=[PackedKVLayer(k, v) for k, v in grids])


def cache_nbytes(cache):
    """Bytes a cache holds: K and V (codes for a packed cache, floats otherwise) and a packed cache's grids (a
    joint one included). The grids expanded per channel for decoding (3 floats a channel) are not counted."""
    total = 0
    for layer in cache.layers:
        if layer.is_initialized:
            total += layer.keys.nbytes + layer.values.nbytes
        if isinstance(layer, PackedKVLayer):
            total += sum(grid.nbytes() for grid in (layer.key_grid, layer.value_grid, layer.joint)
                         if grid is not None)
    return total
