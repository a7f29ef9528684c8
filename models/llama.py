"""Llama family (LlamaForCausalLM; SmolLM2 here): pre-RMSNorm layers, grouped-query attention with rotary
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
"""
from .adapter import ActSite, DecoderAdapter, ReorderPoint


class LlamaAdapter(DecoderAdapter):
    family = "llama"
    model_types = ("llama",)
    hub_names = {}

    def layers(self, model):
        return model.model.layers

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
        r4 = ActSite(layer.post_attention_layernorm, "output", "norm")
        r5 = ActSite(mlp.down_proj, "input", "act")  # act(gate) * up: elementwise, so it follows the row order
        return [
            ReorderPoint("R1", hidden, 1, [r1], [r1], norm=layer.input_layernorm,
                         consumers=[attn.q_proj, attn.k_proj, attn.v_proj]),
            ReorderPoint("R2", kv_heads * head_dim, kv_heads, [q, k], [q, k]),  # index only, see above
            ReorderPoint("R3", kv_heads * head_dim, kv_heads, [attn_out], [v, attn_out],
                         producers=[attn.v_proj], consumers=[attn.o_proj]),
            ReorderPoint("R4", hidden, 1, [r4], [r4], norm=layer.post_attention_layernorm,
                         consumers=[mlp.gate_proj, mlp.up_proj]),
            ReorderPoint("R5", mlp.down_proj.in_features, 1, [r5], [r5], producers=[mlp.gate_proj, mlp.up_proj],
                         consumers=[mlp.down_proj]),
        ]
