"""RPTQ as a library (reorder-based post-training quantization of LLMs, Yuan et al. 2023).

    import rptq
    record = rptq.run(rptq.RunConfig(model="smollm2-135m", wbits=4, abits=4, nsamples=4, eval_ppl=True,
                                     ppl_datasets="wikitext2", limit=2, output_path=None))

The names below are imported when first used, so that `import rptq` (and a command line's argument checks) stay
quick: see rptq/api.py for the functions and rptq/config.py for the settings.
"""
import importlib

_API = {
    "RunConfig": "config", "QuantConfig": "config", "ConfigError": "config",
    "RPTQError": "base",
    "RunRecord": "record", "PerplexityResult": "record",
    "Loaded": "api", "load": "api", "calibration_windows": "api", "quantize": "api", "save": "api",
    "perplexity": "api", "run": "api", "Run": "api",
}

__all__ = list(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'rptq' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
