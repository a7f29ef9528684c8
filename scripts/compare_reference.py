"""Side by side with the authors' RPTQ4LLM: the Table 1 settings on one random OPT, from the same token windows,
their code against ours (reference mode), with their perplexities, ours and the differences in log-perplexity.

    python scripts/compare_reference.py out/compare --ref_repo ../ref/RPTQ4LLM --ref_python ../refenv/bin/python \
        --force_clusters

What it does, in WORK (a folder, made if missing):
1. builds once a random OPT (default: hidden 256, 4 layers, 4 heads, FFN 1024; seeded) as `model.pt` (config
   numbers and state dict: both transformers versions build it from these, no checkpoint format in between) and
   the token windows as `windows.pt`: NSAMPLES calibration windows (`--calib_dataset`, seed 2) and the first
   LIMIT WikiText-2 test windows, tokenized here with the SmolLM2 tokenizer. Both sides get these very tensors:
   no text, tokenizer or sampling difference can enter.
2. runs their side: this same file run by --ref_python with `--their_side`, which imports their
   `quantize/opt_reorder_quantize.py` from --ref_repo and drives it as their main.py would for each setting
   (their argument dictionaries, their per-layer pipeline, their GPTQ), without their main.py, data loaders or
   vendored harness (which does not import). It writes `theirs/SETTING.json` (perplexity and every window's NLL)
   and `theirs/SETTING.clusters.pt` (each layer's R1..R5 permutation and cluster sizes, as their code made them).
   Only what their code cannot do on a CPU-only torch is changed, from the outside: `torch.cuda.synchronize` (their
   GPTQ calls it unconditionally) is a no-op, and a quantized weight, which their GPTQ stores as float16
   (quant_transformer_layer.py:99 at commit 9619069), is cast back to the model's float32 when first used (its
   values keep the float16 rounding, as on their GPUs); `--their_weights float` keeps it in float32 instead.
   Their progress prints go to WORK/theirs/SETTING.log.
3. runs our side in this process (our library, `--bit_mode reference` defaults) on the same tensors; with
   `--force_clusters`, a second time with our `cluster_channels` replaced by their permutations and cluster sizes
   of the same setting (channel order inside each cluster included).
4. prints one table: perplexities, ours minus theirs in log-perplexity, and each side against its own FP run.
   The results are also written to WORK/results.json.
W16A4 (not a Table 1 row) differs by design: their layers after a W16 layer calibrate on outputs whose activations
were never quantized (README, "W16 with quantized activations"); ours pass the quantized outputs on.

`--patch NAME,...` applies, to our side only and by monkeypatching, a change proposed for the library, so that its
effect can be measured before it is made:
- half_weights: the quantized weights rounded to float16 after GPTQ, as their code stores them.

Their side needs their code and an environment with transformers 4.28 (their code uses its OPT attention and
mask conventions); it is not part of CI. Set it up once, outside the project:

    python3 -m venv ../refenv && ../refenv/bin/pip install torch==2.13.0 "transformers==4.28.*" scikit-learn
    # their code: a checkout of github.com/hahnyuan/RPTQ4LLM (tested at commit 9619069), e.g. in ../ref/RPTQ4LLM

and run this script with the project's own environment (`. .venv/bin/activate`), RPTQ_DATA_DIR set (or
--data_dir) and OMP_NUM_THREADS=1 for repeatable figures. Default sizes: about 2 minutes per setting and side on one
CPU thread. `--reuse_theirs` takes their results from WORK when present (their side is the slow part to set up,
not to rerun: it is rerun by default).
"""
import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

PROG = "compare_reference.py"
# setting -> (wbits, abits, only_quant_kv); FP16 is the float model (float32 here, as both sides run on the CPU)
SETTINGS = {"FP16": (16, 16, False), "W4A16": (4, 16, False), "W4A8": (4, 8, False), "W4A4": (4, 4, False),
            "W4A4KV": (4, 4, True), "W4A3KV": (4, 3, True), "W3A3KV": (3, 3, True), "W16A4": (16, 4, False)}
TABLE1 = ("FP16", "W4A16", "W4A8", "W4A4", "W4A4KV", "W4A3KV", "W3A3KV")
POINTS = ("R1", "R2", "R3", "R4", "R5")
PATCHES = ("half_weights",)
THEIR_SIDE = "--their_side"


