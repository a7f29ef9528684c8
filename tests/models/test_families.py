"""Conformance of every registered family, on a tiny random model that transformers builds from the family's config
(no download): the reorder alone is exact, W4A4 changes the model, a saved model loads bit for bit, decoding with
the low-bit KV cache equals a full forward, an offloaded evaluation equals one in memory, and each layer is
calibrated on its own inputs (its own mask and rotary tables where layer types differ).

A new family adds one line to TINY_CONFIGS."""
import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Qwen2Config,
    Qwen3Config,
)

from models import FAMILIES, adapter_for
from quantize import ActQuantizer
from quantize.kvcache import PackedKVCache
from quantize.state import FUSED_ATTENTION
from rptq import artifact, placement
from rptq.config import QuantConfig
from rptq.evaluate import perplexity
from rptq.generate import greedy, new_cache
from rptq.pipeline import quantize_model
from tests.conftest import SMALL_CLUSTERS, needs_compiler, perm_of, randomize_affine

SIZES = dict(vocab_size=512, hidden_size=64, num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=2048)
LLAMA_SIZES = dict(SIZES, num_key_value_heads=2, intermediate_size=128)
WINDOW = 24  # shorter than the test windows and than the decoding prompt
# Each family's tiny model, shaped to reach what the family adds: biases, per-head norms, a head_dim that is not
# hidden / heads, sliding-window layers, and layers of different types in one model.
TINY_CONFIGS = {
    "opt": lambda: OPTConfig(**SIZES, ffn_dim=256, word_embed_proj_dim=64, pad_token_id=1, bos_token_id=2,
                             eos_token_id=2),
    "llama": lambda: LlamaConfig(**LLAMA_SIZES, attention_bias=True),
    "mistral": lambda: MistralConfig(**LLAMA_SIZES, sliding_window=WINDOW),
    "qwen2": lambda: Qwen2Config(**LLAMA_SIZES, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1),
    "qwen3": lambda: Qwen3Config(**LLAMA_SIZES, head_dim=32),
    "gemma3_text": lambda: Gemma3TextConfig(**LLAMA_SIZES, head_dim=32, query_pre_attn_scalar=24,
                                            sliding_window=WINDOW,
                                            layer_types=["sliding_attention", "full_attention"]),
}
# Float rounding only, measured on these models (float32, one thread). The reorder with quantizers off runs the
# Llama-shaped families through our blocked attention (Q/K sites live inside attention) where the float model uses
# sdpa: logits moved by at most 9.4e-6 (gemma3_text; the others at most 5.5e-7), and layer 1's outputs while
# calibrating by at most 7.1e-5 (gemma3_text, values up to 17; others 1.8e-7), of which 3.2e-5 with no reorder at all:
# the two attention kernels round differently. Cached decoding with the low-bit cache differed from the full forward
# by at most 3.6e-7, but for OPT with the reference's order inside clusters by 3.2e-4: a token's K, V or probabilities
# computed one token at a time round apart from the full forward's and can cross a quantization boundary (W4A4
# quantizes every activation and the probabilities), which moves the logits by a fraction of that step. The same goes
# for the fused kernels' other order of float32 sums (and sdpa): against the exact path's decoding, the logits
# moved by at most 3.1e-6 of the largest one, but OPT's W4A4 by 5.2e-4.
REORDER_TOLERANCE = 1e-4
LAYER_OUTPUT_TOLERANCE = 1e-3
CACHE_TOLERANCE = 1e-3
W4A4 = dict(wbits=4, abits=4, w_quantizer="normal")


def build_tiny(family):
    """The family's tiny random model, its norms and biases randomized."""
    torch.manual_seed(0)
    return randomize_affine(AutoModelForCausalLM.from_config(TINY_CONFIGS[family]()).eval())


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_every_registered_family_has_a_tiny_model():
    assert set(TINY_CONFIGS) == set(FAMILIES)


