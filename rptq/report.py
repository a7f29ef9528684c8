"""Rendering run records: the stdout table of one run, and a sweep's Markdown table beside the paper's numbers."""
import csv
import io
from pathlib import Path

from .record import Z95, paired_ratio
from .tasks import PAPER_TASKS

PAPER_DIR = Path(__file__).resolve().parents[2] / "shared" / "paper"
TITLES = {"ppl": "perplexity (Table 1)", "zeroshot": "zero-shot accuracy in % (Table 2)"}
# Per column, the first file that has it wins: the paper's Table 2 is only partly transcribed, the authors'
# README has all six tasks (with other numbers for some rows).
PAPER_FILES = {"ppl": (("paper", "table1_ppl_paper.csv"),),
               "zeroshot": (("paper", "table2_zeroshot_paper_partial.csv"), ("README", "table2_zeroshot_readme.csv"))}
ZERO_SHOT_METRICS = ("acc", "acc_norm")
BASELINE = "FP16"  # the setting the perplexity ratios are taken against


def format_table(header, rows):
    """A plain-text table for stdout."""
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def half_width(stderr):
    """' +-x' in points: the 95% half-width of an accuracy from its standard error (nothing when unknown)."""
    return f" ±{100 * Z95 * stderr:.1f}" if isinstance(stderr, float) else ""


def interval_text(interval):
    return "-" if not interval else f"{interval[0]:.2f}-{interval[1]:.2f}"


def csv_text(rows):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


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
    note = f"{name} from {'; '.join(used)}" if used else f"no {name} rows in {files}"  # no machine path
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
    block = record.zero_shot if record else None
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
        for label in (record.ppl if record else {}):
            labels.setdefault(dataset_base(label), label)
    from datautils import EVAL_SETS

    columns = ordered(list(labels), EVAL_SETS)
    header, cells = [], {name: [] for name in records}
    for col in columns:
        header.append(labels.get(col, col))
        if col in paper:
            header.append(f"{paper[col][0]} {col}")
        for name, record in records.items():
            res = next((r for label, r in (record.ppl if record else {}).items() if dataset_base(label) == col), None)
            interval = res and res.ppl_ci95
            cells[name].append(number(res and res.ppl) + (f" [{interval_text(interval)}]" if interval else ""))
            if col in paper:
                cells[name].append(number(paper[col][1].get(name)))
    notes = [f"{label} is not the paper's data set: its paper column is a reference only"
             for col, label in labels.items() if label != col and col in paper]
    return header, cells, notes


def ratio_text(ratio, interval):
    digits = 3 if ratio < 100 else 0
    return f"{ratio:,.{digits}f}" + (f" [{interval[0]:,.{digits}f}-{interval[1]:,.{digits}f}]" if interval else "")


def ratio_table(records):
    """'SETTING / FP16' rows: each complete setting's perplexity over FP16's on the same windows, per set (None
    without a complete FP16 row). A set whose windows differ from FP16's (count run, count in the set, length)
    shows '-'."""
    base = records.get(BASELINE)
    if not base or not base.complete:
        return None
    from datautils import EVAL_SETS

    sets = ordered(list(base.ppl), [label for s in EVAL_SETS for label in (s, f"{s}-proxy")])
    rows = []
    for name, record in records.items():
        if name == BASELINE or not record or not record.complete:
            continue
        cells = []
        for label in sets:
            ours, theirs = record.ppl.get(label), base.ppl[label]
            same = ours is not None and all(getattr(ours, k) == getattr(theirs, k)
                                            for k in ("windows", "windows_total", "seqlen"))
            cells.append(ratio_text(*paired_ratio(ours.nlls, theirs.nlls)) if same and ours.nlls and theirs.nlls
                         else "-")
        rows.append([f"{name} / {BASELINE}", *cells])
    return markdown_table(["setting", *sets], rows) if rows else None


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
            cells[name] += [number(ours.get(m), 100) + half_width(ours.get(f"{m}_stderr")) for m in metrics]
            cells[name] += [number(paper[task][1].get(name))] if task in paper else []
    return header, cells, [f"{task} data: {source_text(m['source'])}" for task, m in found.items() if m.get("source")]


def source_text(source):
    """A task's data source as the JSON gives it: a string, or fields such as kind, files and split."""
    if not isinstance(source, dict):
        return str(source)
    return ", ".join(f"{key} {', '.join(map(str, v)) if isinstance(v, list) else v}" for key, v in source.items()
                     if v not in (None, "", []))


