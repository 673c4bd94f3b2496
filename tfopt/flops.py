"""Multiply-adds of a Keras model, counted from its layer graph: the cost that structured compression lowers.

The count is of multiply-accumulate operations (MACs) per example, the unit Torch-Pruning, the ResRep paper and
most model cards quote as "FLOPs". Only layers that multiply by weights or attention scores are counted (Dense,
convolutions, recurrent cells, attention); element-wise layers (BatchNorm, activations, pooling, adds) are
not: they are memory-bound and a small share of the work. It is counted by hand from layer shapes because no
maintained library on this stack counts per layer by name (TensorFlow's profiler counts a frozen graph's ops,
by op, not by Keras layer).

>>> from tfopt._keras import keras
>>> m = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
>>> flops(m)
12
"""

from __future__ import annotations

import math

from tfopt._keras import check_model, keras

__all__ = ["flops", "flops_by_layer"]

_RECURRENT_GATES = {"SimpleRNN": 1, "GRU": 3, "LSTM": 4}


def _prod(values) -> int:
    return int(math.prod(int(v) for v in values))


def _shape(x):
    return tuple(getattr(x, "shape", x))


def _node_shapes(node):
    """(input shapes, output shapes) of one call of a layer, each a list of tuples."""
    ins = node.input_shapes
    outs = node.output_shapes
    ins = [tuple(ins)] if isinstance(ins, (tuple, list)) and ins and not isinstance(ins[0], (tuple, list)) else ins
    outs = [tuple(outs)] if isinstance(outs, (tuple, list)) and outs and not isinstance(outs[0], (tuple, list)) else outs
    if isinstance(ins, dict):
        ins = list(ins.values())
    if isinstance(outs, dict):
        outs = list(outs.values())
    return [tuple(s) for s in ins], [tuple(s) for s in outs]


def _spatial(shape) -> int:
    """Product of the dimensions between batch and channels (1 for a vector)."""
    return _prod(d for d in shape[1:-1] if d is not None)


def _attention_macs(layer, node, out_shape) -> int:
    query_kernel = layer.weights[0].shape  # [d_query, heads, key_dim]
    heads, key_dim = int(query_kernel[1]), int(query_kernel[2])
    value_dim = int(layer.get_config().get("value_dim") or key_dim)
    args = list(node.call_args)
    value = args[1] if len(args) > 1 else node.call_kwargs.get("value")
    key = args[2] if len(args) > 2 else node.call_kwargs.get("key", value)
    query_shape = _node_shapes(node)[0][0]
    key_shape, value_shape = _shape(key), _shape(value)
    t_q, t_k = _spatial(query_shape), _spatial(key_shape)
    d_out = int(out_shape[-1])
    return (t_q * int(query_shape[-1]) * heads * key_dim        # query projection
            + t_k * int(key_shape[-1]) * heads * key_dim        # key projection
            + t_k * int(value_shape[-1]) * heads * value_dim    # value projection
            + heads * t_q * t_k * (key_dim + value_dim)         # scores and weighted sum
            + t_q * heads * value_dim * d_out)                  # output projection


def _layer_macs(layer, node) -> int:
    """Multiply-adds of one call of a (non-model) layer; 0 for element-wise layers."""
    kind = type(layer).__name__
    ins, outs = _node_shapes(node)
    if not ins or not outs:
        return 0
    x, y = ins[0], outs[0]
    if kind == "Bidirectional":
        return 2 * _recurrent_macs(layer.forward_layer, x)
    if kind in ("TimeDistributed",):
        inner = _layer_macs_from_shapes(layer.layer, (x[0],) + tuple(x[2:]), (y[0],) + tuple(y[2:]))
        return inner * int(x[1] or 1)
    if kind in _RECURRENT_GATES or kind.endswith(("LSTM", "GRU")):
        return _recurrent_macs(layer, x)
    if kind == "MultiHeadAttention":
        return _attention_macs(layer, node, y)
    return _layer_macs_from_shapes(layer, x, y)


