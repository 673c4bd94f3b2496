"""Building blocks and argument checks the model builders share.

Checks turn impossible arguments into a :class:`ConfigError` that names the value and what is allowed;
:func:`parameter_budget` refuses, before its memory is taken, any weight that would make a model larger than
:func:`parameter_limit` (2**31 parameters, or what this machine's memory can train).
Blocks are plain functions on functional-API tensors (no nested sub-models), so tfmot can wrap every layer:

* ``dense_stack`` / ``logits``: hidden Dense layers with dropout, and the final linear Dense "logits".
* ``conv_bn``: Conv2D (no bias) + BatchNormalization + optional activation.
* ``basic_block`` / ``bottleneck_block``: the ResNet main paths (``BLOCKS`` maps names to them).
* ``CONNECTIONS``: how a block's main path meets its input: "residual" (add the shortcut, projecting it
  with a 1x1 conv + BN when the shape changes), "plain" (no shortcut) or "dense" (concatenate the block's
  output with its input, average-pooled when the block strides, DenseNet-like).
* ``transition``: the 1x1 conv + BN + ReLU that brings a "dense" stage back to the stage width.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from typing import Callable, Sequence

import numpy as np
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, check_choice, check_range

__all__ = [
    "MAX_PARAMS",
    "MAX_LAYERS",
    "parameter_limit",
    "parameter_budget",
    "positive_int",
    "positive_ints",
    "input_shape_of",
    "sequence_input",
    "activation_of",
    "dropout_of",
    "regularizer_of",
    "dense_stack",
    "logits",
    "conv_bn",
    "basic_block",
    "bottleneck_block",
    "BLOCKS",
    "CONNECTIONS",
    "connect",
    "transition",
]

MAX_PARAMS = 2**31  # parameters of one model
MAX_LAYERS = 100  # entries of a list of layer sizes (filters, units, dense, blocks)
# bytes per parameter while training: float32 weights, their gradients and two optimizer slots (Adam)
_TRAINING_BYTES = 16

COMMON_ACTIVATIONS = ("relu", "relu6", "elu", "selu", "gelu", "swish", "tanh", "sigmoid", "softplus", "linear")


# ----------------------------------------------------------------------------------------------- checks
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _plain_sequence(value):
    """A tf.TensorShape or 1-D NumPy array as a list (unknown shapes as None); anything else unchanged."""
    if hasattr(value, "as_list"):
        return value.as_list() if value.rank is not None else None
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return value.tolist()
    return value


def positive_int(name: str, value) -> int:
    """``value`` as an int when it is an integer >= 1, else ConfigError.

    >>> positive_int("num_classes", 10)
    10
    """
    if not _is_int(value) or value < 1:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer >= 1")
    return int(value)


def positive_ints(name: str, values, allow_empty: bool = True, max_len: int = MAX_LAYERS) -> tuple:
    """``values`` (an int or a sequence of at most ``max_len`` ints) as a tuple of ints >= 1, else ConfigError.

    >>> positive_ints("units", [300, 100])
    (300, 100)
    """
    values = _plain_sequence(values)
    if _is_int(values):
        values = (values,)
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{name}={values!r} is not allowed; allowed: a sequence of integers >= 1")
    if not values and not allow_empty:
        raise ConfigError(f"{name}={values!r} is empty; allowed: a non-empty sequence of integers >= 1")
    if len(values) > max_len:
        raise ConfigError(f"{name} has {len(values)} entries; allowed: at most {max_len}")
    for v in values:
        if not _is_int(v) or v < 1:
            raise ConfigError(f"{name}={tuple(values)!r} contains {v!r}; allowed: integers >= 1")
    return tuple(int(v) for v in values)


def input_shape_of(value, ndim: int | None = None, what: str = "") -> tuple:
    """``value`` (an input shape without the batch axis) as a tuple of ints >= 1 with ``ndim`` axes.

    Args:
        value: Sequence of integers, e.g. ``(28, 28, 1)``.
        ndim: Integer or None, the number of axes required.
        what: String, what the axes mean (for the message), e.g. "(height, width, channels)".

    >>> input_shape_of([32, 32, 3], 3)
    (32, 32, 3)
    """
    value = _plain_sequence(value)
    if value is None or _is_int(value) or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"input_shape={value!r} is not allowed; allowed: a tuple of integers >= 1 {what}".rstrip())
    if ndim is not None and len(value) != ndim:
        raise ConfigError(f"input_shape={tuple(value)!r} has {len(value)} axes; allowed: {ndim} axes {what}".rstrip())
    if not value or any(not _is_int(v) or v < 1 for v in value):
        raise ConfigError(f"input_shape={tuple(value)!r} is not allowed; allowed: integers >= 1 {what}".rstrip())
    return tuple(int(v) for v in value)


def sequence_input(builder: str, input_shape, vocab_size, seq_len, what: str = "(length, features)"):
    """The Input of a sequence model: feature vectors (``input_shape=(length, features)``) or token ids
    (``vocab_size`` and ``seq_len``, both); exactly one of the two.

    Args:
        builder: String, the builder's name (for the message).
        input_shape: Sequence of two integers or None.
        vocab_size: Integer >= 1 or None.
        seq_len: Integer >= 1 or None.
        what: String, what the two axes of ``input_shape`` mean.

    Returns:
        ``(inputs, vocab_size)``: the Input tensor (int32 ``(seq_len,)`` for token ids) and the checked vocabulary
        size, or None for feature vectors (the builder embeds token ids, projects features, or reads them as they are).

    >>> inputs, vocab = sequence_input("lstm", None, 100, 8)
    >>> tuple(inputs.shape), vocab
    ((None, 8), 100)
    """
    tokens = vocab_size is not None or seq_len is not None
    if (input_shape is None) == (not tokens) or (tokens and (vocab_size is None or seq_len is None)):
        raise ConfigError(
            f"{builder} got input_shape={input_shape!r}, vocab_size={vocab_size!r}, seq_len={seq_len!r}; "
            f"allowed: exactly one of input_shape={what} for sequences of feature vectors, "
            "or vocab_size and seq_len (both) for sequences of token ids"
        )
    if input_shape is not None:
        return keras.Input(input_shape_of(input_shape, 2, what), name="input"), None
    vocab_size = positive_int("vocab_size", vocab_size)
    seq_len = positive_int("seq_len", seq_len)
    return keras.Input((seq_len,), dtype="int32", name="input"), vocab_size


def activation_of(value, name: str = "activation"):
    """``value`` when Keras knows it as an activation (a name or a callable), else ConfigError.

    >>> activation_of("relu")
    'relu'
    """
    if callable(value):
        return value
    if isinstance(value, str):
        try:
            keras.activations.get(value)
            return value
        except (ValueError, TypeError):
            pass
    raise ConfigError(
        f"{name}={value!r} is not a Keras activation; allowed: a callable or a name such as "
        f"{', '.join(map(repr, COMMON_ACTIVATIONS))}"
    )


def dropout_of(value, name: str = "dropout") -> float:
    """``value`` as a float in [0, 1), else ConfigError.

    >>> dropout_of(0.5)
    0.5
    """
    check_range(name, value, 0, 1, high_open=True)
    return float(value)


def regularizer_of(l1: float = 0.0, l2: float = 0.0):
    """A ``keras.regularizers.L1L2`` for the given factors, or None when both are 0.

    Args:
        l1: Float >= 0, the L1 factor.
        l2: Float >= 0, the L2 factor.

    >>> round(regularizer_of(0.0, 1e-4).get_config()["l2"], 6)
    0.0001
    """
    check_range("l1", l1, 0)
    check_range("l2", l2, 0)
    if not l1 and not l2:
        return None
    return keras.regularizers.L1L2(l1=float(l1), l2=float(l2))


# ------------------------------------------------------------------------------------------------ size
def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def parameter_limit() -> tuple[int, str]:
    """The most parameters a model may have here, and why: :data:`MAX_PARAMS`, or fewer when this machine's
    memory cannot hold 16 bytes per parameter (float32 weights, gradients and two optimizer slots).

    >>> limit, why = parameter_limit()
    >>> 0 < limit <= MAX_PARAMS
    True
    """
    memory = _memory_bytes()
    if memory is not None and memory // _TRAINING_BYTES < MAX_PARAMS:
        return memory // _TRAINING_BYTES, (f"this machine's {memory / 2**30:.1f} GiB of memory at {_TRAINING_BYTES} "
                                           "bytes per parameter to train: weights, gradients, optimizer slots")
    return MAX_PARAMS, "2**31"


@contextlib.contextmanager
def parameter_budget(limit: int | None = None):
    """Within this context, a weight whose creation would take the weights created so far past ``limit``
    parameters raises ConfigError naming its layer, its shape and the count, before any memory is taken.

    Args:
        limit: Integer or None, the most parameters (None: :func:`parameter_limit`).

    >>> with parameter_budget(100):
    ...     keras.layers.Dense(1000, name="wide")(keras.Input((10,)))
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: layer 'wide' needs a weight 'kernel' of shape [10, 1000] (10,000 parameters), which brings the model to 10,000 parameters; allowed: at most 100 parameters (the limit given); use smaller layers or inputs
    """
    why = "the limit given"
    if limit is None:
        limit, why = parameter_limit()
    total = 0

    def creator(next_creator, **kwargs):
        nonlocal total
        shape = kwargs.get("shape")
        shape = None if shape is None else tf.TensorShape(shape)
        if shape is not None and shape.is_fully_defined():
            count = int(np.prod(shape.as_list(), dtype=object))
            if total + count > limit:
                layer = (tf.get_current_name_scope() or "").split("/")[0] or "?"
                raise ConfigError(
                    f"layer {layer!r} needs a weight {kwargs.get('name')!r} of shape {shape.as_list()} ({count:,} "
                    f"parameters), which brings the model to {total + count:,} parameters; allowed: at most {limit:,} "
                    f"parameters ({why}); use smaller layers or inputs"
                )
            total += count
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


# ----------------------------------------------------------------------------------------- dense layers
def dense_stack(x, units: Sequence[int], activation="relu", dropout: float = 0.0, regularizer=None,
                prefix: str = "dense"):
    """Hidden Dense layers ``{prefix}1, {prefix}2, ...``, each followed by ``dropout{i}`` when dropout > 0.

    Args:
        x: Tensor, the (flat) input.
        units: Sequence of integers, the width of each layer.
        activation: String or callable, the hidden activation.
        dropout: Float in [0, 1), the dropout rate after each layer.
        regularizer: Keras regularizer or None, applied to every kernel.
        prefix: String, the layer name prefix.
    """
    for i, n in enumerate(units, start=1):
        x = keras.layers.Dense(n, activation=activation, kernel_regularizer=regularizer, name=f"{prefix}{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    return x


def logits(x, num_classes: int, regularizer=None):
    """The final linear Dense layer, named "logits" (no activation: losses use ``from_logits=True``).

    It always computes in float32, so under a mixed-precision policy (``mixed_float16`` / ``mixed_bfloat16``)
    the hidden layers run in half precision while the logits, softmax and loss stay numerically stable.
    """
    return keras.layers.Dense(
        num_classes, activation=None, kernel_regularizer=regularizer, dtype="float32", name="logits"
    )(x)


# ---------------------------------------------------------------------------------------- ResNet blocks
def conv_bn(x, filters: int, kernel_size: int, strides: int = 1, name: str = "conv", activation: str | None = "relu"):
    """Conv2D ``name`` (same padding, no bias) -> BatchNormalization ``{name}_bn`` -> ``{name}_relu``."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def basic_block(x, filters: int, stride: int, name: str):
    """Two 3x3 convs (the first strided) with BN; returns the main path before its last ReLU."""
    x = conv_bn(x, filters, 3, stride, name=f"{name}_conv1")
    return conv_bn(x, filters, 3, 1, name=f"{name}_conv2", activation=None)


