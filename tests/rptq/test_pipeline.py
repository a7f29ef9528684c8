import math

import pytest
import torch
import torch.nn.functional as F

from quantize import ActQuantizer, PackedLinear
from quantize.state import state_of
from rptq.cluster import ClusterError
from tests.conftest import perm_of, quantizer_of


def _ppl(model, ids):
    with torch.no_grad():
        logits = model(ids).logits
    return math.exp(F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item())


def test_left_out_points_get_one_cluster(opt_case, quantized):
    model, calib, _ = opt_case
    q, report = quantized(model, calib, wbits=4, abits=4, reorder="3", w_quantizer="normal")
    assert report.clusters_per_layer[1] == {"R1": 1, "R2": 1, "R3": 8, "R4": 1, "R5": 1}
    assert perm_of(q.model.decoder.layers[0].self_attn_layer_norm) is None
    assert quantizer_of(q.model.decoder.layers[0].fc2, "input").n_clusters == 1


def test_w4a4_quantizes_every_site_with_the_reference_bits(opt_case, quantized):
    model, calib, test = opt_case
    q, report = quantized(model, calib, wbits=4, abits=4)
    layer = q.model.decoder.layers[1]
    assert quantizer_of(layer.self_attn_layer_norm, "output").bits == 8  # max(8, abits)
    assert quantizer_of(layer.fc2, "input").bits == 4
    assert state_of(layer.self_attn).prob_quant.bits == 8
    assert len(torch.unique(layer.fc1.weight[0])) <= 4 * 16  # 4 input clusters of 16 levels each
    assert set(report.timings_s) >= {"calibration", "clustering", "weight_quantization"}
    ppl_q, ppl_f = _ppl(q, test), _ppl(model, test)
    assert ppl_q != ppl_f and math.isfinite(ppl_q)
    strict, _ = quantized(model, calib, wbits=4, abits=4, bit_mode="strict", w_quantizer="normal")
    assert quantizer_of(strict.model.decoder.layers[0].final_layer_norm, "output").bits == 4
    assert state_of(strict.model.decoder.layers[0].self_attn).prob_quant.bits == 4


def test_only_quant_kv_leaves_every_other_activation_untouched(opt_case, quantized):
    model, calib, test = opt_case
    kv, _ = quantized(model, calib, wbits=16, abits=4, only_quant_kv=True)
    ref, _ = quantized(model, calib, wbits=16, abits=16, reorder="12345")  # same reorder, nothing quantized
    quantized = {name.rsplit(".", 1)[-1] for name, m in kv.named_modules() if state_of(m) and state_of(m).quantizers}
    assert quantized == {"k_proj", "v_proj"}

    def capture(m):
        seen = {}
        layer = m.model.decoder.layers[0]
        for name in ("self_attn_layer_norm", "q_proj", "k_proj", "v_proj"):
            mod = getattr(layer.self_attn, name, None) or getattr(layer, name)
            mod.register_forward_hook(lambda mod, a, out, name=name: seen.__setitem__(name, out))
        with torch.no_grad():
            m(test)
        return seen

    a, b = capture(kv), capture(ref)
    for name in ("self_attn_layer_norm", "q_proj"):
        assert torch.equal(a[name], b[name]), name
    for name in ("k_proj", "v_proj"):
        assert not torch.allclose(a[name], b[name]), name


@pytest.mark.parametrize("kw", [dict(wbits=4, abits=4), dict(wbits=4, abits=4, only_quant_kv=True)])
def test_cached_generation_equals_the_full_forward(opt_case, quantized, cached_and_full_logits, kw):
    model, calib, test = opt_case
    q, _ = quantized(model, calib, w_quantizer="normal", **kw)
    cached, full, out = cached_and_full_logits(q, test[:1, :16], pad_token_id=1)
    assert torch.allclose(cached, full, atol=1e-4)
    assert torch.equal(full.argmax(-1), out.sequences[:, 16:])
    layer = q.model.decoder.layers[1]
    cache = out.past_key_values.layers[1]
    for stored, proj in ((cache.keys, layer.self_attn.k_proj), (cache.values, layer.self_attn.v_proj)):
        channels = stored.transpose(1, 2).flatten(2)  # [b, heads, s, d] -> [b, s, heads * d], the proj's order
        assert torch.allclose(quantizer_of(proj, "output")(channels), channels, atol=1e-5)  # stored on the grid
        assert channels.unique().numel() <= 16 * quantizer_of(proj, "output").n_clusters


