"""A recurrent classifier: stacked (optionally bidirectional) LSTMs over features or token ids, then logits.

The LSTMs are plain ``keras.layers.LSTM`` with default settings, which the TFLite converter fuses into
UNIDIRECTIONAL_SEQUENCE_LSTM ops (convert with a fixed batch of 1: see ``tfopt.export.tflite``).
"""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import keras
from tfopt.models import blocks
from tfopt.models.registry import register

__all__ = ["lstm"]


def _inputs(input_shape, vocab_size, seq_len, embed_dim):
    """The Input tensor and the sequence tensor the LSTMs read (after the Embedding for token ids)."""
    inputs, vocab_size = blocks.sequence_input("lstm", input_shape, vocab_size, seq_len, "(timesteps, features)")
    if vocab_size is None:
        return inputs, inputs
    embed_dim = blocks.positive_int("embed_dim", embed_dim)
    return inputs, keras.layers.Embedding(vocab_size, embed_dim, mask_zero=False, name="embedding")(inputs)


@register("lstm")
def lstm(
    input_shape: Sequence[int] | None = None,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    embed_dim: int = 64,
    units: Sequence[int] = (64,),
    bidirectional: bool = False,
    dropout: float = 0.0,
    num_classes: int = 2,
):
    """Stacked LSTMs lstm1, lstm2, ... (all but the last return sequences), dropout, then "logits".

    Give either ``input_shape`` (sequences of feature vectors, e.g. row-wise MNIST (28, 28)) or
    ``vocab_size`` and ``seq_len`` (integer token ids, embedded by an Embedding without masking).

    Args:
        input_shape: Sequence of 2 integers (timesteps, features), or None for token ids.
        vocab_size: Integer >= 1, the number of token ids (with ``seq_len``), or None.
        seq_len: Integer >= 1, the length of each token sequence (with ``vocab_size``), or None.
        embed_dim: Integer >= 1, the embedding size for token ids.
        units: Sequence of integers >= 1, the units of each stacked LSTM.
        bidirectional: Bool, wrap each LSTM in ``Bidirectional`` (layers named bilstm1, ...).
        dropout: Float in [0, 1), the dropout rate after each LSTM.
        num_classes: Integer >= 1, the number of logits.

    Returns:
        A functional tf_keras model named "lstm" (or "bilstm") that outputs logits.

    >>> lstm(input_shape=(28, 28), units=(32,), num_classes=10).output_shape
    (None, 10)
    """
    units = blocks.positive_ints("units", units, allow_empty=False)
    dropout = blocks.dropout_of(dropout)
    num_classes = blocks.positive_int("num_classes", num_classes)
    with blocks.parameter_budget():
        inputs, x = _inputs(input_shape, vocab_size, seq_len, embed_dim)
        for i, n in enumerate(units, start=1):
            layer = keras.layers.LSTM(n, return_sequences=i < len(units), name=f"lstm{i}")
            if bidirectional:
                layer = keras.layers.Bidirectional(layer, name=f"bilstm{i}")
            x = layer(x)
            if dropout > 0:
                x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
        name = "bilstm" if bidirectional else "lstm"
        return keras.Model(inputs, blocks.logits(x, num_classes), name=name)
