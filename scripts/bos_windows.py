"""What the paper's perplexity protocol does to a model that depends on BOS: the whole test text is tokenized once,
so only the first window starts with BOS. Each of the first N windows is scored twice, as the protocol cuts it and
with its first token replaced by BOS; the tokens scored are the same (a window's first token is only context), so
the two runs differ only in what the first prediction sees.

    python scripts/bos_windows.py gemma3-270m --limit 8 --output results/gemma3-270m/bos_windows.json
"""
import sys

from rptq.cli import UsageError, load_with_windows, script_main, window_script_parser, write_window_results

PROG = "bos_windows.py"


def build_parser():
    return window_script_parser(PROG, __doc__, 8, "first N evaluation windows (at least 2)")


def run(args):
    if args.limit < 2 or args.seqlen < 2:
        raise UsageError("--limit and --seqlen must be at least 2 (the first window against the others)")
    from rptq.evaluate import perplexity
    from rptq.report import format_table

    loaded, windows, device, label, sources = load_with_windows(args)
    bos = loaded.tokenizer.bos_token_id
    if bos is None:
        raise UsageError(f"{args.model}'s tokenizer has no BOS token: nothing to compare")
    windows = windows[:args.limit]
    with_bos = windows.clone()
    with_bos[:, 0] = bos
    results = {"protocol": perplexity(loaded.model, windows, device, desc="protocol"),
               "BOS first": perplexity(loaded.model, with_bos, device, desc="BOS first")}
    print(f"\n{args.model}  {label}, first {len(windows)} windows of {args.seqlen} tokens; the protocol's first "
          f"window {'starts' if windows[0, 0] == bos else 'does not start'} with BOS")
    rows = [[name, f"{r.ppl:.2f}", f"{r.nlls[0]:.3f}", f"{sum(r.nlls[1:]) / (len(r.nlls) - 1):.3f}"]
            for name, r in results.items()]
    print(format_table(["windows", "ppl", "NLL window 1", f"mean NLL windows 2-{len(windows)}"], rows))
    write_window_results(args, label, sources, results, bos_token_id=bos,
                         protocol_first_window_starts_with_bos=bool(windows[0, 0] == bos))
    return 0


def main(argv=None):
    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