# ---------------------------------------------------------------------------------------------------------------
# Shared by both sides (plain torch and transformers: their environment has nothing of ours)

def build_model(model_file):
    """The random OPT from model.pt with whichever transformers is installed, in float32 eval mode."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    saved = torch.load(model_file, weights_only=True)
    model = OPTForCausalLM(OPTConfig(**saved["config"]))
    missing, unexpected = model.load_state_dict(saved["state_dict"], strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the token embedding
    if missing or unexpected:
        raise RuntimeError(f"model.pt does not fit this OPT: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    return model.float().eval()


def window_nlls(model, windows):
    """Mean token NLL of each window, each scored on its own (the evaluation protocol of both sides)."""
    import torch
    import torch.nn.functional as F

    nlls = []
    with torch.no_grad():
        for ids in windows:
            logits = model(ids.unsqueeze(0), use_cache=False).logits
            nlls.append(F.cross_entropy(logits[0, :-1].float(), ids[1:]).item())
    return nlls


def summary(nlls, seconds, **extra):
    nll = sum(nlls) / len(nlls)
    return {"ppl": math.exp(nll), "nll": nll, "nlls": nlls, "windows": len(nlls), "seconds": seconds, **extra}


def write_json(path, data):
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------------
# Their side: run with --ref_python, imports their code from --ref_repo

def their_quant_args(wbits, abits, kv_only, nsamples):
    """The arguments their quantization reads, set as their main.py sets them for these bits (main.py:273-320 at
    commit 9619069): activations and Q at abits, K and V at abits, LayerNorm outputs at max(8, abits) and the
    probabilities on the fixed [0, 1] grid at max(8, abits) bits; with only_quant_kv all but K and V at 16 bits
    (none). Weights per output row, per input cluster, min-max; activations ema_minmax."""
    from types import SimpleNamespace

    off = 16 if kv_only else None

    def act(bits):
        return {"n_bits": bits, "per_channel_axes": [], "symmetric": False, "metric": "ema_minmax", "dynamic": False}

    return SimpleNamespace(
        wbits=wbits, abits=abits, only_quant_kv=kv_only, nsamples=nsamples, percdamp=0.01, metric="ema_minmax",
        w_quantizer="gptq", disable_w_quant=False, disable_a_quant=False, pack_weight=False, a_dynamic=False,
        weight_quant_params={"n_bits": wbits, "per_channel_axes": [0], "symmetric": False, "metric": "minmax"},
        act_quant_params=act(off or abits), q_quant_params=act(off or abits),
        k_quant_params=act(abits), v_quant_params=act(abits),
        layer_norm_out_quant_params=act(off or max(8, abits)),
        p_quant_params={"n_bits": off or max(8, abits), "metric": "fix0to1"})


def their_side(argv):
    p = argparse.ArgumentParser(prog=f"{PROG} {THEIR_SIDE}")
    p.add_argument("work")
    p.add_argument("--ref_repo", required=True)
    p.add_argument("--settings", required=True)
    p.add_argument("--their_weights", choices=("half", "float"), default="half")
    p.add_argument("--dump", action="store_true", help="also save each quantized layer and its outputs on window 0")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(args.ref_repo).resolve()))  # their packages `quantize` and `models`, not ours
    import torch

    torch.cuda.synchronize = lambda *a, **k: None  # their GPTQ synchronizes unconditionally; no CUDA here
    import quantize.opt_reorder_quantize as their_reorder
    from quantize.int_linear import QuantLinear

    import quantize.gptq as their_gptq

    forward = QuantLinear.forward

    def forward_in_input_dtype(self, x):  # GPTQ stored a float16 weight; the model computes in float32
        if self.replace_weight_with_quantized and self.weight.dtype != x.dtype:
            self.weight = self.weight.to(x.dtype)
        return forward(self, x)

    QuantLinear.forward = forward_in_input_dtype
    if args.their_weights == "float":
        class KeepFloat(torch.Tensor):
            def half(self):  # quant_transformer_layer.py:99 stores fake_quantized_weight.half()
                return self.as_subclass(torch.Tensor).clone()

        fasterquant = their_gptq.GPTQ.fasterquant
        their_gptq.GPTQ.fasterquant = lambda self, *a, **k: (lambda q, loss: (q.as_subclass(KeepFloat), loss))(
            *fasterquant(self, *a, **k))

    calc_index = their_reorder.tensor_calc_reorder_index
    made = []

    def recording(*a, **k):
        index, counts = calc_index(*a, **k)
        made.append((index.detach().cpu().long().clone(), [int(c) for c in counts]))
        return index, counts

    their_reorder.tensor_calc_reorder_index = recording

    work = Path(args.work)
    windows = torch.load(work / "windows.pt", weights_only=True)
    out = work / "theirs"
    out.mkdir(exist_ok=True)
    for setting in args.settings.split(","):
        wbits, abits, kv_only = SETTINGS[setting]
        model = build_model(work / "model.pt")
        t = time.perf_counter()
        if setting != "FP16":
            made.clear()
            lm = SimpleLM(model, windows["calib"].shape[1])
            qargs = their_quant_args(wbits, abits, kv_only, len(windows["calib"]))
            loader = [(w.unsqueeze(0),) for w in windows["calib"]]
            n_clusters = {"R1": 32, "R2": 4, "R3": 4, "R4": 32, "R5": 32}
            with open(out / f"{setting}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log):
                their_reorder.opt_reorder_quantize(lm, qargs, loader, n_clusters, "12345")
            for layer in model.model.decoder.layers:
                layer.set_quant_state(True, True)  # as their main.py after quantization
            layers = len(model.model.decoder.layers)
            assert len(made) == layers * len(POINTS), f"expected 5 clusterings per layer, got {len(made)}"
            torch.save({"layers": [dict(zip(POINTS, made[i * 5:(i + 1) * 5])) for i in range(layers)]},
                       out / f"{setting}.clusters.pt")
        quantized_s = time.perf_counter() - t
        t = time.perf_counter()
        nlls = window_nlls(model, windows["test"])
        res = summary(nlls, time.perf_counter() - t, quantize_seconds=quantized_s, their_weights=args.their_weights)
        if args.dump:
            torch.save(dump_layers(model, windows["test"][0]), out / f"{setting}.dump.pt")
        write_json(out / f"{setting}.json", res)
        print(f"theirs {setting}: ppl {res['ppl']:.4f} ({quantized_s:.0f} s quantization)", flush=True)
    return 0


class SimpleLM:
    """What their opt_reorder_quantize reads of their OPTClass: the model, its device and its window length."""

    def __init__(self, model, seqlen):
        import torch

        self.model, self.seqlen = model, seqlen
        self.device = self._device = torch.device("cpu")


def dump_layers(model, window):
    """Each decoder layer's tensors (weights, buffers: quantizer scales and zero points) and output on one window."""
    import torch

    outputs = []
    handles = [layer.register_forward_hook(lambda m, i, o: outputs.append(o[0].detach().clone()))
               for layer in model.model.decoder.layers]
    with torch.no_grad():
        model(window.unsqueeze(0), use_cache=False)
    for h in handles:
        h.remove()
    states = [{k: v.detach().float().clone() for k, v in layer.state_dict().items()}
              for layer in model.model.decoder.layers]
    return {"states": states, "outputs": outputs}


