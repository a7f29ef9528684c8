"""OPT (facebook/opt-*): pre-LayerNorm decoder layers, the paper's model family."""
from .adapter import ActSite, DecoderAdapter, ModelError, ModelShape, ReorderPoint


class OPTAdapter(DecoderAdapter):
    family = "opt"
    model_types = ("opt",)
    hub_names = {f"opt-{size}": f"facebook/opt-{size}"
                 for size in ("125m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b")}

    def layers(self, model):
        return model.model.decoder.layers

    def shape(self, config):
        return ModelShape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                          config.num_attention_heads, config.hidden_size // config.num_attention_heads,
                          config.ffn_dim, 2, config.vocab_size, config.word_embed_proj_dim,
                          config.max_position_embeddings)

    def embedding_modules(self, model):
        decoder = model.model.decoder
        return [m for m in (decoder.embed_tokens, decoder.embed_positions, decoder.project_in) if m is not None]

    def attention(self, layer):
        return layer.self_attn

    def reorder_points(self, layer):
        """The table of RPTQ-METHOD.md section 5."""
        if not layer.do_layer_norm_before:
            raise ModelError("RPTQ's reorder needs pre-LayerNorm OPT layers (opt-350m applies LayerNorm after)")
        attn = layer.self_attn
        d, heads = attn.embed_dim, attn.num_heads
        r1 = ActSite(layer.self_attn_layer_norm, "output", "norm")
        q, k = ActSite(attn.q_proj, "output", "q"), ActSite(attn.k_proj, "output", "kv")
        v = ActSite(attn.v_proj, "output", "kv")
        attn_out = ActSite(attn.out_proj, "input", "act")  # probs @ V: per head, in V's channel order
        r4 = ActSite(layer.final_layer_norm, "output", "norm")
        r5 = ActSite(layer.fc2, "input", "act")  # after the ReLU, which commutes with a channel permutation
        return [
            ReorderPoint("R1", d, 1, [r1], [r1], norm=layer.self_attn_layer_norm,
                         consumers=[attn.q_proj, attn.k_proj, attn.v_proj]),
            ReorderPoint("R2", d, heads, [q, k], [q, k], producers=[attn.q_proj, attn.k_proj]),
            # clustered on the out_proj input as the reference does; V (the cache) shares its order
            ReorderPoint("R3", d, heads, [attn_out], [v, attn_out],
                         producers=[attn.v_proj], consumers=[attn.out_proj]),
            ReorderPoint("R4", d, 1, [r4], [r4], norm=layer.final_layer_norm, consumers=[layer.fc1]),
            ReorderPoint("R5", layer.fc1.out_features, 1, [r5], [r5], producers=[layer.fc1], consumers=[layer.fc2]),
        ]
