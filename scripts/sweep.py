"""Run the settings of the paper's Table 1 (perplexity) or Table 2 (zero-shot) on one model, one main.py JSON
per setting, and render them as a Markdown table beside the paper's numbers.

    python scripts/sweep.py opt-1.3b --table ppl -- --device cuda
    python scripts/sweep.py opt-1.3b --table zeroshot --settings FP16,W4A4 -- --limit 200
    python scripts/sweep.py opt-1.3b --table ppl --render-only

Flags after -- go to every main.py run; one that changes nothing in a setting (--nsamples for FP16) is left out
of that run. A setting whose JSON is complete with the same main.py flags is skipped, an interrupted one rerun.
"""
import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import datautils  # noqa: E402

PAPER_DIR = ROOT.parent / "shared" / "paper"

SETTINGS = {
    "FP16": [],  # no RPTQ at all: main.py runs the model in its default dtype (float32 on cpu)
    "W4A16": ["--wbits", "4"],
    "W4A16-RTN": ["--wbits", "4", "--w_quantizer", "normal"],
    "W4A8": ["--wbits", "4", "--abits", "8"],
    "W4A4": ["--wbits", "4", "--abits", "4"],
    "W4A4KV": ["--wbits", "4", "--abits", "4", "--only_quant_kv"],
    "W4A3KV": ["--wbits", "4", "--abits", "3", "--only_quant_kv"],
    "W3A3KV": ["--wbits", "3", "--abits", "3", "--only_quant_kv"],
    # ablations: activations alone, and one cluster per reorder point (nothing reordered)
    "W16A4": ["--abits", "4"],
    "W16A4-noreorder": ["--abits", "4", "--reorder", ""],
    "W4A4-noreorder": ["--wbits", "4", "--abits", "4", "--reorder", ""],
    "W4A3KV-noreorder": ["--wbits", "4", "--abits", "3", "--only_quant_kv", "--reorder", ""],
}
PAPER_ROWS = ("FP16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
TASKS = ("lambada_openai", "piqa", "arc_easy", "arc_challenge", "openbookqa", "boolq")
TITLES = {"ppl": "perplexity (Table 1)", "zeroshot": "zero-shot accuracy in % (Table 2)"}
# Per column, the first file that has it wins: the paper's Table 2 is only partly transcribed, the authors'
# README has all six tasks (with other numbers for some rows).
PAPER_FILES = {"ppl": (("paper", "table1_ppl_paper.csv"),),
               "zeroshot": (("paper", "table2_zeroshot_paper_partial.csv"), ("README", "table2_zeroshot_readme.csv"))}
ZERO_SHOT_METRICS = ("acc", "acc_norm")
SWEEP_FLAGS = {"output_path", "eval_ppl", "tasks"}  # set by the sweep itself, never after --
WHERE_FLAGS = {"output_path", "cache_dir"}  # where files go, not what the numbers are: may differ on resume
PATH_FLAGS = {"data_dir", "cache_dir"}


class SweepError(Exception):
    """Bad input, or a result folder made with other flags: one line on stderr, exit 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---- running ----

@dataclass
class Run:
    name: str
    argv: list       # main.py's arguments
    path: Path       # its --output_path
    dropped: list    # flags after -- that would change nothing in this run
    action: str      # "run", "rerun" (interrupted before) or "skip" (complete)


def split_extra(argv):
    """(the script's own arguments, main.py flags after --)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def flag_groups(tokens):
    """main.py flags as [--flag, values...] lists; --flag=value is split so that every flag reads the same."""
    groups = []
    for tok in tokens:
        if tok.startswith("--"):
            groups.append(tok.split("=", 1))
        elif groups:
            groups[-1].append(tok)
        else:
            raise SweepError(f"'{tok}' after -- is not a main.py flag")
    return groups


def flag_name(group):
    return group[0][2:]


def flat(groups):
    return [tok for g in groups for tok in g]


def parse_main_args(argv):
    import main

    parser = main.build_parser()

    def refuse(message):
        raise SweepError(f"main.py flags: {message}")

    parser.error = refuse
    return parser.parse_args(argv), main.given_flags(argv)


def read_result(path):
    """A main.py JSON, or None when there is none yet."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise SweepError(f"{path} is not a main.py result; move it away or use another --out")
    return record


def resume_action(path, settings):
    """skip a complete run, rerun an interrupted one; a JSON made with other flags stops the sweep, since
    one folder must hold one protocol."""
    record = read_result(path)
    if record is None:
        return "run"
    saved = record["settings"]
    changed = [f"{k} {saved.get(k)!r} there, {settings.get(k)!r} now"
               for k in sorted((saved.keys() | settings.keys()) - WHERE_FLAGS) if saved.get(k) != settings.get(k)]
    if changed:
        raise SweepError(f"{path} was made with other main.py flags ({'; '.join(changed)}); use another --out "
                         "for these flags")
    return "skip" if record.get("status") == "complete" else "rerun"


def plan_runs(model, runs, eval_flags, extra, out_dir):
    """Check every run's main.py flags and existing JSON before anything slow starts.

    runs: {name: main.py flags}; each writes out_dir/NAME.json. extra: flags for every run."""
    import main  # pulls in transformers: only when something is going to run

    groups = flag_groups(extra)
    owned = SWEEP_FLAGS | {flag_name(g) for flags in [eval_flags, *runs.values()] for g in flag_groups(flags)}
    for g in groups:
        if flag_name(g) in owned:
            raise SweepError(f"-- {g[0]}: the sweep sets it itself (choose the settings or options instead)")
    # main.py runs from the repository root: relative paths must keep the meaning they have here
    groups = [[g[0], *map(os.path.abspath, g[1:])] if flag_name(g) in PATH_FLAGS else g for g in groups]
    if model not in main.MODEL_NAMES and Path(model).exists():
        model = os.path.abspath(model)
    extra_names = {flag_name(g) for g in groups}
    plans, idle_everywhere = [], set(extra_names)
    for name, flags in runs.items():
        path = out_dir / f"{name}.json"
        base = [model, *eval_flags, *flags, "--output_path", str(path)]
        args, given = parse_main_args(base + flat(groups))
        idle = {flag[2:] for flag in main.idle_flags(args, given)}
        idle_everywhere &= idle
        argv = base + flat(g for g in groups if flag_name(g) not in idle)
        args, given = parse_main_args(argv)
        try:
            main.check_args(args, given)
            device, dtype = main.pick_device(args.device, args.dtype)
        except main.UsageError as e:
            raise SweepError(f"{name}: {e}") from None
        # what main.py records as its settings, so that a resumed sweep compares like with like
        settings = {**vars(args), "device": device, "dtype": str(dtype).split(".")[-1]}
        plans.append(Run(name, argv, path, sorted(idle & extra_names), resume_action(path, settings)))
    if idle_everywhere:
        raise SweepError(f"-- {' '.join('--' + f for f in sorted(idle_everywhere))} would change nothing in any "
                         f"of {', '.join(runs)}: drop it")
    return plans


def run_main(argv):
    """main.py in a subprocess from the repository root, its output streamed; its exit code."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *argv], cwd=ROOT)
    try:
        return proc.wait()
    except KeyboardInterrupt:  # main.py got the Ctrl-C too and saves what it finished: let it
        return proc.wait()


def say(line):
    print(f"sweep: {line}", flush=True)


def execute(plans, runner=run_main):
    """Run what is not complete yet; stop at the first failure with its exit code."""
    for i, run in enumerate(plans, 1):
        tag = f"[{i}/{len(plans)}] {run.name}"
        if run.action == "skip":
            say(f"{tag}: skipped, complete in {run.path}")
            continue
        if run.dropped:
            say(f"{tag}: leaving out {', '.join('--' + f for f in run.dropped)} (would change nothing in it)")
        verb = "rerunning (interrupted before)" if run.action == "rerun" else "running"
        say(f"{tag}: {verb} main.py {shlex.join(run.argv)}")
        start = time.perf_counter()
        rc = runner(run.argv)
        if rc != 0:
            print(f"sweep.py: {run.name} failed (main.py exit code {rc}, output above); finished settings are kept "
                  f"in {run.path.parent}", file=sys.stderr)
            return rc
        say(f"{tag}: done in {time.perf_counter() - start:.0f} s")
    return 0


def sweep(model, runs, eval_flags, extra, out_dir, render_only=False, runner=run_main):
    """Run (unless render_only) and read back: (exit code, {name: record or None})."""
    if render_only:
        if extra:
            raise SweepError("--render-only runs nothing: drop the main.py flags after --")
        if not out_dir.is_dir():
            raise SweepError(f"--render-only: no result folder {out_dir}")
    else:
        rc = execute(plan_runs(model, runs, eval_flags, extra, out_dir), runner)
        if rc:
            return rc, {}
    return 0, {name: read_result(out_dir / f"{name}.json") for name in runs}


def write_text(path, text):
    datautils.atomic_write(path, lambda f: f.write(text))


def csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# ---- rendering ----

def model_name(model):
    return Path(model.rstrip("/")).name


def dataset_base(label):
    """The set a perplexity label measures: a local C4 proxy stands in for C4 (and its paper column)."""
    return label.removesuffix("-proxy")


def load_paper(paper_dir, table, model):
    """({column: (source, {setting: number})} for this model, a line saying where they come from)."""
    name = model_name(model).lower()
    columns, used = {}, []
    for source, filename in PAPER_FILES[table]:
        path = Path(paper_dir) / filename
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if row["model"].lower() == name]
        for row in rows:
            items = ([(k, v) for k, v in row.items() if k not in ("setting", "model")] if table == "ppl"
                     else [(row["task"], row["accuracy_percent"])])
            for column, value in items:
                if columns.setdefault(column, (source, {}))[0] == source:
                    columns[column][1][row["setting"]] = float(value)
        if rows:
            used.append(f"{source}: {filename}")
    files = ", ".join(filename for _, filename in PAPER_FILES[table])
    note = (f"{name} from {'; '.join(used)}" if used else f"no {name} rows in {files} under {paper_dir}")
    return columns, note


def summarize(pairs):
    """'value' when every row agrees, else the most common value and the others by row: 'a (W4A4: b)'."""
    groups = {}
    for name, value in pairs:
        groups.setdefault(value, []).append(name)
    if not groups:
        return "-"
    common = max(groups, key=lambda v: len(groups[v]))
    others = "; ".join(f"{', '.join(names)}: {v}" for v, names in groups.items() if v != common)
    return f"{common} ({others})" if others else str(common)


def ordered(found, expected):
    """Columns found in the JSONs in the requested order (others after); the requested ones if none found."""
    if not found:
        return list(expected)
    rank = {c: i for i, c in enumerate(expected)}
    return sorted(found, key=lambda c: rank.get(c, len(rank)))


def task_results(record):
    """{task: metrics} of a record's zero-shot block; a missing or malformed part reads as nothing."""
    block = (record or {}).get("zero_shot")
    results = block.get("results") if isinstance(block, dict) else None
    return {t: m for t, m in results.items() if isinstance(m, dict)} if isinstance(results, dict) else {}


def number(value, scale=1.0):
    return f"{scale * value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def markdown_table(header, rows):
    """Padded so that it also reads as plain text: settings left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return f"| {' | '.join(padded)} |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])


def ppl_cells(records, paper):
    """(header, {setting: cells}, notes) for perplexity: one column per set, the paper's beside it."""
    labels = {}
    for record in records.values():
        for label in (record or {}).get("ppl", {}):
            labels.setdefault(dataset_base(label), label)
    columns = ordered(list(labels), datautils.EVAL_SETS)
    header, cells = [], {name: [] for name in records}
    for col in columns:
        header.append(labels.get(col, col))
        if col in paper:
            header.append(f"{paper[col][0]} {col}")
        for name, record in records.items():
            res = next((r for label, r in (record or {}).get("ppl", {}).items() if dataset_base(label) == col), {})
            cells[name].append(number(res.get("ppl")))
            if col in paper:
                cells[name].append(number(paper[col][1].get(name)))
    notes = [f"{label} is not the paper's data set: its paper column is a reference only"
             for col, label in labels.items() if label != col and col in paper]
    return header, cells, notes


def zero_shot_cells(records, paper, tasks):
    """(header, {setting: cells}, notes) for zero-shot: per task its accuracies in % (acc_norm where a task has
    it), the paper's beside them."""
    found = {}
    for record in records.values():
        for task, metrics in task_results(record).items():
            found.setdefault(task, {}).update(metrics)
    header, cells = [], {name: [] for name in records}
    for task in ordered(list(found), tasks):
        metrics = [m for m in ZERO_SHOT_METRICS if m in found.get(task, {})] or list(ZERO_SHOT_METRICS)
        # the task's label (which copy of its data ran) heads its first column; the next ones belong to it
        header += [f"{found.get(task, {}).get('label') or task} {metrics[0]}", *metrics[1:]]
        header += [paper[task][0]] if task in paper else []
        for name, record in records.items():
            ours = task_results(record).get(task, {})
            cells[name] += [number(ours.get(m), 100) for m in metrics]
            cells[name] += [number(paper[task][1].get(name))] if task in paper else []
    return header, cells, [f"{task} data: {source_text(m['source'])}" for task, m in found.items() if m.get("source")]


def source_text(source):
    """A task's data source as the JSON gives it: a string, or fields such as kind, files and split."""
    if not isinstance(source, dict):
        return str(source)
    return ", ".join(f"{key} {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in source.items()
                     if v not in (None, "", []))


def run_counts(done, results_of, run_key, total_key):
    """'name run/total' for each set or task measured, over the rows: how much of the data each number saw."""
    def count(res):
        return f"{res.get(run_key)}/{res.get(total_key)}"

    names = dict.fromkeys(name for r in done.values() for name in results_of(r))
    return ", ".join(f"{name} " + summarize((n, count(results_of(r)[name])) for n, r in done.items()
                                            if name in results_of(r))
                     for name in names) or "-"


def describe_runs(table, records):
    """Header lines saying what produced the numbers, taken from the JSONs themselves."""
    done = {n: r for n, r in records.items() if r}
    settings = {n: r["settings"] for n, r in done.items()}
    quantized = {n: r["quantization"] for n, r in done.items() if isinstance(r.get("quantization"), dict)}

    def over(rows, value):
        return summarize((n, value(x)) for n, x in rows.items())

    def given(x):
        return "none" if x is None else x

    if table == "ppl":
        windows = run_counts(done, lambda r: r.get("ppl", {}), "windows", "windows_total")
        data = (f"windows run/total {windows}; seqlen {over(settings, lambda s: s.get('seqlen'))}; "
                f"--limit {over(settings, lambda s: given(s.get('limit')))}")
    else:
        blocks = {n: r["zero_shot"] for n, r in done.items() if isinstance(r.get("zero_shot"), dict)}
        data = "; ".join([f"examples run/total {run_counts(done, task_results, 'examples', 'examples_total')}",
                          *(f"{key} {over(blocks, lambda b: given(b.get(key)))}"
                            for key in ("limit", "num_fewshot", "batch_size", "harness_version"))])
    calibration = over({n: settings[n] for n in quantized},
                       lambda s: f"{s.get('calib_dataset')}, {s.get('nsamples')} windows of {s.get('seqlen')} "
                                 f"tokens, seed {s.get('seed')}")
    mode = ", ".join(f"{key} {over(quantized, lambda q: fmt(q.get(key)))}"
                     for key, fmt in (("grid", given), ("bit_mode", given), ("w_quantizer", given),
                                      ("reorder", lambda r: r or "none"),
                                      ("clusters", lambda c: " ".join(f"{p}:{k}" for p, k in (c or {}).items()))))
    floats = [n for n in done if n not in quantized]
    weights = {n: r["weights"] for n, r in done.items() if r.get("weights")}
    lines = [f"data: {data}"] + ([f"weights: {over(weights, lambda w: w)}"] if weights else [])
    if quantized:
        lines += [f"calibration: {calibration}", f"mode: {mode}"]
    if floats:
        lines.append(f"{', '.join(floats)}: float model, no RPTQ, no calibration")
    placement = over(settings, lambda s: f"{s.get('dtype')} on {s.get('device')}")
    lines.append(f"dtype on device: {placement}")
    incomplete = [n for n, r in done.items() if r.get("status") != "complete"]
    missing = [n for n, r in records.items() if r is None]
    if incomplete:
        lines.append(f"incomplete (interrupted, partial numbers): {', '.join(incomplete)}")
    if missing:
        lines.append(f"not run yet (-): {', '.join(missing)}")
    return lines


def render(table, model, records, paper, paper_note, tasks=TASKS):
    """The Markdown table of one sweep: a header saying what produced it, one row per setting."""
    header, cells, notes = (ppl_cells(records, paper) if table == "ppl"
                            else zero_shot_cells(records, paper, tasks))
    rows = [[name + ("" if not r or r.get("status") == "complete" else " (incomplete)"), *cells[name]]
            for name, r in records.items()]
    meta = describe_runs(table, records) + [f"paper numbers: {paper_note}"] + notes
    return "\n".join([f"## {model_name(model)}: {TITLES[table]}", "", *(f"- {m}" for m in meta), "",
                      markdown_table(["setting", *header], rows)]) + "\n"


# ---- command line ----

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
    p.add_argument("--out", default=None, help="result folder (default: out/sweep/MODELNAME/TABLE in the repository)")
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


def guarded(prog, body):
    """Run a script body: bad input is one line and exit 2, Ctrl-C one line and exit 130."""
    try:
        return body()
    except SweepError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished runs are kept in their JSON files", file=sys.stderr)
        return 130


def main(argv=None, runner=run_main):
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)

    def body():
        names = chosen_settings(args.settings)
        if args.tasks is not None and args.table != "zeroshot":
            raise SweepError("--tasks applies to --table zeroshot (perplexity sets: -- --ppl_datasets)")
        tasks = [t for t in (args.tasks or ",".join(TASKS)).split(",") if t]
        out_dir = (Path(args.out).absolute() if args.out
                   else ROOT / "out" / "sweep" / model_name(args.model) / args.table)
        paper, note = load_paper(paper_folder(args.paper_dir), args.table, args.model)
        eval_flags = ["--eval_ppl"] if args.table == "ppl" else ["--tasks", ",".join(tasks)]
        rc, records = sweep(args.model, {n: SETTINGS[n] for n in names}, eval_flags, extra, out_dir,
                            args.render_only, runner)
        if rc:
            return rc
        text = render(args.table, args.model, records, paper, note, tasks)
        markdown = Path(args.markdown) if args.markdown else out_dir / "table.md"
        write_text(markdown, text)
        print(f"\n{text}\ntable: {markdown}")
        return 0

    return guarded("sweep.py", body)


if __name__ == "__main__":
    sys.exit(main())
