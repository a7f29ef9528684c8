"""The command line over the library: main.py's parser, built from the settings' declarations (rptq/config.py), and
what main.py and the scripts share: one-line errors naming flags, exit codes, the guarded run.

Only the command line imports this module; the library's errors name settings, and here they become flags.
"""
import argparse
import contextlib
import sys
import typing

from .base import Message, RPTQError, check_file, check_folder
from .config import GROUPS, RunConfig, options


class FilePath(str):
    """A file a command writes (an argparse type): check_paths checks it before any slow work."""


class FolderPath(str):
    """A folder a command writes into (an argparse type), checked as FilePath is."""


class OutputPath(str):
    """A .json file, or a folder that gets one (main.py's --output_path)."""


PATH_TYPES = {"file": FilePath, "folder": FolderPath, "output": OutputPath}


def path_arguments(parser):
    """The arguments of a command line that name places it writes (typed FilePath, FolderPath or OutputPath)."""
    return [action for action in parser._actions if action.type in PATH_TYPES.values()]


def check_paths(parser, args):
    """Every place a script's arguments name for writing, checked now: one line for a file where a folder is expected
    or the reverse, no permission, a read-only filesystem."""
    for action in path_arguments(parser):
        value = getattr(args, action.dest)
        label = action.option_strings[0] if action.option_strings else action.dest.upper()
        if value is None:
            continue
        if action.type is FilePath or (action.type is OutputPath and value.endswith(".json")):
            check_file(value, what=label)
        else:
            check_folder(value, what=label)


class UsageError(RPTQError):
    """Bad input to a script's own flags: one line on stderr (what is wrong, what to do) and exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def flag(name):
    """How a command line names a setting: the positional model as MODEL, the others as --name."""
    return "MODEL" if name == "model" else f"--{name}"


def render(message):
    """An error or a note (a base.Message) as a command line says it: settings named by their flags."""
    return message.render(flag)


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show (not for unset, off or empty settings)."""

    def _get_help_string(self, action):
        if action.default in (None, False, "") or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _parse_type(annotation):
    """The type argparse converts a setting's value to: int from `int | None` ..."""
    types = [t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)]
    return types[0]


def build_parser(prog="main.py", description=None):
    """main.py's flags, one per setting of RunConfig, named as the reference's so that its scripts run here."""
    p = OneLineParser(prog=prog, description=description, allow_abbrev=False, formatter_class=_DefaultsFormatter)
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    annotations = typing.get_type_hints(RunConfig)
    for name, opt, default in options(RunConfig):
        help_text = Message(opt.help, option=name).render(flag).replace("%", "%%")
        if name == "model":
            p.add_argument("model", help=help_text)
            continue
        kind = PATH_TYPES.get(opt.path) or _parse_type(annotations[name])
        kw = {"action": "store_true"} if kind is bool else {"type": kind, "choices": opt.choices,
                                                            "metavar": opt.metavar}
        groups[opt.group].add_argument(flag(name), default=default, help=help_text, **kw)
    return p


def given_flags(argv):
    """The settings named on a command line (--flag or --flag=value), in their order."""
    return list(dict.fromkeys(tok[2:].split("=")[0] for tok in argv if tok.startswith("--")))


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
    """body() -> exit code; a library error (RPTQError) is printed as one line naming flags, with exit code 2, Ctrl-C
    with 130. interrupted: what is kept after a Ctrl-C, or a function that says it when asked."""
    try:
        return body()
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"{prog}: interrupted; {interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
        return 130
    except RPTQError as e:
        close_progress_bars()
        print(f"{prog}: error: {render(e)}", file=sys.stderr)
        return 2


def script_main(prog, build_parser, run, argv=None):
    """A script's main(): parse argv with build_parser(), check the paths it will write, then run(args), all under
    guarded()."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def body():
        check_paths(parser, args)
        return run(args)

    return guarded(prog, body)


def window_script_parser(prog, doc, limit, limit_help):
    """The parser of a script that evaluates a model on the first --limit test windows of one data set (prob_grid.py,
    bos_windows.py): the model, the data, the device and a JSON --output; the script adds its own flags."""
    import datautils
    from models import model_names

    from .config import DTYPES

    p = OneLineParser(prog=prog, description=doc.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help=f"one of {', '.join(model_names())}, or a local model folder")
    p.add_argument("--dataset", choices=datautils.EVAL_SETS, default="wikitext2")
    p.add_argument("--limit", type=int, default=limit, help=limit_help)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--data_dir", default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--output", type=FilePath, default=None, help="JSON file, written atomically")
    return p


def load_with_windows(args):
    """For a window_script_parser script: check the data, load args.model onto its device and cut its test windows
    (all of them: the script runs the first --limit). Returns (Loaded, windows, device, the data set's label, the
    sources as a record names them)."""
    import datautils

    from . import api
    from .placement import resolve_device

    device, dtype = resolve_device(args.device, args.dtype)
    data_dir = datautils.resolve_data_dir(args.data_dir)
    datautils.check_sources([args.dataset], None, data_dir)
    loaded = api.load(args.model, dtype)
    api.check_positions(loaded.model.config, args.model, args.seqlen)
    loaded.model.to(device)
    windows = datautils.get_eval_windows(args.dataset, loaded.tokenizer, args.seqlen, data_dir, args.cache_dir)
    return (loaded, windows, device, datautils.eval_label(args.dataset, data_dir),
            datautils.describe_sources([args.dataset], None, data_dir))


def write_window_results(args, label, sources, results, **extra):
    """A window_script_parser script's JSON at --output (if given): its settings, data, each PerplexityResult by
    name, the library versions, and what else it says (extra)."""
    if not args.output:
        return
    import dataclasses
    import json

    from . import record
    from .base import write_text

    write_text(args.output, json.dumps({
        "model": args.model, "dataset": label, "settings": vars(args), **extra, "data": sources,
        "ppl": {name: dataclasses.asdict(r) for name, r in results.items()}, "versions": record.versions()},
        indent=2) + "\n")


def note(prog, message):
    print(f"{prog}: note: {render(message) if isinstance(message, Message) else message}", file=sys.stderr)
