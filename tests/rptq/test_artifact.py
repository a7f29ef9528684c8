"""rptq/artifact.py: a quantized model saved as a Hugging Face folder and loaded back gives the same logits from
packed weights; a folder that is not a complete, intact saved model is refused with one line; a save leaves all of
the folder or nothing."""
import json
import shutil

import pytest
import torch

from quantize import PackedLinear
from quantize.attention import ATTN_IMPLEMENTATION
from quantize.state import state_of
from rptq import artifact
from rptq.artifact import CONFIG, TENSORS, ArtifactError
from rptq.base import PathError

CASES = {
    "opt-W4A4-gptq": ("opt_case", dict(wbits=4, abits=4)),
    "llama-W3A4": ("llama_case", dict(wbits=3, abits=4, w_quantizer="normal")),
    "llama-W4A4KV": ("llama_case", dict(wbits=4, abits=4, only_quant_kv=True, w_quantizer="normal")),
    "opt-W4A16-group-act_order": ("opt_case", dict(wbits=4, abits=16, w_granularity="group", groupsize=32,
                                                   act_order=True)),
    "llama-W16A4-token": ("llama_case", dict(wbits=16, abits=4, a_granularity="token")),
}


@pytest.mark.parametrize("case", CASES)
def test_the_loaded_model_gives_the_same_logits_from_packed_weights(request, save_quantized, tmp_path, case):
    fixture, kw = CASES[case]
    model, calib, test = request.getfixturevalue(fixture)
    q, folder = save_quantized(model, calib, tmp_path / "saved", **kw)
    loaded, tokenizer, adapter, manifest = artifact.load(folder)
    with torch.no_grad():
        assert torch.equal(loaded(test).logits, q(test).logits)  # same numbers: not merely close
    packed = [m for m in loaded.modules() if isinstance(m, PackedLinear)]
    linears = [m for m in adapter.layers(loaded).modules() if isinstance(m, torch.nn.Linear)]
    quantized_linears = [m for m in adapter.layers(q).modules() if isinstance(m, torch.nn.Linear)]
    if kw["wbits"] < 16:
        assert len(packed) == len(manifest["structure"]["packed_linears"]) == len(quantized_linears) and not linears
        codes = sum(m.codes.numel() for m in packed)
        float_weights = sum(m.in_features * m.out_features for m in packed)
        assert codes == pytest.approx(float_weights * kw["wbits"] / 8, abs=len(packed))  # dense: wbits per weight
    else:
        assert not packed and len(linears) == len(quantized_linears)
    def tied(m):
        return m.lm_head.weight is adapter.embedding_modules(m)[0].weight

    assert tied(loaded) == tied(q) and tied(q) == (fixture == "opt_case")  # tied (OPT) stays tied
    assert loaded.config._attn_implementation == q.config._attn_implementation
    assert manifest["settings"]["wbits"] == kw["wbits"] and len(tokenizer) > 0


@pytest.fixture(scope="module")
def saved_opt(opt_case, save_quantized, tmp_path_factory):
    model, calib, _ = opt_case
    return save_quantized(model, calib, tmp_path_factory.mktemp("opt") / "saved", wbits=4, abits=4,
                          w_quantizer="normal")[1]


DAMAGES = {"corrupt": "is corrupt", "truncated": "is truncated",
           "missing tensor": "lacks tensor model.decoder.layers.1.fc1.codes", "newer format": "newer than this code",
           "older format": "no longer reads", "earlier layout": "saved by an earlier version of rptq",
           "no quantization config": "no RPTQ quantization_config", "no tensor file": f"lacks {TENSORS}",
           "not JSON": "unreadable"}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_folder_is_refused_with_one_line(saved_opt, damage_saved, tmp_path, how):
    folder = damage_saved(shutil.copytree(saved_opt, tmp_path / "copy"), how)
    with pytest.raises(ArtifactError, match=DAMAGES[how]) as error:
        artifact.load(folder)
    assert "\n" not in str(error.value)
    # a folder whose config is not ours or not readable is a model folder to the loader, refused there
    assert artifact.is_saved(folder) == (how not in ("no quantization config", "not JSON"))


