"""RPTQ as a library (reorder-based post-training quantization of LLMs, Yuan et al. 2023).

    import rptq
    record = rptq.run(rptq.RunConfig(model="smollm2-135m", wbits=4, abits=4, nsamples=4, eval_ppl=True,
                                     ppl_datasets="wikitext2", limit=2, output_path=None))

The names below are imported when first used, so that `import rptq` (and a command line's argument checks) stay
quick: see rptq/api.py for the functions and rptq/config.py for the settings. Importing rptq also registers RPTQ as
a quantization method of transformers (rptq/hf.py), so that `AutoModelForCausalLM.from_pretrained(DIR)` loads a
folder written by `main.py --save`; the registration happens when transformers loads its quantizer registry, or at
once if it already has.
"""
import importlib
import importlib.abc
import importlib.util
import sys

_API = {
    "RunConfig": "config", "QuantConfig": "config", "ConfigError": "config",
    "RPTQError": "base",
    "RunRecord": "record", "PerplexityResult": "record",
    "Loaded": "api", "load": "api", "calibration_windows": "api", "quantize": "api", "save": "api",
    "perplexity": "api", "run": "api", "Run": "api",
}
_REGISTRY = "transformers.quantizers.auto"  # where transformers keeps its quantization methods

__all__ = list(_API)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'rptq' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)


def _register_with_transformers():
    importlib.import_module(".hf", __name__)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `then` right after module `name` is first executed, then steps aside."""

    def __init__(self, name, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.then()

        spec.loader.exec_module = exec_module
        return spec


if _REGISTRY in sys.modules:
    _register_with_transformers()
else:
    sys.meta_path.insert(0, _AfterImport(_REGISTRY, _register_with_transformers))
