"""main.py as a user runs it: a subprocess, its exit code, its stderr, its JSON."""
import json
import shutil
import time

import pytest
import torch


@pytest.mark.parametrize("args, expected", [
    (["no-such-model", "--eval_ppl"], "unknown model 'no-such-model'"),
    (["opt-125m", "--wbits", "0", "--eval_ppl"], "--wbits must be between 1 and 16"),
    (["opt-125m", "--wbits", "17", "--eval_ppl"], "--wbits must be between 1 and 16"),
    (["opt-125m", "--R3_clusters", "0", "--eval_ppl"], "--R3_clusters must be at least 1"),
    (["opt-125m", "--eval_ppl", "--data_dir", "/no/such/folder"], "/no/such/folder"),
    (["opt-125m", "--wbits", "four"], "invalid int value"),
    (["opt-125m", "--eval_ppl", "--wbits", "4", "--only_quant_kv"], "--only_quant_kv needs quantized activations"),
    (["opt-125m", "--eval_ppl", "--a_dynamic"], "--a_dynamic needs quantized activations"),
    (["opt-125m", "--eval_ppl", "--device_map", "everywhere"], "argument --device_map: invalid choice"),
    (["opt-125m", "--eval_ppl", "--device_map", "auto", "--max_memory", "0=70Gb,1"], "'1' is not DEVICE=SIZE"),
    (["opt-125m", "--eval_ppl", "--device_map", "auto", "--max_memory", "0:70GiB"], "'0:70GiB' is not DEVICE=SIZE"),
])
def test_bad_input_exits_with_one_clear_line(run_cli, one_line_error, args, expected):
    one_line_error(run_cli("main.py", *args), expected)


