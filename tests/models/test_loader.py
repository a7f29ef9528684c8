"""models/loader.py and the family registry: names, local folders, and a new family as one new file."""
import shutil
import subprocess
import sys
import textwrap

import pytest

import models
from models import FAMILIES, ModelError, adapter_for, load_lazily, load_model, model_names, weights_source


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


def test_a_gguf_model_cannot_be_read_layer_by_layer_and_loads_whole(smollm2, tmp_path):
    model, _, adapter, store = load_lazily(smollm2, folder=tmp_path)
    assert not store.lazy and adapter.family == "llama"
    assert all(p.device.type == "cpu" for p in model.parameters())
    layer = adapter.layers(model)[0]
    store.release(layer)  # still goes to the offload folder once quantized
    assert layer.mlp.down_proj.weight.device.type == "meta" and len(list(tmp_path.iterdir())) == 1
