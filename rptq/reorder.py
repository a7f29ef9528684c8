"""Fold a channel permutation into the weights that produce and consume an activation (section 5).

perm[j] is the original channel written at position j. Producers write the new order (rows permuted), consumers
read it (input columns permuted), and a norm writes its output in the new order: its statistics do not depend
on channel order, so norm'(x) = norm(x)[..., perm] with permuted affine parameters and a permuted input view.
"""
import torch
from torch import nn


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
    norm.register_buffer("rptq_perm", perm.clone().to(next(norm.parameters(), perm).device))
    norm.register_forward_pre_hook(lambda mod, args: (args[0].index_select(-1, mod.rptq_perm), *args[1:]))


def apply_reorder(point, perm):
    if point.norm is not None:
        permute_norm(point.norm, perm)
    for linear in point.producers:
        permute_rows(linear, perm)
    for linear in point.consumers:
        permute_columns(linear, perm)
