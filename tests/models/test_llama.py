import math

import pytest
import torch

from rptq.config import QuantConfig
from rptq.pipeline import quantize_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_full_reorder_with_quantizers_off_is_exact(llama_case, quantized):
    model, calib, test = llama_case
    q, report = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    layer, orig = q.model.layers[0], model.model.layers[0]
    for lin in ("gate_proj", "up_proj"):  # R5 moved their rows, R4 their columns
        assert not torch.equal(getattr(layer.mlp, lin).weight, getattr(orig.mlp, lin).weight)
    assert not torch.equal(layer.self_attn.o_proj.weight, orig.self_attn.o_proj.weight)
    for lin in ("q_proj", "k_proj"):  # R2 is an index after the rotation: rows stay, columns follow R1 only
        w, w0 = getattr(layer.self_attn, lin).weight, getattr(orig.self_attn, lin).weight
        assert torch.equal(w[:, torch.argsort(layer.input_layernorm.rptq_perm)], w0)
    assert not any("quant" in name for name, _ in q.named_modules())
    assert report.clusters_per_layer[0] == {"R1": 4, "R2": 4, "R3": 4, "R4": 4, "R5": 8}  # R2/R3: 2 per KV head
    assert (_logits(q, test) - _logits(model, test)).abs().max().item() <= 1e-4


def test_each_query_head_quantizes_with_its_kv_heads_clusters(llama_case, quantized):
    model, calib, test = llama_case
    q, _ = quantized(model, calib, wbits=16, abits=4, w_quantizer="normal")
    attn = q.model.layers[1].self_attn
    q_index, k_index = attn.rptq_query_quant.index, attn.rptq_key_quant.index
    assert attn.rptq_key_quant.n_clusters == 2 * 2 and attn.rptq_query_quant.n_clusters == 4 * 2
    head_dim = attn.head_dim
    for head in range(4):  # query heads 0, 1 read K/V head 0; 2, 3 read K/V head 1
        qh = q_index[head * head_dim:(head + 1) * head_dim]
        kh = k_index[(head // 2) * head_dim:(head // 2 + 1) * head_dim]
        same_q, same_k = qh[:, None] == qh[None, :], kh[:, None] == kh[None, :]
        assert torch.equal(same_q, same_k)  # the same channel partition ...
        assert set(qh.tolist()).isdisjoint(q_index[:head * head_dim].tolist())  # ... with this head's own scales
    assert attn.o_proj.rptq_input_quant.n_clusters == 4 * 2
    assert math.isfinite(_logits(q, test).sum().item())


@pytest.mark.parametrize("kw", [dict(wbits=4, abits=4), dict(wbits=4, abits=4, only_quant_kv=True)])
def test_cached_generation_equals_the_full_forward(llama_case, quantized, cached_and_full_logits, kw):
    model, calib, test = llama_case
    q, _ = quantized(model, calib, w_quantizer="normal", **kw)
    cached, full, out = cached_and_full_logits(q, test[:1, :16])
    assert torch.allclose(cached, full, atol=1e-4)
    attn = q.model.layers[1].self_attn
    cache = out.past_key_values.layers[1]
    keys = cache.keys.transpose(1, 2).flatten(2)  # [b, kv_heads, s, d] -> [b, s, kv_heads * d]
    values = cache.values.transpose(1, 2).flatten(2)
    assert torch.allclose(attn.v_proj.rptq_output_quant(values), values, atol=1e-5)  # V is cached on its grid
    # K is cached rotated and quantized each time attention reads it: the same as caching it quantized, because
    # quantizing twice changes nothing
    read = attn.rptq_key_quant(keys)
    assert torch.equal(attn.rptq_key_quant(read), read)
    assert read.unique().numel() <= 16 * attn.rptq_key_quant.n_clusters
    if kw.get("only_quant_kv"):
        assert not hasattr(attn, "rptq_query_quant") and not hasattr(attn, "rptq_prob_quant")


def test_real_smollm2_reorder_is_exact(data_dir, smollm2):
    """All five reorders with quantizers off on the real model: float64 so that only a reorder bug, not the
    summation order of 30 layers, could move the logits."""
    from datautils import get_calib_windows
    from models import load_model

    model, tokenizer, adapter = load_model(smollm2, torch.float64)
    calib = get_calib_windows("wikitext2", tokenizer, 2, seed=0, data_dir=data_dir, seqlen=64, cache_dir=None)
    test = calib[:1, :48]
    reference = _logits(model, test)
    report = quantize_model(model, adapter, calib, QuantConfig(wbits=16, abits=16, reorder="12345"),
                            progress=False)
    assert report.clusters_per_layer[0] == {"R1": 32, "R2": 12, "R3": 12, "R4": 32, "R5": 32}
    assert (_logits(model, test) - reference).abs().max().item() <= 1e-4
