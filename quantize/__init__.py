"""Numerics: quantizers, GPTQ, the probability-quantizing attention."""
from .gptq import GPTQ, WEIGHT_GRANULARITIES, WEIGHT_QUANTIZERS, GPTQError, column_groups, quantize_rtn, weight_qparams
from .pack import pack_codes, packed_size, unpack_codes
from .packed import GridError, PackedLinear, WeightGrid
from .quantizer import (
    GRIDS,
    RANGES,
    ActQuantizer,
    ProbQuantizer,
    choose_qparams,
    cluster_index,
    cluster_minmax,
    dequantize,
    fake_quantize,
    quantize,
    reduce_channels,
)

__all__ = ["GPTQ", "WEIGHT_GRANULARITIES", "WEIGHT_QUANTIZERS", "GPTQError", "column_groups", "quantize_rtn",
           "weight_qparams", "GRIDS", "RANGES",
           "ActQuantizer", "ProbQuantizer", "choose_qparams", "cluster_index", "cluster_minmax", "dequantize",
           "fake_quantize", "quantize", "reduce_channels", "pack_codes", "packed_size", "unpack_codes", "GridError",
           "PackedLinear", "WeightGrid"]
