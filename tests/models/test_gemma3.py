"""models/gemma3.py: R4 is the pre-feedforward norm and the norms of the residual-space outputs are never reordered;
the real Gemma3-270m reorders exactly."""
import math

import torch
import torch.nn.functional as F

from models import adapter_for, load_model
from rptq.config import QuantConfig
from rptq.pipeline import quantize_model
from tests.conftest import perm_of
from tests.models.test_families import build_tiny


def test_only_the_norms_that_feed_linears_are_reordered(quantized):
    model = build_tiny("gemma3_text")
    layer = model.model.layers[0]
    points = {p.name: p for p in adapter_for(model.config).reorder_points(layer)}
    assert points["R4"].norm is layer.pre_feedforward_layernorm
    assert points["R4"].consumers == [layer.mlp.gate_proj, layer.mlp.up_proj]
    calib = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    q, _ = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    for layer in q.model.layers:
        assert perm_of(layer.input_layernorm) is not None and perm_of(layer.pre_feedforward_layernorm) is not None
        for norm in (layer.post_attention_layernorm, layer.post_feedforward_layernorm, layer.self_attn.q_norm,
                     layer.self_attn.k_norm):
            assert perm_of(norm) is None


def _nll(model, ids):
    with torch.no_grad():
        logits = model(ids).logits
    return F.cross_entropy(logits[0, :-1], ids[0, 1:]).item()


def test_real_gemma3_270m_reorder_is_exact(gemma3_270m, data_dir):
    """All five reorders with quantizers off on the real model, one 256-token window (its float weights are
    dequantized from the Q4_K_M GGUF)."""
    from datautils import get_calib_windows

    model, tokenizer, adapter = load_model(gemma3_270m)
    assert adapter.family == "gemma3_text" and len(tokenizer) == model.config.vocab_size == 262144
    window = get_calib_windows("wikitext2", tokenizer, 1, seed=0, data_dir=data_dir, seqlen=256, cache_dir=None)
    reference = _nll(model, window)
    report = quantize_model(model, adapter, window, QuantConfig(wbits=16, abits=16, reorder="12345"), progress=False)
    assert report.clusters_per_layer[0] == {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}  # one K/V head
    assert math.isfinite(reference) and abs(_nll(model, window) - reference) <= 1e-4
