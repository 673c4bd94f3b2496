"""A Transformer encoder classifier over token ids or feature sequences, and the encoder blocks the ViT shares.

The encoder is the pre-norm one of ViT and GPT-2: each block is
``x + Attention(LayerNorm(x))`` then ``x + MLP(LayerNorm(x))``, with ``keras.layers.MultiHeadAttention`` for the
attention and two Dense layers for the MLP. A final LayerNorm, mean pooling over the sequence and a linear "logits"
layer follow. Every layer is a stock tf_keras layer except :class:`AddPositionEmbedding` (learned position vectors,
a registered tfopt layer, so ``.keras`` files load in safe mode), which tfmot's pruning wrapper accepts too.
"""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import keras, serializable, tf
from tfopt.errors import ConfigError
from tfopt.models import blocks
from tfopt.models.registry import register

__all__ = ["transformer", "AddPositionEmbedding", "encoder", "encoder_block", "check_heads"]


@serializable
class AddPositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to a ``(batch, sequence_length, dim)`` sequence.

    The table has shape ``(sequence_length, dim)``; TFLite converts the layer to one ADD of a constant.
    tfmot's pruning wrapper accepts it (:meth:`get_prunable_weights` lists no weight: position vectors are not
    matrix weights, zeroing them would erase positions).

    Args:
        sequence_length: Integer >= 1, the number of positions (the sequence length the model takes).
        initializer: Initializer, its name or None (normal with stddev 0.02, as in ViT), for the table.
        **kwargs: Layer arguments (``name``, ``dtype``...).

    >>> AddPositionEmbedding(4)(tf.zeros((2, 4, 3))).shape
    TensorShape([2, 4, 3])
    """

    def __init__(self, sequence_length: int, initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = blocks.positive_int("sequence_length", sequence_length)
        if initializer is None:
            initializer = keras.initializers.RandomNormal(stddev=0.02)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[1] != self.sequence_length or input_shape[-1] is None:
            raise ConfigError(
                f"{self.name}: input shape {tuple(input_shape)} does not fit sequence_length={self.sequence_length}; "
                f"allowed: (batch, {self.sequence_length}, dim)"
            )
        self.position_embeddings = self.add_weight(
            name="embeddings", shape=(self.sequence_length, int(input_shape[-1])), initializer=self.initializer,
            trainable=True,
        )
        super().build(input_shape)

    def call(self, inputs):
        return inputs + tf.cast(self.position_embeddings, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_prunable_weights(self):
        """No weight to prune (the tfmot ``PrunableLayer`` method, so ``prune_low_magnitude`` can wrap the layer)."""
        return []

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length,
                       "initializer": keras.initializers.serialize(self.initializer)})
        return config


def check_heads(embed_dim: int, num_heads: int) -> int:
    """The size of each attention head, ``embed_dim // num_heads``; ConfigError unless ``num_heads`` divides it.

    >>> check_heads(64, 4)
    16
    """
    embed_dim = blocks.positive_int("embed_dim", embed_dim)
    num_heads = blocks.positive_int("num_heads", num_heads)
    if embed_dim % num_heads:
        divisors = [n for n in range(1, embed_dim + 1) if embed_dim % n == 0]
        raise ConfigError(
            f"num_heads={num_heads} does not divide embed_dim={embed_dim} (each head gets embed_dim // num_heads "
            f"features); allowed: num_heads in {divisors[:12]}{' ...' if len(divisors) > 12 else ''}"
        )
    return embed_dim // num_heads


def encoder_block(x, num_heads: int, mlp_dim: int, dropout: float = 0.0, activation="gelu", name: str = "block"):
    """One pre-norm encoder block on a ``(batch, length, dim)`` tensor; layers named ``{name}_...``.

    ``{name}_ln1`` -> ``{name}_attention`` (MultiHeadAttention, self-attention, attention-probability dropout)
    -> [``{name}_attention_dropout``] -> ``{name}_add1`` (residual), then ``{name}_ln2`` -> ``{name}_mlp1``
    (Dense ``mlp_dim``, ``activation``) -> [``{name}_mlp_dropout``] -> ``{name}_mlp2`` (Dense ``dim``) ->
    [``{name}_mlp2_dropout``] -> ``{name}_add2`` (residual). Dropout layers exist only when ``dropout > 0``.

    Args:
        x: Tensor of shape (batch, length, dim).
        num_heads: Integer >= 1 dividing dim, the attention heads.
        mlp_dim: Integer >= 1, the hidden width of the MLP.
        dropout: Float in [0, 1), the dropout rate.
        activation: String or callable, the MLP activation.
        name: String, the prefix of the block's layer names.
    """
    dim = int(x.shape[-1])
    key_dim = check_heads(dim, num_heads)
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(x)
    h = keras.layers.MultiHeadAttention(num_heads, key_dim, dropout=dropout, name=f"{name}_attention")(h, h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_attention_dropout")(h)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    h = keras.layers.Dense(mlp_dim, activation=activation, name=f"{name}_mlp1")(h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_mlp_dropout")(h)
    h = keras.layers.Dense(dim, name=f"{name}_mlp2")(h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{name}_mlp2_dropout")(h)
    return keras.layers.Add(name=f"{name}_add2")([x, h])


def encoder(x, num_layers: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, activation="gelu",
            head_dropout: float = 0.0):
    """Position vectors, ``num_layers`` encoder blocks, final LayerNorm, mean pooling: ``(batch, length, dim)`` to
    ``(batch, dim)``.

    Layers: ``position_embedding`` (:class:`AddPositionEmbedding`), [``embedding_dropout``], ``block1_...`` to
    ``block{num_layers}_...`` (:func:`encoder_block`), ``final_ln``, ``pool`` (GlobalAveragePooling1D) and
    [``pool_dropout``] (rate ``head_dropout``). Mean pooling rather than a class token: the token would need a
    concatenation with a batch-sized broadcast (dynamic-shape ops in TFLite), and averaging the tokens works as
    well for small ViTs (Beyer et al. 2022, "Better plain ViT baselines for ImageNet-1k").

    Args:
        x: Tensor of shape (batch, length, dim): embedded tokens, projected features or patches.
        num_layers: Integer >= 1, the encoder blocks.
        num_heads: Integer >= 1 dividing dim, the attention heads.
        mlp_dim: Integer >= 1, the hidden width of each block's MLP.
        dropout: Float in [0, 1), the dropout rate inside the encoder.
        activation: String or callable, the MLP activation.
        head_dropout: Float in [0, 1), the dropout rate after pooling.
    """
    x = AddPositionEmbedding(int(x.shape[1]), name="position_embedding")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(1, num_layers + 1):
        x = encoder_block(x, num_heads, mlp_dim, dropout, activation, name=f"block{i}")
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    if head_dropout > 0:
        x = keras.layers.Dropout(head_dropout, name="pool_dropout")(x)
    return x


def check_encoder(num_layers, num_heads, embed_dim, mlp_dim, dropout, activation) -> tuple:
    """The encoder arguments checked: ``(num_layers, num_heads, embed_dim, mlp_dim, dropout, activation)``.

    >>> check_encoder(2, 4, 64, 128, 0.1, "gelu")
    (2, 4, 64, 128, 0.1, 'gelu')
    """
    num_layers = blocks.positive_int("num_layers", num_layers)
    if num_layers > blocks.MAX_LAYERS:
        raise ConfigError(f"num_layers={num_layers} is not allowed; allowed: at most {blocks.MAX_LAYERS}")
    check_heads(embed_dim, num_heads)
    return (num_layers, int(num_heads), int(embed_dim), blocks.positive_int("mlp_dim", mlp_dim),
            blocks.dropout_of(dropout), blocks.activation_of(activation))


def _embedded_inputs(input_shape, vocab_size, seq_len, embed_dim):
    """The Input tensor and its ``(batch, length, embed_dim)`` embedding: token ids through an Embedding, feature
    vectors through a Dense projection."""
    inputs, vocab_size = blocks.sequence_input("transformer", input_shape, vocab_size, seq_len, "(seq_len, features)")
    if vocab_size is None:
        return inputs, keras.layers.Dense(embed_dim, name="projection")(inputs)
    return inputs, keras.layers.Embedding(vocab_size, embed_dim, name="token_embedding")(inputs)


@register("transformer")
def transformer(
    input_shape: Sequence[int] | None = None,
    *,
    num_classes: int,
    vocab_size: int | None = None,
    seq_len: int | None = None,
    num_layers: int = 2,
    num_heads: int = 4,
    embed_dim: int = 64,
    mlp_dim: int = 128,
    dropout: float = 0.1,
    activation: str = "gelu",
):
    """A Transformer encoder classifier: embedding, position vectors, pre-norm encoder blocks, mean pooling, logits.

    Give either ``vocab_size`` and ``seq_len`` (integer token ids, embedded by ``token_embedding``, an
    Embedding without masking: id 0 is an ordinary token) or ``input_shape=(seq_len, features)`` (a sequence
    of feature vectors, e.g. row-wise MNIST ``(28, 28)``: 28 tokens of 28 features, projected by the Dense
    ``projection``), as for the ``lstm`` builder. Then :func:`encoder` and a linear "logits" layer.

    Args:
        input_shape: Sequence of 2 integers (seq_len, features), or None for token ids.
        num_classes: Integer >= 1, the number of logits.
        vocab_size: Integer >= 1, the number of token ids (with ``seq_len``), or None.
        seq_len: Integer >= 1, the length of each token sequence (with ``vocab_size``), or None.
        num_layers: Integer >= 1, the encoder blocks.
        num_heads: Integer >= 1 dividing ``embed_dim``, the attention heads.
        embed_dim: Integer >= 1, the width of the token vectors.
        mlp_dim: Integer >= 1, the hidden width of each block's MLP.
        dropout: Float in [0, 1), the dropout rate of the embeddings, attention probabilities, attention
            output, MLP and pooled features.
        activation: String or callable, the MLP activation.

    Returns:
        A functional tf_keras model named "transformer" that outputs logits.

    >>> transformer(vocab_size=100, seq_len=16, num_classes=2, embed_dim=32).output_shape
    (None, 2)
    >>> transformer((28, 28), num_classes=10, num_layers=1).get_layer("projection").output_shape
    (None, 28, 64)
    """
    num_layers, num_heads, embed_dim, mlp_dim, dropout, activation = check_encoder(
        num_layers, num_heads, embed_dim, mlp_dim, dropout, activation)
    num_classes = blocks.positive_int("num_classes", num_classes)
    with blocks.parameter_budget():
        inputs, x = _embedded_inputs(input_shape, vocab_size, seq_len, embed_dim)
        x = encoder(x, num_layers, num_heads, mlp_dim, dropout, activation, head_dropout=dropout)
        return keras.Model(inputs, blocks.logits(x, num_classes), name="transformer")
