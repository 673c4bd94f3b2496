"""A plain convolutional classifier: conv blocks (conv -> BN -> activation -> 2x2 pool), then dense layers."""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import keras
from tfopt.errors import ConfigError, check_choice
from tfopt.models import blocks
from tfopt.models.registry import register

__all__ = ["cnn", "POOLS"]

# name -> 2x2 pooling layer class (None: no pooling)
POOLS = {"max": keras.layers.MaxPooling2D, "avg": keras.layers.AveragePooling2D, None: None}


def _kernel_size(value) -> tuple:
    size = blocks.positive_ints("kernel_size", value, allow_empty=False)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2:
        raise ConfigError(f"kernel_size={value!r} is not allowed; allowed: an integer >= 1 or a pair of them")
    return size


@register("cnn")
def cnn(
    input_shape: Sequence[int],
    num_classes: int,
    filters: Sequence[int] = (32, 64),
    kernel_size: int | Sequence[int] = 3,
    pool: str | None = "max",
    dense: Sequence[int] = (128,),
    dropout: float = 0.0,
    batch_norm: bool = False,
    l1: float = 0.0,
    l2: float = 0.0,
    activation: str = "relu",
):
    """A CNN: per entry of ``filters`` a block conv{i} (same padding) -> [conv{i}_bn] -> act -> pool{i} (2x2).

    Then Flatten, the ``dense`` layers (each followed by dropout when ``dropout > 0``) and a linear
    "logits" layer. ``l1``/``l2`` regularize every conv and dense kernel.

    Args:
        input_shape: Sequence of 3 integers, (height, width, channels).
        num_classes: Integer >= 1, the number of logits.
        filters: Sequence of integers >= 1, the filters of each conv block (one block per entry).
        kernel_size: Integer or pair of integers, the conv kernel size.
        pool: String or None, "max", "avg" or None (no pooling).
        dense: Sequence of integers >= 1, the hidden dense widths (may be empty).
        dropout: Float in [0, 1), the dropout rate after each hidden dense layer (after Flatten when
            ``dense`` is empty).
        batch_norm: Bool, add BatchNormalization after each conv (the conv then has no bias).
        l1: Float >= 0, the L1 kernel regularization factor.
        l2: Float >= 0, the L2 kernel regularization factor.
        activation: String or callable, the hidden activation.

    Returns:
        A functional tf_keras model named "cnn" that outputs logits.

    >>> cnn((28, 28, 1), 10).output_shape
    (None, 10)
    """
    input_shape = blocks.input_shape_of(input_shape, 3, "(height, width, channels)")
    num_classes = blocks.positive_int("num_classes", num_classes)
    filters = blocks.positive_ints("filters", filters, allow_empty=False)
    kernel_size = _kernel_size(kernel_size)
    check_choice("pool", pool, tuple(POOLS))
    dense = blocks.positive_ints("dense", dense)
    dropout = blocks.dropout_of(dropout)
    activation = blocks.activation_of(activation)
    regularizer = blocks.regularizer_of(l1, l2)
    if pool is not None:
        need = 2 ** len(filters)
        if min(input_shape[:2]) < need:
            raise ConfigError(
                f"input_shape={input_shape!r} is too small for {len(filters)} 2x2 poolings (one per filter count "
                f"in filters={filters!r}); allowed: height and width >= {need}, fewer filters, or pool=None"
            )

    with blocks.parameter_budget():
        inputs = keras.Input(input_shape, name="input")
        x = inputs
        for i, n in enumerate(filters, start=1):
            height, width = x.shape[1], x.shape[2]
            if kernel_size[0] > height or kernel_size[1] > width:
                raise ConfigError(
                    f"kernel_size={kernel_size!r} is larger than the {height}x{width} input of conv{i}"
                    + (" (each 2x2 pooling halves it)" if i > 1 and pool is not None else "")
                    + f"; allowed: at most {height}x{width} there"
                )
            x = keras.layers.Conv2D(
                n,
                kernel_size,
                padding="same",
                use_bias=not batch_norm,
                activation=None if batch_norm else activation,
                kernel_regularizer=regularizer,
                name=f"conv{i}",
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"conv{i}_bn")(x)
                x = keras.layers.Activation(activation, name=f"conv{i}_act")(x)
            if pool is not None:
                x = POOLS[pool](2, name=f"pool{i}")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        if not dense and dropout > 0:
            x = keras.layers.Dropout(dropout, name="dropout")(x)
        x = blocks.dense_stack(x, dense, activation, dropout, regularizer)
        return keras.Model(inputs, blocks.logits(x, num_classes, regularizer), name="cnn")
