"""models/opt.py: the reorder points of RPTQ-METHOD.md section 5 on a tiny random OPT (what every family must
do, on every family: test_families.py)."""
import pytest

from models import ModelError
from models.opt import OPTAdapter


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
