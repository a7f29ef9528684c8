"""Qwen2 and Qwen2.5 (Qwen2ForCausalLM): Llama's decoder layer with biases on q_proj, k_proj and v_proj, and, where
the config asks for it (use_sliding_window), sliding-window attention in the layers from max_window_layers on.
R1..R5 sit as in Llama (models/llama.py).

The biases: R2 is never folded into weights (Q and K are reordered as a channel index after the rotation), so the
q/k biases stay where they are; R3 permutes v_proj's rows and its bias with them (rptq/reorder.py); o_proj has no
bias, and a consumer's bias would not move anyway, its outputs keeping their order.
"""
from .llama import LlamaAdapter


class Qwen2Adapter(LlamaAdapter):
    family = "qwen2"
    model_types = ("qwen2",)
    hub_names = {"qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
                 "qwen2.5-7b": "Qwen/Qwen2.5-7B"}
