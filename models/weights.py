"""Where a model's weights are while no device needs them: in CPU memory, in the checkpoint's files, or in an
offload folder.

A model built empty (accelerate's init_empty_weights: its parameters on the "meta" device, taking no memory) gets
each module's tensors read from the checkpoint only when that module is loaded, so a model larger than memory can
be quantized one decoder layer at a time, each finished layer written to the offload folder and freed, and then be
spread over the devices by accelerate, which reads the disk-mapped modules from those files at each forward.
"""
import json
from collections import defaultdict
from pathlib import Path

import torch

from rptq.base import atomic_path

from .adapter import ModelError

# a checkpoint's tensors, in the order transformers prefers them: (index of a sharded checkpoint, single file)
CHECKPOINT_FILES = (("model.safetensors.index.json", "model.safetensors"),
                    ("pytorch_model.bin.index.json", "pytorch_model.bin"))


def _read_file(path, keys):
    """{key: tensor} for some keys of one checkpoint file; both formats map the file, so the rest is never read."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in keys}
    tensors = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    return {k: tensors[k] for k in keys}


def _file_keys(path):
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    return list(torch.load(path, map_location="cpu", mmap=True, weights_only=True))


def checkpoint_files(find):
    """Tensor name -> local file of a Hugging Face checkpoint (safetensors or PyTorch .bin, sharded or not), or None
    when it has neither. find(file name) -> a local path, or None where the checkpoint has no such
    file."""
    for index, single in CHECKPOINT_FILES:
        if (path := find(index)) is not None:
            shards = json.loads(Path(path).read_text())["weight_map"]
            local = {shard: find(shard) for shard in set(shards.values())}
            absent = sorted(shard for shard, found in local.items() if found is None)
            if absent:
                raise ModelError(f"{absent[0]}, named in {index}, is missing; download the whole checkpoint")
            return {key: Path(local[shard]) for key, shard in shards.items()}
        if (path := find(single)) is not None:
            return dict.fromkeys(_file_keys(Path(path)), Path(path))
    return None


class WeightStore:
    """Moves a model's modules between a device and where they wait: CPU memory, or files (the checkpoint, and one
    safetensors file per module written to `folder`). Tensors on "meta" are in a file; the others are in memory.

    files: checkpoint tensor name -> file, for a model built empty (None: every tensor is in memory already).
    Buffers always stay in memory: they are small (the quantizers' scales, the permutations) and accelerate keeps
    them on each module's execution device."""

    def __init__(self, model, files=None, folder=None):
        from accelerate.utils import find_tied_parameters

        self.model, self.folder = model, None if folder is None else Path(folder)
        self.lazy = files is not None
        self.names = {id(m): name for name, m in model.named_modules()}
        self.tied = {name: [n for n in group if n != name] for group in find_tied_parameters(model) for name in group}
        self.where = {}  # parameter name -> (file, key in the file), for each parameter on "meta"
        missing = []
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.device.type == "meta":
                found = self._locate(name, files or {})
                if found is None:
                    missing.append(name)
                else:
                    self.where[name] = found
        if missing:
            raise ModelError(f"the checkpoint lacks {len(missing)} of the model's tensors ({', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''}); it does not match its config.json")

    def _locate(self, name, files):
        """The checkpoint may name tensors without the base model's prefix (an OPTModel saved alone: 'decoder.x'
        for 'model.decoder.x'), and store a tied weight under its partner's name only."""
        prefix = f"{self.model.base_model_prefix}."
        for candidate in (name, *self.tied.get(name, ())):
            for key in (candidate, candidate.removeprefix(prefix)):
                if key in files:
                    return files[key], key
        return None

    def module_name(self, module):
        return self.names[id(module)]

    def _read(self, names):
        """{parameter name: tensor} for parameters on "meta", read from their files, one opening per file."""
        by_file = defaultdict(list)
        for name in names:
            by_file[self.where[name][0]].append(name)
        values = {}
        for path, in_file in by_file.items():
            read = _read_file(path, {self.where[n][1] for n in in_file})
            values.update((n, read[self.where[n][1]]) for n in in_file)
        return values

    def load_tensors(self, names, device):
        """Read these parameters (on "meta") from their files onto device."""
        from accelerate.utils import set_module_tensor_to_device

        for name, value in self._read(names).items():
            try:
                set_module_tensor_to_device(self.model, name, device, value=value, clear_cache=False)
            except ValueError as e:  # a shape that does not match config.json
                raise ModelError(f"cannot load {name} from {self.where[name][0]}: {str(e).splitlines()[0]}") from None
            param = self.model.get_parameter(name)
            for alias in self.tied.get(name, ()):  # the new Parameter replaced only this name's
                owner, _, leaf = alias.rpartition(".")
                self.model.get_submodule(owner)._parameters[leaf] = param
                self.where.pop(alias, None)
            del self.where[name]

    def load(self, name, device):
        """Put module `name` ("" for the whole model) on device: read what is in files, move what is in memory."""
        module = self.model.get_submodule(name)
        prefix = f"{name}." if name else ""
        self.load_tensors([prefix + k for k, p in module.named_parameters() if p.device.type == "meta"], device)
        module.to(device)

    def offload(self, name):
        """Write module `name`'s parameters that accelerate cannot read from a file as they are (those in memory, or
        in a .bin checkpoint) to one safetensors file in the folder, and free them."""
        from accelerate.utils import set_module_tensor_to_device
        from safetensors.torch import save_file

        prefix = f"{name}." if name else ""
        params = {prefix + k: p for k, p in self.model.get_submodule(name).named_parameters()}
        state = {k: p.detach().to("cpu").contiguous() for k, p in params.items() if p.device.type != "meta"}
        state.update(self._read([k for k, p in params.items() if p.device.type == "meta" and
                                 self.where[k][0].suffix != ".safetensors"]))
        if not state:
            return
        path = self.folder / f"{name or 'model'}.safetensors"
        with atomic_path(path) as tmp:
            save_file(state, tmp)
        for k in state:
            set_module_tensor_to_device(self.model, k, "meta", clear_cache=False)
            self.where[k] = (path, k)

    def fetch(self, layer, device):
        """The pipeline's hook: a decoder layer onto the device for its turn."""
        self.load(self.module_name(layer), device)

    def release(self, layer):
        """The pipeline's hook: a finished layer to the offload folder (freed), or back to CPU memory without one."""
        if self.folder is None:
            self.load(self.module_name(layer), "cpu")
        else:
            self.offload(self.module_name(layer))

    def offload_index(self, names):
        """accelerate's offload index for the parameters of these modules (all in safetensors files by now)."""
        index = {}
        for name in names:
            prefix = f"{name}." if name else ""
            for k, p in self.model.get_submodule(name).named_parameters():
                path, key = self.where[prefix + k]
                index[prefix + k] = {"safetensors_file": str(path), "weight_name": key,
                                     "dtype": str(p.dtype).removeprefix("torch.")}
        return index

