"""scripts/generate.py: greedy generation from a saved model with the low-bit cache, or a float one."""
import torch

from scripts import generate


def test_a_saved_model_generates_with_the_low_bit_cache(tiny_llama, smol_tokenizer, save_quantized, tmp_path,
                                                        capsys):
    model = tiny_llama(vocab_size=len(smol_tokenizer))
    calib = torch.randint(0, len(smol_tokenizer), (2, 64), generator=torch.Generator().manual_seed(0))
    _, folder = save_quantized(model, calib, tmp_path / "saved", wbits=4, abits=3, only_quant_kv=True,
                               w_quantizer="normal")
    assert generate.main([str(folder), "--prompt", "The capital of France is", "--max_new_tokens", "5"]) == 0
    out = capsys.readouterr().out
    prompt_tokens = len(smol_tokenizer("The capital of France is").input_ids)
    assert out.startswith("The capital of France is")
    assert "(W4A3KV), cpu: prefill" in out and "4 decoding steps at" in out and "tokens/s" in out
    assert "K/V cache, low-bit (3-bit K, 3-bit V): " in out and f"for {prompt_tokens + 4} tokens" in out


def test_a_float_model_has_no_low_bit_cache(tiny_llama_dir, capsys):
    assert generate.main([str(tiny_llama_dir), "--prompt", "Hello", "--max_new_tokens", "2"]) == 0
    assert "K/V cache, standard (float32)" in capsys.readouterr().out
    assert generate.main([str(tiny_llama_dir), "--prompt", "Hello", "--cache", "low-bit"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no static K/V grids" in err


def test_an_empty_prompt_is_one_line(tiny_llama_dir, capsys):
    assert generate.main([str(tiny_llama_dir), "--prompt", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--prompt is empty" in err