def test_uncached_hub_model_fails_fast_offline(run_cli, one_line_error, tmp_path):
    def seconds(*args, env=None):
        start = time.monotonic()
        proc = run_cli("main.py", *args, env=env)
        return proc, time.monotonic() - start

    # Measured against a refusal after the same imports that never looks for the model (a missing data folder), so a
    # busy machine's slow imports cancel out.
    _, startup = seconds("opt-125m", "--eval_ppl", "--data_dir", str(tmp_path / "none"))
    proc, offline = seconds("opt-125m", "--eval_ppl", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    one_line_error(proc, "pass a local model folder")
    assert offline - startup < 15


def test_too_many_clusters_is_one_line_before_calibration(run_cli, one_line_error, tiny_opt_dir, data_dir):
    proc = run_cli("main.py", tiny_opt_dir, "--eval_ppl", "--wbits", 4, "--abits", 4, "--R2_clusters", 17,
                    "--data_dir", data_dir)
    one_line_error(proc, "R2 asks for 17 clusters but has only 16 channels per head")


@pytest.fixture
def ppl_run(run_cli, tiny_opt_dir, data_dir, tmp_path):
    """ppl_run(name, *flags, model=the tiny OPT): main.py, 2 WikiText-2 windows of 256 tokens: (process, its
    JSON)."""
    def run(name, *extra, model=tiny_opt_dir):
        out = tmp_path / f"{name}.json"
        proc = run_cli("main.py", model, "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2,
                       "--seqlen", 256, "--data_dir", data_dir, "--cache_dir", tmp_path / "cache", "--output_path",
                       out, *extra)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc, json.loads(out.read_text())

    return run


def test_float_and_reordered_float_runs_agree_and_write_json(ppl_run):
    proc, fp = ppl_run("fp")
    assert fp["status"] == "complete" and fp["label"] == "FP-float32"
    assert fp["ppl"]["wikitext2"]["windows"] == 2 and fp["ppl"]["wikitext2"]["windows_total"] > 2
    assert "wikitext2" in proc.stdout and f"{fp['ppl']['wikitext2']['ppl']:.2f}" in proc.stdout
    assert {"torch", "transformers", "lm_eval"} <= set(fp["versions"])

    proc, ro = ppl_run("ro", "--wbits", 16, "--abits", 16, "--reorder", 12345,
                        "--nsamples", 2, "--R1_clusters", 4, "--R4_clusters", 4, "--R5_clusters", 8)
    assert "every quantizer off" in proc.stderr
    assert ro["label"] == "W16A16" and ro["quantization"]["reorder"] == "12345"
    assert ro["ppl"]["wikitext2"]["ppl"] == pytest.approx(fp["ppl"]["wikitext2"]["ppl"], rel=1e-5)


def test_w4a4_run_records_its_mode_and_stage_timings(ppl_run):
    _, res = ppl_run("w4a4", "--wbits", 4, "--abits", 4, "--nsamples", 2,
                      "--R1_clusters", 4, "--R4_clusters", 4, "--R5_clusters", 8, "--calib_dataset", "mix")
    q = res["quantization"]
    assert (res["label"], q["bit_mode"], q["grid"], q["norm_bits"], q["prob_bits"]) == ("W4A4", "reference",
                                                                                         "paper", 8, 8)
    assert {"calibration", "clustering", "weight_quantization", "eval_wikitext2"} <= set(res["timings_s"])
    assert torch.isfinite(torch.tensor(res["ppl"]["wikitext2"]["ppl"]))


def test_smollm2_real_model_short_perplexity_float_and_w4a4_saved_and_loaded(run_cli, smollm2, data_dir, tmp_path):
    common = ["--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2, "--seqlen", 256, "--data_dir", data_dir,
              "--cache_dir", tmp_path]
    saved = tmp_path / "saved"
    runs = {}
    for label, model, flags in (("fp", smollm2, []),
                                ("w4a4", smollm2, ["--wbits", 4, "--abits", 4, "--nsamples", 2, "--save", saved]),
                                ("loaded", saved, [])):
        out = tmp_path / f"{label}.json"
        proc = run_cli("main.py", model, *common, *flags, "--output_path", out, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads(out.read_text())
        assert res["family"] == "llama" and res["status"] == "complete"
        runs[label] = res["ppl"]["wikitext2"]
    ppl = {label: run["ppl"] for label, run in runs.items()}
    assert 3 < ppl["fp"] < 60  # a trained model, unlike a random one (~ vocab size)
    assert ppl["fp"] < ppl["w4a4"] < 10 * ppl["fp"], ppl  # quantized, still a language model (random: ~50k)
    # real weights reach zero points that tiny random models never do (a weight beyond 3.3 alone in its group)
    assert runs["loaded"]["nlls"] == runs["w4a4"]["nlls"]


def test_a_flag_that_changes_nothing_is_a_note_not_a_refusal(ppl_run):
    proc, fp = ppl_run("fp-noted", "--nsamples", 128)
    assert fp["label"] == "FP-float32" and fp["status"] == "complete"
    assert "main.py: note: --nsamples changes nothing in this run (--wbits 16 --abits 16): ignored" in proc.stderr


@pytest.fixture
def earlier_result(tmp_path):
    """A result file from an earlier run in the output folder: no failing run may damage it."""
    path = tmp_path / "out" / "earlier.json"
    path.parent.mkdir()
    path.write_text('{"status": "complete"}\n')
    yield path
    assert path.read_text() == '{"status": "complete"}\n'


@pytest.mark.parametrize("where, expected", [
    ("under_a_file/run.json", "cannot be written"),
    ("a_folder.json", "is a folder, not a file"),
    ("/proc/rptq-run.json", "cannot be written"),  # a folder no one may write, even root
])
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(run_cli, one_line_error, tiny_opt_dir,
                                                                         data_dir, earlier_result, where, expected):
    folder = earlier_result.parent
    (folder / "under_a_file").write_text("")
    (folder / "a_folder.json").mkdir()
    start = time.time()
    proc = run_cli("main.py", tiny_opt_dir, "--wbits", 4, "--abits", 4, "--eval_ppl", "--data_dir", data_dir,
                   "--output_path", folder / where if not where.startswith("/") else where)
    one_line_error(proc, expected)
    assert "--output_path" in proc.stderr and time.time() - start < 120


@pytest.mark.parametrize("content, expected", [
    ("{not json", "is not valid JSON"),
    ('{"hidden_size": 64}', "names no model_type"),
    ("[1, 2]", "names no model_type"),
])
def test_a_broken_config_is_one_line(run_cli, one_line_error, tiny_opt_dir, tmp_path, content, expected):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    one_line_error(run_cli("main.py", folder, "--eval_ppl"), expected)


def test_cluster_counts_are_checked_from_the_config_before_the_weights(run_cli, one_line_error, tiny_opt_dir,
                                                                        tmp_path, data_dir):
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_opt_dir / "config.json").read_text())  # no weights at all
    proc = run_cli("main.py", folder, "--eval_ppl", "--wbits", 4, "--abits", 4, "--R2_clusters", 17,
                   "--data_dir", data_dir)
    one_line_error(proc, "R2 asks for 17 clusters but has only 16 channels per head (4 heads)")


