"""Evaluation: the paper's perplexity protocol (RPTQ-METHOD.md section 8) and zero-shot tasks through
lm-evaluation-harness."""
import contextlib
import logging
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .record import PerplexityResult, ppl_interval
from .tasks import TaskError

METRICS = ("acc", "acc_norm", "perplexity")


@torch.no_grad()
def perplexity(model, windows, device="cpu", limit=None, desc="ppl", progress=True):
    """exp of the mean token NLL over the windows run ([n, seqlen] token ids, each scored on its own), with each
    window's NLL and a 95% interval.

    With limit=N only the first N windows run and the mean is over those N, not the full count.
    """
    n = len(windows) if limit is None else min(limit, len(windows))
    nlls = []
    start = time.perf_counter()
    for i in tqdm(range(n), desc=desc, disable=not progress):
        ids = windows[i:i + 1].to(device)
        logits = model(ids, use_cache=False).logits
        nlls.append(F.cross_entropy(logits[0, :-1].float(), ids[0, 1:]).item())
    seconds = time.perf_counter() - start
    nll = sum(nlls) / n
    sem, interval = ppl_interval(nlls)
    return PerplexityResult(ppl=math.exp(nll), ppl_ci95=interval, nll=nll, nll_sem=sem, windows=n,
                            windows_total=len(windows), seqlen=windows.shape[1], seconds=seconds,
                            seconds_per_window=seconds / n, nlls=nlls)


# Warnings that are routine here (a model object, task configs built in code, num_fewshot always passed, stock YAMLs
# that leave a metric's aggregation to the default): dropped so that the harness's other warnings stand out.
_ROUTINE_WARNINGS = ("`pretrained` model kwarg is not of type", "Passed an already-initialized model",
                     "Custom kwargs can be passed", "Overwriting default num_fewshot", "is defined, but")
_HARNESS_LOGGERS = ("lm_eval.evaluator", "lm_eval.api.task", "lm_eval.models.huggingface")


def _not_routine(record):
    return not any(text in record.getMessage() for text in _ROUTINE_WARNINGS)


@contextlib.contextmanager
def _quiet_harness():
    """The harness logs every step at INFO: warnings only, less the routine ones."""
    top = logging.getLogger("lm_eval")
    level = top.level
    top.setLevel(logging.WARNING)
    for name in _HARNESS_LOGGERS:
        logging.getLogger(name).addFilter(_not_routine)
    try:
        yield
    finally:
        top.setLevel(level)
        for name in _HARNESS_LOGGERS:
            logging.getLogger(name).removeFilter(_not_routine)


def _metrics(harness_metrics):
    """acc, acc_norm, perplexity and their standard errors, keyed without the harness's filter suffix (",none")."""
    out = {}
    for key, value in harness_metrics.items():
        name = key.split(",")[0]
        if name.removesuffix("_stderr") in METRICS and isinstance(value, float):
            out[name] = value
    return out


def zero_shot(model, tokenizer, plan, num_fewshot=0, limit=None, batch_size=1, device="cpu"):
    """Metrics (accuracies 0-1) per task from lm-evaluation-harness on the model in memory (or dispatched by
    accelerate: device is then its main device), with the harness version and batch size.
    plan: rptq.tasks.plan_tasks(names, data_dir), made before the model loads (tasks with local files run from them,
    the others from the hub)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    planned, manager = plan
    start = time.perf_counter()
    with _quiet_harness():
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
        lm._device = torch.device(device)  # it takes the first parameter's device, "meta" if that one is offloaded
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=[p.spec for p in planned], task_manager=manager,
                                          num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, device=device,
                                          log_samples=False)
        except Exception as e:  # the harness raises many kinds; the user needs one line
            raise TaskError("lm-evaluation-harness failed on {names}: {kind}: {reason}",
                            names=",".join(p.name for p in planned), kind=type(e).__name__,
                            reason=str(e).splitlines()[0] if str(e) else "") from None
    asked = {p.harness_name: p for p in planned}
    results = {}
    for harness_name, metrics in out["results"].items():
        if harness_name in out.get("groups", {}):
            continue  # a group's own line aggregates its tasks, which are listed themselves
        plan = asked.get(harness_name)
        config, counts = out["configs"][harness_name], out["n-samples"][harness_name]
        results[plan.name if plan else harness_name] = {
            "label": plan.label if plan else harness_name,
            "source": plan.source if plan and plan.source else _stock_source(config),
            **_metrics(metrics), "examples": counts["effective"], "examples_total": counts["original"],
            "task_version": out["versions"][harness_name]}
    return {"results": results, "harness_version": lm_eval.__version__, "batch_size": batch_size,
            "num_fewshot": num_fewshot, "limit": limit, "seconds": time.perf_counter() - start}


def _stock_source(config):
    return {"kind": "stock", "dataset": config.get("dataset_path"), "dataset_name": config.get("dataset_name"),
            "split": config.get("test_split") or config.get("validation_split")}
