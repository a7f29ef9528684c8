"""Run the settings of the paper's Table 1 (perplexity) or Table 2 (zero-shot) on one model, one main.py JSON per
setting, and render them as a Markdown table beside the paper's numbers.

    python scripts/sweep.py opt-1.3b --table ppl -- --device cuda
    python scripts/sweep.py opt-1.3b --table zeroshot --settings FP16,W4A4 -- --limit 200
    python scripts/sweep.py opt-1.3b --table ppl --jobs 2            # two settings at once, threads split
    python scripts/sweep.py opt-1.3b --table ppl --print-commands    # one command per missing setting
    python scripts/sweep.py opt-1.3b --table ppl --slurm table1.sbatch -- --device cuda
    python scripts/sweep.py opt-1.3b --table ppl --render-only

Flags after -- go to every main.py run; one that changes nothing in a setting (--nsamples for FP16) is left out
of that run. A setting whose JSON is complete with the same main.py flags and data is skipped, an interrupted
one rerun: so a sweep resumes, and the runs of --print-commands or a SLURM array fill the same folder.
"""
import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rptq.base import RPTQError, check_file, check_folder, write_text
from rptq.cli import FilePath, FolderPath, OneLineParser, UsageError, flag, given_flags, guarded, render
from rptq.cli import build_parser as main_parser
from rptq.config import RunConfig, idle, recorded_before
from rptq.report import PAPER_DIR, TITLES, load_paper, model_name
from rptq.report import render as render_table
from rptq.tasks import PAPER_TASKS

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"

SETTINGS = {
    "FP16": {},  # no RPTQ at all: main.py runs the model in its default dtype (float32 on cpu)
    "W4A16": {"wbits": 4},
    "W4A16-RTN": {"wbits": 4, "w_quantizer": "normal"},
    "W4A8": {"wbits": 4, "abits": 8},
    "W4A4": {"wbits": 4, "abits": 4},
    "W4A4KV": {"wbits": 4, "abits": 4, "only_quant_kv": True},
    "W4A3KV": {"wbits": 4, "abits": 3, "only_quant_kv": True},
    "W3A3KV": {"wbits": 3, "abits": 3, "only_quant_kv": True},
    # ablations: activations alone, and one cluster per reorder point (nothing reordered: per-tensor ranges)
    "W16A4": {"abits": 4},
    "W16A4-noreorder": {"abits": 4, "reorder": ""},
    "W4A4-noreorder": {"wbits": 4, "abits": 4, "reorder": ""},
    "W4A3KV-noreorder": {"wbits": 4, "abits": 3, "only_quant_kv": True, "reorder": ""},
    # every activation at the stated bits: LayerNorm outputs and probabilities too (OmniQuant's "RPTQ*")
    "W16A4-strict": {"abits": 4, "bit_mode": "strict"},
    "W4A4-strict": {"wbits": 4, "abits": 4, "bit_mode": "strict"},
    # the calibration seed's effect (the default seed is 2)
    "W4A4-seed3": {"wbits": 4, "abits": 4, "seed": 3},
    "W4A4-seed4": {"wbits": 4, "abits": 4, "seed": 4},
}
# the controls for clustering: as many fixed contiguous groups, one group per channel, dynamic per-token ranges
CONTROLS = ("fixed", "channel", "token")
SETTINGS.update({f"{base}-{g}": {**SETTINGS[base], "a_granularity": g}
                 for base in ("W16A4", "W4A4", "W4A3KV") for g in CONTROLS})