def test_text_that_does_not_decode_is_refused_before_quantizing(run_cli, one_line_error, tiny_opt_dir, data_dir,
                                                                 tmp_path, earlier_result):
    data = tmp_path / "data"
    for f in ("wikitext-2-raw/wiki.test.raw", "wikitext-2/wiki.valid.tokens", "ptb/ptb.test.txt",
              "c4/c4-train.00000-of-01024.first1000.jsonl"):
        (data / f).parent.mkdir(parents=True, exist_ok=True)
        (data / f).write_bytes((data_dir / f).read_bytes())
    (data / "wikitext-2-raw/wiki.test.raw").write_bytes(b"caf\xe9 " * 10)  # Latin-1, not UTF-8
    proc = run_cli("main.py", tiny_opt_dir, "--wbits", 4, "--abits", 4, "--eval_ppl", "--ppl_datasets", "wikitext2",
                   "--data_dir", data, "--output_path", earlier_result.parent)
    one_line_error(proc, "wiki.test.raw is not UTF-8 text")


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_an_interrupt_before_anything_finished_says_so(root, tiny_opt_dir, data_dir, tmp_path, signum):
    import signal
    import subprocess
    import sys

    out = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, str(root / "main.py"), str(tiny_opt_dir), "--wbits", "4", "--abits",
                             "4", "--nsamples", "64", "--seqlen", "512", "--eval_ppl", "--data_dir", str(data_dir),
                             "--cache_dir", str(tmp_path), "--output_path", str(out)],
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    while "RPTQ W4A4" not in seen:  # the layer loop has started
        char = proc.stderr.read(1)
        assert char, seen
        seen += char
    proc.send_signal(getattr(signal, signum))
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert rest.strip().splitlines()[-1] == ("main.py: interrupted; nothing had finished, no results file was "
                                             "written") and "Traceback" not in rest, rest[-2000:]
    assert not out.exists()


@pytest.fixture(scope="module")
def saved_run(run_cli, tiny_opt_dir, data_dir, tmp_path_factory):
    """main.py --save on the tiny OPT (W4A4, 2 WikiText-2 windows of 256 tokens): (saved folder, its run's JSON)."""
    tmp = tmp_path_factory.mktemp("saved-run")
    out, folder = tmp / "w4a4.json", tmp / "saved"
    proc = run_cli("main.py", tiny_opt_dir, "--wbits", 4, "--abits", 4, "--nsamples", 2, "--R1_clusters", 4,
                   "--R4_clusters", 4, "--R5_clusters", 8, "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2,
                   "--seqlen", 256, "--data_dir", data_dir, "--cache_dir", tmp / "cache", "--output_path", out,
                   "--save", folder)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder, json.loads(out.read_text())


