"""Keras applications (``tf_keras.applications``) as tfopt builders: MobileNets, EfficientNetB0, ResNet50, DenseNet121.

Each builder makes the application without its top (``include_top=False, pooling="avg"``) and adds
[``top_dropout``] and a linear "logits" Dense on the pooled features, in one flat functional model (the
application's own layers, not a nested model), so tfmot can wrap its layers and ``fine_tune`` can cut its head.
Weights are random (``weights=None``) or read from a local file: nothing is ever downloaded, and
``weights="imagenet"`` is refused. Every application needs images of at least 32x32 (any number of channels
with random weights). The models take what the Keras application takes: MobileNetV3 and EfficientNet rescale
[0, 255] pixels inside; MobileNetV2, ResNet50 and DenseNet121 expect their ``preprocess_input`` applied first
(with random weights any consistent scaling trains).
"""

from __future__ import annotations

import numbers
import os
from typing import Sequence

from tfopt._keras import keras
from tfopt.errors import ConfigError, check_range
from tfopt.models import blocks
from tfopt.models.registry import register

__all__ = ["application", "APPLICATIONS", "MIN_SIZE", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
           "efficientnet_b0", "resnet50", "densenet121"]

# registry name -> the tf_keras.applications constructor's name
APPLICATIONS = {
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_small": "MobileNetV3Small",
    "mobilenet_v3_large": "MobileNetV3Large",
    "efficientnet_b0": "EfficientNetB0",
    "resnet50": "ResNet50",
    "densenet121": "DenseNet121",
}
MIN_SIZE = 32  # the smallest height and width every application accepts
_WITH_ALPHA = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")


