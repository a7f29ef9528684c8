import pytest
import torch

from quantize import (
    ActQuantizer,
    ProbQuantizer,
    choose_qparams,
    cluster_index,
    cluster_minmax,
    dequantize,
    fake_quantize,
    quantize,
)


@pytest.mark.parametrize("grid", ["paper", "full"])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_values_inside_the_grid_round_trip_within_half_a_step(grid, bits):
    x = torch.linspace(-1.3, 2.7, 1001)
    scale, zero = choose_qparams(x.min(), x.max(), bits, grid)
    lowest, highest = dequantize(torch.tensor([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1]), scale, zero)
    inside = (x >= lowest - scale / 2) & (x <= highest + scale / 2)
    err = (fake_quantize(x, scale, zero, bits) - x).abs()
    assert err[inside].max() <= scale / 2 + 1e-5
    if grid == "full":
        assert inside.all()  # 2^k - 1 steps cover the whole range
    else:
        assert (highest - lowest).item() == pytest.approx((x.max() - x.min() - scale).item(), abs=1e-5)  # one bin lost


def test_fake_quantize_equals_quantize_then_dequantize():
    x = torch.randn(64, 16) * 3
    scale, zero = choose_qparams(x.amin(0), x.amax(0), 4)
    assert torch.allclose(fake_quantize(x, scale, zero, 4), dequantize(quantize(x, scale, zero, 4), scale, zero))


def test_paper_grid_matches_the_formula():
    xmin, xmax, bits = torch.tensor(-1.0), torch.tensor(3.0), 4
    scale, zero = choose_qparams(xmin, xmax, bits, "paper")
    assert scale.item() == pytest.approx(4 / 16)
    assert zero.item() == -round((3 - 1) / (2 * 0.25))
    q = quantize(torch.tensor([3.0]), scale, zero, bits)
    assert q.item() == 2 ** (bits - 1) - 1  # the top value lands on 2^(k-1) and is clamped


def test_full_grid_hits_both_ends():
    x = torch.tensor([-0.7, 0.2, 5.1])
    scale, zero = choose_qparams(x.min(), x.max(), 3, "full")
    q = quantize(x, scale, zero, 3)
    assert q.min().item() == -4 and q.max().item() == 3
    assert (dequantize(q, scale, zero) - x).abs().max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("grid", ["paper", "full"])
def test_out_of_range_values_clamp(grid):
    scale, zero = choose_qparams(torch.tensor(0.0), torch.tensor(1.0), 4, grid)
    lo = fake_quantize(torch.tensor([-0.0]), scale, zero, 4)
    hi = fake_quantize(torch.tensor([1.0]), scale, zero, 4)
    out = fake_quantize(torch.tensor([-100.0, 100.0]), scale, zero, 4)
    assert out[0] == lo[0] and out[1] == hi[0]


def test_constant_channels_get_the_references_scale_floor():
    """As the reference (quantizer.py:8, 230): scale >= 1e-4, so a constant channel keeps 2^k levels 1e-4 apart
    around its value; its zero point is not clamped, so a value beyond 1 keeps its grid too."""
    xmin = torch.tensor([0.0, 0.37, -0.5, 5.0])
    scale, zero = choose_qparams(xmin, xmin.clone(), 4)
    assert torch.equal(scale, torch.full((4,), 1e-4)) and zero[3] == -5e4
    assert torch.allclose(fake_quantize(xmin, scale, zero, 4), xmin, atol=1e-4)


def test_cluster_minmax_reduces_over_tokens_and_cluster_channels():
    x = torch.tensor([[1.0, -2.0, 3.0, 10.0], [0.5, 4.0, -1.0, 9.0]])
    lo, hi = cluster_minmax(x, cluster_index([3, 1]), 2)
    assert lo.tolist() == [-2.0, 9.0] and hi.tolist() == [4.0, 10.0]


def _relative_mse(x, sizes, bits=4):
    """Mean over channels of the quantization MSE relative to the channel's variance."""
    q = ActQuantizer.of(bits, cluster_index(sizes))
    q.set_ranges(*cluster_minmax(x, q.index, len(sizes)))
    return ((q(x) - x).pow(2).mean(0) / x.var(0)).mean().item()


def test_per_cluster_beats_per_tensor_on_channels_of_different_ranges():
    gen = torch.Generator().manual_seed(0)
    ranges = torch.cat([torch.full((48,), 0.1), torch.full((12,), 2.0), torch.full((4,), 40.0)])
    x = torch.randn(512, 64, generator=gen) * ranges  # channels already grouped by range
    per_tensor = _relative_mse(x, [64])
    per_cluster = _relative_mse(x, [48, 12, 4])
    assert per_cluster < per_tensor / 10


def test_dynamic_quantizer_uses_each_tensors_own_ranges():
    q = ActQuantizer.of(8, cluster_index([2, 2]), ranges="dynamic")
    x = torch.tensor([[0.0, 1.0, -50.0, 50.0]])
    y = q(x)
    assert (y[0, :2] - x[0, :2]).abs().max() < 1 / 256 + 1e-6  # small cluster keeps a fine step
    assert torch.allclose(q(3 * x), 3 * y, atol=1e-4)  # ranges follow the tensor, not a calibration


def test_token_ranges_are_each_tokens_own_over_all_channels():
    q = ActQuantizer.of(4, torch.zeros(4, dtype=torch.long), ranges="token")
    x = torch.tensor([[0.0, 1.0, 2.0, 3.2], [-100.0, 0.0, 50.0, 100.0]])
    y = q(x)
    assert (y[0] - x[0]).abs().max() <= 3.2 / 16 + 1e-6  # the small token keeps its own fine step (the paper grid
    # loses its top bin: up to one step at the maximum)
    assert torch.equal(q(x[:1]), y[:1])  # a token's result does not depend on the others: decoding is causal-safe
    assert (y[1] - x[1]).abs().max() <= 200 / 16 + 1e-4 and (y[1] - x[1]).abs().max() > 1


def test_the_quantizers_tensors_are_its_per_cluster_parameters_and_load_back():
    """What a saved model keeps: the cluster index and one scale and zero per cluster; a quantizer built from sizes
    alone and given them quantizes alike."""
    index = torch.tensor([2, 0, 0, 1, 2, 1])  # clusters need not be contiguous
    x = torch.randn(50, 6) * torch.tensor([1.0, 0.1, 0.1, 5.0, 1.0, 5.0])
    q = ActQuantizer.of(3, index)
    q.set_ranges(*cluster_minmax(x, index, 3))
    state = q.state_dict()
    assert {k: (t.dtype, tuple(t.shape)) for k, t in state.items()} == {
        "index": (torch.int32, (6,)), "scale": (torch.float32, (3,)), "zero": (torch.int32, (3,))}
    again = ActQuantizer(3, channels=6, clusters=3)
    again.load_state_dict(state)
    again.calibrated = True
    assert torch.equal(again(x), q(x))


def test_static_quantizer_refuses_to_run_uncalibrated():
    with pytest.raises(RuntimeError):
        ActQuantizer.of(4, cluster_index([4]))(torch.zeros(2, 4))


def test_prob_quantizer_uses_a_fixed_grid():
    p = torch.tensor([0.0, 0.1234, 0.5, 1.0])
    assert torch.equal(ProbQuantizer(8)(p.clone()), torch.round(p * 255) / 255)
    assert ProbQuantizer(2)(p.clone()).tolist() == [0.0, 0.0, pytest.approx(2 / 3), 1.0]
