"""models/opt.py: the reorder points of RPTQ-METHOD.md section 5 on a tiny random OPT."""
import pytest
import torch

from models import ModelError
from models.opt import OPTAdapter


def test_full_reorder_with_quantizers_off_is_exact(opt_case, quantized):
    model, calib, test = opt_case
    q, report = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    layer = q.model.decoder.layers[0]
    perm = layer.self_attn_layer_norm.rptq_perm
    assert not torch.equal(perm, torch.arange(len(perm)))  # something really was reordered
    assert not torch.equal(layer.fc1.weight, model.model.decoder.layers[0].fc1.weight)
    assert not any("quant" in name for name, _ in q.named_modules())  # and nothing quantized
    assert report.clusters_per_layer[0] == {"R1": 4, "R2": 8, "R3": 8, "R4": 4, "R5": 8}
    with torch.no_grad():
        diff = (q(test).logits - model(test).logits).abs().max().item()
    assert diff <= 1e-4
    with torch.no_grad():
        assert q(test, labels=test).loss.item() == pytest.approx(model(test, labels=test).loss.item(), rel=1e-5)


def test_points_sit_where_the_method_puts_them(tiny_opt):
    layer = tiny_opt(layers=1).model.decoder.layers[0]
    points = {p.name: p for p in OPTAdapter().reorder_points(layer)}
    attn = layer.self_attn
    assert points["R1"].norm is layer.self_attn_layer_norm
    assert points["R1"].consumers == [attn.q_proj, attn.k_proj, attn.v_proj]
    assert points["R2"].producers == [attn.q_proj, attn.k_proj] and points["R2"].heads == 4
    assert points["R3"].producers == [attn.v_proj] and points["R3"].consumers == [attn.out_proj]
    assert points["R4"].consumers == [layer.fc1]
    assert points["R5"].producers == [layer.fc1] and points["R5"].consumers == [layer.fc2]
    assert [s.kind for s in points["R2"].sites] == ["q", "kv"] and points["R5"].channels == 256


def test_post_layernorm_opt_is_refused(tiny_opt):
    layer = tiny_opt(layers=1).model.decoder.layers[0]
    layer.do_layer_norm_before = False  # opt-350m applies LayerNorm after attention
    with pytest.raises(ModelError, match="pre-LayerNorm"):
        OPTAdapter().reorder_points(layer)


