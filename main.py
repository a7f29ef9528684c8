"""RPTQ command line: load a model, quantize it with RPTQ, evaluate perplexity and zero-shot tasks.

Wiring only: the flags and their checks are in rptq/config.py, the method in rptq/, the numerics in quantize/,
the families in models/.
"""
import sys
import time

import datautils
from rptq import artifact, config, memory, placement, record
from rptq.cli import check_positions, dtype_name, guarded, note, pick_device

PROG = "main.py"


def run(args, given=frozenset(), written=None):
    """One run; `written` collects the result file once something finished is in it."""
    written = [] if written is None else written
    manifest = artifact.read_manifest(args.model) if artifact.is_saved(args.model) else None  # a saved model
    for line in config.check_args(args, given, manifest and manifest["label"]):
        note(PROG, line)
    with placement.scratch_folder(args.offload_folder) as folder:
        return quantize_and_evaluate(args, folder, manifest, written)


def quantize_and_evaluate(args, folder, manifest, written):
    device, dtype = pick_device(args.device, args.dtype)
    max_memory = config.max_memory(args)
    placement.check_budgets(max_memory)
    data_dir = datautils.resolve_data_dir(args.data_dir)
    run_rptq = config.runs_rptq(args)
    datautils.check_sources(config.ppl_sets(args) if args.eval_ppl else (),
                            args.calib_dataset if run_rptq else None, data_dir)
    if args.save:
        artifact.prepare_folder(args.save)  # before calibration, so that a long run is not lost to a bad folder

    from models import WeightStore, empty_model, load_config, load_lazily, load_model, weights_source
    from rptq.evaluate import perplexity, zero_shot
    from rptq.files import check_writable
    from rptq.pipeline import check_clusters, quantize_model
    from rptq.report import format_table, interval_text
    from rptq.tasks import plan_tasks

    # everything that can fail is checked before the model loads: its config, task names and files, the output
    model_config, adapter = artifact.architecture(manifest) if manifest else load_config(args.model)
    check_positions(model_config, args.model, args.seqlen)
    cfg = config.rptq_config(args, device)
    if run_rptq:
        check_clusters(empty_model(model_config), adapter, cfg)
    task_plan = plan_tasks(config.task_names(args), data_dir, args.num_fewshot) if args.tasks else None
    if manifest:
        label, quantization, calibration = manifest["label"], manifest["settings"], manifest["calibration"]
    else:
        label = cfg.label if run_rptq else f"FP-{dtype_name(dtype)}"
        quantization = cfg.describe() if run_rptq else None
        calibration = {k: getattr(args, k) for k in ("calib_dataset", "nsamples", "seed")} if run_rptq else {}
    out = record.output_file(args, label, {"quantization": quantization, "dtype": dtype_name(dtype),
                                           "seqlen": args.seqlen, "limit": args.limit, **calibration})
    check_writable(out)

    lazy = args.offload_folder is not None or args.device_map is not None
    if lazy:
        memory.map_large_allocations()
    peaks = memory.PeakMemory()
    t0 = time.perf_counter()
    with peaks.stage("load"):
        if manifest:  # packed weights: small enough to load whole
            model, tokenizer, adapter, manifest = artifact.load(args.model, dtype)
            store = WeightStore(model, folder=folder)
        elif lazy:
            model, tokenizer, adapter, store = load_lazily(args.model, dtype, folder)
        else:
            model, tokenizer, adapter = load_model(args.model, dtype)
            store = WeightStore(model)
    weights = artifact.weights_source(manifest, args.model) if manifest else weights_source(args.model)
    device_map = (placement.plan(model, adapter, args.device_map, max_memory, device, folder) if args.device_map
                  else None)
    rec = record.new_record(args.model, weights, adapter.family, label,
                            record.settings_of(args, device, dtype_name(dtype)), quantization, config.run_data(args))
    if manifest:
        rec["saved_model"] = artifact.saved_model_record(manifest, args.model)
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
        if args.save:
            t = time.perf_counter()
            artifact.save(model, tokenizer, args.save, quantization, {
                "source_model": args.model, "weights_source": rec["weights"],
                "calibration": {**calibration, "seqlen": args.seqlen},
                "calibration_data": [d for d in rec["data"] if d.get("purpose") != "eval"],
                "clusters_per_layer": rec["clusters_per_layer"], "versions": rec["versions"]})
            rec["timings_s"]["save"] = time.perf_counter() - t
            rec["saved_to"] = args.save
        record.write(out, rec)
        written.append(out)
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
            written.append(out)
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
    if manifest:
        mode = f"{config.RPTQConfig.from_description(quantization).mode_line()} loaded from a saved model"
    else:
        mode = cfg.mode_line() if run_rptq else ""
    print(f"\n{args.model}  {label}  {mode}")
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
    written = []

    def kept():
        return (f"what finished is in {written[-1]} (status: running)" if written
                else "nothing had finished, no results file was written")

    return guarded(PROG, lambda: run(args, config.given_flags(argv), written), kept)


if __name__ == "__main__":
    sys.exit(main())