def test_save_needs_an_empty_writable_folder(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not empty and nothing is overwritten"):
        artifact.prepare_folder(tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("")
    with pytest.raises(PathError, match="is a file"):
        artifact.prepare_folder(tmp_path / "file")
    with pytest.raises(PathError, match="cannot be written"):
        artifact.prepare_folder(tmp_path / "file" / "below")
    artifact.prepare_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the write probe and its folders are gone


def test_the_config_describes_the_tensors(saved_opt):
    import safetensors.torch

    config = json.loads((saved_opt / CONFIG).read_text())
    manifest = config["quantization_config"]
    structure = manifest["structure"]
    tensors = safetensors.torch.load_file(saved_opt / TENSORS)
    assert config["model_type"] == "opt" and manifest["quant_method"] == "rptq"
    assert manifest["format_version"] == artifact.FORMAT_VERSION and manifest["family"] == "opt"
    assert "lm_head.weight" not in tensors and "model.decoder.layers.0.fc1.weight" not in tensors  # tied; packed
    fc1 = structure["packed_linears"]["model.decoder.layers.0.fc1"]
    assert (fc1["bits"], fc1["in_features"], fc1["out_features"], fc1["groups"]) == (4, 64, 256, 4)
    assert tensors["model.decoder.layers.0.fc1.codes"].dtype == torch.uint8
    assert tensors["model.decoder.layers.0.fc1.codes"].shape == (64 * 256 // 2,)
    assert tensors["model.decoder.layers.0.fc1.scale"].shape == (256, 4) and fc1["scale_dtype"] == "float32"
    zero_codes = tensors["model.decoder.layers.0.fc1.zero_codes"]  # zero - zero_offset in zero_bits bits
    assert zero_codes.dtype == torch.uint8 and zero_codes.numel() == -(-256 * 4 * fc1["zero_bits"] // 8)
    assert isinstance(fc1["zero_offset"], int) and 1 <= fc1["zero_bits"] <= 32
    k = "model.decoder.layers.0.self_attn.k_proj"
    assert structure["act_quantizers"][k] == {"output": {"bits": 4, "grid": "paper", "ranges": "static",
                                                         "clusters": 8, "channels": 64}}
    assert tensors[f"{k}.rptq.quantizers.output.index"].shape == (64,)
    assert tensors[f"{k}.rptq.quantizers.output.scale"].shape == (8,)
    assert structure["prob_quantizers"] == {f"model.decoder.layers.{i}.self_attn": 8 for i in (0, 1)}
    assert structure["reordered_norms"] == [f"model.decoder.layers.{i}.{n}" for i in (0, 1)
                                            for n in ("self_attn_layer_norm", "final_layer_norm")]
    assert manifest["attn_implementation"] == ATTN_IMPLEMENTATION
    assert tensors["model.decoder.layers.0.self_attn_layer_norm.rptq.perm"].shape == (64,)


def test_transformers_alone_loads_a_saved_folder_and_generates_with_the_low_bit_cache(llama_case, tiny_llama_dir,
                                                                                     save_quantized, tmp_path,
                                                                                     run_cli):
    """What a user's own code does: import rptq, then transformers' from_pretrained and generate(), in a fresh
    process (rptq imported before transformers, so the method registers when transformers loads its registry)."""
    from transformers import AutoModelForCausalLM

    _, calib, test = llama_case
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()  # the SmolLM2 tokenizer's vocabulary
    q, folder = save_quantized(model, calib, tmp_path / "saved", wbits=4, abits=4, only_quant_kv=True,
                               w_quantizer="normal")
    with torch.no_grad():
        torch.save({"ids": test[:1, :12], "logits": q(test).logits}, tmp_path / "expected.pt")
    script = tmp_path / "user.py"
    script.write_text(f"""import rptq, torch, transformers
from quantize.kvcache import PackedKVCache
expected = torch.load({str(tmp_path / "expected.pt")!r})
m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r})
with torch.no_grad():
    assert torch.equal(m(torch.load({str(tmp_path / "expected.pt")!r})["ids"].new_tensor({test.tolist()!r})).logits,
                       expected["logits"])
out = m.generate(expected["ids"], max_new_tokens=4, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
assert isinstance(out.past_key_values, PackedKVCache), type(out.past_key_values)
pipe = transformers.pipeline("text-generation", model={str(folder)!r})
print("ok", len(pipe("The capital of", max_new_tokens=3, do_sample=False)[0]["generated_text"]) > 0)
""")
    proc = run_cli(script)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok True", proc.stderr[-3000:]


def test_an_interrupted_save_leaves_nothing(opt_case, quantized, smol_tokenizer, tmp_path, monkeypatch):
    import safetensors.torch

    import rptq

    model, calib, _ = opt_case
    q, _ = quantized(model, calib, wbits=4, abits=4, w_quantizer="normal")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rptq.save(rptq.Loaded.of(q, smol_tokenizer), tmp_path / "saved", rptq.QuantConfig(wbits=4, abits=4))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


def test_float16_storage_halves_the_float_parts_and_rounds_the_scales(opt_case, quantized, smol_tokenizer,
                                                                      tmp_path):
    import rptq

    model, calib, test = opt_case
    q, _ = quantized(model, calib, wbits=4, abits=4, w_quantizer="normal")
    for dtype in (None, torch.float16):
        rptq.save(rptq.Loaded.of(q, smol_tokenizer), tmp_path / str(dtype), rptq.QuantConfig(wbits=4, abits=4),
                  save_dtype=dtype)
    exact, half = (artifact.load(tmp_path / str(dtype))[0] for dtype in (None, torch.float16))
    sizes = [(tmp_path / str(dtype) / TENSORS).stat().st_size for dtype in (None, torch.float16)]
    assert sizes[1] < 0.6 * sizes[0]
    fc1 = half.model.decoder.layers[0].fc1
    assert fc1.scale.dtype == torch.float16 and half.model.decoder.embed_tokens.weight.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(exact(test).logits, q(test).logits)
        close = (half(test).logits - exact(test).logits).abs().max().item()
    assert 0 < close < 0.5
    assert state_of(half.model.decoder.layers[0].self_attn_layer_norm).perm is not None
