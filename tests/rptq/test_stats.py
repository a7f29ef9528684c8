import pytest
import torch
from torch import nn

from models import ActSite
from rptq.stats import SiteObserver, channel_ranges, cluster_ranges


def test_observer_keeps_one_range_per_forward_and_channel():
    lin = nn.Linear(3, 4)
    obs = SiteObserver(ActSite(lin, "output", "act"))
    xs = [torch.randn(2, 5, 3) for _ in range(3)]
    with torch.no_grad():
        outs = [lin(x) for x in xs]
    mins, maxs = obs.remove()
    assert mins.shape == maxs.shape == (3, 4)
    for i, out in enumerate(outs):
        assert torch.equal(mins[i], out.flatten(0, 1).amin(0)) and torch.equal(maxs[i], out.flatten(0, 1).amax(0))
    lin(xs[0])  # removed: no further samples
    assert obs.remove()[0].shape == (3, 4)


def test_cluster_ranges_reduce_channels_per_sample_then_over_samples():
    mins = torch.tensor([[-1.0, -4.0, -2.0], [-3.0, -1.0, -1.0]])
    maxs = torch.tensor([[1.0, 2.0, 5.0], [2.0, 1.0, 1.0]])
    index = torch.tensor([0, 1, 0])
    lo, hi = cluster_ranges(mins, maxs, index, "minmax")
    assert lo.tolist() == [-3.0, -4.0] and hi.tolist() == [5.0, 2.0]
    lo, hi = cluster_ranges(mins, maxs, index, "ema_minmax")  # per sample: cluster 0 is [-2, 5] then [-3, 2]
    assert lo.tolist() == pytest.approx([0.99 * -2 + 0.01 * -3, 0.99 * -4 + 0.01 * -1])
    assert hi.tolist() == pytest.approx([0.99 * 5 + 0.01 * 2, 0.99 * 2 + 0.01 * 1])
    assert [t.tolist() for t in channel_ranges(mins, maxs, "minmax")] == [[-3.0, -4.0, -2.0], [2.0, 2.0, 5.0]]
