"""Evaluation: the paper's perplexity protocol (RPTQ-METHOD.md section 8) and zero-shot tasks through
lm-evaluation-harness."""
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm


@torch.no_grad()
def perplexity(model, windows, device="cpu", limit=None, desc="ppl", progress=True):
    """exp of the mean token NLL over the windows run ([n, seqlen] token ids, each scored on its own).

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
    return {"ppl": math.exp(nll), "nll": nll, "windows": n, "windows_total": len(windows),
            "seqlen": windows.shape[1], "seconds": seconds, "seconds_per_window": seconds / n}


class TaskError(RuntimeError):
    """Zero-shot evaluation could not run (task data unreachable, unknown task)."""


def zero_shot(model, tokenizer, tasks, num_fewshot=0, limit=None, batch_size=1, device="cpu"):
    """Accuracies (0-1) per task from lm-evaluation-harness, with the harness version and batch size."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                      batch_size=batch_size, device=device)
    except Exception as e:  # the harness raises many kinds; the user needs one line
        raise TaskError(f"lm-evaluation-harness failed on {','.join(tasks)}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    results = {}
    for task, metrics in out["results"].items():
        results[task] = {k.split(",")[0]: v for k, v in metrics.items()
                         if k.split(",")[0] in ("acc", "acc_norm", "perplexity") and isinstance(v, float)}
    return {"results": results, "harness_version": lm_eval.__version__, "batch_size": batch_size,
            "num_fewshot": num_fewshot, "limit": limit}
