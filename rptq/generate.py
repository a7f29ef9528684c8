"""Decoding with a quantized model: the low-bit KV cache wired to the model's K and V sites, and greedy decoding
that times prefill and decoding apart."""
import time

import torch
from transformers import DynamicCache

from quantize.kvcache import KVGrid, PackedKVCache


def kv_grids(model, adapter):
    """Per decoder layer the (K, V) grids of its cache sites (R2's clusters for K, R3's for V), or None when K and V
    are not both quantized on static calibrated ranges (then the codes could not be stored once for all)."""
    grids = []
    for layer in adapter.layers(model):
        quantizers = [site.quantizer() for site in adapter.cache_sites(layer)]
        if any(q is None or q.ranges != "static" for q in quantizers):
            return None
        grids.append(tuple(KVGrid.of(q) for q in quantizers))
    return grids


def new_cache(model, adapter, low_bit=True):
    """The low-bit cache where the model's K and V have static grids and low_bit is asked, else the standard one."""
    grids = kv_grids(model, adapter) if low_bit else None
    return PackedKVCache(grids) if grids else DynamicCache(config=model.config)


@torch.no_grad()
def greedy(model, ids, cache, new_tokens):
    """One prefill forward over ids [b, t], then one forward per further token, each taking the most likely next
    token. Returns (new ids [b, new_tokens], the logits that chose them [b, new_tokens, vocab], prefill seconds,
    decoding seconds). The cache then holds t + new_tokens - 1 tokens, as after generate()."""
    def step(inputs):
        return model(inputs, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    start = time.perf_counter()
    logits = [step(ids)]
    prefill = time.perf_counter() - start
    tokens = [logits[-1].argmax(-1)]
    start = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits.append(step(tokens[-1][:, None]))
        tokens.append(logits[-1].argmax(-1))
    return torch.stack(tokens, 1), torch.stack(logits, 1), prefill, time.perf_counter() - start
