"""Which channels of a Keras model must be pruned together: channel groups read from the functional config.

A *group* is a set of channels that live or die together: the output channels of one or more producers
(Dense, Conv, SeparableConv, Embedding) tied by element-wise merges (a residual ``Add`` ties both branches).
Each tensor's last axis is a *layout*: a sequence of groups side by side (``Concatenate``), possibly
flattened over ``spatial`` positions (Flatten -> Dense reads channel c at every position). Followers (BatchNorm,
LayerNorm, depthwise convolutions) carry a group and are sliced with it. A ``MultiHeadAttention`` layer makes a
group of its heads (``"name:heads"``: a head's query, key, value and output slices go together) and a group of
its output channels; its inputs are kept whole. A group touching the model's inputs or outputs, or any layer not
understood here, is frozen: kept whole, with the reason recorded.

>>> from tfopt._keras import keras
>>> x = keras.Input((8, 8, 3))
>>> a = keras.layers.Conv2D(4, 3, padding="same", name="a")(x)
>>> b = keras.layers.Conv2D(4, 3, padding="same", name="b")(a)
>>> y = keras.layers.Dense(2, name="logits")(keras.layers.Flatten()(keras.layers.Add()([a, b])))
>>> [sorted(g.producers) for g in analyse(keras.Model(x, y)).prunable()]
[['a', 'b']]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tfopt.flops import flops_by_layer

__all__ = ["ChannelGraph", "Group", "Layout", "analyse"]

PRODUCERS = {"Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "Embedding"}
FOLLOWERS = {"BatchNormalization", "LayerNormalization", "DepthwiseConv1D", "DepthwiseConv2D"}
PASS_THROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Softmax", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
    "ActivityRegularization", "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
    "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
    "UpSampling3D", "Identity",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}
# TF-op layers (``x * 2.0``, ``tf.nn.relu6(x)``) that act element by element: pass-through with scalars, a merge
# between tensors
ELEMENTWISE_OPS = {
    "__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv", "math.divide", "nn.relu",
    "nn.relu6", "nn.silu", "nn.swish", "nn.gelu", "nn.elu", "nn.leaky_relu", "math.sigmoid", "nn.sigmoid",
    "math.tanh", "nn.tanh", "math.maximum", "math.minimum", "math.negative", "math.abs", "math.square",
}


@dataclass
class Group:
    """Channels that are pruned together: ``size`` of them, made by ``producers``, carried by ``followers``."""

    gid: int
    size: int
    producers: list = field(default_factory=list)
    followers: list = field(default_factory=list)
    frozen: list = field(default_factory=list)  # reasons it is kept whole


@dataclass(frozen=True)
class Layout:
    """A tensor's last axis: groups side by side; ``spatial`` positions each when it was flattened."""

    segments: tuple  # ((gid, size), ...)
    spatial: int | None = None


def _n(value) -> int:
    return value if isinstance(value, (int, np.integer)) else len(value)


