"""Save an OPT checkpoint with random weights in a given shape (default: opt-125m's), with the SmolLM2
tokenizer, so the full pipeline can be run and timed here where no OPT checkpoint can be downloaded.

    python scripts/make_random_opt.py out/opt-125m-random [--layers 12 --hidden 768 --heads 12 --ffn 3072]
    python main.py out/opt-125m-random --wbits 4 --abits 4 --nsamples 16 --eval_ppl --limit 4
    python scripts/make_random_opt.py out/opt-2.7b-random --layers 32 --hidden 2560 --heads 32 --ffn 10240 \
        --dtype float16 --max_shard_size 1GB     # float16 shards, as the real checkpoints

Perplexities of such a model mean nothing; its timings do.
"""
import sys

import torch

from models import load_tokenizer
from rptq.base import check_file
from rptq.cli import FolderPath, OneLineParser, UsageError, script_main

PROG = "make_random_opt.py"


def build_parser():
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("folder", type=FolderPath)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--ffn", type=int, default=3072)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                   help="weights as saved (built in this dtype: float16 needs half the memory)")
    p.add_argument("--max_shard_size", default="50GB", help="largest safetensors shard, e.g. 1GB")
    return p


def run(args):
    for flag in ("layers", "hidden", "heads", "ffn"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.hidden % args.heads:
        raise UsageError(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    check_file(f"{args.folder}/config.json", "folder")
    make_random_opt(args.folder, args.layers, args.hidden, args.heads, args.ffn, args.seed, getattr(torch, args.dtype),
                    args.max_shard_size)
    print(f"saved a random {args.layers}-layer OPT (d={args.hidden}, {args.dtype}) to {args.folder}")
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


def make_random_opt(folder, layers=12, hidden=768, heads=12, ffn=3072, seed=0, dtype=torch.float32,
                    max_shard_size="50GB"):
    from transformers import AutoModelForCausalLM, OPTConfig

    tokenizer = load_tokenizer("smollm2-135m")
    torch.manual_seed(seed)
    config = OPTConfig(hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn, num_hidden_layers=layers,
                       vocab_size=50272, max_position_embeddings=2048,
                       word_embed_proj_dim=hidden)  # opt-125m's vocabulary; the tokenizer uses 49152 of it
    AutoModelForCausalLM.from_config(config, dtype=dtype).save_pretrained(folder, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    sys.exit(main())
