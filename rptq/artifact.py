"""The quantized model as files: written after calibration (main.py --save DIR), read back with no calibration
(main.py DIR). The format is documented in the README ("Saved models and the low-bit KV cache").

A saved folder holds MANIFEST (JSON: format and version, family, architecture config, settings, provenance, and
what the tensors are), TENSORS (safetensors: packed weight codes with their scales and zeros, the float tensors,
each quantized activation site's per-cluster scale, zero and cluster index, the reordered norms' permutations) and
the tokenizer's files. The manifest is written last, so a folder without one was never completed.

Nothing here knows a family: packed Linears, quantizers and reordered norms are found by module path when saving;
when loading, activation quantizers are attached through the family adapter's sites, as the pipeline does.
"""
import json
from pathlib import Path

import torch
from torch import nn

from models import adapter_for
from quantize import ActQuantizer, PackedLinear, ProbQuantizer
from quantize.packed import INDEX_DTYPE, ZERO_DTYPE, ZERO_DTYPES, stored_zero, use_kernel

from .base import RPTQError, atomic_path, atomic_write, check_folder, file_sha256
from .reorder import attach_norm_perm

FORMAT = "rptq-quantized-model"
FORMAT_VERSION = 2  # 2: zero points int32 (version 1 stored them as int16, which wraps beyond +-32767)
MANIFEST = "rptq_manifest.json"
TENSORS = "rptq_tensors.safetensors"
PERM = "rptq_perm"  # the buffer of a norm that reads its input reordered (rptq/reorder.py)
PROB_QUANT = "rptq_prob_quant"
MANIFEST_KEYS = ("family", "config", "dtype", "label", "settings", "attn_implementation", "tensors", "tied",
                 "packed_linears", "act_quantizers", "prob_quantizers", "reordered_norms")


class ArtifactError(RPTQError):
    """A saved-model folder that cannot be written or read: one line saying which and why."""


def is_saved(path):
    """Whether path is meant as a saved model: a folder holding the manifest or the tensor file."""
    folder = Path(path)
    return folder.is_dir() and ((folder / MANIFEST).exists() or (folder / TENSORS).exists())


def prepare_folder(path):
    """Before any calibration: the folder must be absent or empty (nothing is overwritten) and writable."""
    folder = Path(path)
    if folder.is_dir() and any(folder.iterdir()):
        raise ArtifactError("{save} {path}: the folder is not empty and nothing is overwritten; remove it or pick "
                            "another folder", option="save", path=str(path))
    check_folder(folder, "save")


def _prefixed(prefix, state):
    return {f"{prefix}.{key}": tensor for key, tensor in state.items()}


def _quantized_parts(model):
    """The packed Linears' and quantizers' tensors, their manifest entries, and the module paths they cover."""
    tensors, structure, covered = {}, {"packed_linears": {}, "act_quantizers": {}, "prob_quantizers": {}}, set()
    for name, module in model.named_modules():
        grid = getattr(module, "rptq_weight_grid", None)
        if grid is not None:
            linear = PackedLinear.from_linear(module, grid)  # GridError rather than codes that change the weight
            tensors.update(_prefixed(name, linear.state_dict()))
            structure["packed_linears"][name] = {"bits": grid.bits, "in_features": linear.in_features,
                                                 "out_features": linear.out_features, "groups": grid.scale.shape[1],
                                                 "bias": linear.bias is not None}
            covered.add(name)
        elif isinstance(module, ActQuantizer):
            scale, zero = module.cluster_qparams()
            tensors.update(_prefixed(name, {"index": module.index.to(INDEX_DTYPE), "scale": scale,
                                            "zero": stored_zero(zero)}))
            structure["act_quantizers"][name] = {"bits": module.bits, "grid": module.grid, "ranges": module.ranges,
                                                 "clusters": module.n_clusters, "channels": len(module.index)}
            covered.add(name)
        elif isinstance(module, ProbQuantizer):
            structure["prob_quantizers"][name] = module.bits
    return tensors, structure, covered


def _float_tensors(model, covered):
    """The rest of the model's state, a tensor shared by two names (a tied lm_head) once: (tensors, {name: the
    stored name it shares})."""
    tensors, first_of, tied = {}, {}, {}
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[0] in covered:
            continue
        identity = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)
        if identity in first_of:
            tied[key] = first_of[identity]
        else:
            first_of[identity] = key
            tensors[key] = tensor.detach().cpu().contiguous()
    return tensors, tied


