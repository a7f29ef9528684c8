import collections
import json
import math
import pathlib
import socket
import statistics

import pytest
import torch

import rptq.tasks
from rptq.evaluate import perplexity, zero_shot
from rptq.record import ppl_interval
from rptq.tasks import LOCAL_TASKS, plan_tasks


@pytest.fixture(scope="module")
def model_and_windows(tiny_opt):
    model = tiny_opt(layers=1)
    windows = torch.randint(0, 512, (5, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the model's own loss (labels shifted inside transformers), window by window
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return model, windows, losses


def test_perplexity_matches_an_independent_computation(model_and_windows):
    model, windows, losses = model_and_windows
    res = perplexity(model, windows, progress=False)
    assert res.windows == res.windows_total == 5
    assert res.ppl == pytest.approx(math.exp(sum(losses) / 5), rel=1e-5)
    assert res.nlls == pytest.approx(losses, rel=1e-5)  # every window's NLL is kept


def test_the_interval_comes_from_the_standard_error_of_the_window_nlls():
    nlls = [2.0, 2.2, 2.4, 2.6]
    sem, (lo, hi) = ppl_interval(nlls)
    assert sem == pytest.approx(statistics.stdev(nlls) / 2)
    assert (lo, hi) == pytest.approx((math.exp(2.3 - 1.959964 * sem), math.exp(2.3 + 1.959964 * sem)))
    assert ppl_interval([2.0]) == (None, None)


def test_limit_averages_over_the_windows_it_ran(model_and_windows):
    model, windows, losses = model_and_windows
    res = perplexity(model, windows, limit=2, progress=False)
    assert (res.windows, res.windows_total) == (2, 5)
    assert res.ppl == pytest.approx(math.exp(sum(losses[:2]) / 2), rel=1e-5)
    assert res.ppl != pytest.approx(math.exp(sum(losses[:2]) / 5), rel=1e-3)  # the reference's bug
    assert perplexity(model, windows, limit=50, progress=False).windows == 5


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and refused."""
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_harness_runs_every_local_task_offline_on_a_tiny_model(tiny_opt, smol_tokenizer, task_data_dir, no_network):
    import lm_eval

    model = tiny_opt(vocab_size=len(smol_tokenizer), layers=1)
    res = zero_shot(model, smol_tokenizer, plan_tasks(list(LOCAL_TASKS), task_data_dir), limit=2, batch_size=2)
    assert no_network == []
    assert (res["harness_version"], res["batch_size"], res["num_fewshot"], res["limit"]) == (lm_eval.__version__, 2,
                                                                                            0, 2)
    assert list(res["results"]) == list(LOCAL_TASKS)
    for name, task in res["results"].items():
        assert task["label"] == LOCAL_TASKS[name].label(name) and task["examples"] == 2
        assert task["source"]["kind"] == "local" and task["source"]["files"] == list(LOCAL_TASKS[name].files)
        assert 0 <= task["acc"] <= 1 and "acc_stderr" in task
        assert ("acc_norm" in task) == (name in ("piqa", "arc_easy", "arc_challenge", "openbookqa"))
    assert res["results"]["lambada_openai"]["perplexity"] > 1  # a random model: far from the truth
    assert "4-choice copy" in res["results"]["arc_easy"]["label"]


def test_cli_prints_and_records_zero_shot_results(run_cli, tiny_opt_dir, task_data_dir, tmp_path):
    out = tmp_path / "zs.json"
    proc = run_cli("main.py", tiny_opt_dir, "--tasks", "piqa,boolq", "--limit", 3, "--data_dir", task_data_dir,
                   "--output_path", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    zs = json.loads(out.read_text())["zero_shot"]
    piqa = zs["results"]["piqa"]
    assert piqa["source"]["kind"] == "local" and (piqa["examples"], piqa["examples_total"]) == (3, 1838)
    row = next(line for line in proc.stdout.splitlines() if line.startswith(piqa["label"]))
    assert row.split()[-3:] == [f"{100 * piqa['acc']:.2f}", f"{100 * piqa['acc_norm']:.2f}", "3/1838"]
    assert f"lm-evaluation-harness {zs['harness_version']}, 0-shot, batch size 1" in proc.stdout
    assert "WARNING" not in proc.stderr and "Custom kwargs" not in proc.stderr


def test_stock_and_local_tasks_score_the_same_documents_alike(tiny_opt, smol_tokenizer, task_data_dir,
                                                              monkeypatch):
    """The stock tasks, their hub data faked with the same original files, give exactly the local tasks' numbers."""
    import datasets
    import lm_eval.tasks

    lines = {name: (task_data_dir / LOCAL_TASKS[name].files[0]).read_text().splitlines()
             for name in ("lambada_openai", "piqa")}
    labels = (task_data_dir / "piqa/valid-labels.lst").read_text().split()
    hub = {"EleutherAI/lambada_openai": [json.loads(line) for line in lines["lambada_openai"]],
           "baber/piqa": [{**json.loads(line), "label": int(label)} for line, label in zip(lines["piqa"], labels)]}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name=None, **kwargs: collections.defaultdict(
        lambda: datasets.Dataset.from_list(hub[path])))
    stock_root = pathlib.Path(lm_eval.tasks.__file__).parent
    index = lm_eval.tasks.TaskManager(include_path=[stock_root / "lambada", stock_root / "piqa"],
                                      include_defaults=False)
    monkeypatch.setattr(rptq.tasks, "_task_manager", lambda folder=None: index)  # the full index takes seconds
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # the hub data set is faked above: no need to reach the hub

    model = tiny_opt(vocab_size=len(smol_tokenizer), layers=1)
    local = zero_shot(model, smol_tokenizer, plan_tasks(["lambada_openai", "piqa"], task_data_dir), limit=6)["results"]
    stock = zero_shot(model, smol_tokenizer, plan_tasks(["lambada_openai", "piqa"], None), limit=6)["results"]
    assert stock["piqa"]["source"] == {"kind": "stock", "dataset": "baber/piqa", "dataset_name": None,
                                       "split": "validation"}
    assert stock["piqa"]["label"] == "piqa" and local["piqa"]["source"]["kind"] == "local"
    for name in ("lambada_openai", "piqa"):
        numbers = {k: v for k, v in local[name].items() if k not in ("label", "source")}
        assert numbers == {k: v for k, v in stock[name].items() if k not in ("label", "source")}
    assert 1 < local["lambada_openai"]["perplexity"] < float("inf")  # a continuous number: equal inputs throughout


def test_zero_shot_runs_on_a_model_dispatched_with_its_embeddings_on_disk(tiny_opt_shards, smol_tokenizer,
                                                                         task_data_dir, tmp_path):
    """The harness takes a model's device from its first parameter, "meta" here: the main device is used instead."""
    from transformers import AutoModelForCausalLM

    from models import load_lazily
    from rptq.placement import place

    plan = plan_tasks(["piqa", "lambada_openai"], task_data_dir)
    whole = AutoModelForCausalLM.from_pretrained(tiny_opt_shards).eval()
    expected = zero_shot(whole, smol_tokenizer, plan, limit=3)["results"]
    model, _, _, store = load_lazily(str(tiny_opt_shards), folder=tmp_path)
    device_map = {"model.decoder.embed_tokens": "disk", "lm_head": "disk", "model.decoder.embed_positions": "cpu",
                  "model.decoder.final_layer_norm": "cpu", "model.decoder.layers": "disk"}
    assert place(model, store, "cpu", device_map) == "cpu" and model.device.type == "meta"
    got = zero_shot(model, smol_tokenizer, plan, limit=3, device="cpu")["results"]
    assert {t: (r["acc"], r.get("perplexity")) for t, r in got.items()} == {
        t: (r["acc"], r.get("perplexity")) for t, r in expected.items()}
