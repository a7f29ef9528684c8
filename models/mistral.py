"""Mistral (MistralForCausalLM): Llama's decoder layer, with every layer attending through a sliding window when the
config sets `sliding_window`. R1..R5 sit as in Llama (models/llama.py).

The window lives in the attention mask that transformers builds for our attention implementation, and the low-bit
KV cache keeps every token, leaving it to that mask to hide the ones outside the window: the reorders and the
quantizers see the same tensors as without a window.
"""
from .llama import LlamaAdapter


class MistralAdapter(LlamaAdapter):
    family = "mistral"
    model_types = ("mistral",)
    hub_names = {"mistral-7b": "mistralai/Mistral-7B-v0.3", "mistral-7b-v0.1": "mistralai/Mistral-7B-v0.1"}
