"""Llama family (SmolLM2 here): pre-RMSNorm layers. Loading and float evaluation only so far; the RPTQ
reorder points need rotary-aware and grouped-query-aware clustering (RPTQ-METHOD.md section 10)."""
from .adapter import DecoderAdapter


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)
    hub_names = {}
    quantizable = False
