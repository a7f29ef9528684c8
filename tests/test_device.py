"""The library on the device and in the dtype of RPTQ_TEST_DEVICE and RPTQ_TEST_DTYPE (default: the CPU in float16,
the CUDA default's numerics): quantizing the tiny models, saving and loading them, decoding with the low-bit cache
and the packed kernels there. bench/cuda_check.py runs this file with the GPU's device; in the suite it keeps half
precision exercised on the CPU. Tolerances are for float16 and bfloat16 rounding; what these tiny models gave on the
CPU is beside each (float16 / bfloat16 / float32)."""
import copy
import os

import pytest
import torch

import rptq
from quantize.kvcache import PackedKVCache
from quantize.packed import PackedLinear, use_kernel
from rptq.generate import new_cache
from tests.conftest import SMALL_CLUSTERS

DEVICE = os.environ.get("RPTQ_TEST_DEVICE", "cpu")
DTYPE = getattr(torch, os.environ.get("RPTQ_TEST_DTYPE", "float16"))
W4A4 = dict(wbits=4, abits=4, w_quantizer="normal", **SMALL_CLUSTERS)
HALF = DTYPE in (torch.float16, torch.bfloat16)

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    pytest.skip(f"RPTQ_TEST_DEVICE={DEVICE} but CUDA is not available", allow_module_level=True)


@pytest.fixture(scope="module", params=["tiny_opt_dir", "tiny_llama_dir"])
def case(request):
    """A tiny model read in DTYPE as a checkpoint is (its rotary tables computed, not cast), and token windows."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(request.param), dtype=DTYPE).eval()
    gen = torch.Generator().manual_seed(0)
    calib, test = torch.randint(0, 512, (4, 64), generator=gen), torch.randint(0, 512, (1, 48), generator=gen)
    return model, calib.to(DEVICE), test.to(DEVICE)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.fixture(scope="module")
def quantized(case, tmp_path_factory):
    """(the float model on the device, its W4A4 copy quantized there, the folder the copy was saved in)."""
    model, calib, _ = case
    q = copy.deepcopy(model)
    rptq.quantize(rptq.Loaded.of(q), calib, rptq.QuantConfig(**W4A4), DEVICE, progress=False)
    folder = tmp_path_factory.mktemp("device") / "saved"
    from models import load_tokenizer

    rptq.save(rptq.Loaded.of(q.cpu(), load_tokenizer("smollm2-135m")), folder, rptq.QuantConfig(**W4A4))
    return model.to(DEVICE), q.to(DEVICE), folder


def test_the_reorder_alone_keeps_the_logits_in_this_dtype(case):
    """Reorder with every quantizer off: the float logits up to the dtype's rounding of sums taken in another order
    (largest difference measured: 9.8e-4 / 5.9e-3 / 3.9e-7)."""
    model, calib, test = case
    q = copy.deepcopy(model)
    rptq.quantize(rptq.Loaded.of(q), calib, rptq.QuantConfig(reorder="12345", **SMALL_CLUSTERS), DEVICE,
                  progress=False)
    model.to(DEVICE)
    assert (_logits(q.to(DEVICE), test) - _logits(model, test)).abs().max().item() < (5e-2 if HALF else 1e-4)


def test_w4a4_runs_and_a_saved_model_loads_with_the_same_logits(case, quantized):
    _, _, test = case
    model, q, folder = quantized
    logits = _logits(q, test)
    assert torch.isfinite(logits).all() and not torch.equal(logits, _logits(model, test))
    loaded = rptq.load(str(folder), DTYPE).model.to(DEVICE)
    assert torch.equal(_logits(loaded, test), logits)


def test_cached_decoding_with_the_low_bit_cache_follows_the_full_forward(case, quantized):
    """Decoding one token at a time rounds apart from the full forward, more in half precision, and a value can cross
    a quantization boundary (largest difference measured: 2.4e-4 / 0 / 3.6e-7)."""
    _, _, test = case
    _, q, _ = quantized
    cache = new_cache(q, rptq.Loaded.of(q).adapter)
    assert isinstance(cache, PackedKVCache)
    with torch.no_grad():
        out = q.generate(test, max_new_tokens=6, do_sample=False, use_cache=True, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0, past_key_values=cache)
        full = q(out.sequences[:, :-1], use_cache=False).logits.float()[:, test.shape[1] - 1:]
    assert (torch.stack(out.logits, 1).float() - full).abs().max().item() < (1e-2 if HALF else 1e-3)


@pytest.mark.parametrize("kernel", ["fused", "int4"])
def test_the_fast_kernels_run_here_close_to_the_exact_one(quantized, kernel):
    """Every packed Linear by the fused (CPU) or int4 kernel on a decoding step's few rows: the exact path's outputs,
    relative to their norm, up to the order of float32 sums (fused; the exact path's half-precision matmul rounds
    more: 4.1e-4 / 3.2e-2 / 9.4e-7 measured) or bfloat16 activations and scales (int4: 3.2e-2 / 4.1e-2 / 4.2e-2)."""
    tolerance = {"fused": {torch.float32: 1e-5, torch.float16: 2e-3}.get(DTYPE, 0.1), "int4": 0.1}[kernel]
    if kernel == "fused" and DEVICE != "cpu":
        pytest.skip("the fused kernel is the CPU's")
    _, _, folder = quantized
    exact = [m for m in rptq.load(str(folder), DTYPE).model.to(DEVICE).modules() if isinstance(m, PackedLinear)]
    fast = rptq.load(str(folder), DTYPE).model.to(DEVICE)
    assert use_kernel(fast, kernel) == len(exact)
    gen = torch.Generator().manual_seed(1)
    for a, b in zip(exact, (m for m in fast.modules() if isinstance(m, PackedLinear))):
        x = torch.randn(3, a.in_features, generator=gen).to(DEVICE, DTYPE)
        with torch.no_grad():
            want, got = a(x).float(), b(x).float()
        assert (got - want).norm() <= tolerance * want.norm() + 1e-3, kernel
