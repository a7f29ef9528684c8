"""The quantized model as files, in the layout of a Hugging Face model folder: written after calibration (main.py
--save DIR), read back by `transformers.AutoModelForCausalLM.from_pretrained(DIR)` once rptq is imported (rptq/hf.py
registers the method), which is also how main.py DIR and rptq.load read it. The format is documented in the README
("Saved models and the low-bit KV cache").

A saved folder holds config.json (the model's config, with a `quantization_config`: quant_method "rptq", the format
version, the settings and label, where the model came from, the size and sha256 of the tensor file, and the
structure: which Linears are packed and how, which activation sites have quantizers, which attention modules
quantize probabilities, which norms read their input reordered), model.safetensors (every tensor of the model as
it loads: the packed Linears' codes, scales, zero points and column groups, each quantizer's cluster index and
per-cluster scale and zero, the reordered norms' permutations, the float tensors), generation_config.json and the
tokenizer's files. It is written in a folder beside DIR and renamed into place when whole: an interrupted or failed
save leaves nothing.

Nothing here knows a family: what the pipeline attached is found by type (quantize/state.py) when saving; when
loading, quantizers are attached at the sites the family adapter declares, as the pipeline does.
"""
import json
import os
from pathlib import Path

import torch
from torch import nn

from models import adapter_for
from models.packaged import quiet_loading
from quantize import ActQuantizer, PackedLinear, ProbQuantizer
from quantize.pack import WIDE_BITS
from quantize.packed import use_kernel
from quantize.state import STATE, state_of

from .base import RPTQError, atomic_folder, check_folder, file_sha256
from .reorder import read_in_order

QUANT_METHOD = "rptq"
FORMAT_VERSION = 3  # 3: a Hugging Face model folder (config.json's quantization_config, model.safetensors)
CONFIG = "config.json"
TENSORS = "model.safetensors"
OLD_MANIFEST = "rptq_manifest.json"  # formats 1 and 2 kept their own manifest and tensor file
MANIFEST_KEYS = ("quant_method", "format_version", "label", "settings", "attn_implementation", "tensors", "structure")


class ArtifactError(RPTQError):
    """A saved-model folder that cannot be written or read: one line saying which and why."""


def _quantization_config(folder):
    """config.json's quantization_config of folder, or None (no config, or none of ours)."""
    try:
        config = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    return quantization if isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD \
        else None


def is_saved(path):
    """Whether path is meant as a saved RPTQ model: a folder whose config says so, or one of an earlier format."""
    folder = Path(path)
    return folder.is_dir() and ((folder / OLD_MANIFEST).exists() or _quantization_config(folder) is not None)


def prepare_folder(path):
    """Before any calibration: the folder must be absent or empty (nothing is overwritten) and writable."""
    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()):
        raise ArtifactError("{save} {path}: the folder is not empty and nothing is overwritten; remove it or pick "
                            "another folder", option="save", path=str(path))
    check_folder(folder, "save")


def read_manifest(path):
    """The quantization_config of a saved folder, checked for what this code can read."""
    folder = Path(path)
    if (folder / OLD_MANIFEST).exists():
        raise ArtifactError(f"{folder} was saved by an earlier version of rptq (its own {OLD_MANIFEST}, not a "
                            "Hugging Face folder); save the model again with this version")
    manifest = _quantization_config(folder)
    if manifest is None:
        raise ArtifactError(f"{folder / CONFIG} is missing, unreadable or has no RPTQ quantization_config: not a "
                            "saved RPTQ model; save the model again")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{folder / CONFIG}: format_version must be a positive integer, got {version!r}")
    if version != FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise ArtifactError(f"{folder} was saved in format version {version}, " + (
            f"newer than this code reads ({FORMAT_VERSION}); update rptq to load it" if newer else
            f"which this code no longer reads ({FORMAT_VERSION}); save the model again with this version"))
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{folder / CONFIG}: its quantization_config lacks {', '.join(missing)}; save the model "
                            "again")
    return manifest


def check_tensor_file(file, manifest):
    """The tensor file is the one the config describes: its size, then its sha256."""
    expected = manifest["tensors"]
    if not Path(file).is_file():
        raise ArtifactError(f"{Path(file).parent} lacks {TENSORS}, which its config describes; save the model again")
    size = Path(file).stat().st_size
    if size != expected.get("bytes"):
        what = "truncated" if size < expected.get("bytes", 0) else "not the file its config describes"
        raise ArtifactError(f"{file} is {what}: {size} bytes, its config says {expected.get('bytes')}")
    if file_sha256(file) != expected.get("sha256"):
        raise ArtifactError(f"{file} is corrupt: its sha256 differs from the one in {CONFIG}")