# ---------------------------------------------------------------------------------------------------------------
# Our side and the orchestration: the project's environment

def build_parser():
    from rptq.cli import FolderPath, OneLineParser

    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("work", type=FolderPath, help="work folder: model, windows, both sides' results")
    p.add_argument("--ref_repo", help="checkout of their RPTQ4LLM (needed unless --reuse_theirs finds all results)")
    p.add_argument("--ref_python", help="python of an environment with transformers 4.28 for their side")
    p.add_argument("--settings", default=",".join(TABLE1), help=f"comma list from {', '.join(SETTINGS)}")
    p.add_argument("--force_clusters", action="store_true",
                   help="also run ours with their clusters and in-cluster channel order forced on it")
    p.add_argument("--patch", default="", help=f"comma list of proposed library changes tried on our side: "
                                               f"{', '.join(PATCHES)} (see the docstring)")
    p.add_argument("--cluster_order", choices=("reference", "stable"), default="reference",
                   help="ours: the order of the channels inside a cluster (reference: as their code; stable: "
                        "ascending, as this project before it followed theirs)")
    p.add_argument("--reuse_theirs", action="store_true", help="take their results from WORK when present")
    p.add_argument("--their_weights", choices=("half", "float"), default="half",
                   help="their quantized weights as their code stores them (float16) or kept in float32")
    p.add_argument("--dump", action="store_true", help="save each quantized layer and its outputs on test window 0, "
                                                       "both sides (WORK/*/SETTING*.dump.pt), for layer-wise diffs")
    g = p.add_argument_group("the random OPT and the windows (used when WORK has none yet)")
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--ffn", type=int, default=1024)
    g.add_argument("--model_seed", type=int, default=0)
    g.add_argument("--affine", type=float, default=0.0,
                   help="spread of random LayerNorm weights and biases (1 + a * N(0,1), a * N(0,1)) and of Linear "
                        "biases (0.4 a * N(0,1)), as the tests' tiny models (0.5): channels of unlike ranges, so that "
                        "clustering and quantization matter more than in a freshly initialized OPT (0: as initialized)")
    g.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    g.add_argument("--calib_dataset", default="mix")
    g.add_argument("--seed", type=int, default=2, help="calibration sampling seed")
    g.add_argument("--limit", type=int, default=4, help="first N WikiText-2 test windows")
    g.add_argument("--seqlen", type=int, default=2048)
    g.add_argument("--data_dir", default=None)
    g.add_argument("--cache_dir", default=None)
    return p


