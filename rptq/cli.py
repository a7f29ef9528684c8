"""What main.py and the scripts share on the command line: one-line errors, device choice, the guarded run."""
import argparse
import contextlib
import sys


class UsageError(Exception):
    """Bad input: one line on stderr (what is wrong, what to do) and exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _one_line_errors():
    """Every error class that carries a complete one-line message for the user."""
    from datautils import DataError
    from models import ModelError
    from quantize import GPTQError, GridError
    from rptq.artifact import ArtifactError
    from rptq.cluster import ClusterError
    from rptq.tasks import TaskError

    return UsageError, DataError, ModelError, GPTQError, GridError, ClusterError, TaskError, ArtifactError


def close_progress_bars():
    """Close every progress bar left open by an exception (a bar iterated in a for loop stays open until its
    iterator is collected, and one interrupted as it is drawn never closes): the line that follows starts on its
    own line instead of after a half-drawn bar."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        if getattr(bar, "sp", None) is not None and not hasattr(bar, "last_print_t") and not bar.disable:
            # interrupted inside its first drawing: close() takes it for never drawn and would not end its line
            bar.fp.write("\n")
        with contextlib.suppress(AttributeError):  # interrupted before its first drawing: nothing on screen
            bar.close()


def guarded(prog, body, interrupted="finished results are kept"):
    """body() -> exit code; a one-line error is printed as such with exit code 2, Ctrl-C with 130.
    interrupted: what is kept after a Ctrl-C, or a function that says it when asked."""
    try:
        return body()
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"{prog}: interrupted; {interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, UsageError) and not isinstance(e, _one_line_errors()):
            raise
        close_progress_bars()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def script_main(prog, build_parser, run, argv=None):
    """A script's main(): parse argv with build_parser(), then run(args) under guarded()."""
    args = build_parser().parse_args(argv)
    return guarded(prog, lambda: run(args))


def note(prog, line):
    print(f"{prog}: note: {line}", file=sys.stderr)


def pick_device(device=None, dtype=None):
    """(device, torch dtype) from the --device and --dtype values, refused with one line if unusable."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device '{device}' is not a torch device (use cpu, cuda or cuda:N)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} asked for but CUDA is not available here; use --device cpu")
        if (parsed.index or 0) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    dtype = dtype or ("float16" if parsed.type == "cuda" else "float32")
    return device, getattr(torch, dtype)


def dtype_name(dtype):
    return str(dtype).split(".")[-1]


def check_positions(config, name, seqlen):
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and seqlen > max_positions:
        raise UsageError(f"--seqlen {seqlen} is longer than {name}'s {max_positions} positions")
