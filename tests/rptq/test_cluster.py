import numpy as np
import pytest
import torch

from quantize import ActQuantizer, cluster_index
from rptq.cluster import ClusterError, cluster_channels
from rptq.pipeline import kmeans_dtype
from rptq.stats import channel_ranges, cluster_ranges


def _activations(seed=0, tokens=256, channels=96):
    gen = torch.Generator().manual_seed(seed)
    spread = torch.exp(2 * torch.randn(channels, generator=gen))  # ranges over ~3 orders of magnitude
    shift = torch.randn(channels, generator=gen) * spread
    return torch.randn(4, tokens, channels, generator=gen) * spread + shift  # 4 calibration samples


def _per_sample_stats(x):
    return x.amin(1), x.amax(1)  # [S, C]


def _clustered_mse(x, k):
    mins, maxs = _per_sample_stats(x)
    lo, hi = channel_ranges(mins, maxs, "minmax")
    perm, sizes = cluster_channels(torch.stack([hi, lo], 1), k)
    index = cluster_index(sizes)
    q = ActQuantizer.of(4, index)
    q.set_ranges(*cluster_ranges(mins[:, perm], maxs[:, perm], index, "minmax"))
    xp = x[..., perm]
    return ((q(xp) - xp).pow(2).mean((0, 1)) / xp.var((0, 1))).mean().item()


def test_more_clusters_never_hurt_on_the_calibration_data():
    x = _activations()
    errors = [_clustered_mse(x, k) for k in (1, 2, 4, 8, 16, 32, 96)]
    assert all(b <= a * 1.001 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 20


def test_clustering_is_deterministic_and_groups_similar_ranges():
    hi = torch.tensor([1.0, 50.0, 1.1, 49.0, 0.9, 51.0])
    features = torch.stack([hi, -hi], 1)
    perm, sizes = cluster_channels(features, 2)
    perm2, sizes2 = cluster_channels(features, 2)
    assert torch.equal(perm, perm2) and sizes == sizes2
    assert sorted(sizes) == [3, 3]
    groups = [set(perm[:sizes[0]].tolist()), set(perm[sizes[0]:].tolist())]
    assert {0, 2, 4} in groups and {1, 3, 5} in groups


def test_per_head_clustering_keeps_heads_contiguous():
    features = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    perm, sizes = cluster_channels(features, 3, heads=4)
    assert len(sizes) == 12 and sum(sizes) == 32
    for h in range(4):
        assert sorted(perm[h * 8:(h + 1) * 8].tolist()) == list(range(h * 8, (h + 1) * 8))


def test_more_clusters_than_channels_is_a_clear_error():
    with pytest.raises(ClusterError, match="R2 asks for 9 clusters but has only 8 channels per head"):
        cluster_channels(torch.randn(16, 4), 9, heads=2, name="R2")


def test_kmeans_works_in_the_references_precision(monkeypatch):
    """float32 and float64 pick other local optima (15 of 32 clusters shared on a real layer). The reference's
    features are in the model's dtype (reorder_utils.py:98-102): sklearn keeps float32 and makes float16 float64."""
    import sklearn.cluster

    seen = []
    real = sklearn.cluster.KMeans

    class Spy(real):
        def fit(self, X, y=None, sample_weight=None):
            seen.append(X.dtype)
            return super().fit(X, y, sample_weight)

    monkeypatch.setattr(sklearn.cluster, "KMeans", Spy)
    cluster_channels(torch.randn(32, 4, dtype=torch.float64), 3, heads=2)
    cluster_channels(torch.randn(32, 4), 3, dtype=kmeans_dtype(torch.nn.Linear(2, 2).half()))
    assert seen == [np.float32, np.float32, np.float64]
    assert kmeans_dtype(torch.nn.Linear(2, 2)) == np.float32


def test_reference_order_inside_clusters_is_the_references_argsort_stable_is_ascending():
    """The reference orders each cluster by torch.argsort of K-means' int32 labels, not stable: beyond 16 channels not
    ascending on the CPU either (torch 2.13), but the same labels give the same permutation."""
    from rptq.cluster import cluster_order

    labels = np.random.default_rng(0).integers(0, 32, 256).astype(np.int32)
    ref, stable = cluster_order(labels, "reference"), cluster_order(labels, "stable")
    assert torch.equal(ref, torch.argsort(torch.from_numpy(labels)))  # their call, bit for bit
    assert torch.equal(cluster_order(labels.astype(np.int64), "reference"), ref)  # and deterministic
    assert torch.equal(torch.from_numpy(labels)[ref], torch.from_numpy(labels)[stable])  # the same clusters, in place
    assert all(bool((stable[labels[stable] == c].diff() > 0).all()) for c in range(32))
    assert not all(bool((ref[labels[ref] == c].diff() > 0).all()) for c in range(32))


def test_cluster_channels_follows_the_order_per_head():
    features = torch.randn(128, 2, generator=torch.Generator().manual_seed(3))
    ref, ref_sizes = cluster_channels(features, 4, heads=2, order="reference")
    stable, sizes = cluster_channels(features, 4, heads=2, order="stable")
    assert ref_sizes == sizes and not torch.equal(ref, stable)
    for h in range(2):  # heads stay contiguous, and each cluster holds the same channels
        assert sorted(ref[h * 64:(h + 1) * 64].tolist()) == list(range(h * 64, (h + 1) * 64))
    start = 0
    for n in sizes:
        assert set(ref[start:start + n].tolist()) == set(stable[start:start + n].tolist())
        start += n
