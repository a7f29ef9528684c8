"""rptq/reorder.py: permutations folded into producers, consumers and norms leave the function unchanged."""
import torch
from torch import nn

from models import ReorderPoint
from rptq.reorder import apply_reorder, per_query_head, per_query_head_clusters
from tests.conftest import perm_of


def test_folding_a_permutation_leaves_norm_linear_linear_unchanged():
    torch.manual_seed(0)
    norm, up, down = nn.LayerNorm(8), nn.Linear(8, 12), nn.Linear(12, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        before = down(torch.relu(up(norm(x))))
        apply_reorder(ReorderPoint("R1", 8, 1, [], [], norm=norm, consumers=[up]), torch.randperm(8))
        apply_reorder(ReorderPoint("R5", 12, 1, [], [], producers=[up], consumers=[down]), torch.randperm(12))
        assert torch.allclose(down(torch.relu(up(norm(x)))), before, atol=1e-6)
    assert perm_of(norm) is not None


def test_a_kv_heads_permutation_repeats_for_each_query_head_sharing_it():
    perm = torch.tensor([1, 0, 3, 2, 2, 3, 0, 1])  # 2 K/V heads of 4 channels, each permuted inside its head
    assert torch.equal(per_query_head(perm, 2, 8), perm)
    wide = per_query_head(perm, 2, 16)  # 2 query heads per K/V head
    assert wide.tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 10, 11, 8, 9, 14, 15, 12, 13]


def test_each_query_head_gets_its_own_copy_of_the_clusters():
    index = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # 2 clusters in each of 2 K/V heads
    assert per_query_head_clusters(index, 2, 8).tolist() == index.tolist()
    wide = per_query_head_clusters(index, 2, 16)  # query heads 0, 1 read K/V head 0; 2, 3 read K/V head 1
    heads = wide.view(4, 4)
    for q in range(4):
        kv = index.view(2, 4)[q // 2]
        assert torch.equal(heads[q][:, None] == heads[q][None, :], kv[:, None] == kv[None, :])  # same partition
    assert len(set(wide.tolist())) == 8 and sorted(set(wide.tolist())) == list(range(8))  # each its own ids
    assert per_query_head_clusters(torch.zeros(8, dtype=torch.long), 2, 16).tolist() == [0] * 16
