"""Attention whose softmax probabilities can be fake-quantized, registered with transformers' attention
interface so the model's own attention modules stay untouched (no copy of their code).

It also exposes the query and key as they reach attention (after any rotary embedding, keys as the KV cache
holds them) to hooks registered with register_tensor_hook: that is where Llama-family Q/K are observed and
quantized.

Quantized probabilities must be materialized, so no fused kernel applies. To stay close to the speed of one,
queries run in blocks of QUERY_BLOCK rows, each against only the keys its mask leaves visible (for a causal
mask: up to the block's last row). Skipped keys would get probability exactly 0, so the result is the same.
"""
from collections import OrderedDict

import torch
from torch.utils.hooks import RemovableHandle
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTN_IMPLEMENTATION = "rptq_eager"
QUERY_BLOCK = 256
ATTENTION_TENSORS = ("query", "key")


def register_tensor_hook(module, name, fn):
    """fn(x [b, t, heads * d]) -> replacement or None, called on `name` ("query" or "key") of `module`."""
    assert name in ATTENTION_TENSORS, f"attention tensors are {ATTENTION_TENSORS}"
    hooks = module.__dict__.setdefault("rptq_tensor_hooks", {}).setdefault(name, OrderedDict())
    handle = RemovableHandle(hooks)
    hooks[handle.id] = fn
    return handle


def apply_tensor_hooks(module, name, x):
    """x [b, heads, t, d]; the hooks see it head-major per token, like a projection's output [b, t, heads * d]."""
    hooks = getattr(module, "rptq_tensor_hooks", {}).get(name)
    if not hooks:
        return x
    b, h, t, d = x.shape
    flat = x.transpose(1, 2).reshape(b, t, h * d)
    for fn in list(hooks.values()):
        new = fn(flat)
        flat = flat if new is None else new
    return flat.view(b, t, h, d).transpose(1, 2)


def visible_key_count(mask, r0, r1):
    """How many leading keys any query row in [r0, r1) can see under an additive mask [b, 1, q, k]."""
    if mask is None:
        return None
    seen = (mask[..., r0:r1, :] > torch.finfo(mask.dtype).min).flatten(0, -2).any(0)
    cols = seen.nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def quantized_prob_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [b, h, t, d], key/value [b, h_kv, s, d] -> output [b, t, h, d]; probabilities are not returned."""
    query, key = apply_tensor_hooks(module, "query", query), apply_tensor_hooks(module, "key", key)
    b, h, t, _ = query.shape
    groups = h // key.shape[1]  # grouped-query attention: one K/V head serves `groups` Q heads
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    prob_quant = getattr(module, "rptq_prob_quant", None)
    out = query.new_empty(b, h, t, value.shape[-1])
    for r0 in range(0, t, QUERY_BLOCK):
        r1 = min(r0 + QUERY_BLOCK, t)
        s = visible_key_count(attention_mask, r0, r1) or key.shape[2]
        scores = torch.matmul(query[:, :, r0:r1] * scaling, key[:, :, :s].transpose(-1, -2))  # scale the smaller
        if attention_mask is not None:
            scores += attention_mask[..., r0:r1, :s]
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        if prob_quant is not None:
            probs = prob_quant(probs)
        out[:, :, r0:r1] = torch.matmul(probs.to(value.dtype), value[:, :, :s])
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, quantized_prob_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)  # an additive float mask, as eager uses