def run_counts(done, results_of, count):
    """'name run/total' for each set or task measured, over the rows: how much of the data each number saw.
    count(result) -> 'run/total'."""
    names = dict.fromkeys(name for r in done.values() for name in results_of(r))
    return ", ".join(f"{name} " + summarize((n, count(results_of(r)[name])) for n, r in done.items()
                                            if name in results_of(r))
                     for name in names) or "-"


def describe_runs(table, records):
    """Header lines saying what produced the numbers, taken from the JSONs themselves."""
    done = {n: r for n, r in records.items() if r}
    settings = {n: r.settings for n, r in done.items()}
    quantized = {n: r.quantization for n, r in done.items() if isinstance(r.quantization, dict)}

    def over(rows, value):
        return summarize((n, value(x)) for n, x in rows.items())

    def given(x):
        return "none" if x is None else x

    if table == "ppl":
        windows = run_counts(done, lambda r: r.ppl, lambda res: f"{res.windows}/{res.windows_total}")
        data = (f"windows run/total {windows}; seqlen {over(settings, lambda s: s.get('seqlen'))}; "
                f"--limit {over(settings, lambda s: given(s.get('limit')))}")
    else:
        blocks = {n: r.zero_shot for n, r in done.items() if isinstance(r.zero_shot, dict)}
        examples = run_counts(done, task_results, lambda res: f"{res.get('examples')}/{res.get('examples_total')}")
        data = "; ".join([f"examples run/total {examples}",
                          *(f"{key} {over(blocks, lambda b: given(b.get(key)))}"
                            for key in ("limit", "num_fewshot", "batch_size", "harness_version"))])
    calibration = over({n: settings[n] for n in quantized},
                       lambda s: f"{s.get('calib_dataset')}, {s.get('nsamples')} windows of {s.get('seqlen')} "
                                 f"tokens, seed {s.get('seed')}")
    mode = ", ".join(f"{key} {over(quantized, lambda q: fmt(q.get(key)))}"
                     for key, fmt in (("grid", given), ("bit_mode", given), ("w_quantizer", given),
                                      ("a_granularity", lambda g: g or "cluster"),
                                      ("reorder", lambda r: r or "none"),
                                      ("clusters", lambda c: " ".join(f"{p}:{k}" for p, k in (c or {}).items()))))
    floats = [n for n in done if n not in quantized]
    weights = {n: r.weights for n, r in done.items() if r.weights}
    lines = [f"data: {data}"] + ([f"weights: {over(weights, lambda w: w)}"] if weights else [])
    if quantized:
        lines += [f"calibration: {calibration}", f"mode: {mode}"]
    if floats:
        lines.append(f"{', '.join(floats)}: float model, no RPTQ, no calibration")
    placement = over(settings, lambda s: f"{s.get('dtype')} on {s.get('device')}")
    lines.append(f"dtype on device: {placement}")
    commit = over(done, lambda r: (r.versions.get("rptq_commit") or "unknown")[:7])
    threads = over(done, lambda r: r.versions.get("torch_threads") or "unknown")
    kernels = over(done, lambda r: r.versions.get("cpu_capability") or "unknown")
    lines.append(f"code: rptq commit {commit}; torch threads {threads}; CPU kernels {kernels}")
    incomplete = [n for n, r in done.items() if not r.complete]
    missing = [n for n, r in records.items() if r is None]
    if incomplete:
        lines.append(f"incomplete (interrupted, partial numbers): {', '.join(incomplete)}")
    if missing:
        lines.append(f"not run yet (-): {', '.join(missing)}")
    return lines


def render(table, model, records, paper, paper_note, tasks=PAPER_TASKS):
    """The Markdown table of one sweep: a header saying what produced it, one row per setting."""
    header, cells, notes = (ppl_cells(records, paper) if table == "ppl"
                            else zero_shot_cells(records, paper, tasks))
    rows = [[name + ("" if not r or r.complete else " (incomplete)"), *cells[name]]
            for name, r in records.items()]
    intervals = ("in brackets: 95% interval, exp(mean window NLL ± 1.96 standard errors over the windows run)"
                 if table == "ppl" else "±: 95% half-width, 1.96 times the harness's standard error")
    meta = describe_runs(table, records) + [intervals, f"paper numbers: {paper_note}"] + notes
    text = [f"## {model_name(model)}: {TITLES[table]}", "", *(f"- {m}" for m in meta), "",
            markdown_table(["setting", *header], rows)]
    ratios = ratio_table(records) if table == "ppl" else None
    if ratios:
        text += ["", f"Perplexity over {BASELINE}'s on the same windows: exp(mean per-window NLL difference) "
                 "[95% interval, ± 1.96 standard errors of the differences]. What makes a window hard cancels, so "
                 "these intervals are far tighter than those above side by side.", "", ratios]
    return "\n".join(text) + "\n"
