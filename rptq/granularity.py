"""The activation granularities, registered by name (GRANULARITIES): how a reorder point's channels are grouped for
their activation ranges. RPTQ's is K-means clusters after a reorder; the others are its controls. A new control is
one registered class."""
import torch

from .base import Registry
from .cluster import check_cluster_count

GRANULARITIES = Registry("activation granularity")


def contiguous_groups(point, k):
    """k contiguous groups of (nearly) equal size per head of the point, in the channels' original order."""
    if k == 1:
        return torch.zeros(point.channels, dtype=torch.long)
    check_cluster_count(k, point.channels, point.heads, point.name)
    per_head = point.channels // point.heads
    within = torch.arange(per_head) * k // per_head
    return (within + k * torch.arange(point.heads).unsqueeze(1)).reshape(-1)


class Granularity:
    """clustered: the groups are K-means clusters, their channels made contiguous by a reorder folded into the
    weights. ranges: the activation quantizers' ranges ("static": calibrated; "token": per token at run time).
    mode_words: what the run's mode line says of it."""
    clustered = False
    ranges = "static"
    mode_words = ()

    def groups(self, point, k):
        """The group id of each of the point's channels, in their original order (a granularity that clusters is
        asked only when every point has one cluster)."""
        return contiguous_groups(point, k)

    def weight_groups(self, point, k, groups):
        """The column groups of the point's consumers' weights: by default the activation's groups."""
        return groups


@GRANULARITIES.register("cluster")
class Clusters(Granularity):
    """K-means clusters of channels with similar (max, min) ranges, made contiguous by the reorder (RPTQ)."""
    clustered = True


@GRANULARITIES.register("fixed")
class FixedGroups(Granularity):
    """As many contiguous groups as the clustered run, in the original order (per-vector ranges, as VSQ)."""
    mode_words = ("fixed activation groups",)


@GRANULARITIES.register("channel")
class PerChannel(Granularity):
    """One group per channel: the bound for static per-channel ranges; weights keep the fixed groups."""
    mode_words = ("channel activation groups",)

    def groups(self, point, k):
        return torch.arange(point.channels)

    def weight_groups(self, point, k, groups):
        return contiguous_groups(point, k)


@GRANULARITIES.register("token")
class PerToken(Granularity):
    """Dynamic ranges per token over all channels (as OmniQuant and QuaRot); weights keep the fixed groups."""
    ranges = "token"

    def groups(self, point, k):
        return torch.zeros(point.channels, dtype=torch.long)

    def weight_groups(self, point, k, groups):
        return contiguous_groups(point, k)
