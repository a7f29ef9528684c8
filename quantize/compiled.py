"""The compiled CPU kernels of decoding (cpu_kernels.cpp), built on first use by torch.utils.cpp_extension (a C++
compiler and ninja are needed; the build is cached on disk) for this machine's CPU, with OpenMP (without it the
kernels' parallel loops would run on one thread):
- fused_linear: a packed Linear's product from its codes (quantize/fused.py);
- fake_quantize: an activation on a static per-channel grid, bit for bit as ActQuantizer's torch operations;
- kv_encode / kv_decode: a low-bit K/V cache's codes (quantize/kvcache.py), bit for bit as its torch operations.
Decoding one token runs hundreds of these on small tensors, where one pass in C++ replaces several torch operations
and their per-call cost. A model takes them through use_kernel(model, "fused") (quantize/packed.py).
"""
from functools import cache
from pathlib import Path


@cache
def cpu_kernels():
    """The compiled module (built on first call)."""
    from torch.utils.cpp_extension import load

    return load(name="rptq_cpu_kernels", sources=[str(Path(__file__).with_name("cpu_kernels.cpp"))],
                extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
