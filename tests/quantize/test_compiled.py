"""quantize/compiled.py: the compiled CPU kernels give what the torch operations they replace give, bit for bit."""
import pytest
import torch

from quantize import ActQuantizer, cluster_minmax
from quantize.kvcache import KVGrid, PackedKVLayer
from tests.conftest import needs_compiler

pytestmark = needs_compiler
CHANNELS, HEADS = 39, 3  # odd: a 4-bit row ends in half a byte


def _quantizer(bits, seed=0, channels=CHANNELS):
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 5, (channels,), generator=gen)
    index[:5] = torch.arange(5)
    quantizer = ActQuantizer.of(bits, index)
    quantizer.set_ranges(*cluster_minmax(torch.randn(64, channels, generator=gen) * 3, index, 5))
    return quantizer


def _inputs(quantizer, dtype=torch.float32):
    """[2, 40, C]: more rows than one parallel task takes, values beyond the ranges, and exact ties (k + 1/2) * s,
    which round half to even."""
    x = torch.randn(2, 40, CHANNELS, generator=torch.Generator().manual_seed(1)) * 4
    scale = quantizer.scale[quantizer.index.long()]
    x[0, 0] = (torch.arange(CHANNELS) % 7 - 3 + 0.5) * scale
    return x.to(dtype)


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_compiled_activation_quantizer_gives_the_same_values(bits, dtype):
    quantizer = _quantizer(bits)
    x = _inputs(quantizer, dtype)
    want = quantizer(x)
    quantizer.compiled = True
    got = quantizer(x)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(quantizer(x[:, 3:9].transpose(0, 1)), want[:, 3:9].transpose(0, 1))  # not contiguous


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_compiled_kv_codes_are_the_same_bytes_and_decode_to_the_same_values(bits):
    quantizer = _quantizer(bits)
    grid, compiled = KVGrid.of(quantizer), KVGrid.of(quantizer)
    compiled.compiled = True
    x = _inputs(quantizer)
    codes = compiled.encode(x)
    assert codes.shape == (2, 40, -(-CHANNELS * bits // 8)) and torch.equal(codes, grid.encode(x))
    values = compiled.decode(codes, torch.float32, HEADS)
    assert values.shape == (2, HEADS, 40, CHANNELS // HEADS) and values.is_contiguous()  # attention's layout
    assert torch.equal(values, grid.decode(codes, torch.float32, HEADS))
    assert torch.equal(values, quantizer(x).unflatten(-1, (HEADS, -1)).transpose(1, 2))


def test_a_compiled_quantizer_hands_its_kernels_to_the_cache_it_makes():
    channels = 2 * CHANNELS  # whole bytes of 4-bit codes: a torch cache would join K and V in one grid
    states = [torch.randn(1, 5, channels).unflatten(-1, (HEADS, -1)).transpose(1, 2) for _ in range(2)]
    layers = {}
    for compiled in (False, True):
        key, value = _quantizer(4, 0, channels), _quantizer(4, 1, channels)
        key.compiled = value.compiled = compiled
        layers[compiled] = PackedKVLayer(KVGrid.of(key), KVGrid.of(value))
        layers[compiled].update(*states)
    assert layers[False].joint is not None and not layers[False].key_grid.compiled
    assert layers[True].key_grid.compiled and layers[True].joint is None  # compiled grids need no joint one
    assert torch.equal(layers[True].keys, layers[False].keys) and torch.equal(layers[True].values, layers[False].values)
    key.compiled = False
    assert not KVGrid.joined(KVGrid.of(key), KVGrid.of(value)).compiled