def _weights(value, name: str):
    """None, or the path of an existing local weights file; ConfigError for "imagenet" or anything else."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value == "imagenet":
        raise ConfigError(
            f"weights='imagenet' would download the ImageNet weights of {name}, and tfopt never downloads; "
            f"allowed: None (random weights) or the path of a local weights file of {name} without its top "
            "(e.g. the Keras '..._notop.h5' file, downloaded beforehand)"
        )
    if not isinstance(value, str) or not value:
        raise ConfigError(f"weights={value!r} is not allowed; allowed: None or the path of a local weights file")
    if not os.path.isfile(value):
        raise ConfigError(f"weights={value!r}: no such file; allowed: None or the path of a local weights file "
                          f"of {name} without its top")
    return value


def application(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    weights: str | None = None,
    dropout: float = 0.0,
    freeze_base: bool = False,
    **options,
):
    """The Keras application ``name`` without its top, with [``top_dropout``] and a linear "logits" head.

    Args:
        name: String, a key of :data:`APPLICATIONS` (e.g. "mobilenet_v2").
        input_shape: Sequence of 3 integers (height, width, channels), height and width >= 32.
        num_classes: Integer >= 1, the number of logits.
        weights: None (random) or String, the path of a local weights file of the application without its top
            (what Keras' ``include_top=False`` loads: the same architecture, ``alpha`` and channels); "imagenet"
            is refused (it would download).
        dropout: Float in [0, 1), the dropout rate before the logits.
        freeze_base: Bool, make every layer but the head untrainable (BatchNormalization then runs in
            inference mode): train only the new head on top of loaded weights.
        **options: Further arguments of the Keras constructor (``alpha`` for the MobileNets).

    Returns:
        A flat functional tf_keras model named ``name`` that outputs logits.

    >>> application("mobilenet_v2", (32, 32, 3), 10, alpha=0.35).output_shape
    (None, 10)
    """
    if name not in APPLICATIONS:
        raise ConfigError(f"application {name!r} is unknown; allowed: {', '.join(map(repr, APPLICATIONS))}")
    input_shape = blocks.input_shape_of(input_shape, 3, "(height, width, channels)")
    if min(input_shape[:2]) < MIN_SIZE:
        raise ConfigError(
            f"input_shape={input_shape!r} is too small for {name}; allowed: height and width >= {MIN_SIZE} "
            "(resize the images, or use a tfopt builder such as 'cnn', 'resnet' or 'vit' for small ones)"
        )
    num_classes = blocks.positive_int("num_classes", num_classes)
    dropout = blocks.dropout_of(dropout)
    if not isinstance(freeze_base, bool):
        raise ConfigError(f"freeze_base={freeze_base!r} is not allowed; allowed: True or False")
    if "alpha" in options:
        alpha = options["alpha"]
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
            raise ConfigError(f"alpha={alpha!r} is not allowed; allowed: a number > 0 (the width multiplier)")
        check_range("alpha", alpha, 0, low_open=True)
        options["alpha"] = float(alpha)
    weights = _weights(weights, name)
    constructor = getattr(keras.applications, APPLICATIONS[name])
    with blocks.parameter_budget():
        try:
            base = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling="avg", **options)
        except (ValueError, OSError) as err:
            if weights is None:
                raise ConfigError(f"{name} refused {options or 'its arguments'}: {err}") from err
            raise ConfigError(
                f"weights={weights!r} do not fit {name} without its top (input_shape={input_shape!r}"
                f"{''.join(f', {k}={v!r}' for k, v in options.items())}): {' '.join(str(err).split())[:300]}; "
                "allowed: a weights file saved from the same application and arguments with include_top=False"
            ) from err
        if freeze_base:
            for layer in base.layers:
                layer.trainable = False
        x = base.output
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        return keras.Model(base.inputs, blocks.logits(x, num_classes), name=name)


@register("mobilenet_v2")
def mobilenet_v2(input_shape: Sequence[int], num_classes: int, weights: str | None = None, alpha: float = 1.0,
                 dropout: float = 0.0, freeze_base: bool = False):
    """MobileNetV2 (Sandler et al. 2018) with width multiplier ``alpha``; see :func:`application` for the rest.

    >>> mobilenet_v2((32, 32, 3), 10, alpha=0.35).count_params()  # 410,208 in Keras' base + 1280 * 10 + 10
    423018
    """
    return application("mobilenet_v2", input_shape, num_classes, weights, dropout, freeze_base, alpha=alpha)


@register("mobilenet_v3_small")
def mobilenet_v3_small(input_shape: Sequence[int], num_classes: int, weights: str | None = None, alpha: float = 1.0,
                       dropout: float = 0.2, freeze_base: bool = False):
    """MobileNetV3-Small (Howard et al. 2019) with width multiplier ``alpha``; see :func:`application`."""
    return application("mobilenet_v3_small", input_shape, num_classes, weights, dropout, freeze_base, alpha=alpha)


@register("mobilenet_v3_large")
def mobilenet_v3_large(input_shape: Sequence[int], num_classes: int, weights: str | None = None, alpha: float = 1.0,
                       dropout: float = 0.2, freeze_base: bool = False):
    """MobileNetV3-Large (Howard et al. 2019) with width multiplier ``alpha``; see :func:`application`."""
    return application("mobilenet_v3_large", input_shape, num_classes, weights, dropout, freeze_base, alpha=alpha)


@register("efficientnet_b0")
def efficientnet_b0(input_shape: Sequence[int], num_classes: int, weights: str | None = None, dropout: float = 0.2,
                    freeze_base: bool = False):
    """EfficientNet-B0 (Tan and Le 2019); see :func:`application`."""
    return application("efficientnet_b0", input_shape, num_classes, weights, dropout, freeze_base)


@register("resnet50")
def resnet50(input_shape: Sequence[int], num_classes: int, weights: str | None = None, dropout: float = 0.0,
             freeze_base: bool = False):
    """The Keras ResNet50 (He et al. 2016; tfopt's own ``resnet`` builder has depth=50 too); see :func:`application`."""
    return application("resnet50", input_shape, num_classes, weights, dropout, freeze_base)


@register("densenet121")
def densenet121(input_shape: Sequence[int], num_classes: int, weights: str | None = None, dropout: float = 0.0,
                freeze_base: bool = False):
    """DenseNet-121 (Huang et al. 2017); see :func:`application`."""
    return application("densenet121", input_shape, num_classes, weights, dropout, freeze_base)