PAPER_ROWS = ("FP16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
SWEEP_SETTINGS = {"output_path", "eval_ppl", "tasks"}  # set by the sweep itself, never after --
# where files are and the model runs, not what the numbers are: may differ on resume (the data itself is compared by
# content)
WHERE_SETTINGS = {"output_path", "cache_dir", "data_dir", "device_map", "max_memory", "offload_folder"}
# what a self-contained command carries from this environment
ENVIRONMENT = ("RPTQ_DATA_DIR", "RPTQ_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class SweepError(UsageError):
    """Bad input, or a result folder made with other flags: one line on stderr, exit 2."""


@dataclass
class Run:
    name: str
    argv: list       # main.py's arguments
    path: Path       # its output_path
    dropped: list    # settings after -- that would change nothing in this run
    action: str      # "run", "rerun" (interrupted before) or "skip" (complete)


def split_extra(argv):
    """(the script's own arguments, main.py flags after --)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_extra(model, extra):
    """The settings the main.py flags after -- set: {name: value}, parsed as main.py parses them."""
    parser = main_parser("main.py")

    def refuse(message):
        raise SweepError(f"main.py flags: {message}")

    parser.error = refuse
    if extra and not extra[0].startswith("--"):
        raise SweepError(f"'{extra[0]}' after -- is not a main.py flag")
    args = parser.parse_args([model, *extra])
    return {name: getattr(args, name) for name in given_flags(extra)}


def main_argv(model, values):
    """main.py's command line for RunConfig(model=model, **values)."""
    argv = [model]
    for name, value in values.items():
        if isinstance(value, bool):
            argv += [flag(name)] if value else []
        elif value is not None:
            argv += [flag(name), str(value)]
    return argv


def read_result(path):
    """A main.py record, or None when there is none yet."""
    from rptq import record

    try:
        return record.read(path)
    except record.RecordError as e:
        raise SweepError(f"{render(e)}; move it away or use another --out") from None


def resume_action(path, cfg, settings, data):
    """skip a complete run, rerun an interrupted one; a JSON made with other flags or from other data stops the
    sweep, since one folder must hold one protocol. Settings that change nothing in the run are not compared; one
    newer than the JSON counts as what records made before it were made with."""
    saved = read_result(path)
    if saved is None:
        return "run"
    before = saved.settings
    compared = sorted((before.keys() | settings.keys()) - WHERE_SETTINGS - set(idle(cfg)))
    changed = [f"{k} {before.get(k, recorded_before(k))!r} there, {settings.get(k)!r} now"
               for k in compared if before.get(k, recorded_before(k)) != settings.get(k)]
    if changed:
        raise SweepError(f"{path} was made with other main.py flags ({'; '.join(changed)}); use another --out "
                         "for these flags")
    if saved.data != data:
        raise SweepError(f"{path} was made from other data ({data_difference(saved.data, data)}); use another --out "
                         "for this data")
    return "skip" if saved.complete else "rerun"


def data_difference(before, now):
    """The first entry that differs between two records' data lists, in a few words."""
    def keyed(entries):
        return {(e.get("set") or e.get("task"), e.get("purpose"), e.get("file")): e for e in entries or []}

    def short(value):
        return value[:12] if isinstance(value, str) and len(value) == 64 else value

    old, new = keyed(before), keyed(now)
    for key in sorted(old.keys() | new.keys(), key=str):
        a, b = old.get(key), new.get(key)
        if a != b:
            what = " ".join(str(k) for k in key if k)
            if a is None or b is None:
                return f"{what}: {'absent' if a is None else 'used'} there, {'absent' if b is None else 'used'} now"
            changed = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
            return "; ".join(f"{what}: {k} {short(a.get(k))} there, {short(b.get(k))} now" for k in sorted(changed))
    return "recorded differently"


def plan_runs(model, runs, evaluation, extra, out_dir, here=True):
    """Check every run's settings and existing JSON before anything slow starts.

    runs: {name: settings}; evaluation: the settings that say what is evaluated (eval_ppl or tasks); extra: main.py
    flags for every run; each run writes out_dir/NAME.json. here=False: the runs will happen on other machines
    (printed commands, SLURM tasks), so a device this machine lacks is not refused."""
    from rptq.api import data_of
    from rptq.config import check
    from rptq.placement import dtype_name, resolve_device

    extra_values = parse_extra(model, extra)
    owned = SWEEP_SETTINGS | {name for values in [evaluation, *runs.values()] for name in values}
    for name in extra_values:
        if name in owned:
            raise SweepError(f"-- {flag(name)}: the sweep sets it itself (choose the settings or options instead)")
    check_clusters = cluster_checker(model)
    plans, idle_everywhere = [], set(extra_values)
    for name, values in runs.items():
        path = out_dir / f"{name}.json"
        own = {**evaluation, **values, "output_path": str(path)}
        try:
            notes = check(RunConfig(model=model, **own, **extra_values), set(own) | set(extra_values))
            dropped = {note.option for note in notes} & set(extra_values)
            idle_everywhere &= dropped
            chosen = {**own, **{k: v for k, v in extra_values.items() if k not in dropped}}
            cfg = RunConfig(model=model, **chosen)
            device, dtype = resolve_device(cfg.device, cfg.dtype, here)
            data = data_of(cfg)
            if check_clusters and cfg.quantizes:
                check_clusters(cfg.quant())
        except RPTQError as e:
            raise SweepError(f"{name}: {render(e)}") from None
        settings = cfg.settings(device, dtype_name(dtype))
        plans.append(Run(name, main_argv(model, chosen), path, sorted(dropped),
                         resume_action(path, cfg, settings, data)))
    if idle_everywhere:
        raise SweepError(f"-- {' '.join(flag(f) for f in sorted(idle_everywhere))} would change nothing in any "
                         f"of {', '.join(runs)}: drop it")
    return plans


def cluster_checker(model):
    """A check of a run's cluster counts against the model's shapes, from its config alone; None when the config
    cannot be read here (a hub model that is not cached: main.py says so at once, before any work)."""
    from models import ModelError, empty_model, load_config
    from models.loader import hub_names
    from rptq.pipeline import check_clusters

    try:
        model_config, adapter = load_config(model)
    except ModelError:
        if model in hub_names():
            return None
        raise
    skeleton = empty_model(model_config)
    return lambda quant: check_clusters(skeleton, adapter, quant)


def run_main(argv, threads=None, log=None):
    """main.py in a subprocess, in this folder (relative paths keep their meaning); its exit code. threads: its torch
    threads (OMP_NUM_THREADS); log: a file for its output instead of this terminal. The child has its own process
    group, so a Ctrl-C reaches it once, from here: on an interrupt (SIGINT, or SIGTERM, which would otherwise leave
    the child running on its own) it is told to stop (it saves what it finished) and the sweep stops too."""
    with interruptible():  # before the start: a child inherits the handling of SIGINT
        return wait_all([start_main(argv, threads, log)])[0]


def start_main(argv, threads=None, log=None):
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    out = open(log, "w") if log else None
    try:
        return subprocess.Popen([sys.executable, str(MAIN), *argv], process_group=0, env=env, stdout=out,
                                stderr=subprocess.STDOUT if out else None)
    finally:
        if out:
            out.close()


@contextlib.contextmanager
def interruptible():
    """SIGINT and SIGTERM raise KeyboardInterrupt in the block (SIGTERM would otherwise leave the children running
    on their own; a shell starts background jobs with SIGINT ignored, and `kill -INT` must still work)."""
    def terminate(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_all(procs):
    """Wait for the processes (inside interruptible()); on an interrupt stop every one still running, then raise
    KeyboardInterrupt. Their exit codes, in order."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        interrupt(procs)
        raise


def interrupt(procs):
    """Tell every process still running to stop (each saves what it finished), and wait for them."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in procs:
        p.wait()


def say(line):
    print(f"sweep: {line}", flush=True)


def execute(plans, runner=None, jobs=1, threads=None):
    """Run what is not complete yet, `jobs` at a time (their output in DIR/NAME.log when more than one); stop
    launching at the first failure and return its exit code once the running ones end."""
    todo = [(i, run) for i, run in enumerate(plans, 1)]
    for i, run in todo:
        if run.action == "skip":
            say(f"[{i}/{len(plans)}] {run.name}: skipped, complete in {run.path}")
    todo = [(i, run) for i, run in todo if run.action != "skip"]
    if jobs == 1 or runner is not None:
        for i, run in todo:
            rc = _announce_and_run(i, len(plans), run, runner or (lambda argv: run_main(argv, threads)))
            if rc:
                return rc
        return 0
    return _execute_parallel(todo, len(plans), jobs, threads)


def _announce(i, total, run, where=""):
    tag = f"[{i}/{total}] {run.name}"
    if run.dropped:
        say(f"{tag}: leaving out {', '.join(flag(f) for f in run.dropped)} (would change nothing in it)")
    verb = "rerunning (interrupted before)" if run.action == "rerun" else "running"
    say(f"{tag}: {verb} main.py {shlex.join(run.argv)}{where}")
    return tag


def _failed(run, rc, output="above"):
    print(f"sweep.py: {run.name} failed (main.py exit code {rc}, output {output}); finished settings are kept in "
          f"{run.path.parent}", file=sys.stderr)


def _announce_and_run(i, total, run, runner):
    tag = _announce(i, total, run)
    start = time.perf_counter()
    rc = runner(run.argv)
    if rc != 0:
        _failed(run, rc)
        return rc
    say(f"{tag}: done in {time.perf_counter() - start:.0f} s")
    return 0


def _execute_parallel(todo, total, jobs, threads):
    """Keep `jobs` main.py processes running until todo is done; the first failure stops new launches, and its exit
    code is returned once the running ones end."""
    running, first_failure = {}, 0
    with interruptible():
        try:
            while todo or running:
                while todo and len(running) < jobs and not first_failure:
                    i, run = todo.pop(0)
                    log = run.path.with_suffix(".log")
                    tag = _announce(i, total, run, f" (output in {log})")
                    run.path.parent.mkdir(parents=True, exist_ok=True)
                    running[start_main(run.argv, threads, log)] = (tag, run, time.perf_counter())
                if not running:
                    break
                time.sleep(0.2)
                for proc in [p for p in running if p.poll() is not None]:
                    tag, run, start = running.pop(proc)
                    if proc.returncode:
                        _failed(run, proc.returncode, f"in {run.path.with_suffix('.log')}")
                        first_failure = first_failure or proc.returncode
                    else:
                        say(f"{tag}: done in {time.perf_counter() - start:.0f} s")
        except KeyboardInterrupt:
            interrupt(list(running))
            raise
    return first_failure


def command_line(run, threads):
    """A self-contained shell command for one run: this folder, the data environment, the threads, main.py."""
    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENVIRONMENT if k in os.environ]
    env += [f"OMP_NUM_THREADS={threads}"] if threads else []
    return (f"cd {shlex.quote(os.getcwd())} && {' '.join(env)}{' ' if env else ''}{shlex.quote(sys.executable)} "
            f"{shlex.quote(str(MAIN))} {shlex.join(run.argv)}")


def slurm_script(plans, threads, options):
    """An sbatch array script: task i runs the i-th missing setting, its log beside its JSON."""
    todo = [run for run in plans if run.action != "skip"]
    lines = ["#!/bin/bash", f"#SBATCH --array=0-{len(todo) - 1}", "#SBATCH --job-name=rptq-sweep",
             "#SBATCH --output=/dev/null"]
    lines += [f"#SBATCH {o}" for o in options]
    lines += ["set -euo pipefail", 'case "${SLURM_ARRAY_TASK_ID:?run by sbatch --array, or set it}" in']
    for i, run in enumerate(todo):
        lines.append(f"  {i}) exec > {shlex.quote(str(run.path.with_suffix('.log').absolute()))} 2>&1; "
                     f"{command_line(run, threads)} ;;")
    lines += ['  *) echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2; exit 2 ;;', "esac", ""]
    return "\n".join(lines)


def sweep(model, runs, evaluation, extra, out_dir, render_only=False, runner=None, jobs=1, threads=None):
    """Run (unless render_only) and read back: (exit code, {name: RunRecord or None})."""
    if render_only:
        if extra:
            raise SweepError("--render-only runs nothing: drop the main.py flags after --")
        if not out_dir.is_dir():
            raise SweepError(f"--render-only: no result folder {out_dir}")
    else:
        rc = execute(plan_runs(model, runs, evaluation, extra, out_dir), runner, jobs, threads)
        if rc:
            return rc, {}
    return 0, {name: read_result(out_dir / f"{name}.json") for name in runs}


def build_parser():
    p = OneLineParser(prog="sweep.py", description=__doc__, allow_abbrev=False,
                      usage="%(prog)s MODEL --table {ppl,zeroshot} [options] [-- main.py flags]",
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="as main.py takes it: a name or a local model folder")
    p.add_argument("--table", choices=tuple(TITLES), required=True,
                   help="ppl: main.py --eval_ppl; zeroshot: main.py --tasks")
    p.add_argument("--settings", default=",".join(PAPER_ROWS),
                   help=f"comma list from {', '.join(SETTINGS)} (default: the paper's rows, %(default)s)")
    p.add_argument("--tasks", default=None, help=f"--table zeroshot only (default: {','.join(PAPER_TASKS)})")
    p.add_argument("--out", type=FolderPath, default=None, help="result folder (default: out/sweep/MODELNAME/TABLE)")
    p.add_argument("--paper_dir", default=None, help=f"the paper's CSV files (default: {PAPER_DIR})")
    p.add_argument("--markdown", type=FilePath, default=None,
                   help="where the rendered table goes (default: DIR/table.md)")
    p.add_argument("--render-only", action="store_true", help="only render the table from the JSONs in DIR")
    p.add_argument("--jobs", type=int, default=1,
                   help="settings run at once, each main.py's output in DIR/SETTING.log (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each run (OMP_NUM_THREADS; default: the CPU cores split between the jobs); "
                        "the records name it, and the same count gives the same figures whatever --jobs is")
    p.add_argument("--print-commands", action="store_true",
                   help="print one self-contained shell command per setting not complete yet, and run nothing")
    p.add_argument("--slurm", type=FilePath, default=None, metavar="FILE",
                   help="write a SLURM array script (one task per setting not complete yet, each task's log beside "
                        "its JSON) to FILE and run nothing; submit it with sbatch, then --render-only")
    p.add_argument("--slurm_option", action="append", default=[], metavar="OPTION",
                   help="an #SBATCH line for every task, e.g. --slurm_option=--gpus=1 --slurm_option=--mem=64G "
                        "(repeatable)")
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


def default_threads(jobs):
    return max(1, (os.cpu_count() or 1) // jobs)


def main(argv=None, runner=None):
    own, extra = split_extra(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)

    def body():
        names = chosen_settings(args.settings)
        if args.tasks is not None and args.table != "zeroshot":
            raise SweepError("--tasks applies to --table zeroshot (perplexity sets: -- --ppl_datasets)")
        if args.jobs < 1 or (args.threads is not None and args.threads < 1):
            raise SweepError("--jobs and --threads must be at least 1")
        tasks = [t for t in (args.tasks or ",".join(PAPER_TASKS)).split(",") if t]
        out_dir = Path(args.out or Path("out") / "sweep" / model_name(args.model) / args.table)
        paper, note = load_paper(paper_folder(args.paper_dir), args.table, args.model)
        evaluation = {"eval_ppl": True} if args.table == "ppl" else {"tasks": ",".join(tasks)}
        markdown = Path(args.markdown) if args.markdown else out_dir / "table.md"
        check_folder(out_dir, "out")  # before hours of runs, not after
        check_file(markdown, "markdown")
        if args.slurm:
            check_file(args.slurm, "slurm")
        runs = {n: SETTINGS[n] for n in names}
        threads = args.threads or (default_threads(args.jobs) if args.jobs > 1 else None)
        if args.print_commands or args.slurm:
            plans = plan_runs(args.model, runs, evaluation, extra, out_dir, here=False)
            if args.slurm:
                write_text(args.slurm, slurm_script(plans, threads, args.slurm_option))
                say(f"{sum(p.action != 'skip' for p in plans)} task(s) in {args.slurm}: sbatch {args.slurm}")
            else:
                for run in plans:
                    if run.action != "skip":
                        print(command_line(run, threads))
            return 0
        rc, records = sweep(args.model, runs, evaluation, extra, out_dir, args.render_only, runner, args.jobs,
                            threads)
        if rc:
            return rc
        text = render_table(args.table, args.model, records, paper, note, tasks)
        write_text(markdown, text)
        print(f"\n{text}\ntable: {markdown}")
        return 0

    return guarded("sweep.py", body, "finished runs are kept in their JSON files")


if __name__ == "__main__":
    sys.exit(main())
