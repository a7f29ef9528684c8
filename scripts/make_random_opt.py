"""Save an OPT checkpoint with random weights in a given shape (default: opt-125m's), with the SmolLM2
tokenizer, so the full pipeline can be run and timed here where no OPT checkpoint can be downloaded.

    python scripts/make_random_opt.py out/opt-125m-random [--layers 12 --hidden 768 --heads 12 --ffn 3072]
    python main.py out/opt-125m-random --wbits 4 --abits 4 --nsamples 16 --eval_ppl --limit 4

Perplexities of such a model mean nothing; its timings do.
"""
import argparse

import torch

from models import load_tokenizer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    make_random_opt(args.folder, args.layers, args.hidden, args.heads, args.ffn, args.seed)
    print(f"saved a random {args.layers}-layer OPT (d={args.hidden}) to {args.folder}")


def make_random_opt(folder, layers=12, hidden=768, heads=12, ffn=3072, seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(seed)
    config = OPTConfig(hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn, num_hidden_layers=layers,
                       vocab_size=50272, max_position_embeddings=2048,
                       word_embed_proj_dim=hidden)  # opt-125m's vocabulary; the tokenizer uses 49152 of it
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    main()