@pytest.mark.parametrize("w_quantizer", ["gptq", "normal"])
def test_every_quantized_linear_keeps_the_grid_it_was_quantized_on(opt_case, quantized, w_quantizer):
    model, calib, _ = opt_case
    q, _ = quantized(model, calib, wbits=3, abits=16, w_quantizer=w_quantizer)
    linears = [m for m in q.model.decoder.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 12 and all(state_of(lin).weight_grid.bits == 3 for lin in linears)
    for lin in (q.model.decoder.layers[0].self_attn.k_proj, q.model.decoder.layers[1].fc2):
        x = torch.randn(2, 5, lin.in_features)
        assert torch.equal(PackedLinear.from_linear(lin, state_of(lin).weight_grid)(x), lin(x))
    assert state_of(q.lm_head) is None


def test_dynamic_activations_need_no_calibrated_ranges(opt_case, quantized):
    model, calib, test = opt_case
    q, _ = quantized(model, calib, wbits=16, abits=4, a_dynamic=True)
    assert quantizer_of(q.model.decoder.layers[0].fc2, "input").ranges == "dynamic"
    assert math.isfinite(_ppl(q, test))


def test_more_clusters_than_channels_fails_before_quantizing(opt_case, quantized):
    model, calib, _ = opt_case
    with pytest.raises(ClusterError, match="R2"):
        quantized(model, calib, R2_clusters=32)


@pytest.mark.parametrize("granularity, groups_per_row", [("cluster", 4), ("channel", 1), ("group", 2)])
def test_weight_only_runs_use_the_asked_weight_groups(opt_case, quantized, granularity, groups_per_row):
    model, calib, test = opt_case
    q, _ = quantized(model, calib, wbits=3, abits=16, w_granularity=granularity, groupsize=32,
                      act_order=granularity == "channel")
    assert not any(isinstance(m, ActQuantizer) for m in q.modules())  # A16: no activation quantizer
    assert q.config._attn_implementation != "rptq_eager"
    fc1 = q.model.decoder.layers[0].fc1.weight  # 64 input columns: R4's 4 clusters, or 2 groups of 32
    assert all(row.unique().numel() <= groups_per_row * 2 ** 3 for row in fc1)
    assert _ppl(q, test) != _ppl(model, test)


def _out_proj_inputs(model, windows):
    """What out_proj receives on each window, before any quantizer of its own."""
    seen = []
    attn = model.model.decoder.layers[0].self_attn
    handle = attn.out_proj.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()),
                                                     prepend=True)
    with torch.no_grad():
        for w in windows:
            model(w[None])
    handle.remove()
    return torch.cat([x.reshape(-1, x.shape[-1]) for x in seen])  # [tokens, channels]