def bottleneck_block(x, filters: int, stride: int, name: str):
    """1x1 reduce, 3x3 (strided), 1x1 expand to ``4 * filters``, each with BN; main path before its last ReLU."""
    x = conv_bn(x, filters, 1, 1, name=f"{name}_conv1")
    x = conv_bn(x, filters, 3, stride, name=f"{name}_conv2")
    return conv_bn(x, 4 * filters, 1, 1, name=f"{name}_conv3", activation=None)


# name -> (main path function, channel expansion of its output)
BLOCKS: dict[str, tuple[Callable, int]] = {"basic": (basic_block, 1), "bottleneck": (bottleneck_block, 4)}


def _residual(inputs, main, stride: int, name: str):
    shortcut = inputs
    if stride != 1 or inputs.shape[-1] != main.shape[-1]:
        shortcut = conv_bn(inputs, main.shape[-1], 1, stride, name=f"{name}_shortcut", activation=None)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, main])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def _plain(inputs, main, stride: int, name: str):
    return keras.layers.Activation("relu", name=f"{name}_out")(main)


def _dense(inputs, main, stride: int, name: str):
    if stride != 1:
        inputs = keras.layers.AveragePooling2D(stride, strides=stride, padding="same", name=f"{name}_pool")(inputs)
    out = keras.layers.Activation("relu", name=f"{name}_out")(main)
    return keras.layers.Concatenate(name=f"{name}_concat")([inputs, out])