@torch.no_grad()
def save(model, tokenizer, folder, settings, provenance):
    """Write the quantized model (on the CPU) into folder, which prepare_folder accepted. settings: its
    QuantConfig.describe(); provenance: where it came from (source model, calibration, versions)."""
    import safetensors.torch

    folder = Path(folder)
    tensors, structure, covered = _quantized_parts(model)
    float_tensors, tied = _float_tensors(model, covered)
    tensors.update(float_tensors)
    tensor_file = folder / TENSORS
    with atomic_path(tensor_file) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "family": adapter_for(model.config).family,
        "config": json.loads(model.config.to_json_string(use_diff=False)), "dtype": str(model.dtype).split(".")[-1],
        "label": settings["label"], "settings": settings, **provenance,
        "attn_implementation": model.config._attn_implementation,
        "tensors": {"file": TENSORS, "bytes": tensor_file.stat().st_size, "sha256": file_sha256(tensor_file)},
        "tied": tied, **structure,
        "reordered_norms": sorted(key.rpartition(".")[0] for key in tensors if key.endswith(f".{PERM}")),
    }
    tokenizer.save_pretrained(folder)
    atomic_write(folder / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1) + "\n"))  # last: complete


def read_manifest(path):
    """The manifest of a saved folder, checked for what this code can read."""
    folder = Path(path)
    file = folder / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{folder} holds {TENSORS} but no {MANIFEST}: an incomplete saved model (interrupted "
                            "--save?); save it again")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{file} is not readable JSON ({e}); save the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file} is not an RPTQ saved-model manifest (no \"format\": \"{FORMAT}\")")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{file}: format_version must be a positive integer, got {version!r}")
    if version < FORMAT_VERSION:
        raise ArtifactError(f"{folder} was saved in format version {version}, whose int16 zero points can wrap and "
                            f"give other weights; save the model again with this code (format {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{folder} was saved in format version {version}, newer than this code reads "
                            f"({FORMAT_VERSION}); update rptq to load it")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{file} lacks {', '.join(missing)}; save the model again")
    return manifest


def read_tensors(path, manifest):
    """Every tensor of a saved folder, after checking the file's size and checksum against the manifest."""
    import safetensors.torch

    file = Path(path) / TENSORS
    expected = manifest["tensors"]
    if not file.is_file():
        raise ArtifactError(f"{path} lacks {TENSORS}, which its manifest lists; save the model again")
    size = file.stat().st_size
    if size != expected.get("bytes"):
        what = "truncated" if size < expected.get("bytes", 0) else "not the file its manifest describes"
        raise ArtifactError(f"{file} is {what}: {size} bytes, the manifest says {expected.get('bytes')}")
    if file_sha256(file) != expected.get("sha256"):
        raise ArtifactError(f"{file} is corrupt: its sha256 differs from the one in {MANIFEST}")
    try:
        return safetensors.torch.load_file(file)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise ArtifactError(f"{file} cannot be read as safetensors: {e}") from None


def architecture(manifest):
    """(architecture config, family adapter) of a saved model, from its manifest: no tensor is read."""
    from transformers import CONFIG_MAPPING

    arch = dict(manifest["config"])
    model_type = arch.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ArtifactError(f"{MANIFEST}: unknown model_type {model_type!r}")
    config = CONFIG_MAPPING[model_type].from_dict(arch)
    return config, adapter_for(config)


def _build(manifest, dtype):
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config, _ = architecture(manifest)
    with no_init_weights():  # every tensor is read from the file: random initialization would be wasted time
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # no_init_weights also skips the tying
    return model.eval()


def _submodule(model, name, kind):
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ArtifactError(f"{MANIFEST} names {kind} {name}, which this {model.config.model_type} model "
                            "lacks") from None


def _tensor(tensors, name, shape=None):
    if name not in tensors:
        raise ArtifactError(f"{TENSORS} lacks tensor {name}; save the model again")
    tensor = tensors[name]
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ArtifactError(f"{TENSORS}: {name} has shape {list(tensor.shape)}, the model needs {list(shape)}")
    return tensor


def _pack_linears(model, manifest, tensors, dtype):
    for name, spec in manifest["packed_linears"].items():
        linear = _submodule(model, name, "packed Linear")
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
                spec["in_features"], spec["out_features"]):
            raise ArtifactError(f"{MANIFEST}: {name} is not a {spec['in_features']} -> {spec['out_features']} "
                                "Linear in this model")
        zero = tensors.get(f"{name}.zero")  # a missing one is reported with the rest of the state
        zero_dtype = ZERO_DTYPE if zero is None else zero.dtype
        if zero_dtype not in ZERO_DTYPES:
            raise ArtifactError(f"{TENSORS}: {name}.zero is {zero_dtype}, not one of {ZERO_DTYPES}")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child,
                PackedLinear(spec["in_features"], spec["out_features"], spec["bits"], spec["groups"], spec["bias"],
                             dtype, zero_dtype))