# ---- saving ----

def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _saved_tensors(model, scale_dtype, float_dtype):
    """(tensors, structure) of the model as it loads: each Linear with a weight grid packed, everything else as it is
    (a tensor shared by two names, a tied lm_head, once); float tensors outside the quantizers in float_dtype."""
    tensors, seen = {}, {}
    structure = {"packed_linears": {}, "act_quantizers": {}, "prob_quantizers": {}, "reordered_norms": []}
    replaced = set()
    for name, module in model.named_modules():
        state = state_of(module)
        if state is None:
            continue
        if state.weight_grid is not None:
            packed = PackedLinear.from_linear(module, state.weight_grid, scale_dtype)  # GridError, not other weights
            tensors.update({f"{name}.{k}": t for k, t in packed.state_dict().items()})
            structure["packed_linears"][name] = {
                "bits": packed.bits, "in_features": packed.in_features, "out_features": packed.out_features,
                "groups": packed.scale.shape[1], "bias": packed.bias is not None,
                "zero_offset": packed.zero_offset, "zero_bits": packed.zero_bits,
                "scale_dtype": _dtype_name(packed.scale.dtype)}
            replaced.update(f"{name}.{k}" for k in ("weight", "bias"))
        if state.quantizers:
            structure["act_quantizers"][name] = {where: {"bits": q.bits, "channels": len(q.index),
                                                         "clusters": q.n_clusters, "grid": q.grid, "ranges": q.ranges}
                                                 for where, q in state.quantizers.items()}
        if state.prob_quant is not None:
            structure["prob_quantizers"][name] = state.prob_quant.bits
        if state.perm is not None:
            structure["reordered_norms"].append(name)
    for key, tensor in model.state_dict().items():
        if key in replaced or seen.setdefault((tensor.data_ptr(), tuple(tensor.shape), tensor.dtype), key) != key:
            continue
        if tensor.is_floating_point() and f".{STATE}." not in f".{key}":
            tensor = tensor.to(float_dtype)
        tensors[key] = tensor.detach().cpu().contiguous()
    return tensors, structure


@torch.no_grad()
def save(model, tokenizer, folder, settings, provenance, save_dtype=None):
    """Write the quantized model (on the CPU) into folder, which prepare_folder accepted, all of it or nothing.
    settings: its QuantConfig.describe(); provenance: where it came from (source model, calibration, versions).
    save_dtype: the dtype of the float tensors (embeddings, head, norms, biases, float Linears; default the
    model's); asked for as float16, the packed weights' scales are stored in float16 too (they round: the weights
    move by up to ~5e-4 of themselves), else in float32, which gives the weights back exactly."""
    import safetensors.torch

    float_dtype = save_dtype or model.dtype
    scale_dtype = torch.float16 if save_dtype == torch.float16 else torch.float32
    tensors, structure = _saved_tensors(model, scale_dtype, float_dtype)
    config = model.config.to_dict()
    config["dtype"] = _dtype_name(float_dtype)
    with atomic_folder(folder, exclusive=True) as tmp:  # a refused write leaves nothing: a PathError
        safetensors.torch.save_file(tensors, tmp / TENSORS, metadata={"format": "pt"})
        config["quantization_config"] = {
            "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "label": settings["label"],
            "settings": settings, "family": adapter_for(model.config).family, **provenance,
            "save_dtype": _dtype_name(float_dtype), "attn_implementation": model.config._attn_implementation,
            "tensors": {"file": TENSORS, "bytes": (tmp / TENSORS).stat().st_size,
                        "sha256": file_sha256(tmp / TENSORS)},
            "structure": structure}
        (tmp / CONFIG).write_text(json.dumps(config, indent=1) + "\n")
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# ---- loading: the skeleton before from_pretrained reads the tensors, the checks and hooks after ----

def _submodule(model, name, kind):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArtifactError(f"{CONFIG} names {kind} {name}, which this {model.config.model_type} model lacks") from None


