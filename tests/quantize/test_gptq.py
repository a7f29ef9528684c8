import pytest
import torch
from torch import nn

from quantize import GPTQ, cluster_index, column_groups, fake_quantize, quantize_rtn, weight_qparams

CLUSTERS = column_groups("cluster", 64, clusters=cluster_index([16, 16, 32]))


def _layer_and_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=gen))
    # strongly correlated inputs (rank 16 plus noise), as real activations are: GPTQ's error feedback pays off
    x = torch.randn(1024, 16, generator=gen) @ torch.randn(16, 64, generator=gen)
    x += 0.1 * torch.randn(1024, 64, generator=gen)
    return linear, x


def _copy(linear):
    twin = nn.Linear(linear.in_features, linear.out_features, bias=False)
    twin.weight.data.copy_(linear.weight.data)
    return twin


def _gptq(linear, x, groups, bits, **kw):
    g = GPTQ(linear.in_features)
    for chunk in x.split(256):
        g.add_batch(chunk)
    g.quantize(linear, groups, bits, **kw)
    return linear.weight.detach()


def _output_error(x, q, w):
    return (x @ (q - w).T).pow(2).mean().item()  # ||X W^T - X Q^T||^2 / n


def test_column_groups():
    assert column_groups("cluster", 5, clusters=torch.tensor([0, 0, 1, 1, 0])).tolist() == [0, 0, 1, 1, 0]
    assert column_groups("channel", 3).tolist() == [0, 0, 0]
    assert column_groups("group", 5, groupsize=2).tolist() == [0, 0, 1, 1, 2]


def test_weight_qparams_are_constant_within_each_group():
    w = torch.randn(8, 10)
    scale, zero = weight_qparams(w, column_groups("cluster", 10, clusters=cluster_index([3, 5, 2])), bits=4)
    for cols in ([0, 1, 2], [3, 4, 5, 6, 7], [8, 9]):
        assert (scale[:, cols] == scale[:, cols[:1]]).all() and (zero[:, cols] == zero[:, cols[:1]]).all()
    assert not torch.equal(scale[:, 0], scale[:, 3])


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("granularity, act_order", [("cluster", False), ("channel", False), ("group", False),
                                                    ("cluster", True)])
def test_gptq_beats_round_to_nearest_and_stays_on_the_grid(bits, granularity, act_order):
    linear, x = _layer_and_inputs()
    original = linear.weight.detach().clone()
    groups = column_groups(granularity, 64, clusters=CLUSTERS, groupsize=16)
    rtn = _copy(linear)
    rtn_grid = quantize_rtn(rtn, groups, bits)
    q = _gptq(linear, x, groups, bits, act_order=act_order)

    scale, zero = weight_qparams(original, groups, bits)
    assert torch.equal(rtn_grid[0], scale) and torch.equal(rtn_grid[1], zero)  # the grid it rounded to
    assert torch.allclose(fake_quantize(q, scale, zero, bits), q, atol=1e-5)  # each column on its group's grid
    for g in groups.unique():
        assert all(row.unique().numel() <= 2 ** bits for row in q[:, groups == g])
    assert _output_error(x, q, original) < 0.5 * _output_error(x, rtn.weight.detach(), original)


def test_identity_hessian_makes_gptq_round_to_nearest():
    linear, _ = _layer_and_inputs(2)
    rtn = _copy(linear)
    quantize_rtn(rtn, CLUSTERS, 4)
    g = GPTQ(64)
    g.H = torch.eye(64)  # uncorrelated unit inputs: no error is worth moving to another column
    g.quantize(linear, CLUSTERS, 4)
    assert torch.allclose(linear.weight, rtn.weight, atol=1e-6)


def test_dead_columns_are_zeroed_without_nans():
    linear, x = _layer_and_inputs(3)
    x[:, [5, 40]] = 0  # inputs that never fire
    q = _gptq(linear, x, CLUSTERS, 4)
    assert torch.isfinite(q).all()
    assert (q[:, [5, 40]] == 0).all()


def test_act_order_permutation_is_undone():
    # with a diagonal Hessian no error moves between columns, so any column order must give round-to-nearest;
    # a permutation left in place would put columns where their neighbours' values belong
    linear, _ = _layer_and_inputs(4)
    rtn, rtn_original = _copy(linear), linear.weight.detach().clone()
    quantize_rtn(rtn, CLUSTERS, 3)
    g = GPTQ(64)
    g.H = torch.diag(torch.rand(64, generator=torch.Generator().manual_seed(0)) + 0.5)
    scale, zero = g.quantize(linear, CLUSTERS, 3, act_order=True)
    assert torch.equal(scale, weight_qparams(rtn_original, CLUSTERS, 3)[0])  # the scales follow their columns back
    assert torch.allclose(linear.weight, rtn.weight, atol=1e-6)


def test_hessian_permutes_with_the_input_columns():
    linear, x = _layer_and_inputs(1)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    a, b = GPTQ(64), GPTQ(64)
    a.add_batch(x)
    a.permute(perm)
    b.add_batch(x[:, perm])
    assert torch.allclose(a.H, b.H, atol=1e-4)


def test_a_one_channel_weight_group_keeps_its_levels_1e4_apart():
    """The reference's scale floor: a group of one input column has a range of zero in every row, yet gets 2^bits
    levels 1e-4 apart around its value, so GPTQ can still move that column by a few levels."""
    linear, x = _layer_and_inputs(5)
    groups = cluster_index([40, 1, 23])  # column 40 is a cluster of its own, after 40 columns whose errors it takes
    scale, zero = weight_qparams(linear.weight.detach(), groups, bits=4)
    assert torch.all(scale[:, 40] == 1e-4) and torch.all(scale[:, 0] > 1e-4)
    levels = (torch.arange(-8, 8) - zero[:, 40:41].double()) * scale[:, 40:41].double()  # [rows, 16]
    assert torch.allclose(levels.diff(dim=1), torch.full((32, 15), 1e-4, dtype=torch.float64), atol=1e-9)
    nearest = fake_quantize(linear.weight.detach()[:, 40], scale[:, 40], zero[:, 40], 4)
    q = _gptq(linear, x, groups, 4)[:, 40]
    code = q / 1e-4 + zero[:, 40]
    assert torch.allclose(code, code.round(), atol=1e-2) and code.round().min() >= -8 and code.round().max() <= 7
    assert ((q - nearest).abs() > 0.9e-4).any()  # and moved off the nearest level by the error feedback