def _reorder_norms(model, manifest, tensors):
    for name in manifest["reordered_norms"]:
        norm = _submodule(model, name, "reordered norm")
        perm = _tensor(tensors, f"{name}.{PERM}")
        size = next(norm.parameters()).shape[0]
        if perm.shape != (size,) or not torch.equal(perm.sort().values, torch.arange(size)):
            raise ArtifactError(f"{TENSORS}: {name}.{PERM} is not a permutation of the norm's {size} channels")
        attach_norm_perm(norm, perm)


def _load_state(model, manifest, tensors):
    """The float tensors, the packed codes with their grids and the norms' permutations, checked by name, shape and
    dtype before any is copied."""
    expected = model.state_dict()
    state = {key: tensors[key] for key in expected if key in tensors}
    state.update({key: tensors[source] for key, source in manifest["tied"].items() if source in tensors})
    for key, want in expected.items():
        got = _tensor(state, key, want.shape)
        if got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            raise ArtifactError(f"{TENSORS}: {key} is {got.dtype}, the model needs {want.dtype}")
    model.load_state_dict(state, strict=True)


def _attach_quantizers(model, adapter, manifest, tensors):
    """Each quantized site's quantizer, at the site the family adapter declares, as the pipeline attaches it."""
    names = {id(module): name for name, module in model.named_modules()}
    act, probs = dict(manifest["act_quantizers"]), dict(manifest["prob_quantizers"])
    for layer in adapter.layers(model):
        for point in adapter.reorder_points(layer):
            for site in point.sites:
                name = f"{names[id(site.module)]}.{site.quantizer_name}"
                spec = act.pop(name, None)
                if spec is not None:
                    channels = point.channels * site.group
                    index = _tensor(tensors, f"{name}.index", (channels,)).long()
                    scale = _tensor(tensors, f"{name}.scale", (spec["clusters"],))
                    zero = _tensor(tensors, f"{name}.zero", (spec["clusters"],))
                    if int(index.min()) < 0 or int(index.max()) + 1 != spec["clusters"]:
                        raise ArtifactError(f"{TENSORS}: {name}.index does not number {spec['clusters']} clusters")
                    quantizer = ActQuantizer(spec["bits"], index, spec["grid"], spec["ranges"])
                    quantizer.set_qparams(scale.float(), zero.float())
                    site.attach_quantizer(quantizer)
        attention = adapter.attention(layer)
        bits = probs.pop(f"{names[id(attention)]}.{PROB_QUANT}", None)
        if bits is not None:
            setattr(attention, PROB_QUANT, ProbQuantizer(bits))
    left = [*act, *probs]
    if left:
        raise ArtifactError(f"{MANIFEST} names quantizers at {left[0]} ({len(left)} in all), where this "
                            f"{adapter.family} model has no activation site")


def load(path, dtype=torch.float32, kernel="exact"):
    """(model, tokenizer, adapter, manifest) from a saved folder: quantized Linears stay packed, run by `kernel`
    (quantize.packed.KERNELS: "fused" and "int4" decode faster and round differently), activation sites get their
    saved quantizers; float tensors take `dtype`. ArtifactError for a folder that is not a complete, intact saved
    model."""
    from transformers import AutoTokenizer

    folder = Path(path)
    manifest = read_manifest(folder)
    tensors = read_tensors(folder, manifest)
    model = _build(manifest, dtype)
    adapter = adapter_for(model.config)
    _pack_linears(model, manifest, tensors, dtype)
    _reorder_norms(model, manifest, tensors)
    _load_state(model, manifest, tensors)
    _attach_quantizers(model, adapter, manifest, tensors)
    model.set_attn_implementation(manifest["attn_implementation"])
    use_kernel(model, kernel)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{folder}: its tokenizer cannot be loaded ({str(e).splitlines()[0]})") from None
    return model, tokenizer, adapter, manifest


def weights_source(manifest, path):
    """For a run's record: what the weights are and where they came from."""
    return (f"saved RPTQ model {path}: {manifest['label']} of {manifest.get('source_model')} "
            f"({manifest.get('weights_source')})")


def saved_model_record(manifest, path):
    """The record's account of a run on a saved model: the folder, its format, and how it was made."""
    keep = ("format_version", "label", "source_model", "weights_source", "calibration", "calibration_data",
            "clusters_per_layer", "versions")
    return {"folder": str(path), **{key: manifest.get(key) for key in keep},
            "tensors_sha256": manifest["tensors"]["sha256"]}
