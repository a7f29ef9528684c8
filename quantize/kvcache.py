"""A low-bit KV cache for transformers: K and V held as densely packed integer codes on the static per-cluster grids
found by calibration, dequantized when attention reads them.

Each layer keeps the codes of every cached token as uint8 [batch, tokens, bytes per token], the channels of a token
packed head-major (the order of a k_proj/v_proj output, in which the grids were calibrated). The sequence stays on
dim -2, so the inherited DynamicLayer bookkeeping (length, masks, crop, beam reorder) works on the codes as they are.
Codes decode to exactly what the fake-quantized forward computes: (q - zero) * scale in float32, then the dtype.
"""
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .pack import pack_codes, packed_size, unpack_codes
from .packed import INDEX_DTYPE
from .quantizer import ActQuantizer, dequantize, qrange, quantize


@dataclass
class KVGrid:
    """The static grid of a cached tensor: bits, index [C] (the cluster of each channel, head-major per token) and
    scale, zero [clusters]."""
    bits: int
    index: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def of(cls, quantizer: ActQuantizer):
        if quantizer.ranges != "static" or not quantizer.calibrated:
            raise ValueError("a low-bit cache stores codes on calibrated static grids; this quantizer's ranges are "
                             f"{quantizer.ranges}")
        # the saved format's index dtype: half the bytes of the quantizer's int64, still an index for gathers
        return cls(quantizer.bits, quantizer.index.to(INDEX_DTYPE), *quantizer.cluster_qparams())

    @property
    def channels(self):
        return len(self.index)

    def to(self, device):
        return KVGrid(self.bits, self.index.to(device), self.scale.to(device), self.zero.to(device))

    def nbytes(self):
        return sum(t.nbytes for t in (self.index, self.scale, self.zero))

    def encode(self, x):
        """x [b, heads, t, d] -> uint8 [b, t, packed_size(heads * d, bits)]."""
        flat = x.transpose(1, 2).flatten(2).float()
        q = quantize(flat, self.scale[self.index], self.zero[self.index], self.bits)
        return pack_codes((q - qrange(self.bits)[0]).to(torch.uint8), self.bits)

    def decode(self, codes, heads, dtype):
        """uint8 [b, t, bytes] -> [b, heads, t, d] in dtype."""
        q = unpack_codes(codes, self.bits, self.channels).float() + qrange(self.bits)[0]
        x = dequantize(q, self.scale[self.index], self.zero[self.index]).to(dtype)
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class PackedKVLayer(DynamicLayer):
    """One decoder layer's K and V as packed codes; update() stores the new tokens' codes and returns every cached
    token dequantized, as attention expects."""

    def __init__(self, key_grid: KVGrid, value_grid: KVGrid):
        super().__init__()
        self.key_grid, self.value_grid = key_grid, value_grid

    def lazy_initialization(self, key_states, value_states):
        batch, self.heads = key_states.shape[:2]
        self.dtype, self.device = key_states.dtype, key_states.device
        for name, states, grid in (("K", key_states, self.key_grid), ("V", value_states, self.value_grid)):
            if states.shape[1] * states.shape[3] != grid.channels:
                raise ValueError(f"the cache's {name} grid has {grid.channels} channels, the model's {name} "
                                 f"{states.shape[1] * states.shape[3]}")
        self.key_grid, self.value_grid = self.key_grid.to(self.device), self.value_grid.to(self.device)
        # uint8 from the start: torch.cat with the float empty tensor of DynamicLayer would promote the codes
        self.keys, self.values = (torch.empty(batch, 0, packed_size(grid.channels, grid.bits), dtype=torch.uint8,
                                              device=self.device) for grid in (self.key_grid, self.value_grid))
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, self.key_grid.encode(key_states)], dim=-2)
        self.values = torch.cat([self.values, self.value_grid.encode(value_states)], dim=-2)
        return (self.key_grid.decode(self.keys, self.heads, self.dtype),
                self.value_grid.decode(self.values, self.heads, self.dtype))


class PackedKVCache(Cache):
    """The low-bit cache of a whole model: grids[i] = (K grid, V grid) of decoder layer i."""

    def __init__(self, grids):
        super().__init__(layers=[PackedKVLayer(k, v) for k, v in grids])


def cache_nbytes(cache):
    """Bytes a cache holds: K and V (codes for a packed cache, floats otherwise) and a packed cache's grids."""
    total = 0
    for layer in cache.layers:
        if layer.is_initialized:
            total += layer.keys.nbytes + layer.values.nbytes
        if isinstance(layer, PackedKVLayer):
            total += layer.key_grid.nbytes() + layer.value_grid.nbytes()
    return total