class ChannelGraph:
    """The channel groups of one functional model, and how its layers' weights are sliced by them."""

    def __init__(self, model):
        self.model = model
        self.groups: dict[int, Group] = {}
        self.parent: dict[int, int] = {}
        self.producer_of: dict[str, int] = {}  # producer layer -> its output group
        self.in_layout: dict[str, Layout] = {}  # layer -> the layout of the input it slices
        self.follower_of: dict[str, Layout] = {}  # follower layer -> the layout it carries
        self.reshapes: dict[str, Layout] = {}  # Reshape layers whose last dimension follows a layout
        self.heads: dict[str, int] = {}  # attention layer -> its group of heads
        self.macs = flops_by_layer(model)

    # ---- groups
    def new(self, size: int, producer: str | None = None, frozen: str | None = None) -> Layout:
        gid = len(self.parent)
        self.parent[gid] = gid
        self.groups[gid] = Group(gid, int(size), [producer] if producer else [], [], [frozen] if frozen else [])
        if producer:
            self.producer_of[producer] = gid
        return Layout(((gid, int(size)),))

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def _union(self, a: int, b: int):
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        keep, gone = self.groups[a], self.groups.pop(b)
        keep.producers += gone.producers
        keep.followers += gone.followers
        keep.frozen += gone.frozen

    def freeze(self, layout: Layout, reason: str):
        for gid, _ in layout.segments:
            self.groups[self.find(gid)].frozen.append(reason)

    def merge(self, layouts: list, reason: str) -> Layout:
        """Tie element-wise inputs channel by channel (a broadcast 1-channel input ties nothing)."""
        wide = [lay for lay in layouts if self.layout_size(lay) > 1 or len(layouts) == 1]
        first = wide[0] if wide else layouts[0]
        for other in wide[1:]:
            shape = [s for _, s in other.segments]
            if other.spatial != first.spatial or shape != [s for _, s in first.segments]:
                for lay in layouts:
                    self.freeze(lay, reason + ": its inputs are laid out differently")
                return first
            for (a, _), (b, _) in zip(first.segments, other.segments):
                self._union(a, b)
        return first

    def prunable(self) -> list:
        """Groups that can lose channels: made by a producer, not frozen, more than one channel."""
        return [g for gid, g in sorted(self.groups.items()) if g.producers and not g.frozen and g.size > 1]

    # ---- sizes and indices under ``kept`` (root gid -> count or kept indices; absent = whole)
    def layout_size(self, layout: Layout, kept: dict | None = None) -> int:
        kept = kept or {}
        channels = sum(_n(kept.get(self.find(gid), size)) for gid, size in layout.segments)
        return channels * (layout.spatial or 1)

    def layout_index(self, layout: Layout, kept: dict):
        parts, offset = [], 0
        for gid, size in layout.segments:
            index = kept.get(self.find(gid))
            parts.append(offset + (np.arange(size) if index is None else np.asarray(index)))
            offset += size
        channels = np.concatenate(parts)
        if layout.spatial:
            channels = np.add.outer(np.arange(layout.spatial) * offset, channels).ravel()
        return channels

    def in_index(self, name: str, kept: dict):
        layout = self.in_layout.get(name) or self.follower_of.get(name)
        return None if layout is None else self.layout_index(layout, kept)

    def head_index(self, name: str, kept: dict):
        """Kept heads of an attention layer (all when it has no head group)."""
        if name not in self.heads:
            return None
        gid = self.find(self.heads[name])
        index = kept.get(gid)
        return np.arange(self.groups[gid].size) if index is None else np.asarray(index)

    def out_index(self, name: str, kept: dict):
        if name in self.producer_of:
            gid = self.find(self.producer_of[name])
            index = kept.get(gid)
            return np.arange(self.groups[gid].size) if index is None else np.asarray(index)
        return self.in_index(name, kept) if name in self.follower_of else None

    def channels(self) -> dict:
        """Output channels of each producer."""
        return {name: self.groups[self.find(gid)].size for name, gid in self.producer_of.items()}

    def estimate_macs(self, kept: dict) -> float:
        """Multiply-adds of the model with ``kept`` channels, from the original per-layer counts."""
        total = 0.0
        for name, macs in self.macs.items():
            layer = self.model.get_layer(name) if "/" not in name else None
            ratio = 1.0
            if name in self.in_layout:
                layout = self.in_layout[name]
                ratio *= self.layout_size(layout, kept) / max(1, self.layout_size(layout))
            if name in self.follower_of:
                layout = self.follower_of[name]
                ratio *= self.layout_size(layout, kept) / max(1, self.layout_size(layout))
            if name in self.heads:  # every part of attention's work is proportional to its heads
                gid = self.find(self.heads[name])
                ratio *= _n(kept.get(gid, self.groups[gid].size)) / self.groups[gid].size
            if name in self.producer_of and name not in self.heads:
                gid = self.find(self.producer_of[name])
                out = _n(kept.get(gid, self.groups[gid].size)) / self.groups[gid].size
                if layer is not None and type(layer).__name__.startswith("SeparableConv"):
                    depthwise = math.prod(layer.depthwise_kernel.shape)
                    share = depthwise / (depthwise + math.prod(layer.pointwise_kernel.shape))
                    ratio *= share + (1 - share) * out
                else:
                    ratio *= out
            total += macs * ratio
        return total

    def frozen_reasons(self) -> list:
        seen = []
        for group in self.groups.values():
            if group.producers:
                seen += [r for r in group.frozen if r not in seen]
        return seen

    def why_nothing(self) -> str:
        reasons = self.frozen_reasons()
        if not reasons:
            return "it has no Dense, Conv or SeparableConv layer with more than one output channel"
        more = f" (and {len(reasons) - 5} more)" if len(reasons) > 5 else ""
        return "every channel group is kept whole: " + "; ".join(reasons[:5]) + more


# ------------------------------------------------------------------------------------------------- analysis


def _refs(node, names: set) -> list:
    """(layer, node, tensor) of each tensor a config node reads, the call's first argument first."""
    entries = [node] if node and isinstance(node[0], str) else node
    refs = []

    def scan(value):
        if isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str) and value[0] in names \
                and isinstance(value[1], int) and isinstance(value[2], int):
            refs.append((value[0], value[1], value[2]))
        elif isinstance(value, (list, tuple)):
            for v in value:
                scan(v)
        elif isinstance(value, dict):
            for v in value.values():
                scan(v)

    for entry in entries:
        refs.append((entry[0], entry[1], entry[2]))
        if len(entry) > 3:
            scan(entry[3])
    return refs


def _scalar_kwargs(node) -> bool:
    entries = [node] if node and isinstance(node[0], str) else node
    for entry in entries:
        for key, value in (entry[3] if len(entry) > 3 else {}).items():
            if key != "name" and not (value is None or isinstance(value, (int, float, bool, str))
                                      or (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], str))):
                return False
    return True


def _last_axis(axis, rank: int) -> bool:
    axis = axis if isinstance(axis, (list, tuple)) else [axis]
    return len(axis) == 1 and axis[0] in (-1, rank - 1)


