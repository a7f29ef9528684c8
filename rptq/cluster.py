"""K-means clustering of channels by their (max, min) ranges (RPTQ-METHOD.md section 4)."""
import numpy as np
import torch

from .base import RPTQError


class ClusterError(RPTQError):
    """A clustering request that cannot be met (more clusters than channels)."""


def check_cluster_count(k, channels, heads=1, name="R"):
    assert channels % heads == 0, f"{name}: {channels} channels do not split into {heads} heads"
    per_group = channels // heads
    if k > per_group:
        where = f" per head ({heads} heads)" if heads > 1 else ""
        raise ClusterError("{point} asks for {k} clusters but has only {per_group} channels{where}; lower {%s}"
                           % f"{name}_clusters", option=f"{name}_clusters", point=name, k=k, per_group=per_group,
                           where=where)


def kmeans_labels(points, k):
    if k == 1:
        return np.zeros(len(points), dtype=np.int64)
    from sklearn.cluster import KMeans  # a second of imports, only when clustering

    return KMeans(n_clusters=k, n_init=10, random_state=0).fit(points).labels_


def cluster_channels(features, k, heads=1, name="R", dtype=np.float32):
    """features [C, F] -> (perm [C], sizes): channel perm[j] goes to position j, clusters contiguous.

    With heads > 1 each of the `heads` contiguous channel groups is clustered on its own into k clusters,
    so the permutation never moves a channel across a head boundary. dtype: K-means' precision; float32 and float64
    find different local optima (on a real layer only 15 of 32 clusters agree), so it follows the reference's.
    """
    channels = features.shape[0]
    check_cluster_count(k, channels, heads, name)
    per_group = channels // heads
    points = features.numpy().astype(dtype)
    perm, sizes = [], []
    for h in range(heads):
        labels = kmeans_labels(points[h * per_group:(h + 1) * per_group], k)
        perm.append(np.argsort(labels, kind="stable") + h * per_group)
        sizes.extend(int(n) for n in np.bincount(labels, minlength=k) if n > 0)  # duplicate points can empty one
    return torch.from_numpy(np.concatenate(perm)), sizes
