"""Attention whose softmax probabilities can be fake-quantized, registered with transformers' attention
interface so the model's own attention modules stay untouched (no copy of their code).

Quantized probabilities must be materialized, so no fused kernel applies. To stay close to the speed of one,
queries run in blocks of QUERY_BLOCK rows, each against only the keys its mask leaves visible (for a causal
mask: up to the block's last row). Skipped keys would get probability exactly 0, so the result is the same.
"""
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTN_IMPLEMENTATION = "rptq_eager"
QUERY_BLOCK = 256


def visible_key_count(mask, r0, r1):
    """How many leading keys any query row in [r0, r1) can see under an additive mask [b, 1, q, k]."""
    if mask is None:
        return None
    seen = (mask[..., r0:r1, :] > torch.finfo(mask.dtype).min).flatten(0, -2).any(0)
    cols = seen.nonzero()
    return int(cols[-1]) + 1 if len(cols) else 1


def quantized_prob_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [b, h, t, d], key/value [b, h_kv, s, d] -> output [b, t, h, d]; probabilities are not returned."""
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
