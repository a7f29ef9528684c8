"""quantize/kvcache.py: K and V stored as packed codes decode to what the fake quantizer gives."""
import pytest
import torch
from transformers import DynamicCache

from quantize import ActQuantizer, cluster_minmax
from quantize.kvcache import KVGrid, PackedKVCache, PackedKVLayer, cache_nbytes

HEADS, HEAD_DIM = 2, 6


def _grid(bits, seed=0):
    """A calibrated quantizer over HEADS * HEAD_DIM channels in 4 clusters, and its grid."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 4, (HEADS * HEAD_DIM,), generator=gen)
    index[:4] = torch.arange(4)
    quantizer = ActQuantizer.of(bits, index)
    quantizer.set_ranges(*cluster_minmax(torch.randn(64, HEADS * HEAD_DIM, generator=gen) * 3, index, 4))
    return quantizer, KVGrid.of(quantizer)


def _heads(flat):
    """[b, t, heads * d] -> [b, heads, t, d], as attention holds K and V."""
    return flat.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_codes_decode_to_the_fake_quantized_values_exactly(bits):
    quantizer, grid = _grid(bits)
    flat = torch.randn(2, 5, HEADS * HEAD_DIM) * 4  # beyond the calibrated ranges too: clamped alike
    codes = grid.encode(flat)
    assert codes.dtype == torch.uint8 and codes.shape == (2, 5, -(-HEADS * HEAD_DIM * bits // 8))
    assert torch.equal(grid.decode(codes, torch.float32, HEADS), _heads(quantizer(flat)))
    assert grid.scale.shape == (4,)  # per cluster, not per channel


@pytest.mark.parametrize("value_bits, joint", [(3, False), (4, True)])
def test_a_layer_appends_codes_and_returns_every_token_dequantized(value_bits, joint):
    """K and V of the same bits go through one joint grid: the same codes, the same values."""
    (kq, kgrid), (vq, vgrid) = _grid(4, 1), _grid(value_bits, 2)
    layer = PackedKVLayer(kgrid, vgrid)
    k, v = torch.randn(1, 7, HEADS * HEAD_DIM), torch.randn(1, 7, HEADS * HEAD_DIM)
    layer.update(_heads(k[:, :5]), _heads(v[:, :5]))
    keys, values = layer.update(_heads(k[:, 5:]), _heads(v[:, 5:]))
    assert (layer.joint is not None) == joint
    assert torch.equal(keys, _heads(kq(k))) and torch.equal(values, _heads(vq(v)))
    assert torch.equal(layer.keys, kgrid.encode(k)) and torch.equal(layer.values, vgrid.encode(v))
    assert layer.get_seq_length() == 7 and layer.keys.dtype == layer.values.dtype == torch.uint8
    assert layer.keys.shape == (1, 7, 6) and layer.values.shape == (1, 7, 6 if joint else 5)  # 12 channels
    layer.crop(-2)
    assert layer.get_seq_length() == 5
    with pytest.raises(ValueError, match="12 channels, the model's K 8"):
        PackedKVLayer(kgrid, vgrid).update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))


def test_cache_bytes_are_codes_plus_grids():
    grids = [(_grid(4, 0)[1], _grid(4, 1)[1]) for _ in range(3)]
    packed, standard = PackedKVCache(grids), DynamicCache()
    x = _heads(torch.randn(2, 10, HEADS * HEAD_DIM))
    for i in range(3):
        packed.update(x, x, i)
        standard.update(x, x, i)
    grid_bytes = sum(g.nbytes() for pair in grids for g in (*pair, KVGrid.joined(*pair)))
    assert cache_nbytes(packed) == 3 * 2 * (2 * 10 * 6) + grid_bytes
    assert cache_nbytes(standard) == 3 * 2 * x.nbytes
    with pytest.raises(ValueError, match="static"):
        KVGrid.of(ActQuantizer.of(4, torch.zeros(4, dtype=torch.long), ranges="dynamic"))


def test_a_zero_point_beyond_exact_float32_integers_is_refused():
    """Decoding adds qmin - zero to the codes in float32, exact (and equal to the quantizer's q - zero) only for
    integers below 2^24."""
    quantizer = ActQuantizer.of(4, torch.zeros(4, dtype=torch.long))
    quantizer.set_qparams(torch.tensor([1e-4]), torch.tensor([-2.0 ** 25]))
    with pytest.raises(ValueError, match="float32 holds exactly"):
        KVGrid.of(quantizer)