def _layer_macs_from_shapes(layer, x, y) -> int:
    kind = type(layer).__name__
    if kind == "Dense":  # kernel [in, out] at every position of the input's middle dimensions
        return _prod(layer.kernel.shape) * _spatial(y)
    if kind in ("Conv1D", "Conv2D", "Conv3D"):  # kernel [*k, in / groups, out] at every output position
        return _prod(layer.kernel.shape) * _spatial(y)
    if kind in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"):
        return _prod(layer.kernel.shape) * _spatial(x)
    if kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        return _prod(layer.depthwise_kernel.shape) * _spatial(y)
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        depthwise = _prod(layer.depthwise_kernel.shape) * _spatial(y)
        return depthwise + _prod(layer.pointwise_kernel.shape) * _spatial(y)
    return 0


def _recurrent_macs(layer, x) -> int:
    cell = getattr(layer, "cell", layer)
    kind = type(layer).__name__
    gates = next((g for name, g in _RECURRENT_GATES.items() if name in kind), 1)
    units = int(cell.units)
    steps = int(x[1] or 1)
    return steps * gates * (int(x[-1]) + units) * units


def _own_nodes(model) -> list:
    """The calls of layers that belong to ``model``'s own graph (a layer shared with another model, as tfmot's
    strip and clone leave them, has other models' calls in its ``inbound_nodes`` too)."""
    by_depth = getattr(model, "_nodes_by_depth", None)  # pylint: disable=protected-access (as _model.flatten_model)
    if by_depth:
        return [node for depth in sorted(by_depth) for node in by_depth[depth]]
    return [node for layer in model.layers for node in layer.inbound_nodes]


def _walk(model, prefix: str, out: dict):
    for node in _own_nodes(model):
        layer = node.layer
        if getattr(node, "is_input", False) or type(layer).__name__ == "InputLayer":
            continue
        name = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            _walk(layer, f"{name}/", out)
            continue
        wrapped = type(layer).__name__.startswith(("Prune", "Quantize", "Cluster")) and hasattr(layer, "layer")
        counted = layer.layer if wrapped else layer  # tfmot's wrappers count what they wrap
        try:
            macs = _layer_macs(counted, node)
        except (AttributeError, IndexError, TypeError, ValueError):
            macs = 0  # a layer whose shapes are not static (e.g. a None sequence length) counts 0
        if macs:
            out[name] = out.get(name, 0) + macs


def _order(model, prefix: str, order: dict):
    for layer in model.layers:
        order.setdefault(f"{prefix}{layer.name}", len(order))
        if isinstance(layer, keras.Model):
            _order(layer, f"{prefix}{layer.name}/", order)


def flops_by_layer(model) -> dict[str, int]:
    """Multiply-adds per example of each layer that has any, nested models' layers as ``"outer/inner"``.

    Args:
        model: tf_keras model, built (functional, Sequential, or nested of those).

    >>> from tfopt._keras import keras
    >>> m = keras.Sequential([keras.layers.Conv2D(8, 3, input_shape=(10, 10, 1), name="c"),
    ...                       keras.layers.Flatten(), keras.layers.Dense(2, name="d")])
    >>> flops_by_layer(m)
    {'c': 4608, 'd': 1024}
    """
    check_model(model, "flops")
    out: dict[str, int] = {}
    _walk(model, "", out)
    order = {}
    _order(model, "", order)
    return dict(sorted(out.items(), key=lambda item: order.get(item[0], len(order))))


def flops(model) -> int:
    """Integer, multiply-adds (MACs) per example of ``model``: see the module docstring for what is counted.

    A sequence length of None counts as 1 step; give the model a fixed length to count its recurrent work.

    Args:
        model: tf_keras model, built.

    >>> from tfopt._keras import keras
    >>> flops(keras.Sequential([keras.layers.Dense(10, input_shape=(784,)), keras.layers.Dense(2)]))
    7860
    """
    return int(sum(flops_by_layer(model).values()))
