"""RPTQ as a library: load a model (float, or saved quantized), quantize it with a QuantConfig, save it, evaluate it;
and run(), the whole of one run (load, calibrate, quantize, save, place, evaluate, record) from a RunConfig: the one
function main.py, the scripts, the benches and the tests call for it.

    import rptq
    record = rptq.run(rptq.RunConfig(model="smollm2-135m", wbits=4, abits=4, nsamples=4, eval_ppl=True,
                                     ppl_datasets="wikitext2", limit=2, output_path=None))
    record.ppl["wikitext2"].ppl

    m = rptq.load("smollm2-135m")
    rptq.quantize(m, rptq.calibration_windows(m, nsamples=4), rptq.QuantConfig(wbits=4, abits=4))
    rptq.perplexity(m, "wikitext2", limit=2).ppl
"""
import sys
import time
from dataclasses import dataclass

import torch

import datautils
from models import WeightStore, empty_model, load_config, load_lazily, load_model, weights_source

from . import artifact, memory, placement
from .base import Message, check_file
from .config import FLOAT_BITS, ConfigError, QuantConfig, RunConfig, check, check_paths
from .evaluate import perplexity as window_perplexity
from .evaluate import zero_shot
from .pipeline import check_clusters, quantize_model
from .placement import dtype_name, resolve_device
from .record import COMPLETE, RunRecord, output_file


@dataclass
class Loaded:
    """A model ready for the library's functions: its modules, tokenizer and family adapter; store (where each
    layer's weights wait: memory, the checkpoint's files, an offload folder); weights (where they came from, for
    records); manifest (a saved model's, else None)."""
    model: torch.nn.Module
    tokenizer: object
    adapter: object
    store: WeightStore
    weights: str
    manifest: dict | None = None

    @classmethod
    def of(cls, model, tokenizer=None):
        """A model already in memory (built or loaded by other code), for the library's functions."""
        from models import adapter_for

        return cls(model, tokenizer, adapter_for(model.config), WeightStore(model), "in memory")

    @property
    def quant(self):
        """The QuantConfig a saved model was quantized with (None for a float model)."""
        return QuantConfig.from_description(self.manifest["settings"]) if self.manifest else None


def load(name, dtype="float32", lazy=False, offload_folder=None, kernel="exact"):
    """A float model (a registered name, a hub alias or a local folder) or a saved quantized folder, on the CPU in
    eval mode. lazy: build it empty and read each decoder layer from the checkpoint when its turn comes (float
    models); offload_folder: where finished layers go (implies lazy). kernel: how a saved model's packed Linears
    run inputs of a few tokens (decoding; quantize.packed.KERNELS): "exact" gives the in-memory model's numbers,
    "fused" and "int4" decode faster and round differently."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if artifact.is_saved(name):  # packed weights: small enough to load whole
        model, tokenizer, adapter, manifest = artifact.load(name, dtype, kernel)
        return Loaded(model, tokenizer, adapter, WeightStore(model, folder=offload_folder),
                      artifact.weights_source(manifest, name), manifest)
    if lazy or offload_folder is not None:
        model, tokenizer, adapter, store = load_lazily(name, dtype, offload_folder)
    else:
        model, tokenizer, adapter = load_model(name, dtype)
        store = WeightStore(model)
    return Loaded(model, tokenizer, adapter, store, weights_source(name))


def calibration_windows(loaded, dataset="mix", nsamples=128, seed=2, seqlen=2048, data_dir=None, cache_dir=None):
    """[nsamples, seqlen] token ids to calibrate on (RPTQ-METHOD.md section 3), tokenized by the model's tokenizer."""
    return datautils.get_calib_windows(dataset, loaded.tokenizer, nsamples, seed, seqlen,
                                       datautils.resolve_data_dir(data_dir), cache_dir)


def quantize(loaded, windows, quant: QuantConfig, device="cpu", progress=True):
    """Quantize a loaded model in place with RPTQ on the calibration windows, one decoder layer at a time on device;
    returns the pipeline's QuantReport (seconds per stage, clusters per layer)."""
    return quantize_model(loaded.model, loaded.adapter, windows, quant, device, progress, loaded.store)


def save(loaded, folder, quant: QuantConfig, provenance=None, save_dtype=None):
    """Write a quantized model (in CPU memory) into folder, new or empty, as a Hugging Face model folder that
    from_pretrained loads once rptq is imported: packed weights, the quantizers, the tokenizer. provenance: where it
    came from (source model, calibration, versions), kept in its config; save_dtype: the float tensors' dtype (see
    rptq.artifact.save)."""
    artifact.prepare_folder(folder)
    artifact.save(loaded.model, loaded.tokenizer, folder, quant.describe(), provenance or {}, save_dtype)


