"""Attention whose softmax probabilities can be fake-quantized, registered with transformers' attention
interface so the model's own attention modules stay untouched (no copy of their code).

It also exposes the query and key as they reach attention (after any rotary embedding, keys as the KV cache
holds them) to the taps of the attention module's state (quantize/state.py): that is where Llama-family Q/K are
observed and quantized.

Quantized probabilities must be materialized, so no fused kernel applies (and a fused kernel for the other cases
would round differently, which K-means and GPTQ can amplify into other figures). To stay close to the speed of one,
queries run in blocks of QUERY_BLOCK rows, each against only the keys its mask leaves visible to some row of the
block (for a causal mask: up to the block's last row; for a sliding window also from the first row's window start;
skipped keys would get probability exactly 0), the mask added only from its first non-zero column, and grouped-query
heads reading their K/V head without copying it.

In a model whose config carries FUSED_ATTENTION (use_kernel(model, "fused") sets it), attention that quantizes no
probabilities runs torch's fused attention on a few query rows (decoding) instead: one call rather than about ten,
rounding differently.

Sliding windows reach attention through the mask alone: transformers builds each layer type's mask with the mask
function registered below for this implementation, the window included.
"""
import weakref

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from .kvcache import ON_GRID
from .state import FUSED_ATTENTION, state_of

ATTN_IMPLEMENTATION = "rptq_eager"
QUERY_BLOCK = 128  # a [heads, 128, keys] score block stays in cache; 256 stalls on memory
# fused attention decodes; longer inputs (prompts, windows) stay exact, as for Linears (at most one query block)
FUSED_MAX_QUERIES = 32
_PLANS = {}  # id(mask) -> (tag, plan) while the mask lives: every layer of a type gets the same mask in one forward


def apply_tensor_hooks(state, name, x):
    """x [b, heads, t, d]; the state's taps see it head-major per token, like a projection's output
    [b, t, heads * d]."""
    hooks = state.taps[name] if state is not None else None
    if not hooks:
        return x
    on_grid = getattr(x, ON_GRID, None)  # keys from a low-bit cache, already the output of their only hook
    if on_grid is not None and all(fn is on_grid for fn in hooks.values()):
        return x
    b, h, t, d = x.shape
    flat = x.transpose(1, 2).reshape(b, t, h * d)
    for fn in list(hooks.values()):
        new = fn(flat)
        flat = flat if new is None else new
    return flat.view(b, t, h, d).transpose(1, 2)


def block_plan(mask, t, keys):
    """Per block of query rows under an additive mask [b, 1, t, keys]: (r0, r1, k0, k1, first column the mask
    changes), the block's rows seeing no key outside [k0, k1). Every layer of a type gets the same mask object in one
    forward, so the plan is made once per mask and kept while the mask lives."""
    tag = (QUERY_BLOCK, t, keys)
    kept = _PLANS.get(id(mask)) if mask is not None else None
    if kept is not None and kept[0] == tag:
        return kept[1]
    plan = []
    for r0 in range(0, t, QUERY_BLOCK):
        r1 = min(r0 + QUERY_BLOCK, t)
        if mask is None:
            plan.append((r0, r1, 0, keys, keys))
            continue
        rows = mask[..., r0:r1, :].flatten(0, -2)
        seen = (rows > torch.finfo(mask.dtype).min).any(0).nonzero()
        k0, k1 = (int(seen[0]), int(seen[-1]) + 1) if len(seen) else (0, 1)
        masked = (rows[:, k0:k1] != 0).any(0).nonzero()
        plan.append((r0, r1, k0, k1, k0 + int(masked[0]) if len(masked) else k1))
    if mask is not None:
        if id(mask) not in _PLANS:
            weakref.finalize(mask, _PLANS.pop, id(mask), None)
        _PLANS[id(mask)] = (tag, plan)
    return plan


def blocked_attention(query, key, value, attention_mask, scaling, prob_quant=None, softcap=None):
    """query [b, h, t, d], key/value [b, h_kv, s, d] -> [b, t, h, d], the probabilities materialized block by block
    (and quantized by prob_quant when given). softcap: scores become tanh(scores / softcap) * softcap before the
    mask, as transformers' eager attention does where a model sets it (Gemma2)."""
    b, h, t, d = query.shape
    kv_heads = key.shape[1]
    groups = h // kv_heads  # grouped-query attention: one K/V head serves `groups` query heads
    grouped = query.view(b, kv_heads, groups, t, d)
    out = query.new_empty(b, t, h, value.shape[-1])
    out_grouped = out.view(b, t, kv_heads, groups, value.shape[-1])
    for r0, r1, k0, k1, first_masked in block_plan(attention_mask, t, key.shape[2]):
        n, s = r1 - r0, k1 - k0
        q = (grouped[:, :, :, r0:r1] * scaling).reshape(b, kv_heads, groups * n, d)  # scale the smaller
        scores = torch.matmul(q, key[:, :, k0:k1].transpose(-1, -2))  # [b, kv_heads, groups * n, s]
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if attention_mask is not None and first_masked < k1:
            scores.view(b, kv_heads, groups, n, s)[..., first_masked - k0:] += \
                attention_mask[..., r0:r1, first_masked:k1].unsqueeze(1)
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        if prob_quant is not None:
            probs = prob_quant(probs)
        block = torch.matmul(probs.to(value.dtype), value[:, :, k0:k1])  # [b, kv_heads, groups * n, dv]
        out_grouped[:, r0:r1] = block.view(b, kv_heads, groups, n, -1).permute(0, 3, 1, 2, 4)
    return out


def quantized_prob_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, softcap=None,
                             sliding_window=None, **kwargs):
    """query [b, h, t, d], key/value [b, h_kv, s, d] -> output [b, t, h, d]; probabilities are not returned.
    sliding_window is already in attention_mask."""
    state = state_of(module)
    query, key = apply_tensor_hooks(state, "query", query), apply_tensor_hooks(state, "key", key)
    prob_quant = state and state.prob_quant
    if (getattr(getattr(module, "config", None), FUSED_ATTENTION, False) and prob_quant is None and softcap is None
            and query.shape[2] <= FUSED_MAX_QUERIES):
        (_, _, k0, k1, first_masked), = block_plan(attention_mask, query.shape[2], key.shape[2])  # one block
        mask = None if k0 == 0 and first_masked == k1 == key.shape[2] else attention_mask  # None: all keys seen
        out = F.scaled_dot_product_attention(query, key, value, mask, scale=scaling,
                                             enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2), None
    return blocked_attention(query, key, value, attention_mask, scaling, prob_quant, softcap), None


AttentionInterface.register(ATTN_IMPLEMENTATION, quantized_prob_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)  # an additive float mask, as eager uses
