"""rptq/placement.py: accelerate's device maps (layers whole, budgets checked before the slow part) and a dispatched
quantized model that computes what the model in memory computes."""
import pytest
import torch

from models import load_lazily
from rptq import placement
from rptq.base import PathError
from rptq.config import ConfigError
from tests.conftest import quantizer_of

W4A4 = dict(wbits=4, abits=4, w_quantizer="normal")


@pytest.fixture(scope="module")
def windows():
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 512, (2, 64), generator=gen), torch.randint(0, 512, (1, 64), generator=gen)


@pytest.fixture(scope="module")
def expected_logits(tiny_opt_shards, quantized, windows):
    from transformers import AutoModelForCausalLM

    calib, test = windows
    model, _ = quantized(AutoModelForCausalLM.from_pretrained(tiny_opt_shards).eval(), calib, **W4A4)
    with torch.no_grad():
        return model(test).logits


def test_the_map_keeps_layers_whole_and_within_the_budget(tiny_opt_shards, cpu_budget, tmp_path):
    model, _, adapter, _ = load_lazily(str(tiny_opt_shards))
    budget = {"cpu": cpu_budget(tiny_opt_shards, 2)}
    device_map = placement.plan(model, adapter, "sequential", budget, "cpu", tmp_path)
    layers = {name: where for name, where in device_map.items() if ".layers." in name}
    assert layers == {"model.decoder.layers.0": "cpu", "model.decoder.layers.1": "cpu",
                      "model.decoder.layers.2": "disk", "model.decoder.layers.3": "disk"}
    assert placement.plan(model, adapter, "balanced", budget, "cpu", tmp_path) == device_map  # no GPU to balance
    assert placement.main_device(device_map) == "cpu" and placement.main_device({"a": "cpu", "b": 1}) == "cuda:1"


def test_maps_that_cannot_work_are_refused_before_quantizing(tiny_opt_shards, cpu_budget, tmp_path):
    model, _, adapter, _ = load_lazily(str(tiny_opt_shards))
    with pytest.raises(ConfigError, match="leave room for no module at all"):
        placement.plan(model, adapter, "sequential", {"cpu": 1000}, "cpu", tmp_path)
    with pytest.raises(ConfigError, match="2 module\\(s\\) go to disk .*; set offload_folder"):
        placement.plan(model, adapter, "sequential", {"cpu": cpu_budget(tiny_opt_shards, 2)}, "cpu", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_budget_for_an_absent_gpu_is_refused():
    with pytest.raises(ConfigError, match="gives GPU 0 a budget, but this machine has 0 CUDA device"):
        placement.check_budgets({0: 2 ** 30, "cpu": 2 ** 30})
    placement.check_budgets({"cpu": 2 ** 30})


def test_each_run_gets_a_fresh_folder_removed_at_the_end(tmp_path):
    with placement.scratch_folder(tmp_path / "off") as a, placement.scratch_folder(tmp_path / "off") as b:
        assert a != b and a.parent == b.parent == tmp_path / "off" and a.is_dir()
    assert list((tmp_path / "off").iterdir()) == []
    with placement.scratch_folder(None) as none:
        assert none is None
    (tmp_path / "file").write_text("")
    with pytest.raises(PathError, match="cannot make a folder in .*file/off: "):
        with placement.scratch_folder(tmp_path / "file" / "off"):
            pass


def test_layers_on_cpu_and_disk_compute_what_the_model_in_memory_computes(tiny_opt_shards, quantized_lazily,
                                                                          cpu_budget, windows, expected_logits,
                                                                          tmp_path):
    calib, test = windows
    skeleton, _, adapter, _ = load_lazily(str(tiny_opt_shards))  # main.py maps the model before quantizing it
    device_map = placement.plan(skeleton, adapter, "sequential", {"cpu": cpu_budget(tiny_opt_shards, 1)}, "cpu",
                                tmp_path)
    model, store = quantized_lazily(tiny_opt_shards, tmp_path, calib, **W4A4)
    assert placement.place(model, store, "cpu", device_map) == "cpu"
    disk_layer, cpu_layer = model.model.decoder.layers[3], model.model.decoder.layers[0]
    assert disk_layer.fc1.weight.device.type == "meta" and cpu_layer.fc1.weight.device.type == "cpu"
    assert quantizer_of(disk_layer.fc2, "input").scale.device.type == "cpu"  # the quantizer's buffers stayed real
    with torch.no_grad():
        assert torch.equal(model(test).logits, expected_logits)


def test_embeddings_and_head_on_disk_too(tiny_opt_shards, quantized_lazily, windows, expected_logits, tmp_path):
    """The first parameter is then on "meta": what the model reports as its device is not where inputs go."""
    calib, test = windows
    model, store = quantized_lazily(tiny_opt_shards, tmp_path, calib, **W4A4)
    outside = {"model.decoder.embed_tokens": "disk", "lm_head": "disk", "model.decoder.embed_positions": "cpu",
               "model.decoder.final_layer_norm": "cpu"}
    device_map = {**outside, **{f"model.decoder.layers.{i}": "cpu" if i % 2 else "disk" for i in range(4)}}
    assert placement.place(model, store, "cpu", device_map) == "cpu"
    assert model.device.type == "meta"
    with torch.no_grad():
        assert torch.equal(model(test).logits, expected_logits)


def test_device_and_dtype_choice():
    assert placement.resolve_device("cpu") == ("cpu", torch.float32)
    assert placement.resolve_device("cpu", "bfloat16") == ("cpu", torch.bfloat16)
    with pytest.raises(ConfigError, match="device 'gpu0' is not a torch device"):
        placement.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            placement.resolve_device("cuda")
