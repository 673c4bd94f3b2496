"""A multilayer perceptron: Flatten, a stack of Dense layers with dropout, and linear logits."""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import keras
from tfopt.models import blocks
from tfopt.models.registry import register

__all__ = ["mlp"]


@register("mlp")
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    units: Sequence[int] = (300, 100),
    activation: str = "relu",
    dropout: float = 0.0,
    l1: float = 0.0,
    l2: float = 0.0,
):
    """An MLP: Flatten -> dense1, dense2, ... (each followed by dropout when ``dropout > 0``) -> "logits".

    The defaults give LeNet-300-100 (266,610 parameters on 28x28 inputs and 10 classes).

    Args:
        input_shape: Sequence of integers >= 1, the shape of one sample (flattened first).
        num_classes: Integer >= 1, the number of logits.
        units: Sequence of integers >= 1, the hidden widths (may be empty: a linear classifier).
        activation: String or callable, the hidden activation.
        dropout: Float in [0, 1), the dropout rate after each hidden layer.
        l1: Float >= 0, the L1 kernel regularization factor.
        l2: Float >= 0, the L2 kernel regularization factor.

    Returns:
        A functional tf_keras model named "mlp" that outputs logits.

    >>> mlp((28, 28, 1), 10).count_params()
    266610
    """
    input_shape = blocks.input_shape_of(input_shape)
    num_classes = blocks.positive_int("num_classes", num_classes)
    units = blocks.positive_ints("units", units)
    activation = blocks.activation_of(activation)
    dropout = blocks.dropout_of(dropout)
    regularizer = blocks.regularizer_of(l1, l2)

    with blocks.parameter_budget():
        inputs = keras.Input(input_shape, name="input")
        x = keras.layers.Flatten(name="flatten")(inputs)
        x = blocks.dense_stack(x, units, activation, dropout, regularizer)
        return keras.Model(inputs, blocks.logits(x, num_classes, regularizer), name="mlp")
