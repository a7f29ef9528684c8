"""quantize/fused.py and PackedLinear's fused kernel: the exact weight from the fused layout bit for bit, and the
exact outputs up to the order of float32 sums."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantize import cluster_index, quantize_rtn
from quantize.fused import FusedKernel, fused_layout
from quantize.packed import PackedLinear, WeightGrid, use_kernel
from rptq import artifact
from rptq.generate import new_cache
from tests.conftest import needs_compiler

pytestmark = needs_compiler
MAX_ROWS = FusedKernel.max_rows
FLOAT32_TOLERANCE = 1e-6  # float32 sums in another order, relative


def _packed(bits, rows=24, bias=True, seed=0):
    """75 input columns in 5 groups, not contiguous: one column far from zero (scale floor, a zero near -40,000)."""
    torch.manual_seed(seed)
    linear = nn.Linear(75, rows, bias=bias)
    sizes = torch.tensor([1, 8, 33, 16, 17])
    groups = cluster_index(sizes)[torch.randperm(75, generator=torch.Generator().manual_seed(seed))]
    with torch.no_grad():
        linear.weight[:, groups == 0] = 4.0
    grid = WeightGrid.from_expanded(bits, groups, *quantize_rtn(linear, groups, bits))
    return PackedLinear.from_linear(linear, grid), linear


def _relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


def test_the_layout_holds_each_column_once_in_group_order_two_rows_a_byte_in_blocks():
    packed, _ = _packed(4, rows=40)  # 2 blocks of 32 rows, the second with 24 rows of scale 0
    codes = packed.unpacked_codes()
    pairs, starts, perm, scale_t, zero_t = fused_layout(codes, packed.groups, packed.scale, packed.zero)
    assert pairs.shape == (2, 75, 16) and pairs.dtype == torch.uint8 and pairs.is_contiguous()
    assert starts.tolist() == [0, 1, 9, 42, 58, 75] and sorted(perm.tolist()) == list(range(75))
    assert torch.equal(packed.groups[perm.long()], torch.repeat_interleave(torch.arange(5), starts.diff()).int())
    by_column = F.pad(codes[:, perm.long()], (0, 0, 0, 24)).t()  # [75, 64], rows 40-63 all 0
    for block in range(2):  # byte j: row j of the block in the low nibble, row j + 16 in the high one
        rows = by_column[:, 32 * block:32 * block + 32]
        assert torch.equal(pairs[block] & 15, rows[:, :16]) and torch.equal(pairs[block] >> 4, rows[:, 16:])
    assert torch.equal(scale_t[:, :40], packed.scale.t()) and not scale_t[:, 40:].any()
    assert zero_t.dtype == packed.zero.dtype


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("rows", [24, 23, 70])
def test_the_fused_kernel_gives_the_exact_weight_and_outputs_up_to_float32_sums(bits, rows):
    packed, linear = _packed(bits, rows)
    weight = packed.dequantized_weight(torch.float32)
    assert use_kernel(packed, "fused") == 1
    assert packed.codes is None and "codes" not in packed.state_dict()  # the layout replaces the packed buffers
    assert torch.equal(packed.dequantized_weight(torch.float32), weight)  # from the layout, bit for bit
    x = torch.randn(2, 3, 75)
    fast = packed(x)
    assert fast.shape == (2, 3, rows) and _relative_error(fast, linear(x)) < FLOAT32_TOLERANCE
    long = torch.randn(1, MAX_ROWS + 1, 75)
    assert torch.equal(packed(long), linear(long))  # longer inputs: the exact kernel, from the layout


def test_a_model_switches_kernel_once_and_wider_codes_stay_exact():
    model = nn.Sequential(_packed(4)[0], nn.ReLU(), nn.Linear(24, 75), _packed(5)[0])
    assert use_kernel(model, "fused") == 1 and use_kernel(model, "int4") == 1  # the first kernel stays
    assert isinstance(model[0].kernel, FusedKernel) and model[3].kernel is None
    with pytest.raises(ValueError, match="unknown kernel"):
        use_kernel(model, "int3")


def test_a_saved_model_decodes_on_the_fused_kernel_with_its_quantizers(saved_llama_w4a4kv):
    q, test, folder = saved_llama_w4a4kv
    exact, _, _, _ = artifact.load(folder)
    fast, _, adapter, _ = artifact.load(folder, kernel="fused")
    assert all(isinstance(m.kernel, FusedKernel) for m in fast.modules() if isinstance(m, PackedLinear))
    assert type(new_cache(fast, adapter)).__name__ == "PackedKVCache"  # the K/V quantizers are still attached
    short = test[:1, :MAX_ROWS]
    with torch.no_grad():
        assert torch.equal(fast(test).logits, q(test).logits)  # long windows: the exact kernel, bit for bit
        assert _relative_error(fast(short).logits, exact(short).logits) < 1e-4
