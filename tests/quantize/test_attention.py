from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantize import ProbQuantizer
from quantize.attention import (
    FUSED_MAX_QUERIES,
    QUERY_BLOCK,
    block_plan,
    blocked_attention,
    quantized_prob_attention,
)
from quantize.state import FUSED_ATTENTION, state_of


def _additive_causal_mask(q_len, k_len, window=None):
    """Query i (the last q_len positions of k_len) sees keys 0..k_len - q_len + i, or only the last `window` of them."""
    allowed = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    if window is not None:
        allowed &= ~torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len - window)
    return torch.zeros(q_len, k_len).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]


@pytest.mark.parametrize("q_len, k_len, kv_heads, window", [
    (2 * QUERY_BLOCK + 44, 2 * QUERY_BLOCK + 44, 4, None),  # blocks
    (3, 40, 4, None),                                       # decoding with a cache
    (QUERY_BLOCK + 70, QUERY_BLOCK + 70, 2, None),          # grouped-query
    (3 * QUERY_BLOCK + 10, 3 * QUERY_BLOCK + 10, 2, 100),   # a sliding window shorter than a block
    (3, 300, 4, 100)])                                      # decoding in a sliding window
@pytest.mark.parametrize("fn", ["blocked", "module", "fused"])
def test_blocked_attention_equals_plain_attention(q_len, k_len, kv_heads, window, fn):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, q_len, 16, generator=gen)
    k, v = (torch.randn(2, kv_heads, k_len, 16, generator=gen) for _ in range(2))
    mask = _additive_causal_mask(q_len, k_len, window).expand(2, 1, q_len, k_len).clone()
    mask[1, ..., :5] = torch.finfo(torch.float32).min  # the second sequence is left-padded by 5 tokens
    mask[1, ..., :5, 0] = 0  # (padded rows still see one key, as transformers' padding masks do)
    if fn == "blocked":
        out = blocked_attention(q, k, v, mask, scaling=0.25)
    else:
        module = nn.Module()
        module.config = SimpleNamespace(**{FUSED_ATTENTION: fn == "fused"})  # decoding by torch's fused kernel
        out, _ = quantized_prob_attention(module, q, k, v, mask, scaling=0.25)
    groups = 4 // kv_heads
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                         attn_mask=mask, scale=0.25)
    assert out.shape == (2, q_len, 4, 16)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)


def test_probabilities_are_quantized_when_the_module_asks():
    gen = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 8, 4, generator=gen), torch.randn(1, 2, 8, 4, generator=gen)
    v = torch.eye(8).expand(1, 2, 8, 8)  # identity values: the output rows are the probabilities themselves
    module = nn.Module()
    state_of(module, create=True).prob_quant = ProbQuantizer(3)
    out, _ = quantized_prob_attention(module, q, k, v, _additive_causal_mask(8, 8), scaling=1.0)
    probs = out.transpose(1, 2)
    assert torch.allclose(probs * 7, torch.round(probs * 7), atol=1e-5)  # every value on the 3-bit grid
    assert (probs[..., 0, 1:] == 0).all()  # the mask still holds


def test_fused_attention_takes_only_a_few_queries_that_quantize_no_probabilities(monkeypatch):
    fused = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: fused.append(a[3]) or sdpa(*a, **k))
    module = nn.Module()
    module.config = SimpleNamespace(**{FUSED_ATTENTION: True})
    q, k, v = torch.randn(1, 4, FUSED_MAX_QUERIES + 1, 8), torch.randn(1, 2, 40, 8), torch.randn(1, 2, 40, 8)
    mask = _additive_causal_mask(FUSED_MAX_QUERIES + 1, 40)
    quantized_prob_attention(module, q[:, :, -1:], k, v, mask[..., -1:, :], scaling=1.0)
    quantized_prob_attention(module, q[:, :, -2:], k, v, mask[..., -2:, :], scaling=1.0)
    assert len(fused) == 2 and fused[0] is None and fused[1] is not None  # a mask that hides nothing is dropped
    quantized_prob_attention(module, q, k, v, mask, scaling=1.0)  # a prompt: blocks, as without the flag
    state_of(module, create=True).prob_quant = ProbQuantizer(8)
    quantized_prob_attention(module, q[:, :, -1:], k, v, mask[..., -1:, :], scaling=1.0)
    assert len(fused) == 2


def test_query_and_key_hooks_see_head_major_channels_and_can_replace_them():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=gen) for _ in range(3))
    module, seen = nn.Module(), {}

    def record(x):
        seen["key"] = x.clone()

    state = state_of(module, create=True)  # the taps attention calls, found by the state's type
    handles = [state.tap("key", record), state.tap("query", lambda x: torch.zeros_like(x))]
    out, _ = quantized_prob_attention(module, q, k, v, None, scaling=1.0)
    assert torch.equal(seen["key"][0, 3], k[0, :, 3].reshape(-1))  # token 3: head 0's channels, then head 1's
    assert torch.allclose(out, v.mean(2, keepdim=True).expand_as(v).transpose(1, 2))  # zero queries: uniform
    for h in handles:
        h.remove()
    out, _ = quantized_prob_attention(module, q, k, v, None, scaling=1.0)
    assert not torch.allclose(out, v.mean(2, keepdim=True).expand_as(v).transpose(1, 2))


def test_a_sliding_window_skips_the_keys_before_it():
    """Blocks past the window's length start at the first key their first row still sees, not at key 0."""
    t, window = 3 * QUERY_BLOCK, 100
    plan = block_plan(_additive_causal_mask(t, t, window), t, t)
    assert [(r0, k0, k1) for r0, _, k0, k1, _ in plan] == [
        (0, 0, QUERY_BLOCK), (QUERY_BLOCK, QUERY_BLOCK - window + 1, 2 * QUERY_BLOCK),
        (2 * QUERY_BLOCK, 2 * QUERY_BLOCK - window + 1, 3 * QUERY_BLOCK)]
    assert all(first == k0 for _, _, k0, _, first in plan[1:])  # the window's start is masked for later rows


def test_scores_are_soft_capped_before_the_mask_when_the_model_asks():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=gen) * 4 for _ in range(3))
    mask = _additive_causal_mask(6, 6)
    out, _ = quantized_prob_attention(nn.Module(), q, k, v, mask, scaling=1.0, softcap=5.0)
    scores = torch.tanh(q @ k.transpose(-1, -2) / 5.0) * 5.0 + mask
    assert torch.allclose(out, (torch.softmax(scores, -1) @ v).transpose(1, 2), atol=1e-5)
    plain, _ = quantized_prob_attention(nn.Module(), q, k, v, mask, scaling=1.0)
    assert not torch.allclose(out, plain, atol=1e-3)
