"""One adapter per model family (where R1..R5 sit) and model loading.

Every module in this package is imported here, so a family adapter in a new file registers itself."""
import importlib
import pkgutil

from .adapter import FAMILIES, ActSite, DecoderAdapter, ModelError, ModelShape, PackagedGGUF, ReorderPoint
from .loader import (
    adapter_for,
    empty_model,
    load_config,
    load_lazily,
    load_model,
    load_tokenizer,
    model_names,
    weights_source,
)
from .weights import WeightStore

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FAMILIES", "ActSite", "DecoderAdapter", "ModelShape", "PackagedGGUF", "ReorderPoint", "ModelError",
           "WeightStore", "adapter_for", "empty_model", "load_config", "load_lazily", "load_model", "load_tokenizer",
           "model_names", "weights_source"]
