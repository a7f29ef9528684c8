"""What RPTQ attaches to a module of the model, in one typed place: a ModuleState child found by its type, never
by an attribute name. A module's state holds its activation quantizers by site ("input", "output", "query", "key"),
an attention module's probability quantizer and the hooks it calls on its query and key, the order in which a
reordered norm reads its input, and a quantized Linear's weight grid (what a saved model packs).

Tensors in it (quantizer parameters, a norm's permutation) are buffers of the model, so they follow .to(device),
accelerate's dispatch and the state dict (under the child's name, STATE); the weight grid and the hooks are not
tensors of the model.
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

STATE = "rptq"  # the child's name: only where it is attached, and in saved tensors' names
TAPS = ("query", "key")  # the attention tensors hooks can see (quantize/attention.py)
FUSED_ATTENTION = "rptq_fused_attention"  # a model config's flag: decode attention by torch's fused kernel


class ModuleState(nn.Module):
    def __init__(self):
        super().__init__()
        self.quantizers = nn.ModuleDict()  # site -> ActQuantizer
        self.prob_quant = None             # an attention module's ProbQuantizer
        self.register_buffer("perm", None)  # a reordered norm: the input channel it reads at each position
        self.weight_grid = None            # a quantized Linear's WeightGrid
        self.taps = {name: OrderedDict() for name in TAPS}

    def tap(self, name, fn):
        """Call fn(x [b, t, heads * d]) -> replacement or None on attention tensor `name`; a removable handle."""
        assert name in TAPS, f"attention tensors are {TAPS}"
        handle = RemovableHandle(self.taps[name])
        self.taps[name][handle.id] = fn
        return handle

    def set_perm(self, perm):
        """Make the norm this state belongs to read its input in the order perm (its parameters already in it)."""
        self.perm = perm.clone().to(torch.long)

    def extra_repr(self):
        return ", ".join(part for part in (self.perm is not None and f"perm={len(self.perm)}",
                                           self.weight_grid is not None and f"grid={self.weight_grid.bits}-bit")
                         if part)


def state_of(module, create=False):
    """The ModuleState of module; made (and attached) if create, else None when it has none."""
    for child in module.children():
        if isinstance(child, ModuleState):
            return child
    if not create:
        return None
    state = ModuleState()
    module.add_module(STATE, state)
    return state


def read_in_perm(norm, args):
    """A reordered norm's forward pre-hook: its input in the state's order (gather: a faster copy than
    index_select)."""
    x, perm = args[0], state_of(norm).perm
    return (torch.gather(x, -1, perm.to(x.device).expand(x.shape)), *args[1:])