def perplexity(loaded, dataset="wikitext2", seqlen=2048, limit=None, device="cpu", data_dir=None, cache_dir=None,
               progress=True):
    """The paper's perplexity on a test set (RPTQ-METHOD.md section 8): a PerplexityResult."""
    data_dir = datautils.resolve_data_dir(data_dir)
    windows = datautils.get_eval_windows(dataset, loaded.tokenizer, seqlen, data_dir, cache_dir)
    loaded.model.to(device)
    return window_perplexity(loaded.model, windows, device, limit,
                             desc=f"{datautils.eval_label(dataset, data_dir)} ppl", progress=progress)


def data_of(cfg: RunConfig, quantizes=None):
    """Which data a run reads (text and task files by path inside the data folder and sha256, or hub sets), for its
    record and for a resumed sweep to compare; DataError for a missing local file. quantizes: whether it calibrates
    (not when it loads a saved model)."""
    from .tasks import describe_task_data

    data_dir = datautils.resolve_data_dir(cfg.data_dir)
    quantizes = cfg.quantizes if quantizes is None else quantizes
    text = datautils.describe_sources(cfg.ppl_sets() if cfg.eval_ppl else (),
                                      cfg.calib_dataset if quantizes else None, data_dir)
    return text + (describe_task_data(cfg.task_names(), data_dir) if cfg.tasks else [])


def check_positions(model_config, name, seqlen):
    max_positions = getattr(model_config, "max_position_embeddings", None)
    if max_positions is not None and seqlen > max_positions:
        raise ConfigError("{seqlen} {value} is longer than {name}'s {n} positions", option="seqlen", value=seqlen,
                          name=name, n=max_positions)


def say(message):
    print(message, file=sys.stderr)


