"""rptq/artifact.py: a quantized model saved and loaded back gives the same logits from packed weights; a folder
that is not a complete, intact saved model is refused with one line."""
import json
import shutil

import pytest
import torch

from quantize import PackedLinear
from quantize.attention import ATTN_IMPLEMENTATION
from rptq import artifact
from rptq.artifact import MANIFEST, TENSORS, ArtifactError
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
        assert len(packed) == len(manifest["packed_linears"]) == len(quantized_linears) and not linears
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


DAMAGES = {"corrupt": "is corrupt", "truncated": "is truncated", "missing tensor": "lacks tensor "
           "model.decoder.layers.1.fc1.codes", "newer format": "newer than this code reads",
           "older format": "int16 zero points can wrap",
           "no manifest": f"no {MANIFEST}", "no tensor file": f"lacks {TENSORS}", "not JSON": "not readable JSON"}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_folder_is_refused_with_one_line(saved_opt, damage_saved, tmp_path, how):
    folder = damage_saved(shutil.copytree(saved_opt, tmp_path / "copy"), how)
    with pytest.raises(ArtifactError, match=DAMAGES[how]) as error:
        artifact.load(folder)
    assert "\n" not in str(error.value)
    assert artifact.is_saved(folder)


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


def test_the_manifest_describes_the_tensors(saved_opt):
    import safetensors.torch

    manifest = json.loads((saved_opt / MANIFEST).read_text())
    tensors = safetensors.torch.load_file(saved_opt / TENSORS)
    assert manifest["format_version"] == artifact.FORMAT_VERSION and manifest["family"] == "opt"
    assert manifest["tied"] == {"lm_head.weight": "model.decoder.embed_tokens.weight"}
    assert "lm_head.weight" not in tensors and "model.decoder.layers.0.fc1.weight" not in tensors
    fc1 = manifest["packed_linears"]["model.decoder.layers.0.fc1"]
    assert (fc1["bits"], fc1["in_features"], fc1["out_features"], fc1["groups"]) == (4, 64, 256, 4)
    assert tensors["model.decoder.layers.0.fc1.codes"].dtype == torch.uint8
    assert tensors["model.decoder.layers.0.fc1.codes"].shape == (64 * 256 // 2,)
    assert tensors["model.decoder.layers.0.fc1.scale"].shape == (256, 4)
    assert tensors["model.decoder.layers.0.fc1.zero"].dtype == torch.int32
    k = "model.decoder.layers.0.self_attn.k_proj.rptq_output_quant"
    assert manifest["act_quantizers"][k] == {"bits": 4, "grid": "paper", "ranges": "static", "clusters": 8,
                                             "channels": 64}
    assert tensors[f"{k}.index"].shape == (64,) and tensors[f"{k}.scale"].shape == (8,)
    assert manifest["prob_quantizers"] == {f"model.decoder.layers.{i}.self_attn.rptq_prob_quant": 8 for i in (0, 1)}
    assert manifest["reordered_norms"] == [f"model.decoder.layers.{i}.{n}" for i in (0, 1)
                                           for n in ("final_layer_norm", "self_attn_layer_norm")]
    assert manifest["attn_implementation"] == ATTN_IMPLEMENTATION