@pytest.mark.parametrize("bit_mode", ["reference", "strict"])
def test_out_proj_ranges_come_from_the_layer_with_quantized_probabilities(tiny_opt, quantized, bit_mode):
    """As the reference (quant_transformer_layer.py:21-60): the ranges after attention are taken on the reordered
    float layer whose probabilities are already on their grid, not on the float pass used for clustering."""
    model = tiny_opt(layers=1)
    calib = torch.randint(0, 512, (3, 96), generator=torch.Generator().manual_seed(1))
    q, _ = quantized(model, calib, wbits=16, abits=4, metric="minmax", bit_mode=bit_mode)
    quant = quantizer_of(q.model.decoder.layers[0].self_attn.out_proj, "input")
    scales, index = quant.scale.clone(), quant.index.long()  # one scale per cluster
    probe = q  # the same reordered float weights, every activation quantizer made the identity (in place: a deep
    for m in probe.modules():  # copy's hooks would still call the original quantizers)
        if type(m).__name__ == "ActQuantizer":
            m.forward = lambda x: x
    x = _out_proj_inputs(probe, calib)

    def spans(x):  # per cluster (max - min) over all tokens and the cluster's channels
        lo = torch.full((quant.n_clusters,), float("inf")).scatter_reduce(0, index, x.amin(0), "amin")
        hi = torch.full((quant.n_clusters,), float("-inf")).scatter_reduce(0, index, x.amax(0), "amax")
        return hi - lo

    assert torch.allclose(scales, spans(x) / 16, rtol=1e-5)
    state_of(probe.model.decoder.layers[0].self_attn).prob_quant = None  # float probabilities: other ranges
    assert not torch.allclose(scales, spans(_out_proj_inputs(probe, calib)) / 16, rtol=1e-3)


@pytest.mark.parametrize("granularity, r5_groups", [("fixed", 8), ("channel", 256), ("token", 1)])
def test_activation_group_controls_keep_the_channel_order(opt_case, quantized, granularity, r5_groups):
    """The controls for clustering: the same number of contiguous groups in the original order, one group per
    channel, or per-token ranges; nothing is reordered, and weights take the fixed groups."""
    model, calib, test = opt_case
    q, report = quantized(model, calib, wbits=4, abits=4, a_granularity=granularity, w_quantizer="normal")
    layer = q.model.decoder.layers[0]
    assert perm_of(layer.self_attn_layer_norm) is None  # no reorder anywhere
    assert torch.equal(layer.self_attn.q_proj.bias, model.model.decoder.layers[0].self_attn.q_proj.bias)
    fc2 = quantizer_of(layer.fc2, "input")
    assert report.clusters_per_layer[0]["R5"] == r5_groups
    if granularity == "fixed":
        assert fc2.index.tolist() == [c // 32 for c in range(256)]  # 8 contiguous groups of 32
    assert fc2.ranges == ("token" if granularity == "token" else "static")
    fc1 = layer.fc1.weight  # R4's 4 fixed groups of 16 input columns, whatever the activation groups
    for row in fc1[:4]:
        assert all(row[g * 16:(g + 1) * 16].unique().numel() <= 16 for g in range(4))
    assert math.isfinite(_ppl(q, test))


def test_per_token_ranges_keep_cached_decoding_equal_to_the_full_forward(opt_case, quantized, cached_and_full_logits):
    model, calib, test = opt_case
    q, _ = quantized(model, calib, wbits=4, abits=4, a_granularity="token", w_quantizer="normal")
    cached, full, _ = cached_and_full_logits(q, test[:1, :16], pad_token_id=1)
    assert torch.allclose(cached, full, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(wbits=4, abits=4), dict(wbits=4, abits=8, w_quantizer="normal")])
def test_lazy_quantization_is_bit_identical_to_the_in_memory_one(tiny_opt_shards, quantized, quantized_lazily,
                                                                 tmp_path, kw):
    """Layers read from several shards one at a time and written to an offload folder once quantized: the same
    calibration inputs, clusters and weights as with the whole model in memory."""
    from transformers import AutoModelForCausalLM

    calib = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(3))
    test = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(4))
    whole, report = quantized(AutoModelForCausalLM.from_pretrained(tiny_opt_shards).eval(), calib, **kw)
    lazy, store = quantized_lazily(tiny_opt_shards, tmp_path, calib, **kw)
    assert all(p.device.type == "meta" for p in lazy.model.decoder.layers.parameters())  # all in the folder
    store.load("", "cpu")
    assert torch.equal(lazy(test).logits, whole(test).logits)
    for a, b in zip(lazy.model.decoder.layers, whole.model.decoder.layers):
        assert torch.equal(quantizer_of(a.fc2, "input").index, quantizer_of(b.fc2, "input").index)
