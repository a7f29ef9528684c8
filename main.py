"""RPTQ command line: load a model, quantize it with RPTQ, evaluate perplexity and zero-shot tasks.

Argument parsing and printing only: the flags are declared in rptq/config.py, the run is rptq.run (rptq/api.py).
"""
import os
import signal
import sys

from rptq.cli import build_parser, given_flags, guarded, note
from rptq.config import RunConfig, check_paths, check_values


def print_record(record):
    """The results table of a finished run on stdout."""
    from rptq.config import QuantConfig
    from rptq.report import format_table, interval_text

    mode = ""
    if record.quantization:
        mode = QuantConfig.from_description(record.quantization).mode_line()
        mode += " loaded from a saved model" if record.saved_model else ""
    print(f"\n{record.model}  {record.label}  {mode}")
    if record.ppl:
        print(format_table(["eval", "ppl", "95% interval", "windows", "s/window"], [
            [name, f"{r.ppl:.2f}", interval_text(r.ppl_ci95), f"{r.windows}/{r.windows_total}",
             f"{r.seconds_per_window:.2f}"] for name, r in record.ppl.items()]))
    if record.zero_shot:
        zs = record.zero_shot
        print(format_table(["task", "acc %", "acc_norm %", "ppl", "examples"], [
            [task["label"], *(f"{100 * task[m]:.2f}" if m in task else "" for m in ("acc", "acc_norm")),
             f"{task['perplexity']:.2f}" if "perplexity" in task else "",
             f"{task['examples']}/{task['examples_total']}"] for task in zs["results"].values()]))
        print(f"lm-evaluation-harness {zs['harness_version']}, {zs['num_fewshot']}-shot, batch size {zs['batch_size']}")


def main(argv=None, prog=None):
    argv = sys.argv[1:] if argv is None else argv
    prog = prog or os.path.basename(sys.argv[0]) or "main.py"
    args = build_parser(prog, __doc__.splitlines()[0]).parse_args(argv)
    config = RunConfig(**vars(args))
    running = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does: what finished stays
    def body():
        check_values(config)  # before the heavy imports below
        check_paths(config)
        from rptq.api import Run

        running.append(Run(config, given_flags(argv), log=lambda message: note(prog, message)))
        record = running[0].execute()
        print_record(record)
        print(f"results: {running[0].written}")
        return 0

    def kept():
        run = running[0] if running else None
        said = [f"what finished is in {run.written} (status: running)" if run and run.written
                else "nothing had finished, no results file was written"]
        if run and run.saving:
            said.append(f"the model was being saved: nothing of it was left in {run.saving}")
        return "; ".join(said)

    return guarded(prog, body, kept)


if __name__ == "__main__":
    sys.exit(main())
