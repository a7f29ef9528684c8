"""quantize/observer.py: the range estimators over calibration samples, registered by name."""
import pytest
import torch

from quantize.observer import RANGE_METRICS, reduce_samples
from rptq.base import RPTQError


def test_ema_minmax_first_sample_sets_the_range():
    values = torch.tensor([[10.0], [0.0], [0.0]])
    assert reduce_samples(values, "ema_minmax", largest=True).item() == pytest.approx(10 * 0.99 ** 2)
    assert reduce_samples(values, "minmax", largest=True).item() == 10.0
    assert reduce_samples(-values, "minmax", largest=False).item() == -10.0


def test_metrics_are_found_by_name():
    assert list(RANGE_METRICS) == ["minmax", "ema_minmax"]
    with pytest.raises(RPTQError, match="unknown range metric 'mse' \\(choose from minmax, ema_minmax\\)"):
        reduce_samples(torch.zeros(2, 1), "mse", largest=True)
