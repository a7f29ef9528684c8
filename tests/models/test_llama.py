"""models/llama.py: grouped-query attention on a tiny random Llama, and the reorder on the real SmolLM2 (what every
family must do, on every family: test_families.py)."""
import math

import torch

from rptq.config import QuantConfig
from rptq.pipeline import quantize_model
from tests.conftest import quantizer_of


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_each_query_head_quantizes_with_its_kv_heads_clusters(llama_case, quantized):
    model, calib, test = llama_case
    q, _ = quantized(model, calib, wbits=16, abits=4, w_quantizer="normal")
    attn = q.model.layers[1].self_attn
    q_index, k_index = quantizer_of(attn, "query").index, quantizer_of(attn, "key").index
    assert quantizer_of(attn, "key").n_clusters == 2 * 2 and quantizer_of(attn, "query").n_clusters == 4 * 2
    head_dim = attn.head_dim
    for head in range(4):  # query heads 0, 1 read K/V head 0; 2, 3 read K/V head 1
        qh = q_index[head * head_dim:(head + 1) * head_dim]
        kh = k_index[(head // 2) * head_dim:(head // 2 + 1) * head_dim]
        same_q, same_k = qh[:, None] == qh[None, :], kh[:, None] == kh[None, :]
        assert torch.equal(same_q, same_k)  # the same channel partition ...
        assert set(qh.tolist()).isdisjoint(q_index[:head * head_dim].tolist())  # ... with this head's own scales
    assert quantizer_of(attn.o_proj, "input").n_clusters == 4 * 2
    assert math.isfinite(_logits(q, test).sum().item())


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