class Run:
    """One run of a RunConfig, stage by stage, its record rewritten after each (run() is Run(config).execute()).
    `written` is the record file once something finished is in it, `saving` the folder while the model is being saved
    (so that an interrupt can say what it left), both also when a stage is interrupted. log(Message): where notes and
    stage announcements go (stderr by default)."""

    def __init__(self, config: RunConfig, given=None, log=say, progress=True):
        self.config, self.given, self.log, self.progress = config, given, log, progress
        self.record, self.path, self.written, self.saving = None, None, None, None

    def execute(self) -> RunRecord:
        cfg = self.config
        manifest = artifact.read_manifest(cfg.model) if artifact.is_saved(cfg.model) else None
        for note in check(cfg, self.given, manifest and manifest["label"]):
            self.log(note)
        with placement.scratch_folder(cfg.offload_folder) as folder:
            return self._stages(manifest, folder)

    def _write(self):
        if self.path is not None:
            self.record.write(self.path)
            self.written = self.path

    def _stages(self, manifest, folder):
        cfg = self.config
        device, dtype = resolve_device(cfg.device, cfg.dtype)
        budgets = cfg.budgets()
        placement.check_budgets(budgets)
        data_dir = datautils.resolve_data_dir(cfg.data_dir)
        quantizes = cfg.quantizes and manifest is None
        datautils.check_sources(cfg.ppl_sets() if cfg.eval_ppl else (), cfg.calib_dataset if quantizes else None,
                                data_dir)
        check_paths(cfg)
        if cfg.save:
            artifact.prepare_folder(cfg.save)  # before calibration, so that a long run is not lost to a bad folder

        # everything that can fail is checked before the model loads: its config, task names and files, the output
        model_config, adapter = load_config(cfg.model)
        check_positions(model_config, cfg.model, cfg.seqlen)
        quant = QuantConfig.from_description(manifest["settings"]) if manifest else cfg.quant()
        if quantizes:
            check_clusters(empty_model(model_config), adapter, quant)
        task_plan = None
        if cfg.tasks:
            from .tasks import plan_tasks

            task_plan = plan_tasks(cfg.task_names(), data_dir, cfg.num_fewshot)
        if manifest:
            label, quantization, calibration = manifest["label"], manifest["settings"], manifest["calibration"]
        else:
            label = quant.label if quantizes else f"FP-{dtype_name(dtype)}"
            quantization, calibration = (quant.describe() if quantizes else None), cfg.calibration()
        if cfg.output_path is not None:
            self.path = output_file(cfg.output_path, cfg.model, label, {
                "quantization": quantization, "dtype": dtype_name(dtype), "seqlen": cfg.seqlen, "limit": cfg.limit,
                **calibration})
            check_file(self.path, "output_path")

        lazy = cfg.offload_folder is not None or cfg.device_map is not None
        if lazy:
            memory.map_large_allocations()
        peaks = memory.PeakMemory()
        t0 = time.perf_counter()
        with peaks.stage("load"):
            loaded = load(cfg.model, dtype, lazy and not manifest, folder)
        device_map = (placement.plan(loaded.model, loaded.adapter, cfg.device_map, budgets, device, folder)
                      if cfg.device_map else None)
        data = data_of(cfg, quantizes)
        rec = self.record = RunRecord(model=cfg.model, weights=loaded.weights, family=loaded.adapter.family,
                                      label=label, settings=cfg.settings(device, dtype_name(dtype)),
                                      quantization=quantization, data=data)
        if manifest:
            rec.saved_model = artifact.saved_model_record(manifest, cfg.model)
        rec.timings_s["load"] = time.perf_counter() - t0
        rec.peak_memory_mb = peaks.by_stage  # filled as each stage ends
        rec.placement = {"loading": "lazy" if loaded.store.lazy else "whole", "device_map": device_map}
        ds_kwargs = {"data_dir": data_dir, "seqlen": cfg.seqlen, "cache_dir": cfg.cache_dir}

        if quantizes:
            if quant.wbits >= FLOAT_BITS and quant.abits >= FLOAT_BITS:
                self.log(Message("{label}: calibrating, clustering and reordering R{points} with every quantizer off",
                                 label=label, points=",".join(quant.points) or " none"))
            t = time.perf_counter()
            with peaks.stage("calibration_data"):
                calib = datautils.get_calib_windows(cfg.calib_dataset, loaded.tokenizer, cfg.nsamples, cfg.seed,
                                                    **ds_kwargs)
            rec.timings_s["calibration_data"] = time.perf_counter() - t
            with peaks.stage("quantization"):
                report = quantize(loaded, calib, quant, device, self.progress)
            rec.timings_s.update(report.timings_s)
            rec.clusters_per_layer = report.clusters_per_layer
            if cfg.save:
                t = time.perf_counter()
                self.saving = cfg.save
                artifact.save(loaded.model, loaded.tokenizer, cfg.save, quantization, {
                    "source_model": cfg.model, "weights_source": rec.weights,
                    "calibration": {**calibration, "seqlen": cfg.seqlen},
                    "calibration_data": [d for d in rec.data if d.get("purpose") != "eval"],
                    "clusters_per_layer": rec.clusters_per_layer, "versions": rec.versions},
                    getattr(torch, cfg.save_dtype) if cfg.save_dtype else None)
                self.saving = None
                rec.timings_s["save"] = time.perf_counter() - t
                rec.saved_to = cfg.save
            self._write()
        t = time.perf_counter()
        with peaks.stage("placement"):
            main_device = placement.place(loaded.model, loaded.store, device, device_map)
        rec.timings_s["placement"] = time.perf_counter() - t
        rec.placement["main_device"] = main_device

        if cfg.eval_ppl:
            for name in cfg.ppl_sets():
                name_out = datautils.eval_label(name, data_dir)
                with peaks.stage(f"eval_{name_out}"):
                    windows = datautils.get_eval_windows(name, loaded.tokenizer, **ds_kwargs)
                    res = window_perplexity(loaded.model, windows, main_device, cfg.limit, desc=f"{name_out} ppl",
                                            progress=self.progress)
                rec.ppl[name_out] = res
                rec.timings_s[f"eval_{name_out}"] = res.seconds
                self._write()
        if cfg.tasks:
            with peaks.stage("zero_shot"):
                rec.zero_shot = zero_shot(loaded.model, loaded.tokenizer, task_plan, cfg.num_fewshot, cfg.limit,
                                          cfg.batch_size, main_device)
            rec.timings_s["zero_shot"] = rec.zero_shot["seconds"]
        rec.status = COMPLETE
        self._write()
        return rec


def run(config: RunConfig, given=None, log=say, progress=True) -> RunRecord:
    """One run of a RunConfig (what main.py does for one command line); its RunRecord, also written to
    config.output_path when that is set. given: the settings set on purpose, for the notes on those that change
    nothing (None: those that differ from their defaults)."""
    return Run(config, given, log, progress).execute()
