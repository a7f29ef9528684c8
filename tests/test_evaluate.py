import math

import pytest
import torch
from conftest import tiny_opt

from rptq.evaluate import perplexity


@pytest.fixture(scope="module")
def model_and_windows():
    model = tiny_opt(layers=1)
    windows = torch.randint(0, 512, (5, 64), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():  # the model's own loss (labels shifted inside transformers), window by window
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return model, windows, losses


def test_perplexity_matches_an_independent_computation(model_and_windows):
    model, windows, losses = model_and_windows
    res = perplexity(model, windows, progress=False)
    assert res["windows"] == res["windows_total"] == 5
    assert res["ppl"] == pytest.approx(math.exp(sum(losses) / 5), rel=1e-5)


def test_limit_averages_over_the_windows_it_ran(model_and_windows):
    model, windows, losses = model_and_windows
    res = perplexity(model, windows, limit=2, progress=False)
    assert (res["windows"], res["windows_total"]) == (2, 5)
    assert res["ppl"] == pytest.approx(math.exp(sum(losses[:2]) / 2), rel=1e-5)
    assert res["ppl"] != pytest.approx(math.exp(sum(losses[:2]) / 5), rel=1e-3)  # the reference's bug
    assert perplexity(model, windows, limit=50, progress=False)["windows"] == 5
