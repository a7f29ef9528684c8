"""models/qwen2.py: the biases of q, k and v under the reorders."""
import torch

from tests.conftest import perm_of
from tests.models.test_families import build_tiny


def _row_order(new, old):
    """The permutation p with new == old[p], found by matching rows."""
    return torch.cdist(new, old).argmin(1)


def test_v_bias_moves_with_its_rows_and_q_k_biases_stay(quantized):
    model = build_tiny("qwen2")
    calib = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    q, _ = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    for new, old in zip(q.model.layers, model.model.layers):
        new_attn, old_attn = new.self_attn, old.self_attn
        columns = torch.argsort(perm_of(new.input_layernorm))  # R1 moved their input columns
        perm = _row_order(new_attn.v_proj.weight[:, columns], old_attn.v_proj.weight)
        assert not torch.equal(perm, torch.arange(len(perm)))  # R3 reordered v_proj's rows ...
        assert torch.equal(new_attn.v_proj.bias, old_attn.v_proj.bias[perm])  # ... and its bias with them
        for proj in ("q_proj", "k_proj"):  # R2 is a channel index after the rotation: rows and biases stay
            assert torch.equal(getattr(new_attn, proj).weight[:, columns], getattr(old_attn, proj).weight)
            assert torch.equal(getattr(new_attn, proj).bias, getattr(old_attn, proj).bias)
