"""RPTQ command line: load a model, quantize it with RPTQ, evaluate perplexity and zero-shot tasks.

Wiring only: the flags and their checks are in rptq/config.py, the method in rptq/, the numerics in quantize/,
the families in models/.
"""
import sys
import time

import datautils
from rptq import config, memory, placement, record
from rptq.cli import check_positions, dtype_name, guarded, note, pick_device

PROG = "main.py"


def run(args, given=frozenset()):
    for line in config.check_args(args, given):
        note(PROG, line)
    with placement.scratch_folder(args.offload_folder) as folder:
        return quantize_and_evaluate(args, folder)


def quantize_and_evaluate(args, folder):
    device, dtype = pick_device(args.device, args.dtype)
    max_memory = config.max_memory(args)
    placement.check_budgets(max_memory)
    data_dir = datautils.resolve_data_dir(args.data_dir)
    run_rptq = config.runs_rptq(args)
    datautils.check_sources(config.ppl_sets(args) if args.eval_ppl else (),
                            args.calib_dataset if run_rptq else None, data_dir)

    from models import WeightStore, load_lazily, load_model, weights_source
    from rptq.evaluate import perplexity, zero_shot
    from rptq.pipeline import check_clusters, quantize_model
    from rptq.report import format_table, interval_text
    from rptq.tasks import plan_tasks

    # unknown task names and unreadable task files fail before the model loads
    task_plan = plan_tasks(config.task_names(args), data_dir, args.num_fewshot) if args.tasks else None
    cfg = config.rptq_config(args, device)
    label = cfg.label if run_rptq else f"FP-{dtype_name(dtype)}"
    quantization = cfg.describe() if run_rptq else None
    calibration = {k: getattr(args, k) for k in ("calib_dataset", "nsamples", "seed")} if run_rptq else {}
    out = record.output_file(args, label, {"quantization": quantization, "dtype": dtype_name(dtype),
                                           "seqlen": args.seqlen, "limit": args.limit, **calibration})

    lazy = args.offload_folder is not None or args.device_map is not None
    if lazy:
        memory.map_large_allocations()
    peaks = memory.PeakMemory()
    t0 = time.perf_counter()
    with peaks.stage("load"):
        if lazy:
            model, tokenizer, adapter, store = load_lazily(args.model, dtype, folder)
        else:
            model, tokenizer, adapter = load_model(args.model, dtype)
            store = WeightStore(model)
    if lazy and not store.lazy:
        note(PROG, f"{args.model} has no safetensors or .bin checkpoint to read layer by layer: loaded whole")
    check_positions(model, args.model, args.seqlen)
    if run_rptq:
        check_clusters(model, adapter, cfg)
    device_map = (placement.plan(model, adapter, args.device_map, max_memory, device, folder) if args.device_map
                  else None)
    rec = record.new_record(args.model, weights_source(args.model), adapter.family, label,
                            record.settings_of(args, device, dtype_name(dtype)), quantization, config.run_data(args))
    rec["timings_s"]["load"] = time.perf_counter() - t0
    rec["peak_memory_mb"] = peaks.by_stage  # filled as each stage ends
    rec["placement"] = {"loading": "lazy" if store.lazy else "whole", "device_map": device_map}
    ds_kwargs = {"data_dir": data_dir, "seqlen": args.seqlen, "cache_dir": args.cache_dir}

    if run_rptq:
        if args.wbits >= config.FLOAT_BITS and args.abits >= config.FLOAT_BITS:
            print(f"{label}: calibrating, clustering and reordering R{','.join(cfg.reorder) or ' none'} "
                  "with every quantizer off", file=sys.stderr)
        t = time.perf_counter()
        with peaks.stage("calibration_data"):
            calib = datautils.get_calib_windows(args.calib_dataset, tokenizer, args.nsamples, args.seed, **ds_kwargs)
        rec["timings_s"]["calibration_data"] = time.perf_counter() - t
        with peaks.stage("quantization"):
            report = quantize_model(model, adapter, calib, cfg, store=store)
        rec["timings_s"].update(report["timings_s"])
        rec["clusters_per_layer"] = report["clusters_per_layer"]
        record.write(out, rec)
    t = time.perf_counter()
    with peaks.stage("placement"):
        main_device = placement.place(model, store, device, device_map)
    rec["timings_s"]["placement"] = time.perf_counter() - t
    rec["placement"]["main_device"] = main_device

    rows = []
    if args.eval_ppl:
        for name in config.ppl_sets(args):
            name_out = datautils.eval_label(name, data_dir)
            with peaks.stage(f"eval_{name_out}"):
                windows = datautils.get_eval_windows(name, tokenizer, **ds_kwargs)
                res = perplexity(model, windows, main_device, args.limit, desc=f"{name_out} ppl")
            rec["ppl"][name_out] = res
            rec["timings_s"][f"eval_{name_out}"] = res["seconds"]
            record.write(out, rec)
            rows.append([name_out, f"{res['ppl']:.2f}", interval_text(res["ppl_ci95"]),
                         f"{res['windows']}/{res['windows_total']}", f"{res['seconds_per_window']:.2f}"])
    task_rows = []
    if args.tasks:
        with peaks.stage("zero_shot"):
            zs = zero_shot(model, tokenizer, task_plan, args.num_fewshot, args.limit, args.batch_size, main_device)
        rec["zero_shot"] = zs
        rec["timings_s"]["zero_shot"] = zs["seconds"]
        for task in zs["results"].values():
            percents = [f"{100 * task[m]:.2f}" if m in task else "" for m in ("acc", "acc_norm")]
            task_rows.append([task["label"], *percents, f"{task['perplexity']:.2f}" if "perplexity" in task else "",
                              f"{task['examples']}/{task['examples_total']}"])
    rec["status"] = record.COMPLETE
    record.write(out, rec)
    print(f"\n{args.model}  {label}  {cfg.mode_line() if run_rptq else ''}")
    if rows:
        print(format_table(["eval", "ppl", "95% interval", "windows", "s/window"], rows))
    if task_rows:
        print(format_table(["task", "acc %", "acc_norm %", "ppl", "examples"], task_rows))
        print(f"lm-evaluation-harness {zs['harness_version']}, {zs['num_fewshot']}-shot, batch size {zs['batch_size']}")
    print(f"results: {out}")
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = config.build_parser(PROG, __doc__.splitlines()[0]).parse_args(argv)
    return guarded(PROG, lambda: run(args, config.given_flags(argv)),
                   "results finished so far are in the JSON file, if any finished")


if __name__ == "__main__":
    sys.exit(main())