def _shape(shape):
    return shape[0] if isinstance(shape, list) else shape


def _unsupported(kind: str, cfg: dict, layer, ins: list) -> str | None:
    """Why a layer of a known kind still cannot be handled, or None."""
    if cfg.get("data_format") == "channels_first":
        return "channels_first data"
    if kind.startswith(("Conv", "SeparableConv")) and int(cfg.get("groups", 1) or 1) != 1:
        return "grouped convolution"
    if kind.startswith(("SeparableConv", "DepthwiseConv")) and int(cfg.get("depth_multiplier", 1)) != 1:
        return "depth_multiplier > 1"
    if kind in ("BatchNormalization", "LayerNormalization") and not _last_axis(cfg.get("axis", -1),
                                                                             len(_shape(layer.input_shape))):
        return "normalizes over an axis other than the channels"
    if kind != "Dense" and kind not in PASS_THROUGH and kind != "Embedding" and any(i.spatial for i in ins):
        return "reads a flattened tensor"
    return None


def analyse(model) -> ChannelGraph:
    """The ``ChannelGraph`` of a flat functional tf_keras model."""
    graph = ChannelGraph(model)
    config = model.get_config()
    names = {entry["name"] for entry in config["layers"]}
    layouts: dict[tuple, Layout] = {}
    for entry in config["layers"]:
        name, kind, cfg, nodes = entry["name"], entry["class_name"], entry["config"], entry["inbound_nodes"]
        layer = model.get_layer(name)
        outputs = layer.output if isinstance(layer.output, list) else [layer.output]
        if kind == "InputLayer":
            layouts[(name, 0, 0)] = graph.new(outputs[0].shape[-1] or 1, frozen=f"'{name}' is the model's input")
            continue
        for n, node in enumerate(nodes):
            ins = [layouts[ref] for ref in _refs(node, names)]
            out = _one(graph, name, kind, cfg, layer, ins, node) if len(nodes) == 1 else None
            if out is None:
                why = (f"layer '{name}' ({kind}) is called {len(nodes)} times" if len(nodes) > 1 else
                       f"layer '{name}' ({kind}): " + (_unsupported(kind, cfg, layer, ins) or
                                                      "prune_channels does not handle this layer"))
                for lay in ins:
                    graph.freeze(lay, why + ", so the channels it reads are kept")
                for t, tensor in enumerate(outputs):
                    layouts[(name, n, t)] = graph.new(tensor.shape[-1] or 1, frozen=why)
            else:
                layouts[(name, n, 0)] = out
    outputs = config["output_layers"]
    for ref in ([outputs] if outputs and isinstance(outputs[0], str) else outputs):
        graph.freeze(layouts[tuple(ref[:3])], f"'{ref[0]}' gives the model's output")
    return graph


def _one(graph: ChannelGraph, name, kind, cfg, layer, ins, node):
    """The output layout of one call of a layer, or None when it is not understood."""
    if _unsupported(kind, cfg, layer, ins):
        return None
    if kind == "MultiHeadAttention":
        for lay in ins:
            graph.freeze(lay, f"layer '{name}' (MultiHeadAttention): its query, key and value inputs are kept whole "
                              "(its heads are pruned)")
        heads = graph.new(int(cfg["num_heads"]), producer=f"{name}:heads")
        graph.heads[name] = heads.segments[0][0]
        return graph.new(_shape(layer.output_shape)[-1], producer=name)
    if kind in PRODUCERS:
        if kind != "Embedding":
            graph.in_layout[name] = ins[0]
        return graph.new(_shape(layer.output_shape)[-1], producer=name)
    if kind in FOLLOWERS:
        graph.follower_of[name] = ins[0]
        for gid, _ in ins[0].segments:
            graph.groups[graph.find(gid)].followers.append(name)
        return ins[0]
    if kind in PASS_THROUGH or (kind == "Rescaling" and not isinstance(cfg.get("scale"), list)):
        return ins[0]
    if kind in MERGES:
        return graph.merge(ins, f"'{name}' ({kind})")
    if kind == "Flatten":
        shape = _shape(layer.input_shape)
        positions = math.prod(int(d) for d in shape[1:-1]) * (ins[0].spatial or 1)
        return ins[0] if positions == 1 else Layout(ins[0].segments, positions)
    if kind == "Reshape":
        before, after = _shape(layer.input_shape)[1:], tuple(cfg["target_shape"])
        if after and before[-1] == after[-1] and math.prod(before[:-1]) == math.prod(after[:-1]):
            graph.reshapes[name] = ins[0]
            return ins[0]
        return None
    if kind == "Concatenate":
        if _last_axis(cfg.get("axis", -1), len(_shape(layer.output_shape))):
            return Layout(tuple(seg for lay in ins for seg in lay.segments))
        return graph.merge(ins, f"'{name}' (Concatenate)")
    if kind == "TFOpLambda" and cfg.get("function") in ELEMENTWISE_OPS and _scalar_kwargs(node):
        return ins[0] if len(ins) == 1 else graph.merge(ins, f"'{name}' ({cfg.get('function')})")
    return None
