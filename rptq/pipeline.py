"""The layer-by-layer RPTQ pipeline (RPTQ-METHOD.md section 3): for each decoder layer, on its calibration
inputs (the outputs of the layers before it, already quantized):
  (a) record per-channel ranges at every site (and GPTQ Hessians) on the float layer,
  (b) cluster each reorder point and fold its permutation into the weights,
  (c) build the per-cluster activation quantizers from the recorded ranges,
  (d) quantize the weights (per output row and per column group: by default the input clusters),
  (e) run the quantized layer: its outputs are the next layer's inputs.
Only the current layer sits on the device."""
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from quantize import GPTQ, ActQuantizer, ProbQuantizer, cluster_index, column_groups
from quantize.attention import ATTN_IMPLEMENTATION
from quantize.gptq import WEIGHT_QUANTIZERS
from quantize.packed import WeightGrid
from quantize.state import TAPS, state_of

from .cluster import check_cluster_count, cluster_channels
from .config import FLOAT_BITS, QuantConfig
from .granularity import GRANULARITIES
from .reorder import apply_reorder, per_query_head, per_query_head_clusters
from .stats import SiteObserver, channel_ranges, cluster_ranges


class _Captured(Exception):
    pass


class _Observed(Exception):
    """Raised once the last observed tensor of a layer has been seen: the rest of its forward is not needed."""


class _Recorder(torch.nn.Module):
    """Stands in for decoder layer `index` while the embeddings run on the calibration windows: it keeps the keyword
    arguments the model hands that layer (its attention mask and rotary tables, which differ between layer types,
    e.g. Gemma3's sliding-window and full-attention layers) and passes its input on; the first one also keeps its
    input, the last one ends the forward."""

    def __init__(self, index, last, inputs, layer_kwargs):
        super().__init__()
        self.index, self.last, self.inputs, self.layer_kwargs = index, last, inputs, layer_kwargs

    def forward(self, hidden_states, **kw):
        if self.index == 0:
            self.inputs.append(hidden_states)
        self.layer_kwargs[self.index] = kw
        if self.last:
            raise _Captured
        return hidden_states


