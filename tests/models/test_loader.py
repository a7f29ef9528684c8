"""models/loader.py and the family registry: names, local folders, and a new family as one new file."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

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
    loader,
    model_names,
    weights_source,
)
from models.loader import read_gguf, smollm2_source, write_model_folder


def test_every_family_module_registers_itself():
    assert {"opt", "llama"} <= set(FAMILIES)
    assert "opt-1.3b" in model_names() and "smollm2-135m" in model_names()
    assert weights_source("opt-1.3b") == "hub facebook/opt-1.3b"


def test_unknown_model_type_and_name_are_one_line_errors():
    from transformers import GPT2Config

    with pytest.raises(ModelError, match="model type 'gpt2' is not supported"):
        adapter_for(GPT2Config())
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_a_new_family_is_one_new_file(tmp_path):
    """A copy of models/ with one more module: the new adapter is found without touching loader.py."""
    shutil.copytree(models.__path__[0], tmp_path / "models", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "models" / "gpt2.py").write_text(textwrap.dedent('''
        from .adapter import DecoderAdapter

        class GPT2Adapter(DecoderAdapter):
            family = "gpt2"
            model_types = ("gpt2",)
            hub_names = {"gpt2-small": "openai-community/gpt2"}
    '''))
    code = ("import models; from transformers import GPT2Config; "
            "print(models.adapter_for(GPT2Config()).family, 'gpt2-small' in models.model_names())")
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
    config, tokenizer, direct = read_gguf(*smollm2_source())
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


def test_smollm2_is_converted_once_per_package_file_and_reader(smollm2, tmp_path, monkeypatch):
    """Where the converted folder goes and when it is made again; the conversion itself is replaced by a marker."""
    import transformers

    made = []
    monkeypatch.setattr(loader, "read_gguf", lambda source, gguf: (source, gguf))
    monkeypatch.setattr(loader, "write_model_folder", lambda folder, *read: (made.append(read), folder.mkdir()))
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "cache"))
    first = loader.smollm2_folder()
    assert first.parent == tmp_path / "cache" / "models" and first.name.startswith("smollm2-135m-")
    assert loader.smollm2_folder() == first and made == [smollm2_source()]
    source, gguf = smollm2_source()
    shutil.copy(Path(source) / gguf, tmp_path / gguf)  # another install of the same file shares the folder
    monkeypatch.setattr(loader, "smollm2_source", lambda: (str(tmp_path), gguf))
    assert loader.smollm2_folder() == first and len(made) == 1
    monkeypatch.setattr(transformers, "__version__", "0.0.1")
    assert loader.smollm2_folder() != first and len(made) == 2


def test_an_unwritable_cache_is_one_line_before_the_gguf_is_read(smollm2, tmp_path, monkeypatch):
    monkeypatch.setattr(loader, "read_gguf", lambda *a: pytest.fail("read before the cache was found unwritable"))
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("RPTQ_CACHE_DIR", str(tmp_path / "file"))
    with pytest.raises(ModelError, match="set RPTQ_CACHE_DIR to a writable folder"):
        loader.smollm2_folder()


def test_a_folder_without_a_readable_checkpoint_is_refused_for_lazy_loading(tiny_opt_dir, tmp_path):
    shutil.copy(tiny_opt_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelError, match="no safetensors or PyTorch checkpoint to read layer by layer"):
        load_lazily(str(tmp_path))