def test_a_saved_model_loads_without_calibration_and_gives_the_same_perplexity(saved_run, ppl_run):
    folder, saved = saved_run
    assert saved["saved_to"] == str(folder) and "save" in saved["timings_s"]
    proc, loaded = ppl_run("loaded", model=folder)
    assert loaded["ppl"]["wikitext2"]["nlls"] == saved["ppl"]["wikitext2"]["nlls"]  # the same windows, exactly
    assert loaded["label"] == "W4A4" and loaded["quantization"] == saved["quantization"]
    assert loaded["saved_model"]["source_model"] == saved["model"]
    assert loaded["weights"].startswith(f"saved RPTQ model {folder}: W4A4 of ")
    assert not {"calibration", "clustering", "weight_quantization"} & set(loaded["timings_s"])
    assert "loaded from a saved model" in proc.stdout


def test_a_saved_model_runs_with_its_layers_on_disk(saved_run, ppl_run, cpu_budget, tmp_path):
    """--device_map on a saved (packed) model: the embeddings and head stay in CPU memory, both layers are read
    from disk at each forward, and the windows' NLLs are those of the run that saved it."""
    from rptq import artifact

    folder, saved = saved_run
    budget = cpu_budget(artifact.load(folder)[0], 0)
    _, res = ppl_run("dispatched", "--device_map", "sequential", "--max_memory", f"cpu={budget}",
                     "--offload_folder", tmp_path / "off", model=folder)
    assert res["ppl"]["wikitext2"]["nlls"] == saved["ppl"]["wikitext2"]["nlls"]
    device_map = res["placement"]["device_map"]
    assert {v for k, v in device_map.items() if ".layers" in k} == {"disk"}, device_map
    assert device_map["model.decoder.embed_tokens"] == "cpu"


def test_flags_that_would_quantize_a_saved_model_again_are_refused(run_cli, one_line_error, saved_run):
    folder, _ = saved_run
    proc = run_cli("main.py", folder, "--eval_ppl", "--wbits", 4, "--nsamples", 8)
    one_line_error(proc, f"{folder} is a saved W4A4 model: --wbits, --nsamples would quantize it again")
    one_line_error(run_cli("main.py", folder, "--eval_ppl", "--save", folder.parent / "again"),
                   "is a saved model already")


@pytest.mark.parametrize("how, expected", [("corrupt", "is corrupt"), ("truncated", "is truncated"),
                                           ("missing tensor", "lacks tensor model.decoder.layers.1.fc1.codes"),
                                           ("newer format", "newer than this code reads")])
def test_a_bad_saved_folder_is_one_line_and_nothing_is_written(run_cli, one_line_error, saved_run, damage_saved,
                                                               tmp_path, how, expected):
    folder = damage_saved(shutil.copytree(saved_run[0], tmp_path / "bad"), how)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    proc = run_cli("main.py", folder, "--eval_ppl", "--output_path", tmp_path / "out")
    one_line_error(proc, expected)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before
    assert not (tmp_path / "out").exists()


