"""RPTQ as a quantization method of transformers: once registered (importing rptq does it, rptq/__init__.py),
`AutoModelForCausalLM.from_pretrained(DIR)` on a folder written by `main.py --save` (quant_method "rptq" in its
config.json) returns the quantized model: packed Linears, the activation and probability quantizers and the reordered
norms in place (rptq/artifact.py builds them), and generate() (so pipeline("text-generation") too) decoding with the
low-bit KV cache when K and V have static grids.

from_pretrained calls, in order: the config class from the dict, the quantizer, validate_environment,
update_attn_implementation (before the model is built), the model built empty, _process_model_before_weight_loading
(the skeleton: every saved tensor gets a module slot of its name, shape and dtype; the tensor file is checked against
the sha256 in the config first), the tensors read by name, then _process_model_after_weight_loading.
Only what transformers needs at class-definition time is imported at the top: this module is imported while
transformers itself may still be importing.
"""
import types

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

QUANT_METHOD = "rptq"


def _registered(mapping, register, name):
    """register_* refuse a name taken: a second import of this module (importlib.reload) replaces its classes."""
    def decorator(cls):
        mapping.pop(name, None)
        return register(name)(cls)
    return decorator


@_registered(AUTO_QUANTIZATION_CONFIG_MAPPING, register_quantization_config, QUANT_METHOD)
class RPTQQuantizationConfig(QuantizationConfigMixin):
    """config.json's quantization_config of a saved RPTQ model, kept as written (rptq/artifact.py describes it)."""

    def __init__(self, **fields):
        fields.pop("quant_method", None)
        self.quant_method = QUANT_METHOD
        self.__dict__.update(fields)


def _prepare_low_bit_cache(self, generation_config, model_kwargs, *args, **kwargs):
    """generate()'s default cache for this model: the low-bit one where the caller passed none and asked for no other
    kind (an instance override of GenerationMixin._prepare_cache_for_generation, which builds the default)."""
    from models import adapter_for

    from .generate import new_cache

    if (model_kwargs.get("past_key_values") is None and generation_config.use_cache is not False
            and generation_config.cache_implementation in (None, "dynamic")):
        model_kwargs["past_key_values"] = new_cache(self, adapter_for(self.config))
        return None
    return type(self)._prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs)


@_registered(AUTO_QUANTIZER_MAPPING, register_quantizer, QUANT_METHOD)
class RPTQHfQuantizer(HfQuantizer):
    requires_calibration = True  # a float checkpoint is quantized by rptq's pipeline, not while it loads

    @property
    def manifest(self):
        return self.quantization_config.to_dict()

    def validate_environment(self, *args, **kwargs):
        from .artifact import FORMAT_VERSION, ArtifactError

        version = self.manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"a saved RPTQ model in format version {version}: this code reads {FORMAT_VERSION}")

    def update_attn_implementation(self, config):
        """The saved model's attention, which quantizes inside attention where it must."""
        import quantize.attention  # noqa: F401  registers that attention with transformers

        config._attn_implementation = self.manifest["attn_implementation"]
        return config

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from .artifact import ArtifactError, build_skeleton, check_tensor_file

        files = [f for f in checkpoint_files or () if f.endswith(".safetensors")]
        if len(files) != 1:
            raise ArtifactError(f"a saved RPTQ model has one safetensors file, this one {len(files)}")
        check_tensor_file(files[0], self.manifest)
        build_skeleton(model, self.manifest)

    def _process_model_after_weight_loading(self, model, **kwargs):
        from models import adapter_for

        from .artifact import finish_loading
        from .generate import kv_grids

        finish_loading(model, self.manifest)
        if kv_grids(model, adapter_for(model.config)):
            model._prepare_cache_for_generation = types.MethodType(_prepare_low_bit_cache, model)
        return model

    def is_serializable(self, *args, **kwargs):
        return False  # main.py --save writes it; a kernel other than the exact one changes the buffers

    @property
    def is_trainable(self):
        return False
