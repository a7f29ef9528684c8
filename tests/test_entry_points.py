"""Every entry point (main.py and the scripts) checks each place it will write before any slow work: the arguments
that name such places are read from the parsers themselves, and each is given a file where a folder is expected (or a
folder where a file is), a place with no permission (/sys, where even root may not write), and a read-only filesystem
where this machine can mount one. Each case: exit code 2 and one line naming the argument, no traceback."""
import importlib
import shutil
import subprocess
import sys

import pytest

from rptq.cli import FilePath, build_parser, path_arguments

# entry point -> (its module, the arguments it needs besides the path: nothing else is wrong)
ENTRY_POINTS = {
    "main.py": ("main", ["m", "--eval_ppl", "--wbits", "4", "--device_map", "auto"]),
    "scripts/sweep.py": ("scripts.sweep", ["m", "--table", "ppl"]),
    "scripts/cluster_ablation.py": ("scripts.cluster_ablation", ["m"]),
    "scripts/channel_ranges.py": ("scripts.channel_ranges", ["m"]),
    "scripts/prob_grid.py": ("scripts.prob_grid", ["m"]),
    "scripts/bos_windows.py": ("scripts.bos_windows", ["m"]),
    "scripts/measure_memory.py": ("scripts.measure_memory", []),
    "scripts/memory_table.py": ("scripts.memory_table", ["--model", "opt-1.3b"]),
    "scripts/make_random_opt.py": ("scripts.make_random_opt", []),
    "scripts/compare_reference.py": ("scripts.compare_reference", []),
}


def parser_of(module):
    return build_parser() if module == "main" else importlib.import_module(module).build_parser()


def cases():
    for script, (module, base) in ENTRY_POINTS.items():
        for action in path_arguments(parser_of(module)):
            yield pytest.param(script, base, action, id=f"{script}:{action.option_strings[:1] or [action.dest]}")


def test_every_entry_point_names_places_it_writes():
    """The enumeration below is the parsers' own: a script whose outputs were untyped would drop out of it."""
    found = {script: len(path_arguments(parser_of(module))) for script, (module, _) in ENTRY_POINTS.items()}
    assert all(found.values()), found
    assert found["main.py"] == 4 and found["scripts/sweep.py"] == 3  # cache, output, save, offload; out, md, slurm


def _argv(base, action, value):
    return [*base, *(action.option_strings[:1]), value] if action.option_strings else [*base, value]


@pytest.mark.parametrize("script, base, action", list(cases()))
def test_a_path_argument_that_cannot_take_it_is_one_line(run_cli, tmp_path, script, base, action):
    (tmp_path / "file").write_text("")
    wants_file = action.type is FilePath or action.dest == "output_path"
    label = action.option_strings[0] if action.option_strings else action.dest.upper()
    wrong_kind = str(tmp_path) if wants_file else str(tmp_path / "file")
    wrong_kind = wrong_kind if action.dest != "output_path" else str(tmp_path / "file" / "r.json")
    for value, reason in [(wrong_kind, "file" if not wants_file else "folder"),
                          ("/sys/rptq-test/x.json" if wants_file else "/sys/rptq-test/x", "no permission")]:
        proc = run_cli(script, *_argv(base, action, value), timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
        assert (label in lines[0] or label.lstrip("-").upper() in lines[0]) and reason in lines[0], lines[0]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare here")
def test_a_read_only_filesystem_is_one_line(root, tmp_path):
    """main.py's output and save folder, and the sweep's folder, on a read-only mount of a namespace of its own."""
    runs = [["main.py", "m", "--eval_ppl", "--output_path", "/mnt/ro/run.json"],
            ["main.py", "m", "--wbits", "4", "--save", "/mnt/ro/saved"],
            ["scripts/sweep.py", "m", "--table", "ppl", "--out", "/mnt/ro/sweep"]]
    for argv in runs:
        command = f"mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro && exec {sys.executable} {root / argv[0]} " \
                  + " ".join(argv[1:])
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=120)
        if "mount" in proc.stderr and proc.returncode != 2:
            pytest.skip(f"no read-only mount here: {proc.stderr.strip()}")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "a read-only filesystem" in lines[0], proc.stderr[-1500:]