def check_args(args):
    from rptq.cli import UsageError

    settings = [s for s in args.settings.split(",") if s]
    unknown = [s for s in settings if s not in SETTINGS]
    if not settings or unknown:
        raise UsageError(f"--settings: unknown {', '.join(unknown) or 'nothing given'} "
                         f"(choose from {', '.join(SETTINGS)})")
    patches = [s for s in args.patch.split(",") if s]
    if set(patches) - set(PATCHES):
        raise UsageError(f"--patch: unknown {', '.join(sorted(set(patches) - set(PATCHES)))} "
                         f"(choose from {', '.join(PATCHES)})")
    for flag in ("hidden", "layers", "heads", "ffn", "nsamples", "limit", "seqlen"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1")
    if args.hidden % args.heads:
        raise UsageError(f"--hidden {args.hidden} must be a multiple of --heads {args.heads}")
    if "FP16" not in settings:
        settings.insert(0, "FP16")  # every delta against FP needs it
    return settings, patches


def prepare(work, args):
    """model.pt and windows.pt in WORK, made once; a WORK made with other sizes is refused."""
    import torch

    from rptq.cli import UsageError

    meta = {k: getattr(args, k) for k in ("hidden", "layers", "heads", "ffn", "model_seed", "affine", "nsamples",
                                          "calib_dataset", "seed", "limit", "seqlen")}
    meta_file = work / "meta.json"
    if meta_file.exists():
        old = json.loads(meta_file.read_text(encoding="utf-8"))
        if old != meta:
            diff = ", ".join(f"--{k} {old.get(k)} there, {v} now" for k, v in meta.items() if old.get(k) != v)
            raise UsageError(f"{work} was made with other sizes ({diff}): use another folder")
        return meta
    import datautils
    from models import load_tokenizer

    work.mkdir(parents=True, exist_ok=True)
    from transformers import AutoModelForCausalLM, OPTConfig

    config = {"hidden_size": args.hidden, "num_attention_heads": args.heads, "ffn_dim": args.ffn,
              "num_hidden_layers": args.layers, "vocab_size": 50272, "max_position_embeddings": 2048,
              "word_embed_proj_dim": args.hidden}
    if args.seqlen > config["max_position_embeddings"]:
        raise UsageError(f"--seqlen {args.seqlen} is longer than the model's 2048 positions")
    torch.manual_seed(args.model_seed)
    model = AutoModelForCausalLM.from_config(OPTConfig(**config), dtype=torch.float32)
    if args.affine:
        gen = torch.Generator().manual_seed(args.model_seed)
        with torch.no_grad():
            for mod in model.modules():
                if isinstance(mod, torch.nn.LayerNorm):
                    mod.weight.copy_(1 + args.affine * torch.randn(mod.weight.shape, generator=gen))
                    mod.bias.copy_(args.affine * torch.randn(mod.bias.shape, generator=gen))
                elif isinstance(mod, torch.nn.Linear) and mod.bias is not None:
                    mod.bias.copy_(0.4 * args.affine * torch.randn(mod.bias.shape, generator=gen))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    torch.save({"config": config, "state_dict": state}, work / "model.pt")
    tokenizer = load_tokenizer("smollm2-135m")
    data_dir = datautils.resolve_data_dir(args.data_dir)
    kw = {"seqlen": args.seqlen, "data_dir": data_dir, "cache_dir": args.cache_dir}
    calib = datautils.get_calib_windows(args.calib_dataset, tokenizer, args.nsamples, args.seed, **kw)
    test = datautils.get_eval_windows("wikitext2", tokenizer, **kw)[:args.limit]
    torch.save({"calib": calib.clone(), "test": test.clone()}, work / "windows.pt")
    write_json(meta_file, meta)
    return meta


def run_theirs(work, settings, args):
    missing = [s for s in settings if not (args.reuse_theirs and (work / "theirs" / f"{s}.json").exists()
                                           and (s == "FP16" or (work / "theirs" / f"{s}.clusters.pt").exists()))]
    if not missing:
        return
    from rptq.cli import UsageError

    if not args.ref_repo or not args.ref_python:
        raise UsageError(f"their results for {', '.join(missing)} are not in {work}: give --ref_repo and --ref_python")
    if not (Path(args.ref_repo) / "quantize" / "opt_reorder_quantize.py").is_file():
        raise UsageError(f"--ref_repo {args.ref_repo} is not a checkout of RPTQ4LLM "
                         "(no quantize/opt_reorder_quantize.py)")
    if not (Path(args.ref_python).is_file() and os.access(args.ref_python, os.X_OK)):
        raise UsageError(f"--ref_python {args.ref_python} is not an executable python (see the docstring for the "
                         "environment it needs)")
    cmd = [args.ref_python, str(Path(__file__).resolve()), THEIR_SIDE, str(work), "--ref_repo", args.ref_repo,
           "--settings", ",".join(missing), "--their_weights", args.their_weights] + (["--dump"] if args.dump else [])
    env = {**os.environ, "PYTHONPATH": ""}  # nothing of ours on their side
    print(f"their side: {' '.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env)
    if done.returncode:
        raise UsageError(f"their side failed (exit {done.returncode}); see its output above")


def forced_clustering(cluster_file):
    """A stand-in for rptq.cluster.cluster_channels that returns their permutations and sizes, layer after layer
    (our pipeline clusters R1..R5 in this order for each layer)."""
    import torch

    layers = torch.load(cluster_file, weights_only=True)["layers"]
    state = {"layer": -1}

    def cluster_channels(features, k, heads=1, name="R", dtype=None, order=None, device=None):
        if name == "R1":
            state["layer"] += 1
        perm, sizes = layers[state["layer"]][name]
        assert len(perm) == features.shape[0], f"{name}: {len(perm)} channels in their file, {features.shape[0]} here"
        return perm.clone(), [int(s) for s in sizes if s > 0]

    return cluster_channels


class patched:
    """Monkeypatch attributes for the length of a with block."""

    def __init__(self, *triples):
        self.triples = [t for t in triples if t]

    def __enter__(self):
        self.saved = [(obj, name, getattr(obj, name)) for obj, name, _ in self.triples]
        for obj, name, value in self.triples:
            setattr(obj, name, value)

    def __exit__(self, *exc):
        for obj, name, value in reversed(self.saved):
            setattr(obj, name, value)


def half_weights_gptq():
    from quantize.gptq import GPTQ

    quantize = GPTQ.quantize

    def quantize_then_round(self, linear, *a, **k):
        out = quantize(self, linear, *a, **k)
        linear.weight.data.copy_(linear.weight.data.half().float())
        return out

    return (GPTQ, "quantize", quantize_then_round)


def run_ours(work, setting, forced, patches, dump, cluster_order):
    import torch

    import rptq
    import rptq.pipeline as pipeline

    windows = torch.load(work / "windows.pt", weights_only=True)
    model = build_model(work / "model.pt")
    wbits, abits, kv_only = SETTINGS[setting]
    t = time.perf_counter()
    if setting != "FP16":
        cfg = rptq.QuantConfig(wbits=wbits, abits=abits, only_quant_kv=kv_only, cluster_order=cluster_order)
        clustering = forced_clustering(work / "theirs" / f"{setting}.clusters.pt") if forced else None
        with patched((pipeline, "cluster_channels", clustering) if clustering else None,
                     half_weights_gptq() if "half_weights" in patches else None):
            rptq.quantize(rptq.Loaded.of(model), windows["calib"], cfg, progress=False)
    quantized_s = time.perf_counter() - t
    t = time.perf_counter()
    res = summary(window_nlls(model, windows["test"]), time.perf_counter() - t, quantize_seconds=quantized_s)
    if dump:
        name = setting + (".forced" if forced else "") + "".join(f".{p}" for p in patches)
        (work / "ours").mkdir(exist_ok=True)
        torch.save(dump_layers(model, windows["test"][0]), work / "ours" / f"{name}.dump.pt")
    return res


def run(args):
    from rptq.base import check_folder
    from rptq.report import format_table

    settings, patches = check_args(args)
    work = Path(args.work)
    check_folder(work, "work")
    meta = prepare(work, args)
    run_theirs(work, settings, args)
    theirs = {s: json.loads((work / "theirs" / f"{s}.json").read_text(encoding="utf-8")) for s in settings}
    ours, forced = {}, {}
    for s in settings:
        ours[s] = run_ours(work, s, False, patches, args.dump, args.cluster_order)
        print(f"ours {s}: ppl {ours[s]['ppl']:.4f}", file=sys.stderr, flush=True)
        if args.force_clusters and s != "FP16":
            forced[s] = run_ours(work, s, True, patches, args.dump, args.cluster_order)
            print(f"ours {s}, their clusters: ppl {forced[s]['ppl']:.4f}", file=sys.stderr, flush=True)
    header = ["setting", "theirs", "ours", "d log-ppl", "theirs vs FP", "ours vs FP"]
    if forced:
        header += ["ours, their clusters", "d log-ppl", "vs FP"]
    rows = []
    for s in settings:
        row = [s, f"{theirs[s]['ppl']:.3f}", f"{ours[s]['ppl']:.3f}", f"{ours[s]['nll'] - theirs[s]['nll']:+.4f}",
               f"{theirs[s]['nll'] - theirs['FP16']['nll']:+.4f}", f"{ours[s]['nll'] - ours['FP16']['nll']:+.4f}"]
        if forced:
            f = forced.get(s)
            row += ([f"{f['ppl']:.3f}", f"{f['nll'] - theirs[s]['nll']:+.4f}", f"{f['nll'] - ours['FP16']['nll']:+.4f}"]
                    if f else ["-", "-", "-"])
        rows.append(row)
    print(f"\nrandom OPT (hidden {meta['hidden']}, {meta['layers']} layers, {meta['heads']} heads, FFN {meta['ffn']}, "
          f"seed {meta['model_seed']}" + (f", affine spread {meta['affine']}" if meta["affine"] else "") + "), "
          f"{meta['nsamples']} {meta['calib_dataset']} calibration windows (seed {meta['seed']}), first "
          f"{meta['limit']} WikiText-2 windows of {meta['seqlen']}; ours: reference bit mode, "
          f"{args.cluster_order} cluster order"
          + (f", patched: {', '.join(patches)}" if patches else "")
          + f"; theirs: weights {args.their_weights}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(format_table(header, rows))
    print("d log-ppl: ours minus theirs (mean token NLL); vs FP: the same side's FP16 row")
    write_json(work / "results.json", {"meta": meta, "patches": patches, "their_weights": args.their_weights,
                                       "cluster_order": args.cluster_order,
                                       "theirs": theirs, "ours": ours, "ours_their_clusters": forced})
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [THEIR_SIDE]:
        return their_side(argv[1:])
    from rptq.cli import script_main

    return script_main(PROG, build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
