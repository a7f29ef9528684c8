import torch
from torch import nn

from quantize import GPTQ, fake_quantize, quantize_rtn, weight_qparams


def _layer_and_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    linear = nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(32, 64, generator=gen))
    # correlated inputs with channels of different scales: where GPTQ's error feedback pays off
    mix = torch.randn(64, 64, generator=gen)
    x = (torch.randn(1024, 64, generator=gen) @ mix) * torch.logspace(-1, 1, 64)
    return linear, x


def test_weight_qparams_are_constant_within_each_input_cluster():
    w = torch.randn(8, 10)
    scale, zero = weight_qparams(w, [3, 5, 2], bits=4)
    for cols in ([0, 1, 2], [3, 4, 5, 6, 7], [8, 9]):
        assert (scale[:, cols] == scale[:, cols[:1]]).all() and (zero[:, cols] == zero[:, cols[:1]]).all()
    assert not torch.equal(scale[:, 0], scale[:, 3])


def test_gptq_weights_lie_on_the_cluster_grid_and_beat_round_to_nearest():
    sizes = [16, 16, 32]
    linear, x = _layer_and_inputs()
    original = linear.weight.detach().clone()
    rtn = nn.Linear(64, 32, bias=False)
    rtn.weight.data.copy_(original)
    quantize_rtn(rtn, sizes, bits=3)

    gptq = GPTQ(linear)
    for chunk in x.split(256):
        gptq.add_batch(chunk)
    gptq.quantize(sizes, bits=3)
    q = linear.weight.detach()

    scale, zero = weight_qparams(original, sizes, bits=3)
    assert torch.allclose(fake_quantize(q, scale, zero, 3), q, atol=1e-5)  # on the grid of the original ranges
    err_gptq = (x @ (q - original).T).pow(2).mean()
    err_rtn = (x @ (rtn.weight - original).T).pow(2).mean()
    assert err_gptq < 0.95 * err_rtn


def test_hessian_permutes_with_the_input_columns():
    linear, x = _layer_and_inputs(1)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    a, b = GPTQ(linear), GPTQ(linear)
    a.add_batch(x)
    a.permute(perm)
    b.add_batch(x[:, perm])
    assert torch.allclose(a.H, b.H, atol=1e-4)