def build_skeleton(model, manifest):
    """Make the model's modules those of the saved model, with tensors of the right names, shapes and dtypes for
    from_pretrained to fill: packed Linears, the sites' quantizers (and their hooks), probability quantizers, the
    reordered norms' permutations."""
    structure = manifest["structure"]
    for name, spec in structure["packed_linears"].items():
        linear = _submodule(model, name, "packed Linear")
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
                spec["in_features"], spec["out_features"]):
            raise ArtifactError(f"{CONFIG}: {name} is not a {spec['in_features']} -> {spec['out_features']} Linear "
                                "in this model")
        if not (isinstance(spec.get("zero_bits"), int) and 1 <= spec["zero_bits"] <= WIDE_BITS
                and isinstance(spec.get("zero_offset"), int)):
            raise ArtifactError(f"{CONFIG}: {name} gives no zero_offset and zero_bits (1 to {WIDE_BITS}) for its "
                                "zero points")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, PackedLinear(
            spec["in_features"], spec["out_features"], spec["bits"], spec["groups"], spec["bias"],
            linear.weight.dtype, spec["zero_offset"], spec["zero_bits"], getattr(torch, spec["scale_dtype"])))
    adapter = adapter_for(model.config)
    names = {id(module): name for name, module in model.named_modules()}
    act, probs = dict(structure["act_quantizers"]), dict(structure["prob_quantizers"])
    for layer in adapter.layers(model):
        for point in adapter.reorder_points(layer):
            for site in point.sites:
                spec = act.get(names[id(site.module)], {}).pop(site.where, None)
                if spec is not None:
                    site.attach_quantizer(ActQuantizer(spec["bits"], spec["channels"], spec["clusters"],
                                                       spec["grid"], spec["ranges"]))
        bits = probs.pop(names[id(adapter.attention(layer))], None)
        if bits is not None:
            state_of(adapter.attention(layer), create=True).prob_quant = ProbQuantizer(bits)
    left = [f"{name} {where}" for name, sites in act.items() for where in sites] + list(probs)
    if left:
        raise ArtifactError(f"{CONFIG} names quantizers at {left[0]} ({len(left)} in all), where this "
                            f"{adapter.family} model has no activation site")
    for name in structure["reordered_norms"]:
        norm = _submodule(model, name, "reordered norm")
        read_in_order(norm, torch.empty(next(norm.parameters()).shape[0], dtype=torch.long))


def finish_loading(model, manifest):
    """After from_pretrained read the tensors: every one of them came from the file, the permutations and cluster
    indexes are what they must be; static quantizers are calibrated, the attention is the saved model's."""
    missing = [key for key, t in model.state_dict(keep_vars=True).items() if not getattr(t, "_is_hf_initialized",
                                                                                        False)]
    if missing:
        raise ArtifactError(f"{TENSORS} lacks tensor {missing[0]} ({len(missing)} in all); save the model again")
    for name, module in model.named_modules():
        if isinstance(module, ActQuantizer):
            if int(module.index.min()) < 0 or int(module.index.max()) >= module.n_clusters:
                raise ArtifactError(f"{TENSORS}: {name}.index does not number {module.n_clusters} clusters")
            module.calibrated = True
        state = state_of(module)
        if state is not None and state.perm is not None:
            size = len(state.perm)
            if not torch.equal(state.perm.sort().values.cpu(), torch.arange(size)):
                raise ArtifactError(f"{TENSORS}: {name}'s permutation is not one of its {size} channels")
    model.set_attn_implementation(manifest["attn_implementation"])


def load(path, dtype=torch.float32, kernel="exact"):
    """(model, tokenizer, adapter, manifest) from a saved folder, read by transformers' from_pretrained through the
    registered RPTQ method: quantized Linears stay packed, run by `kernel` (quantize.packed.KERNELS: "fused" and
    "int4" decode faster and round differently), activation sites get their saved quantizers, generate() takes the
    low-bit cache; float tensors take `dtype`. ArtifactError for a folder that is not a complete, intact saved
    model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # the RPTQ method registers as they load (rptq)
    from transformers.utils import logging as hf_logging

    folder = Path(path)
    manifest = read_manifest(folder)
    if not (folder / TENSORS).is_file():  # the method itself checks its size and sha256
        raise ArtifactError(f"{folder} lacks {TENSORS}, which its config describes; save the model again")
    quiet_loading()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report of a missing tensor would come before our one line
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    except OSError as e:  # a file from_pretrained needs is missing or unreadable
        raise ArtifactError(f"{folder}: cannot be loaded ({str(e).splitlines()[0]}); save the model again") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    use_kernel(model, kernel)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{folder}: its tokenizer cannot be loaded ({str(e).splitlines()[0]})") from None
    return model, tokenizer, adapter_for(model.config), manifest


def weights_source(manifest, path):
    """For a run's record: what the weights are and where they came from."""
    return (f"saved RPTQ model {path}: {manifest['label']} of {manifest.get('source_model')} "
            f"({manifest.get('weights_source')})")


def saved_model_record(manifest, path):
    """The record's account of a run on a saved model: the folder, its format, and how it was made."""
    keep = ("format_version", "label", "source_model", "weights_source", "calibration", "calibration_data",
            "clusters_per_layer", "versions", "save_dtype")
    return {"folder": str(os.fspath(path)), **{key: manifest.get(key) for key in keep},
            "tensors_sha256": manifest["tensors"]["sha256"]}