@pytest.fixture(scope="module", params=sorted(TINY_CONFIGS))
def case(request):
    """(family, tiny model, 6 calibration windows, 2 test windows of 128 tokens): never modify the model."""
    gen = torch.Generator().manual_seed(0)
    return (request.param, build_tiny(request.param), torch.randint(0, 512, (6, 128), generator=gen),
            torch.randint(0, 512, (2, 128), generator=gen))


@pytest.fixture(scope="module")
def saved(case, save_quantized, tmp_path_factory):
    """The case's model at W4A4 (round-to-nearest weights) and the folder it was saved in."""
    _, model, calib, _ = case
    return save_quantized(model, calib, tmp_path_factory.mktemp("saved") / "w4a4", **W4A4)


def test_the_shape_counts_what_the_model_holds(case):
    """What the memory scripts read: the decoder Linears' weights, the K/V width and the embedding, from the config."""
    _, model, _, _ = case
    adapter = adapter_for(model.config)
    shape = adapter.shape(model.config)
    layers = adapter.layers(model)
    linears = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    h = shape.hidden
    assert linears == shape.layers * (2 * h * shape.q_width + 2 * h * shape.kv_width + shape.mlp_matrices * h *
                                      shape.mlp_width)
    points = {p.name: p for p in adapter.reorder_points(layers[0])}
    assert (points["R3"].channels, points["R5"].channels) == (shape.kv_width, shape.mlp_width)
    assert adapter.embedding_modules(model)[0].weight.shape == (shape.vocab, shape.embed_width)


def test_the_reorder_with_every_quantizer_off_gives_the_float_logits(case, quantized):
    family, model, calib, test = case
    q, report = quantized(model, calib, wbits=16, abits=16, reorder="12345")
    adapter = adapter_for(q.config)
    for point in adapter.reorder_points(adapter.layers(q)[1]):
        if point.norm is not None:  # something really was reordered
            assert not torch.equal(perm_of(point.norm), torch.arange(point.channels)), point.name
    assert not any(isinstance(m, ActQuantizer) for m in q.modules())  # and nothing quantized
    assert set(report.clusters_per_layer[0]) == {"R1", "R2", "R3", "R4", "R5"}
    assert (_logits(q, test) - _logits(model, test)).abs().max().item() <= REORDER_TOLERANCE


def test_w4a4_changes_the_logits(case, saved):
    _, model, _, test = case
    q, _ = saved
    logits = _logits(q, test)
    assert torch.isfinite(logits).all() and (logits - _logits(model, test)).abs().max().item() > 1e-2


def test_a_saved_model_loads_with_bit_identical_logits(case, saved):
    family, _, _, test = case
    q, folder = saved
    loaded, _, adapter, manifest = artifact.load(folder)
    assert adapter.family == manifest["family"] == family
    assert torch.equal(_logits(loaded, test), _logits(q, test))


def test_prefill_and_decoding_with_the_low_bit_cache_equal_a_full_forward(case, saved, cached_and_full_logits):
    """The prompt is longer than the sliding window where the family has one: the low-bit cache keeps every token and
    the mask hides those outside the window, where transformers' own cache drops them."""
    _, _, _, test = case
    q, _ = saved
    cache = new_cache(q, adapter_for(q.config))
    assert isinstance(cache, PackedKVCache)
    cached, full, out = cached_and_full_logits(q, test[:1, :2 * WINDOW], cache=cache)
    assert out.past_key_values is cache and cache.get_seq_length() == 2 * WINDOW + 8 - 1
    assert (cached - full).abs().max().item() < CACHE_TOLERANCE


@needs_compiler
@pytest.mark.parametrize("kv_only", [False, True], ids=["W4A4", "W4A4KV"])
def test_decoding_on_the_fused_kernels_follows_the_exact_path(case, saved, save_quantized, tmp_path, kv_only):
    """Fused Linears, compiled quantizers and cache, and (W4A4KV: no probability quantizer) torch's fused attention
    over a prompt longer than the sliding window, so that decoding masks keys."""
    _, model, calib, test = case
    folder = save_quantized(model, calib, tmp_path / "kv", **W4A4, only_quant_kv=True)[1] if kv_only else saved[1]
    logits = {}
    for kernel in ("exact", "fused"):
        loaded, _, adapter, _ = artifact.load(folder, kernel=kernel)
        _, logits[kernel], _, _ = greedy(loaded, test[:1, :2 * WINDOW], new_cache(loaded, adapter), 8)
    assert getattr(loaded.config, FUSED_ATTENTION)
    difference = (logits["fused"] - logits["exact"]).abs().max() / logits["exact"].abs().max()
    assert difference < CACHE_TOLERANCE


