"""models/qwen3.py: the per-head norms of Q and K are left alone by the reorders."""
import torch

from tests.conftest import perm_of
from tests.models.test_families import build_tiny


def test_q_and_k_norms_are_not_reordered(quantized):
    model = build_tiny("qwen3")
    calib = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    q, _ = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    for new, old in zip(q.model.layers, model.model.layers):
        for norm in ("q_norm", "k_norm"):
            assert torch.equal(getattr(new.self_attn, norm).weight, getattr(old.self_attn, norm).weight)
            assert perm_of(getattr(new.self_attn, norm)) is None
    assert q.model.layers[0].self_attn.head_dim * q.config.num_attention_heads != q.config.hidden_size  # 128 vs 64
