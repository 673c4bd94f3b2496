"""Add L1/L2 kernel weight penalties to an existing Sequential or functional model.

:func:`apply` rebuilds the model from its config with the kernel regularizers set, then copies the
weights, so outputs are unchanged and ``model.losses`` holds the penalties. The rebuilt model is
re-compiled like the original only when that compile state is trivial (string or Loss loss, string
metrics, no loss weights); otherwise it comes back uncompiled. Recompile it in any case when you
want a fresh optimizer state.

>>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
>>> len(apply(m, l2=1e-4).losses)
1
"""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import check_model, keras
from tfopt.errors import ConfigError, UnsupportedLayerError, check_range

__all__ = ["apply", "KERNEL_ATTRIBUTES"]

# Layer class name -> the config keys of the regularizers of its kernels.
KERNEL_ATTRIBUTES = {
    **{name: ("kernel_regularizer",) for name in (
        "Dense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    )},
    "DepthwiseConv1D": ("depthwise_regularizer",),
    "DepthwiseConv2D": ("depthwise_regularizer",),
    "SeparableConv1D": ("depthwise_regularizer", "pointwise_regularizer"),
    "SeparableConv2D": ("depthwise_regularizer", "pointwise_regularizer"),
}


def _keys_for(layer_config: dict, select_all: bool) -> tuple[str, ...]:
    keys = KERNEL_ATTRIBUTES.get(layer_config.get("class_name"), ())
    if not keys and select_all and "kernel_regularizer" in layer_config.get("config", {}):
        keys = ("kernel_regularizer",)
    return keys


def _set_regularizers(config: dict, regularizer, layers, found: set) -> None:
    """Set the kernel regularizers of the selected layer configs, in place, recursing into nested models."""
    select_all = layers == "all"
    for layer_config in config.get("layers", []):
        inner = layer_config.get("config", {})
        if isinstance(inner.get("layers"), list):
            _set_regularizers(inner, regularizer, layers, found)
            continue
        name = inner.get("name")
        keys = _keys_for(layer_config, select_all)
        if isinstance(layers, (list, tuple, set, frozenset)):
            if name not in layers:
                continue
            keys = keys or (("kernel_regularizer",) if "kernel_regularizer" in inner else ())
            if not keys:
                raise UnsupportedLayerError(
                    f"layer {name!r} ({layer_config.get('class_name')}) has no kernel regularizer to set; "
                    f"allowed: layers with a kernel (Dense, Conv*, or any with a `kernel_regularizer`)"
                )
        for key in keys:
            inner[key] = None if regularizer is None else keras.regularizers.serialize(regularizer)
        if keys:
            found.add(name)


def _compile_like_if_trivial(new_model, model) -> None:
    if getattr(model, "optimizer", None) is None or not getattr(model, "_is_compiled", False):
        return
    try:
        args = model._get_compile_args()
    except (AttributeError, RuntimeError, ValueError):
        return
    loss, metrics = args.get("loss"), args.get("metrics")
    simple_loss = isinstance(loss, (str, keras.losses.Loss))
    simple_metrics = metrics is None or (
        isinstance(metrics, (list, tuple)) and all(isinstance(m, str) for m in metrics)
    )
    if not simple_loss or not simple_metrics or args.get("weighted_metrics") or args.get("loss_weights"):
        return
    optimizer = type(model.optimizer).from_config(model.optimizer.get_config())
    new_model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def apply(model, l1: float = 0.0, l2: float = 0.0, layers: str | Sequence[str] | None = None):
    """Return a copy of ``model`` whose kernels carry ``l1 * sum|w| + l2 * sum(w**2)`` penalties.

    Existing kernel regularizers of the selected layers are replaced (``l1 = l2 = 0`` removes them);
    biases and activity regularizers are left as they are. The weights are copied, so outputs match.

    Args:
        model: tf_keras Sequential or functional model (subclassed models have no layer config).
        l1: Float >= 0, the L1 factor.
        l2: Float >= 0, the L2 factor.
        layers: None (Dense, Conv*, DepthwiseConv*, SeparableConv* layers), "all" (those plus any layer
            with a ``kernel_regularizer`` argument, e.g. EinsumDense or LSTM), or a sequence of layer names.

    Returns:
        A new tf_keras model (compiled like ``model`` only when its compile state is trivial:
        recompile it before training if in doubt).

    >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    >>> apply(m, l1=0.0, l2=0.0).losses
    []
    """
    check_model(model, "regularizers.apply")
    check_range("l1", l1, 0)
    check_range("l2", l2, 0)
    if layers is not None and layers != "all" and not isinstance(layers, (list, tuple, set, frozenset)):
        raise ConfigError(f"layers={layers!r} is not allowed; allowed: None, 'all' or a list of layer names")
    if isinstance(model, keras.Sequential) or model._is_graph_network:
        config = model.get_config()
    else:
        raise UnsupportedLayerError(
            f"regularizers.apply needs a Sequential or functional model, got the subclassed {type(model).__name__}; "
            "pass kernel_regularizer= to its layers instead"
        )
    regularizer = keras.regularizers.L1L2(l1=float(l1), l2=float(l2)) if (l1 or l2) else None
    found: set = set()
    _set_regularizers(config, regularizer, layers, found)
    if isinstance(layers, (list, tuple, set, frozenset)) and set(layers) - found:
        missing = sorted(set(layers) - found)
        raise ConfigError(f"layers={missing!r} are not in the model; allowed: its layer names")
    new_model = type(model).from_config(config)
    new_model.set_weights(model.get_weights())
    _compile_like_if_trivial(new_model, model)
    return new_model
