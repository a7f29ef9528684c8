"""K-means clustering of channels by their (max, min) ranges (RPTQ-METHOD.md section 4)."""
import numpy as np
import torch

from .base import RPTQError

# How the channels of one cluster are ordered once the clusters are contiguous (GPTQ walks a cluster's weight columns
# in this order, so it changes the quantized weights): "reference" as the reference's reorder_utils.py:113-114 at
# commit 9619069 (torch.argsort of the int32 K-means labels, not stable: beyond 16 channels not ascending, on the CPU
# as on CUDA, but the same labels give the same permutation on the same torch build and device); "stable": ascending
# channel index.
ORDERS = ("reference", "stable")


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


def cluster_order(labels, order="stable", device="cpu"):
    """labels [C] (K-means' cluster ids) -> perm [C] (torch long): channel perm[j] goes to position j, each cluster
    contiguous, the clusters by increasing label; inside a cluster the channels follow `order` (see ORDERS). device:
    where the reference's argsort runs (its labels go to the features' device: CUDA on a GPU run)."""
    if order == "stable":
        return torch.from_numpy(np.argsort(labels, kind="stable"))
    assert order == "reference", f"cluster order is one of {ORDERS}"
    return torch.argsort(torch.from_numpy(np.asarray(labels, dtype=np.int32)).to(device)).cpu().long()


def cluster_channels(features, k, heads=1, name="R", dtype=np.float32, order="stable", device="cpu"):
    """features [C, F] -> (perm [C], sizes): channel perm[j] goes to position j, clusters contiguous.

    With heads > 1 each of the `heads` contiguous channel groups is clustered on its own into k clusters,
    so the permutation never moves a channel across a head boundary. dtype: K-means' precision; float32 and float64
    find different local optima (on a real layer only 15 of 32 clusters agree), so it follows the reference's.
    order, device: the order of the channels inside each cluster (cluster_order).
    """
    channels = features.shape[0]
    check_cluster_count(k, channels, heads, name)
    per_group = channels // heads
    points = features.numpy().astype(dtype)
    perm, sizes = [], []
    for h in range(heads):
        labels = kmeans_labels(points[h * per_group:(h + 1) * per_group], k)
        perm.append(cluster_order(labels, order, device) + h * per_group)
        sizes.extend(int(n) for n in np.bincount(labels, minlength=k) if n > 0)  # duplicate points can empty one
    return torch.cat(perm), sizes
