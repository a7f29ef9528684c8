"""Qwen3 (Qwen3ForCausalLM): Llama's decoder layer with an RMSNorm over each head's channels of Q and of K
(`q_norm`, `k_norm`, one weight per head channel shared by all heads) before the rotation, and a head_dim the config
sets (128 in the released models, not hidden / heads). R1..R5 sit as in Llama (models/llama.py).

The per-head norms: R2 is applied after them and after the rotation, as a channel index (never folded into
weights), so they compute on the original channel order and stay exact; R1 permutes only the input columns of
q_proj and k_proj, which leaves their outputs, and so the norms' inputs, unchanged.
"""
from .llama import LlamaAdapter


class Qwen3Adapter(LlamaAdapter):
    family = "qwen3"
    model_types = ("qwen3",)
    hub_names = {"qwen3-0.6b": "Qwen/Qwen3-0.6B-Base", "qwen3-1.7b": "Qwen/Qwen3-1.7B-Base",
                 "qwen3-8b": "Qwen/Qwen3-8B-Base"}
