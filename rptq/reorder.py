"""Fold a channel permutation into the weights that produce and consume an activation (section 5).

perm[j] is the original channel written at position j. Producers write the new order (rows permuted), consumers
read it (input columns permuted), and a norm writes its output in the new order: its statistics do not depend
on channel order, so norm'(x) = norm(x)[..., perm] with permuted affine parameters and a permuted input view.
"""
import torch
from torch import nn

from quantize.state import read_in_perm, state_of


@torch.no_grad()
def permute_rows(linear: nn.Linear, perm):
    assert linear.out_features == len(perm), "producer rows must match the permutation"
    linear.weight.copy_(linear.weight[perm.to(linear.weight.device)])
    if linear.bias is not None:
        linear.bias.copy_(linear.bias[perm.to(linear.bias.device)])


@torch.no_grad()
def permute_columns(linear: nn.Linear, perm):
    assert linear.in_features == len(perm), "consumer columns must match the permutation"
    linear.weight.copy_(linear.weight[:, perm.to(linear.weight.device)])


@torch.no_grad()
def permute_norm(norm: nn.Module, perm):
    """The only permutation left at run time: the norm reads its input in the new order (residual untouched)."""
    for p in (getattr(norm, "weight", None), getattr(norm, "bias", None)):
        if p is not None:
            assert p.shape == perm.shape, "norm parameters must match the permutation"
            p.copy_(p[perm.to(p.device)])
    read_in_order(norm, perm)


def read_in_order(norm: nn.Module, perm=None):
    """Make the norm read its input in the order perm (its parameters already in that order); without perm, in the
    order its state already holds (a saved model's, loaded)."""
    state = state_of(norm, create=True)
    if perm is not None:
        state.set_perm(perm.to(next(norm.parameters(), perm).device))
    norm.register_forward_pre_hook(read_in_perm)


def per_query_head(perm, heads, size):
    """A permutation of the point's `heads` heads, for a tensor of `size` channels that holds each head once per
    query head sharing it (grouped-query attention: size = heads * group * head_dim), head-major."""
    if size == len(perm):
        return perm
    assert size % len(perm) == 0, f"{size} channels do not hold whole copies of {len(perm)}"
    head_dim = len(perm) // heads
    within = perm.view(heads, head_dim) % head_dim  # a per-head permutation moves channels inside their head
    within = within.repeat_interleave(size // len(perm), 0)
    return (within + head_dim * torch.arange(len(within)).unsqueeze(1)).reshape(-1)


def per_query_head_clusters(index, heads, size):
    """Cluster ids [size] for a site that holds each of the point's heads once per query head: each query head
    gets its own copy of its K/V head's clusters. One cluster (no reorder) stays one cluster of the whole tensor."""
    if size == len(index) or int(index.max()) == 0:
        return index.repeat(size // len(index))
    group = size // len(index)
    ids = index.view(heads, 1, -1) * group + torch.arange(group).view(1, group, 1)
    return torch.unique(ids.reshape(-1), return_inverse=True)[1]


def apply_reorder(point, perm):
    if point.norm is not None:
        permute_norm(point.norm, perm)
    for linear in point.producers:
        permute_rows(linear, per_query_head(perm, point.heads, linear.out_features))
    for linear in point.consumers:
        permute_columns(linear, per_query_head(perm, point.heads, linear.in_features))
