"""One adapter per model family (where R1..R5 sit) and model loading."""
from .adapter import ActSite, DecoderAdapter, ModelError, ReorderPoint
from .loader import MODEL_NAMES, adapter_for, load_model, load_tokenizer, weights_source

__all__ = ["ActSite", "DecoderAdapter", "ReorderPoint", "MODEL_NAMES", "ModelError", "adapter_for",
           "load_model", "load_tokenizer", "weights_source"]
