"""quantize/int4.py and PackedLinear's int4 kernel: RPTQ's column groups laid out for torch's int4 kernel, which
gives the exact weight's outputs up to bfloat16 rounding."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantize import cluster_index, quantize_rtn
from quantize.int4 import KERNEL_GROUP, MID_CODE, Int4Kernel, int4_layout
from quantize.packed import PackedLinear, WeightGrid, use_kernel
from rptq import artifact
from rptq.generate import new_cache

MAX_ROWS = Int4Kernel.max_rows
BF16_TOLERANCE = 2 ** -6  # bfloat16 activations, scales and outputs: a few of its 8-bit steps, relative
# a whole model: rounding moves some K/V values across a quantization boundary, one level off (tests/rptq/
# test_generate.py sees that with float rounding alone)
MODEL_TOLERANCE = 0.1


def _groups(seed=0):
    """75 input columns in 5 groups: not contiguous, of 1, 8, 33 (two kernel groups), 16 and 17 columns."""
    sizes = torch.tensor([1, 8, 33, 16, 17])
    return cluster_index(sizes)[torch.randperm(int(sizes.sum()), generator=torch.Generator().manual_seed(seed))]


def _packed(bits, rows=24, bias=True, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(75, rows, bias=bias)
    groups = _groups(seed)
    with torch.no_grad():
        linear.weight[:, groups == 0] = 4.0  # a one-column group: the 1e-4 scale floor and a zero near -40,000
    grid = WeightGrid.from_expanded(bits, groups, *quantize_rtn(linear, groups, bits))
    return PackedLinear.from_linear(linear, grid), linear


def _relative_error(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_the_layout_puts_each_column_once_with_its_own_group_and_pads_with_the_zero_column():
    packed, _ = _packed(4)
    codes = packed.unpacked_codes()
    src, kernel_codes, scale, offset = int4_layout(codes, packed.groups, packed.scale, packed.zero, 4)
    real = src < 75
    assert len(src) % KERNEL_GROUP == 0 and len(src) == 32 * (1 + 1 + 2 + 1 + 1)  # each group whole kernel groups
    assert torch.equal(src[real].sort().values, torch.arange(75))  # every column exactly once
    owner = packed.groups.long()[src.clamp(max=74)].view(-1, KERNEL_GROUP)
    for kernel_group, cols in zip(owner, real.view(-1, KERNEL_GROUP)):
        assert kernel_group[cols].unique().numel() == 1  # one RPTQ group per kernel group
    assert torch.equal(kernel_codes[:24, real], codes[:, src[real]].int())
    # (c - MID_CODE) * s + m is the grid's weight: checked in float64, m rounded once to float32
    s, m = (t.repeat_interleave(KERNEL_GROUP, 1).double() for t in (scale, offset))
    weight = (kernel_codes.double() - MID_CODE) * s + m
    exact = packed.dequantized_weight(torch.float64)[:, src[real]]
    assert torch.allclose(weight[:24, real], exact, rtol=0, atol=1e-6 * exact.abs().max().item())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_the_int4_kernel_gives_the_exact_outputs_up_to_bfloat16_rounding(bits):
    packed, linear = _packed(bits, rows=20)  # 20 rows: padded to the kernel's 32
    x = torch.randn(2, 3, 75)
    exact = packed(x)
    assert torch.equal(exact, linear(x))
    use_kernel(packed, "int4")
    fast = packed(x)
    assert fast.shape == exact.shape and fast.dtype == torch.float32
    assert _relative_error(fast, exact) < BF16_TOLERANCE


def test_the_kernel_matches_an_emulation_of_its_two_terms():
    """bfloat16 activations and scales, the output rounded to bfloat16, for (c - MID_CODE) * s; float32 for m."""
    packed, _ = _packed(4, bias=False)
    codes = packed.unpacked_codes()
    kernel = Int4Kernel(codes, packed.groups, packed.scale, packed.zero, 4)
    src, kernel_codes, scale, offset = int4_layout(codes, packed.groups, packed.scale, packed.zero, 4)
    s = scale.bfloat16().float().repeat_interleave(KERNEL_GROUP, 1)
    x = torch.randn(5, 75)
    picked = F.pad(x, (0, 1))[:, src]
    centered = (picked.bfloat16().float() @ ((kernel_codes.float() - MID_CODE) * s).t()).bfloat16().float()
    emulated = (centered + picked.view(5, -1, KERNEL_GROUP).sum(-1) @ offset.t())[:, :24]
    assert torch.allclose(kernel(x), emulated, rtol=2 ** -7, atol=1e-6)  # float32 sums in another order


def test_short_inputs_run_the_int4_kernel_and_long_ones_the_exact_one_with_the_hooks_kept():
    packed, linear = _packed(4)
    seen = []
    packed.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    assert use_kernel(packed, "exact") == 0 and packed.kernel is None
    assert use_kernel(packed, "int4") == 1 and use_kernel(packed, "int4") == 1  # once
    short, long = torch.randn(1, MAX_ROWS, 75), torch.randn(1, MAX_ROWS + 1, 75)
    assert not torch.equal(packed(short), linear(short))
    assert torch.equal(packed(long), linear(long))
    assert seen == [(1, MAX_ROWS, 24), (1, MAX_ROWS + 1, 24)]
    with pytest.raises(ValueError, match="unknown kernel"):
        use_kernel(packed, "int3")


def test_codes_wider_than_4_bits_stay_on_the_exact_kernel():
    model = nn.Sequential(_packed(4)[0], nn.ReLU(), nn.Linear(24, 75), _packed(5)[0])
    assert use_kernel(model, "int4") == 1
    assert model[0].kernel is not None and model[3].kernel is None


def test_a_saved_model_loads_onto_the_int4_kernel_with_its_quantizers_and_cache(saved_llama_w4a4kv):
    q, test, folder = saved_llama_w4a4kv
    exact, _, _, _ = artifact.load(folder)
    fast, _, adapter, _ = artifact.load(folder, kernel="int4")
    linears = [m for m in fast.modules() if isinstance(m, PackedLinear)]
    assert linears and all(m.kernel is not None for m in linears)
    assert type(new_cache(fast, adapter)).__name__ == "PackedKVCache"  # the K/V quantizers are still attached
    short = test[:1, :MAX_ROWS]  # one sequence: one input row per token
    with torch.no_grad():
        assert torch.equal(exact(test).logits, q(test).logits)
        assert torch.equal(fast(test).logits, q(test).logits)  # windows longer than MAX_ROWS: the exact kernel
        want, got = exact(short).logits, fast(short).logits
    assert 0 < _relative_error(got, want) < MODEL_TOLERANCE