def _last_layer_on_disk(model, layers):
    """A device map: the last decoder layer (in ModuleList `layers`) on disk, every other module in CPU memory."""
    device_map = {}

    def place(module, prefix):
        for name, child in module.named_children():
            path = prefix + name
            if path == layers:
                device_map.update({f"{path}.{i}": "disk" if i == len(child) - 1 else "cpu" for i in range(len(child))})
            elif layers.startswith(f"{path}."):
                place(child, f"{path}.")
            else:
                device_map[path] = "cpu"

    place(model, "")
    return device_map


def test_an_evaluation_with_a_layer_on_disk_equals_the_one_in_memory(case, smol_tokenizer, quantized,
                                                                     quantized_lazily, tmp_path):
    _, model, calib, test = case
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    in_memory, _ = quantized(AutoModelForCausalLM.from_pretrained(folder).eval(), calib, **W4A4)
    lazy, store = quantized_lazily(folder, tmp_path / "offload", calib, **W4A4)
    adapter = adapter_for(lazy.config)
    assert placement.place(lazy, store, "cpu", _last_layer_on_disk(lazy, store.module_name(adapter.layers(lazy))))
    assert [next(layer.parameters()).device.type for layer in adapter.layers(lazy)] == ["cpu", "meta"]
    assert perplexity(lazy, test, progress=False).nlls == perplexity(in_memory, test, progress=False).nlls


def test_each_layer_is_calibrated_with_its_own_attention_arguments(case):
    """Layer 1's outputs while the pipeline calibrates it equal the float model's: with one layer's mask and rotary
    tables given to every layer, Gemma3's full-attention layer 1 (and Qwen2's sliding layer 1) would differ."""
    _, model, calib, _ = case
    seen = {}

    def keep(name):
        return lambda mod, args, out: seen.setdefault(name, out[0] if isinstance(out, tuple) else out)

    q = copy.deepcopy(model)
    adapter = adapter_for(q.config)
    handles = [adapter.layers(model)[1].register_forward_hook(keep("float")),
               adapter.layers(q)[1].register_forward_hook(keep("pipeline"))]  # first full run: step (e)
    try:
        _logits(model, calib[:1])
        quantize_model(q, adapter, calib, QuantConfig(wbits=16, abits=16, reorder="12345", **SMALL_CLUSTERS),
                       progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert (seen["pipeline"] - seen["float"]).abs().max().item() < LAYER_OUTPUT_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_family_quantizes_in_half_precision(case, quantized, dtype):
    """The CUDA default's numerics on the CPU, for every family (tests/test_device.py goes further on OPT and Llama):
    the reorder alone keeps the half-precision logits up to that dtype's rounding of sums taken in another order, and
    W4A4 gives finite logits that differ from them. bfloat16 keeps 3 fewer mantissa bits than float16, so 8 times the
    tolerance (largest differences measured: gemma3_text 1.3e-2 / 0.12, the others at most 9.8e-4 / 8.7e-3 in
    float16 / bfloat16)."""
    _, model, calib, test = case
    half = copy.deepcopy(model).to(dtype)
    reordered, _ = quantized(half, calib, wbits=16, abits=16, reorder="12345")
    w4a4, _ = quantized(half, calib, **W4A4)
    want = _logits(half, test).float()
    assert (_logits(reordered, test).float() - want).abs().max().item() < {torch.float16: 5e-2}.get(dtype, 0.4)
    logits = _logits(w4a4, test).float()
    assert torch.isfinite(logits).all() and (logits - want).abs().max().item() > 1e-2
    assert next(w4a4.parameters()).dtype == dtype
