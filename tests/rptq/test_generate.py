"""rptq/generate.py: the low-bit cache wired to a quantized model reproduces one full fake-quantized forward."""
import pytest
import torch
from transformers import DynamicCache

from models import adapter_for
from quantize.kvcache import PackedKVCache
from quantize.packed import use_kernel
from rptq import artifact
from rptq.generate import greedy, new_cache
from tests.conftest import needs_compiler

CASES = {
    "opt-W4A4": ("opt_case", dict(wbits=4, abits=4)),
    "llama-W4A4KV": ("llama_case", dict(wbits=4, abits=4, only_quant_kv=True)),
    "llama-W3A3KV": ("llama_case", dict(wbits=3, abits=3, only_quant_kv=True)),
}
TOLERANCE = 1e-4  # attention over a prefix in steps vs all at once: float rounding only


@pytest.mark.parametrize("case", CASES)
def test_prefill_and_decoding_with_the_low_bit_cache_equal_the_full_forward(request, quantized, case):
    fixture, kw = CASES[case]
    model, calib, test = request.getfixturevalue(fixture)
    q, _ = quantized(model, calib, w_quantizer="normal", **kw)
    cache = new_cache(q, adapter_for(q.config))
    assert isinstance(cache, PackedKVCache)
    prompt = test[:, :16]
    new, logits, _, _ = greedy(q, prompt, cache, 8)
    with torch.no_grad():
        full = q(torch.cat([prompt, new[:, :-1]], 1)).logits[:, 15:]
    assert (logits - full).abs().max() < TOLERANCE
    assert torch.equal(new, full.argmax(-1))
    layer = cache.layers[1]
    assert layer.get_seq_length() == 16 + 8 - 1 and layer.keys.dtype == torch.uint8
    assert layer.keys.shape[-1] * 8 == layer.key_grid.channels * kw["abits"]  # abits per K value

    standard_new, standard_logits, _, _ = greedy(q, prompt, DynamicCache(config=q.config), 8)
    assert torch.equal(standard_new, new) and torch.equal(standard_logits, logits)  # the float cache's, exactly


def test_generate_runs_with_the_low_bit_cache_on_a_loaded_model(llama_case, save_quantized, cached_and_full_logits,
                                                                tmp_path):
    model, calib, test = llama_case
    q, folder = save_quantized(model, calib, tmp_path / "saved", wbits=4, abits=4, w_quantizer="normal")
    loaded, _, adapter, _ = artifact.load(folder)
    cache = new_cache(loaded, adapter)
    cached, full, out = cached_and_full_logits(loaded, test[:1, :16], cache=cache)
    assert out.past_key_values is cache and cache.get_seq_length() == 16 + 8 - 1
    assert (cached - full).abs().max() < TOLERANCE
    with torch.no_grad():
        assert torch.equal(full, q(out.sequences[:, :-1]).logits[:, 15:])  # loaded == in memory


@pytest.mark.parametrize("kw", [dict(wbits=4, abits=16), dict(wbits=16, abits=4, a_dynamic=True)])
def test_without_static_k_and_v_grids_the_standard_cache_is_used(opt_case, quantized, kw):
    model, calib, _ = opt_case
    q, _ = quantized(model, calib, w_quantizer="normal", **kw)
    assert type(new_cache(q, adapter_for(q.config))) is DynamicCache


@needs_compiler
def test_compiled_quantizers_and_cache_decode_the_same_logits_and_skip_requantizing_cached_keys(llama_case,
                                                                                               quantized):
    model, calib, test = llama_case
    q, _ = quantized(model, calib, w_quantizer="normal", wbits=4, abits=4)
    adapter, prompt = adapter_for(q.config), test[:1, :16]
    key_quantizer = adapter.cache_sites(adapter.layers(q)[0])[0].quantizer()
    rows = []
    key_quantizer.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[1]))
    _, want, _, _ = greedy(q, prompt, DynamicCache(config=q.config), 4)
    assert rows == [16, 17, 18, 19]  # the float cache's keys are quantized at every step, all of them
    assert use_kernel(q, "fused") == 0  # no packed Linears in memory: only the quantizers and the cache
    cache = new_cache(q, adapter)
    _, got, _, _ = greedy(q, prompt, cache, 4)
    assert cache.layers[0].key_grid.compiled and torch.equal(got, want)
    assert rows == [16, 17, 18, 19]  # the low-bit cache's keys are on the grid already: not quantized again
