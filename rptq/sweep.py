"""Sweeps: many main.py runs of one model, one JSON each in one folder, resumable.

A setting whose JSON is complete with the same main.py settings and the same data is skipped, an interrupted one
rerun; a JSON made with other flags or other data stops the sweep before anything runs (one folder, one protocol).
"""
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import config, record
from .cli import UsageError, dtype_name, pick_device
from .cluster import ClusterError

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "main.py"

SETTINGS = {
    "FP16": [],  # no RPTQ at all: main.py runs the model in its default dtype (float32 on cpu)
    "W4A16": ["--wbits", "4"],
    "W4A16-RTN": ["--wbits", "4", "--w_quantizer", "normal"],
    "W4A8": ["--wbits", "4", "--abits", "8"],
    "W4A4": ["--wbits", "4", "--abits", "4"],
    "W4A4KV": ["--wbits", "4", "--abits", "4", "--only_quant_kv"],
    "W4A3KV": ["--wbits", "4", "--abits", "3", "--only_quant_kv"],
    "W3A3KV": ["--wbits", "3", "--abits", "3", "--only_quant_kv"],
    # ablations: activations alone, and one cluster per reorder point (nothing reordered: per-tensor ranges)
    "W16A4": ["--abits", "4"],
    "W16A4-noreorder": ["--abits", "4", "--reorder", ""],
    "W4A4-noreorder": ["--wbits", "4", "--abits", "4", "--reorder", ""],
    "W4A3KV-noreorder": ["--wbits", "4", "--abits", "3", "--only_quant_kv", "--reorder", ""],
    # every activation at the stated bits: LayerNorm outputs and probabilities too (OmniQuant's "RPTQ*")
    "W16A4-strict": ["--abits", "4", "--bit_mode", "strict"],
    "W4A4-strict": ["--wbits", "4", "--abits", "4", "--bit_mode", "strict"],
    # the calibration seed's effect (the default seed is 2)
    "W4A4-seed3": ["--wbits", "4", "--abits", "4", "--seed", "3"],
    "W4A4-seed4": ["--wbits", "4", "--abits", "4", "--seed", "4"],
}
# the controls for clustering: as many fixed contiguous groups, one group per channel, dynamic per-token ranges
CONTROLS = ("fixed", "channel", "token")
SETTINGS.update({f"{base}-{g}": [*SETTINGS[base], "--a_granularity", g]
                 for base in ("W16A4", "W4A4", "W4A3KV") for g in CONTROLS})
PAPER_ROWS = ("FP16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
TASKS = ("lambada_openai", "piqa", "arc_easy", "arc_challenge", "openbookqa", "boolq")
SWEEP_FLAGS = {"output_path", "eval_ppl", "tasks"}  # set by the sweep itself, never after --
# where files are and the model runs, not what the numbers are: may differ on resume (the data itself is compared by
# content)
WHERE_FLAGS = {"output_path", "cache_dir", "data_dir", "device_map", "max_memory", "offload_folder"}


class SweepError(UsageError):
    """Bad input, or a result folder made with other flags: one line on stderr, exit 2."""


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
    """main.py's arguments and the flags named, as main.py would parse them; bad ones are one line."""
    parser = config.build_parser()

    def refuse(message):
        raise SweepError(f"main.py flags: {message}")

    parser.error = refuse
    return parser.parse_args(argv), config.given_flags(argv)


def read_result(path):
    """A main.py JSON, or None when there is none yet."""
    try:
        return record.read(path)
    except record.RecordError as e:
        raise SweepError(f"{e}; move it away or use another --out") from None


def resume_action(path, settings, data):
    """skip a complete run, rerun an interrupted one; a JSON made with other flags or from other data stops the
    sweep, since one folder must hold one protocol."""
    saved = read_result(path)
    if saved is None:
        return "run"
    before = saved["settings"]
    changed = [f"{k} {before.get(k)!r} there, {settings.get(k)!r} now"
               for k in sorted((before.keys() | settings.keys()) - WHERE_FLAGS) if before.get(k) != settings.get(k)]
    if changed:
        raise SweepError(f"{path} was made with other main.py flags ({'; '.join(changed)}); use another --out "
                         "for these flags")
    if saved.get("data") != data:
        raise SweepError(f"{path} was made from other data ({config.data_difference(saved.get('data'), data)}); "
                         "use another --out for this data")
    return "skip" if record.is_complete(saved) else "rerun"


def plan_runs(model, runs, eval_flags, extra, out_dir):
    """Check every run's main.py flags and existing JSON before anything slow starts.

    runs: {name: main.py flags}; each writes out_dir/NAME.json. extra: flags for every run."""
    groups = flag_groups(extra)
    owned = SWEEP_FLAGS | {flag_name(g) for flags in [eval_flags, *runs.values()] for g in flag_groups(flags)}
    for g in groups:
        if flag_name(g) in owned:
            raise SweepError(f"-- {g[0]}: the sweep sets it itself (choose the settings or options instead)")
    extra_names = {flag_name(g) for g in groups}
    check_clusters = cluster_checker(model)
    plans, idle_everywhere = [], set(extra_names)
    for name, flags in runs.items():
        path = out_dir / f"{name}.json"
        base = [model, *eval_flags, *flags, "--output_path", str(path)]
        args, given = parse_main_args(base + flat(groups))
        idle = {flag[2:] for flag in config.idle_flags(args, given)}
        idle_everywhere &= idle
        argv = base + flat(g for g in groups if flag_name(g) not in idle)
        args, given = parse_main_args(argv)
        try:
            config.check_args(args, given)
            device, dtype = pick_device(args.device, args.dtype)
            data = config.run_data(args)
            if check_clusters and config.runs_rptq(args):
                check_clusters(config.rptq_config(args, device))
        except (UsageError, ClusterError) as e:
            raise SweepError(f"{name}: {e}") from None
        settings = record.settings_of(args, device, dtype_name(dtype))
        plans.append(Run(name, argv, path, sorted(idle & extra_names), resume_action(path, settings, data)))
    if idle_everywhere:
        raise SweepError(f"-- {' '.join('--' + f for f in sorted(idle_everywhere))} would change nothing in any "
                         f"of {', '.join(runs)}: drop it")
    return plans


def cluster_checker(model):
    """A check of a run's cluster counts against the model's shapes, from its config alone; None when the config
    cannot be read here (a hub model that is not cached: main.py says so at once, before any work)."""
    from models import ModelError, empty_model, load_config
    from models.loader import hub_names

    from .pipeline import check_clusters

    try:
        model_config, adapter = load_config(model)
    except ModelError:
        if model in hub_names():
            return None
        raise
    skeleton = empty_model(model_config)
    return lambda cfg: check_clusters(skeleton, adapter, cfg)


def run_main(argv):
    """main.py in a subprocess, in this folder (relative paths keep their meaning), its output streamed; its exit
    code. The child has its own process group, so a Ctrl-C reaches it once, from here: on an interrupt (SIGINT, or
    SIGTERM, which would otherwise leave the child running on its own) it is told to stop (it saves what it
    finished) and the sweep stops too."""
    def terminate(signum, frame):
        raise KeyboardInterrupt

    # a shell starts background jobs with SIGINT ignored, and the child would inherit that: `kill -INT` must work
    signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, terminate)
    proc = subprocess.Popen([sys.executable, str(MAIN), *argv], process_group=0)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def say(line):
    print(f"sweep: {line}", flush=True)


def execute(plans, runner=None):
    """Run what is not complete yet; stop at the first failure with its exit code."""
    runner = runner or run_main
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


def sweep(model, runs, eval_flags, extra, out_dir, render_only=False, runner=None):
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
