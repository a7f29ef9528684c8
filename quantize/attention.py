"""Attention whose softmax probabilities can be fake-quantized, registered with transformers' attention
interface so the model's own attention modules stay untouched (no copy of their code)."""
import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTN_IMPLEMENTATION = "rptq_eager"


def quantized_prob_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """query [b, h, t, d], key/value [b, h_kv, s, d] -> output [b, t, h, d], probs [b, h, t, s]."""
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: one K/V head serves `groups` Q heads
    if groups > 1:
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    prob_quant = getattr(module, "rptq_prob_quant", None)
    if prob_quant is not None:
        probs = prob_quant(probs)
    out = torch.matmul(probs.to(value.dtype), value)
    return out.transpose(1, 2).contiguous(), probs


AttentionInterface.register(ATTN_IMPLEMENTATION, quantized_prob_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, eager_mask)  # an additive float mask, as eager uses