# name -> function(block input, block main-path output, stride, name) -> block output
CONNECTIONS: dict[str, Callable] = {"residual": _residual, "plain": _plain, "dense": _dense}


def connect(x, block: str, filters: int, stride: int, connection: str, name: str):
    """One ResNet block: ``block``'s main path on ``x`` joined to ``x`` as ``connection`` says.

    Args:
        x: Tensor (batch, height, width, channels).
        block: String, a key of ``BLOCKS`` ("basic" or "bottleneck").
        filters: Integer, the block width (a bottleneck outputs ``4 * filters`` channels).
        stride: Integer, the stride of the block's strided conv.
        connection: String, a key of ``CONNECTIONS`` ("residual", "plain" or "dense").
        name: String, the prefix of the block's layer names, e.g. "stage2_block1".
    """
    check_choice("block", block, tuple(BLOCKS))
    check_choice("connection", connection, tuple(CONNECTIONS))
    main = BLOCKS[block][0](x, filters, stride, name)
    return CONNECTIONS[connection](x, main, stride, name)


def transition(x, filters: int, name: str):
    """1x1 conv + BN + ReLU named ``{name}_transition``: a "dense" stage's concatenations back to ``filters``."""
    return conv_bn(x, filters, 1, 1, name=f"{name}_transition")