@torch.no_grad()
def capture_layer_inputs(model, adapter, windows, device):
    """Run the embeddings on each window; return what the first decoder layer receives ([1, seqlen, hidden] per
    window) and, per decoder layer, the keyword arguments the model hands it (the same for every window of one
    length)."""
    layers = adapter.layers(model)
    inputs, layer_kwargs = [], [None] * len(layers)
    originals = list(layers)
    for i in range(len(layers)):
        layers[i] = _Recorder(i, i == len(layers) - 1, inputs, layer_kwargs)
    for m in adapter.embedding_modules(model):
        m.to(device)
    try:
        for window in windows:
            try:
                model(window.unsqueeze(0).to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        for i, layer in enumerate(originals):
            layers[i] = layer
        for m in adapter.embedding_modules(model):
            m.to("cpu")
    return inputs, layer_kwargs


@torch.no_grad()
def run_layer(layer, inputs, kwargs):
    outs = []
    for x in inputs:
        out = layer(x, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


@torch.no_grad()
def observe(layer, sites, hessian_inputs, inputs, kwargs, last):
    """Run the layer on its calibration inputs; return per-window [S, C] (min, max) of each site (keyed by id) and
    the GPTQ Hessian of each point's consumer input (keyed by point name; its consumers all read that input).
    last: the layer's last Linear; nothing observed comes after its input, so each forward stops there."""
    observers = {id(s): s for s in sites}  # a site given twice is observed once
    observers = {key: SiteObserver(s) for key, s in observers.items()}
    hessians = {name: GPTQ(lin.in_features, lin.weight.device) for name, lin in hessian_inputs.items()}
    handles = [lin.register_forward_pre_hook(lambda mod, args, g=hessians[name]: g.add_batch(args[0]))
               for name, lin in hessian_inputs.items()]

    def stop(mod, args):  # registered last: every other pre-hook of `last` has seen its input
        raise _Observed

    handles.append(last.register_forward_pre_hook(stop))
    for x in inputs:
        try:
            layer(x, **kwargs)
        except _Observed:
            pass
    for h in handles:
        h.remove()
    return {key: obs.remove() for key, obs in observers.items()}, hessians


@torch.no_grad()
def quantize_layer(layer, adapter, inputs, kwargs, cfg, device, timings):
    """Steps (a)-(d) on one layer (already on the device); returns the number of groups of each point.

    Calibration follows the reference (quant_transformer_layer.py:21-60): the clusters come from the float layer,
    while the quantizer ranges and the GPTQ Hessians come from the reordered layer with everything that needs no
    calibration already in place (the probabilities on their grid, dynamic activation quantizers), so that each
    tensor is calibrated on what it will see. With nothing of the kind, or nothing clustered, one pass serves both."""
    points = adapter.reorder_points(layer)
    sites = [s for p in points for s in p.sites if cfg.site_bits(s.kind) is not None]
    weights = WEIGHT_QUANTIZERS[cfg.w_quantizer]
    use_hessian = cfg.wbits < FLOAT_BITS and weights.uses_hessian
    hessian_inputs = {p.name: p.consumers[0] for p in points if p.consumers} if use_hessian else {}
    static = cfg.act_ranges == "static"
    granularity = GRANULARITIES[cfg.a_granularity]
    clustered = granularity.clustered and any(cfg.point_clusters(p.name) > 1 for p in points)
    in_place_first = cfg.prob_bits is not None or (sites and not static)
    observed = sites if static else []
    last = points[-1].consumers[-1]  # R5's consumer, fc2 or down_proj: the layer's last Linear

    if clustered:
        t = time.perf_counter()  # (a)
        if in_place_first:
            stats, hessians = observe(layer, [s for p in points for s in p.cluster_on], {}, inputs, kwargs, last)
        else:
            stats, hessians = observe(layer, [*observed, *(s for p in points for s in p.cluster_on)], hessian_inputs,
                                      inputs, kwargs, last)
        timings["calibration"] += time.perf_counter() - t
        t = time.perf_counter()  # (b)
        dtype = kmeans_dtype(layer)
        index_of = {p.name: cluster_point(p, cfg.point_clusters(p.name), stats, hessians, dtype, cfg.order, device)
                    for p in points}
        timings["clustering"] += time.perf_counter() - t
    else:
        index_of = {p.name: granularity.groups(p, cfg.point_clusters(p.name)) for p in points}

    quantizers = {}
    for p in points:  # (c)
        for s in p.sites:
            bits = cfg.site_bits(s.kind)
            if bits is not None:
                index = per_query_head_clusters(index_of[p.name], p.heads, p.channels * s.group)
                quantizers[id(s)] = (s, ActQuantizer.of(bits, index, cfg.grid, cfg.act_ranges).to(device))
    if cfg.prob_bits is not None:
        state_of(adapter.attention(layer), create=True).prob_quant = ProbQuantizer(cfg.prob_bits)
    if not static:
        for s, quantizer in quantizers.values():
            s.attach_quantizer(quantizer)
    if in_place_first or not clustered:
        t = time.perf_counter()
        stats, hessians = observe(layer, observed, hessian_inputs, inputs, kwargs, last)  # already in the new order
        timings["calibration"] += time.perf_counter() - t
    if static:
        for s, quantizer in quantizers.values():
            quantizer.set_ranges(*cluster_ranges(*stats[id(s)], quantizer.index, cfg.metric))
            s.attach_quantizer(quantizer)

    t = time.perf_counter()  # (d)
    if cfg.wbits < FLOAT_BITS:
        for p in points:
            weight_groups = granularity.weight_groups(p, cfg.point_clusters(p.name), index_of[p.name])
            for lin in p.consumers:
                clusters = per_query_head_clusters(weight_groups, p.heads, lin.in_features)
                groups = column_groups(cfg.w_granularity, lin.in_features, clusters, cfg.groupsize)
                scale, zero = weights.quantize(lin, groups, cfg.wbits, cfg.grid, hessians.get(p.name), cfg.percdamp,
                                               cfg.act_order)
                # what a saved model packs
                state_of(lin, create=True).weight_grid = WeightGrid.from_expanded(cfg.wbits, groups, scale, zero)
    timings["weight_quantization"] += time.perf_counter() - t
    return {name: int(index.max()) + 1 for name, index in index_of.items()}


def kmeans_dtype(layer):
    """The precision the reference's K-means works in (reorder_utils.py:98-102): its features are in the model's
    dtype and sklearn keeps float32 but promotes float16 to float64."""
    return np.float32 if next(layer.parameters()).dtype == torch.float32 else np.float64


def cluster_point(point, k, stats, hessians, dtype=np.float32, order="stable", device="cpu"):
    """Cluster a point's channels into k per head and reorder them (in the weights, the recorded statistics and
    the GPTQ Hessian of its consumers' input); returns the cluster id of each channel in its final order. order,
    device: the order of the channels inside a cluster and where it is computed (rptq.cluster.cluster_order)."""
    if k == 1:
        return torch.zeros(point.channels, dtype=torch.long)
    perm, sizes = cluster_channels(clustering_features(point, stats), k, point.heads, point.name, dtype, order,
                                   str(device))
    index = cluster_index(sizes)  # in the new order
    if not point.folds:
        return index[torch.argsort(perm)]  # the same clusters, channels left in place
    apply_reorder(point, perm)
    for s in point.sites:
        if id(s) in stats:
            mins, maxs = stats[id(s)]
            site_perm = per_query_head(perm, point.heads, mins.shape[1])
            stats[id(s)] = (mins[:, site_perm], maxs[:, site_perm])
    if point.name in hessians:
        hessians[point.name].permute(per_query_head(perm, point.heads, point.consumers[0].in_features))
    return index


def clustering_features(point, stats):
    """[channels, F]: per channel, (max, min) over all calibration windows of every site clustered on; a site
    read once per query head contributes the ranges of each of those heads (Q and K jointly per K/V head).
    Plain running extremes whatever --metric says, as the reference (the metric sets the quantizer ranges)."""
    features = []
    for s in point.cluster_on:
        mins, maxs = channel_ranges(*stats[id(s)], "minmax")
        per_channel = torch.stack([maxs, mins], 1)  # [channels * group, 2]
        head_dim = point.channels // point.heads
        per_channel = per_channel.view(point.heads, s.group, head_dim, 2).transpose(1, 2)
        features.append(per_channel.reshape(point.channels, 2 * s.group))
    return torch.cat(features, 1)


def check_clusters(model, adapter, cfg: QuantConfig):
    """Raise ClusterError for a cluster count a point cannot hold, before any layer is touched."""
    for p in adapter.reorder_points(adapter.layers(model)[0]):
        check_cluster_count(cfg.point_clusters(p.name), p.channels, p.heads, p.name)


def use_site_attention(model, sites, quantized_probs=False):
    """Switch to the attention that calls the hooks of Q/K sites inside attention (and quantizes probabilities)
    when any site or the probabilities need it; otherwise the model keeps its faster attention."""
    if quantized_probs or any(s.where in TAPS for s in sites):
        model.set_attn_implementation(ATTN_IMPLEMENTATION)


class InMemory:
    """Where the layers wait by default: CPU memory; each visits the device for its turn."""

    @staticmethod
    def fetch(layer, device):
        layer.to(device)

    @staticmethod
    def release(layer):
        layer.to("cpu")


@dataclass
class QuantReport:
    """What quantize_model did: seconds per stage, and the number of groups at each reorder point of each layer."""
    timings_s: dict
    clusters_per_layer: list


@torch.no_grad()
def quantize_model(model, adapter, calib_windows, cfg: QuantConfig, device="cpu", progress=True, store=InMemory):
    """Quantize the model in place, one decoder layer at a time on device; returns a QuantReport. store: where each
    layer waits while not on the device (models.WeightStore reads it from the checkpoint when its turn comes and can
    write it to an offload folder once quantized)."""
    check_clusters(model, adapter, cfg)
    use_site_attention(model, [s for p in adapter.reorder_points(adapter.layers(model)[0]) for s in p.sites],
                       cfg.prob_bits is not None)
    timings = defaultdict(float)
    t = time.perf_counter()
    inputs, layer_kwargs = capture_layer_inputs(model, adapter, calib_windows, device)
    timings["capture"] += time.perf_counter() - t
    clusters = []
    layers = adapter.layers(model)
    for layer, kwargs in tqdm(zip(layers, layer_kwargs), total=len(layers), desc=f"RPTQ {cfg.label}",
                              disable=not progress):
        store.fetch(layer, device)
        clusters.append(quantize_layer(layer, adapter, inputs, kwargs, cfg, device, timings))
        t = time.perf_counter()  # (e)
        inputs = run_layer(layer, inputs, kwargs)
        timings["layer_outputs"] += time.perf_counter() - t
        store.release(layer)
    return QuantReport(dict(timings), clusters)