def test_save_refuses_a_folder_in_use_before_calibrating(run_cli, one_line_error, tiny_opt_dir, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    start = time.time()
    proc = run_cli("main.py", tiny_opt_dir, "--wbits", 4, "--save", tmp_path / "used")
    one_line_error(proc, "the folder is not empty and nothing is overwritten; remove it or pick another folder")
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine" and len(list((tmp_path / "used").iterdir())) == 1
    assert time.time() - start < 60
    one_line_error(run_cli("main.py", tiny_opt_dir, "--save", tmp_path / "new"), "this run quantizes nothing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_a_budget_for_a_gpu_this_machine_lacks_fails_before_loading(run_cli, one_line_error):
    proc = run_cli("main.py", "opt-125m", "--eval_ppl", "--device_map", "auto", "--max_memory", "0=70GiB,cpu=8GiB")
    one_line_error(proc, "--max_memory gives GPU 0 a budget, but this machine has 0 CUDA device(s)")


@pytest.mark.parametrize("budget, folder, expected", [
    ("1000", True, "leave room for no module at all"),
    ("layers_in_memory=1", False, "module(s) go to disk under the budgets"),
])
def test_device_maps_that_cannot_work_fail_before_quantizing(run_cli, one_line_error, tiny_opt_shards, cpu_budget,
                                                             data_dir, tmp_path, budget, folder, expected):
    budget = cpu_budget(tiny_opt_shards, 1) if budget.startswith("layers") else budget
    proc = run_cli("main.py", tiny_opt_shards, "--eval_ppl", "--wbits", 4, "--data_dir", data_dir,
                   "--device_map", "sequential", "--max_memory", f"cpu={budget}",
                   *(["--offload_folder", tmp_path / "off"] if folder else []))
    one_line_error(proc, expected)
    assert "RPTQ" not in proc.stderr  # no layer was quantized


def test_offload_and_device_maps_give_the_in_memory_perplexity(run_cli, tiny_opt_shards, cpu_budget, data_dir,
                                                                tmp_path):
    """The same W4A4 run with the model in memory, loaded lazily with its quantized layers in an offload folder,
    and evaluated with two layers in CPU memory and two read from disk at each forward."""
    offload = tmp_path / "offload"
    placements = {"memory": [], "lazy": ["--offload_folder", offload],
                  "cpu+disk": ["--offload_folder", offload, "--device_map", "sequential", "--max_memory",
                               f"cpu={cpu_budget(tiny_opt_shards, 2)}"]}
    runs = {}
    for name, flags in placements.items():
        out = tmp_path / f"{name}.json"
        proc = run_cli("main.py", tiny_opt_shards, "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", 2,
                       "--seqlen", 256, "--wbits", 4, "--abits", 4, "--nsamples", 2, "--R1_clusters", 4,
                       "--R4_clusters", 4, "--R5_clusters", 8, "--data_dir", data_dir, "--cache_dir", tmp_path / "c",
                       "--output_path", out, *flags)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads(out.read_text())
    ppl = {name: res["ppl"]["wikitext2"]["ppl"] for name, res in runs.items()}
    assert ppl["lazy"] == ppl["memory"] and ppl["cpu+disk"] == ppl["memory"], ppl
    assert (runs["memory"]["placement"]["loading"], runs["lazy"]["placement"]["loading"]) == ("whole", "lazy")
    layers = {k: v for k, v in runs["cpu+disk"]["placement"]["device_map"].items() if ".layers." in k}
    assert sorted(layers.values()) == ["cpu", "cpu", "disk", "disk"]
    for res in runs.values():
        peaks = res["peak_memory_mb"]
        assert {"load", "calibration_data", "quantization", "placement", "eval_wikitext2"} <= set(peaks)
        assert all(stage["rss"] > 100 and "cuda" not in stage for stage in peaks.values())
    assert list(offload.iterdir()) == []  # each run's folder is removed at its end


def test_lazy_quantization_peak_memory_does_not_grow_with_depth(run_cli, data_dir, tmp_path):
    """OPTs of one width with 4 and 12 layers (float16 shards; the second checkpoint is twice the size): quantized
    lazily, the peak resident set while quantizing is the same within a quarter of the 8 extra layers' size; with
    the whole model in memory it is higher by at least half of the model's layers.

    The tolerance: the lazy peak holds the embeddings, one layer, the calibration activations and the process's
    libraries, whatever the depth; allocator noise is tens of MiB, while keeping even 2 of the 8 extra layers would
    add 100 MiB (float32, d=1024). Round-to-nearest weights and no clustering keep it quick: what is measured is
    where the layers are, not the method's arithmetic."""
    sizes, peaks = {}, {}
    for layers in (4, 12):
        folder = tmp_path / f"opt-{layers}"
        proc = run_cli("scripts/make_random_opt.py", folder, "--layers", layers, "--hidden", 1024, "--heads", 16,
                       "--ffn", 4096, "--dtype", "float16", "--max_shard_size", "100MB")
        assert proc.returncode == 0, proc.stderr[-2000:]
        sizes[layers] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    layer_mib = 12 * 1024 * 1024 * 4 / 2 ** 20  # float32 on the CPU: 4 d^2 + 2 d * 4d weights
    for name, layers, flags in (("lazy", 4, ["--offload_folder", tmp_path / "off"]),
                                ("lazy", 12, ["--offload_folder", tmp_path / "off"]), ("whole", 12, [])):
        out = tmp_path / f"{name}{layers}.json"
        proc = run_cli("main.py", tmp_path / f"opt-{layers}", "--eval_ppl", "--ppl_datasets", "wikitext2",
                       "--limit", 1, "--seqlen", 128, "--wbits", 4, "--abits", 4, "--nsamples", 1,
                       "--w_quantizer", "normal", "--reorder", "", "--data_dir", data_dir,
                       "--cache_dir", tmp_path / "cache",
                       "--output_path", out, *flags, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        peaks[name, layers] = json.loads(out.read_text())["peak_memory_mb"]["quantization"]["rss"]
    assert sizes[12] > 1.9 * sizes[4]
    assert abs(peaks["lazy", 12] - peaks["lazy", 4]) < 8 * layer_mib / 4, peaks
    assert peaks["whole", 12] - peaks["lazy", 12] > 12 * layer_mib / 2, peaks


def test_an_interrupted_save_leaves_nothing_and_says_so(tiny_opt_dir, data_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C (or SIGTERM, which main.py turns into the same) while --save writes: the folder is written beside its
    place and renamed when whole, so nothing of it is left, and the run says so."""
    import safetensors.torch

    import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    code = main.main([str(tiny_opt_dir), "--wbits", "4", "--nsamples", "1", "--seqlen", "64", "--R1_clusters", "4",
                      "--R4_clusters", "4", "--R5_clusters", "8", "--data_dir", str(data_dir), "--cache_dir",
                      str(tmp_path / "cache"), "--save", str(tmp_path / "saved"), "--output_path",
                      str(tmp_path / "run.json")], prog="main.py")
    assert code == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (f"main.py: interrupted; nothing had finished, no results file was written; the model was being "
                       f"saved: nothing of it was left in {tmp_path / 'saved'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def _in_small_tmpfs(command, size="64k"):
    """command run in a mount namespace of its own with a `size` tmpfs mounted on /mnt (a full disk that the test can
    make), then what is left in /mnt listed on stdout after a line "left:"; None where this machine does not allow
    it."""
    import shlex
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"], capture_output=True)
    if probe.returncode:
        return None
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} tmpfs /mnt && "
                           f"{shlex.join(command)}; code=$?; echo left:; ls -A /mnt; exit $code"],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("where", ["output_path", "save"])
def test_a_full_disk_ends_with_one_line_and_leaves_nothing_partial(root, tiny_opt_dir, data_dir, tmp_path,
                                                                   one_line_error, where):
    """The results file or the saved model written to a disk that fills: one line naming what could not be written
    and where; no half file, no saved folder that would load as if whole."""
    import sys

    target = {"output_path": ["--output_path", "/mnt/run.json"],
              "save": ["--save", "/mnt/saved", "--output_path", str(tmp_path / "run.json")]}[where]
    proc = _in_small_tmpfs([sys.executable, str(root / "main.py"), str(tiny_opt_dir), "--wbits", "4", "--nsamples",
                            "1", "--seqlen", "64", "--R1_clusters", "4", "--R4_clusters", "4", "--R5_clusters", "8",
                            "--eval_ppl", "--ppl_datasets", "wikitext2", "--limit", "1", "--data_dir", str(data_dir),
                            "--cache_dir", str(tmp_path / "cache"), *target], size="4k")
    if proc is None:
        pytest.skip("no mount namespace here (unshare)")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    place = "/mnt/run.json" if where == "output_path" else "/mnt/saved"
    assert proc.stderr.strip().splitlines()[-1] == f"main.py: error: cannot write {place}: the disk is full"
    assert proc.stdout.split("left:")[-1].split() == []  # no half file, no partial folder
