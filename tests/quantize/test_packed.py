"""quantize/packed.py: weight grids as the quantizers chose them, and the Linear that keeps its weight packed."""
import pytest
import torch
from torch import nn

from quantize import GPTQ, cluster_index, column_groups, quantize_rtn
from quantize.pack import packed_size
from quantize.packed import EXACT_INTEGERS, GridError, PackedLinear, WeightGrid, zero_layout

GROUPS = cluster_index([5, 9, 3])  # 17 input columns in 3 groups of uneven sizes


def _linear(rows=6, cols=17, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(cols, rows, bias=bias)


@pytest.mark.parametrize("bits", range(2, 9))
def test_a_packed_linear_gives_the_fake_quantized_linear_exactly(bits):
    linear = _linear(bias=bits % 2 == 0)
    grid = WeightGrid.from_expanded(bits, GROUPS, *quantize_rtn(linear, GROUPS, bits))
    packed = PackedLinear.from_linear(linear, grid)
    x = torch.randn(4, 3, 17)
    assert torch.equal(packed(x), linear(x))
    assert packed.codes.dtype == torch.uint8 and packed.codes.numel() == -(-6 * 17 * bits // 8)  # dense, 3 bits too
    assert packed.scale.shape == packed.zero.shape == (6, 3) and packed.groups.tolist() == GROUPS.tolist()


def test_gptq_with_act_order_gives_the_grid_of_each_column_group():
    linear = _linear(rows=8, cols=32, seed=1)
    groups = column_groups("group", 32, groupsize=8)
    gptq = GPTQ(32)
    gptq.add_batch(torch.randn(256, 32, generator=torch.Generator().manual_seed(0)))
    scale, zero = gptq.quantize(linear, groups, 3, act_order=True)
    grid = WeightGrid.from_expanded(3, groups, scale, zero)
    assert grid.scale.shape == (8, 4)
    assert torch.equal(grid.expanded()[0], scale) and torch.equal(grid.expanded()[1], zero)
    x = torch.randn(5, 32)
    assert torch.equal(PackedLinear.from_linear(linear, grid)(x), linear(x))


@pytest.mark.parametrize("value", [5.0, -4.0, 0.7, 0.001])
def test_a_one_column_group_far_from_zero_keeps_its_weight(value):
    """A group of one column has a range of zero, so its scale is the 1e-4 floor and its zero point about
    -value / 1e-4: -50,000 for 5.0, beyond int16 (SmolLM2 has weights beyond 3.3 in such groups). The zeros are
    packed in as many bits as their span takes, and give the weight back exactly."""
    linear = _linear()
    with torch.no_grad():
        linear.weight[:, 0] = value
    groups = cluster_index([1, 16])
    scale, zero = quantize_rtn(linear, groups, 4)
    packed = PackedLinear.from_linear(linear, WeightGrid.from_expanded(4, groups, scale, zero))
    assert torch.equal(packed.zero.float(), WeightGrid.from_expanded(4, groups, scale, zero).zero)
    assert packed.zero_bits == (int(packed.zero.max()) - int(packed.zero.min())).bit_length()
    assert packed.zero_codes.numel() == packed_size(2 * 6, packed.zero_bits)
    assert torch.equal(packed.dequantized_weight(torch.float32), linear.weight)
    x = torch.randn(3, 17)
    assert torch.equal(packed(x), linear(x))


@pytest.mark.parametrize("low, high, bits", [(0, 0, 1), (-128, 127, 8), (-129, 127, 9), (5, 6, 1), (0, 32768, 16),
                                             (-EXACT_INTEGERS, EXACT_INTEGERS, 25)])
def test_zero_points_take_the_bits_of_their_span(low, high, bits):
    assert zero_layout(torch.tensor([[low, float(low)], [float(high), high]])) == (low, bits)


def test_zero_points_beyond_exact_float32_integers_or_not_integers_are_refused():
    with pytest.raises(GridError, match="float32 holds exactly"):
        zero_layout(torch.tensor([[EXACT_INTEGERS + 1.0]]))
    with pytest.raises(GridError, match="not a whole number"):
        zero_layout(torch.tensor([[0.5]]))


def test_a_weight_off_its_grid_is_refused_not_packed():
    linear = _linear()
    grid = WeightGrid.from_expanded(4, GROUPS, *quantize_rtn(linear, GROUPS, 4))
    with torch.no_grad():
        linear.weight[2, 3] += 0.3 * grid.scale[2, 0]
    with pytest.raises(GridError, match="not on its 4-bit grid"):
        PackedLinear.from_linear(linear, grid)


def test_scales_that_vary_inside_a_group_are_refused():
    scale, zero = torch.ones(2, 4), torch.zeros(2, 4)
    scale[1, 3] = 2
    with pytest.raises(GridError, match="vary inside a column group"):
        WeightGrid.from_expanded(4, torch.zeros(4, dtype=torch.long), scale, zero)


def test_half_precision_weights_pack_too():
    linear = _linear(seed=2)
    grid = WeightGrid.from_expanded(4, GROUPS, *quantize_rtn(linear, GROUPS, 4))
    half = linear.half()
    packed = PackedLinear.from_linear(half, grid)
    assert torch.equal(packed.dequantized_weight(torch.float16), half.weight)
