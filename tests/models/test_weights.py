"""models/weights.py (and the lazy loader that fills it): a model built empty reads each module from the checkpoint
only when loaded, and a module written to the offload folder comes back unchanged."""
import pytest
import torch

from models import ModelError, WeightStore, load_lazily
from models.weights import checkpoint_files


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))


def _full(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def test_a_lazy_model_reads_a_layer_only_when_it_is_loaded(tiny_opt_shards, ids):
    model, _, adapter, store = load_lazily(str(tiny_opt_shards))
    layers = adapter.layers(model)
    assert store.lazy and all(p.device.type == "meta" for p in layers.parameters())
    assert all(p.device.type == "cpu" for n, p in model.named_parameters() if ".layers." not in n)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight  # tied, as from_pretrained leaves it
    assert len({path for path, _ in store.where.values()}) > 1  # the layers come from several shards
    store.fetch(layers[1], "cpu")
    assert all(p.device.type == "cpu" for p in layers[1].parameters())
    assert all(p.device.type == "meta" for p in layers[2].parameters())
    store.load("", "cpu")
    assert torch.equal(_logits(model, ids), _logits(_full(tiny_opt_shards), ids))


def test_released_layers_go_to_the_folder_and_come_back_unchanged(tiny_opt_shards, tmp_path, ids):
    model, _, adapter, store = load_lazily(str(tiny_opt_shards), folder=tmp_path)
    for layer in adapter.layers(model):
        store.fetch(layer, "cpu")
        with torch.no_grad():
            layer.fc1.weight.mul_(2)  # as quantization changes a layer before it is released
        store.release(layer)
        assert all(p.device.type == "meta" for p in layer.parameters())
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model.decoder.layers.{i}.safetensors" for i in range(4)]
    index = store.offload_index(["model.decoder.layers.3"])
    assert index["model.decoder.layers.3.fc1.weight"]["safetensors_file"] == str(
        tmp_path / "model.decoder.layers.3.safetensors")
    store.load("", "cpu")
    expected = _full(tiny_opt_shards)
    with torch.no_grad():
        for layer in expected.model.decoder.layers:
            layer.fc1.weight.mul_(2)
    assert torch.equal(_logits(model, ids), _logits(expected, ids))


def test_a_bin_checkpoint_saved_without_the_base_prefix_is_read_tensor_by_tensor(tiny_opt_shards, tmp_path, ids):
    """Older OPT checkpoints: PyTorch .bin shards holding an OPTModel's keys ('decoder.layers.0...')."""
    full = _full(tiny_opt_shards)
    state = {k.removeprefix("model."): v for k, v in full.state_dict().items() if not k.startswith("lm_head")}
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((tiny_opt_shards / name).read_bytes())
    torch.save(state, tmp_path / "pytorch_model.bin")
    model, _, _, store = load_lazily(str(tmp_path), folder=tmp_path / "offload")
    assert store.where["model.decoder.layers.0.fc1.weight"] == (tmp_path / "pytorch_model.bin",
                                                                "decoder.layers.0.fc1.weight")
    store.offload("model.decoder.layers.0")  # accelerate cannot read a .bin file in place: copied to the folder
    assert store.where["model.decoder.layers.0.fc1.weight"][0].suffix == ".safetensors"
    store.load("", "cpu")
    assert torch.equal(_logits(model, ids), _logits(full, ids))


def test_llama_rotary_frequencies_are_computed_not_read(tiny_llama_dir, ids):
    model, _, _, store = load_lazily(str(tiny_llama_dir))
    assert model.model.rotary_emb.inv_freq.device.type == "cpu"
    store.load("", "cpu")
    assert torch.equal(_logits(model, ids), _logits(_full(tiny_llama_dir), ids))


def test_a_checkpoint_that_lacks_tensors_is_one_line(tiny_opt_shards):
    def find(name):
        return tiny_opt_shards / name if (tiny_opt_shards / name).is_file() else None

    files = checkpoint_files(find)
    del files["model.decoder.layers.2.fc2.weight"]
    model, _, _, _ = load_lazily(str(tiny_opt_shards))
    with pytest.raises(ModelError, match=r"lacks 1 of the model's tensors \(model.decoder.layers.2.fc2.weight\)"):
        WeightStore(model, files)
    with pytest.raises(ModelError, match="named in model.safetensors.index.json, is missing"):
        checkpoint_files(lambda name: find(name) if name.endswith(".json") else None)
