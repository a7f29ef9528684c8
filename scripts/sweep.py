"""Run the settings of the paper's Table 1 (perplexity) or Table 2 (zero-shot) on one model, one main.py JSON
per setting, and render them as a Markdown table beside the paper's numbers.

    python scripts/sweep.py opt-1.3b --table ppl -- --device cuda
    python scripts/sweep.py opt-1.3b --table zeroshot --settings FP16,W4A4 -- --limit 200
    python scripts/sweep.py opt-1.3b --table ppl --render-only

Flags after -- go to every main.py run; one that changes nothing in a setting (--nsamples for FP16) is left out
of that run. A setting whose JSON is complete with the same main.py flags and data is skipped, an interrupted
one rerun.
"""
import argparse
import sys
from pathlib import Path

from rptq.cli import OneLineParser, guarded
from rptq.files import check_writable, write_text
from rptq.report import PAPER_DIR, TITLES, load_paper, model_name, render
from rptq.sweep import PAPER_ROWS, SETTINGS, TASKS, SweepError, split_extra, sweep


def build_parser():
    p = OneLineParser(prog="sweep.py", description=__doc__, allow_abbrev=False,
                      usage="%(prog)s MODEL --table {ppl,zeroshot} [options] [-- main.py flags]",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="as main.py takes it: a name or a local model folder")
    p.add_argument("--table", choices=tuple(TITLES), required=True,
                   help="ppl: main.py --eval_ppl; zeroshot: main.py --tasks")
    p.add_argument("--settings", default=",".join(PAPER_ROWS),
                   help=f"comma list from {', '.join(SETTINGS)} (default: the paper's rows, %(default)s)")
    p.add_argument("--tasks", default=None, help=f"--table zeroshot only (default: {','.join(TASKS)})")
    p.add_argument("--out", default=None, help="result folder (default: out/sweep/MODELNAME/TABLE)")
    p.add_argument("--paper_dir", default=None, help=f"the paper's CSV files (default: {PAPER_DIR})")
    p.add_argument("--markdown", default=None, help="where the rendered table goes (default: DIR/table.md)")
    p.add_argument("--render-only", action="store_true", help="only render the table from the JSONs in DIR")
    return p


def chosen_settings(text):
    names = list(dict.fromkeys(s for s in text.split(",") if s))
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or not names:
        raise SweepError(f"--settings: unknown {', '.join(unknown) or 'empty list'} (choose from "
                         f"{', '.join(SETTINGS)})")
    return names


def paper_folder(option):
    if option is not None and not Path(option).is_dir():
        raise SweepError(f"--paper_dir {option} is not a folder")
    return Path(option) if option is not None else PAPER_DIR


def main(argv=None, runner=None):
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)

    def body():
        names = chosen_settings(args.settings)
        if args.tasks is not None and args.table != "zeroshot":
            raise SweepError("--tasks applies to --table zeroshot (perplexity sets: -- --ppl_datasets)")
        tasks = [t for t in (args.tasks or ",".join(TASKS)).split(",") if t]
        out_dir = Path(args.out or Path("out") / "sweep" / model_name(args.model) / args.table)
        paper, note = load_paper(paper_folder(args.paper_dir), args.table, args.model)
        eval_flags = ["--eval_ppl"] if args.table == "ppl" else ["--tasks", ",".join(tasks)]
        markdown = Path(args.markdown) if args.markdown else out_dir / "table.md"
        check_writable(out_dir / "table.md", "--out")  # before hours of runs, not after
        check_writable(markdown, "--markdown")
        rc, records = sweep(args.model, {n: SETTINGS[n] for n in names}, eval_flags, extra, out_dir,
                            args.render_only, runner)
        if rc:
            return rc
        text = render(args.table, args.model, records, paper, note, tasks)
        write_text(markdown, text)
        print(f"\n{text}\ntable: {markdown}")
        return 0

    return guarded("sweep.py", body, "finished runs are kept in their JSON files")


if __name__ == "__main__":
    sys.exit(main())
