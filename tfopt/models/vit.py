"""A Vision Transformer (Dosovitskiy et al. 2021) for small images: strided-conv patches, the tfopt encoder, logits.

The patches are embedded by one Conv2D whose kernel and stride are the patch size (the same linear map on each
non-overlapping patch as ViT's), reshaped to a sequence and fed to :func:`tfopt.models.transformer.encoder`
(position vectors, pre-norm blocks, mean pooling).
"""

from __future__ import annotations

from typing import Sequence

from tfopt._keras import keras
from tfopt.errors import ConfigError
from tfopt.models import blocks
from tfopt.models.registry import register
from tfopt.models.transformer import check_encoder, encoder

__all__ = ["vit"]


def _patch_size(value, input_shape) -> tuple:
    """``value`` (an integer or a pair) as (patch height, patch width), each dividing the image's side."""
    size = blocks.positive_ints("patch_size", value, allow_empty=False)
    if len(size) == 1:
        size = size * 2
    if len(size) != 2:
        raise ConfigError(f"patch_size={value!r} is not allowed; allowed: an integer >= 1 or a pair of them")
    for side, patch, what in zip(input_shape[:2], size, ("height", "width")):
        if side % patch:
            divisors = [n for n in range(1, side + 1) if side % n == 0]
            raise ConfigError(
                f"patch_size={value!r} does not divide the image {what} {side} (input_shape={input_shape!r}); "
                f"allowed: a patch {what} in {divisors}"
            )
    return size


@register("vit")
def vit(
    input_shape: Sequence[int],
    num_classes: int,
    patch_size: int | Sequence[int] = 7,
    num_layers: int = 2,
    num_heads: int = 4,
    embed_dim: int = 64,
    mlp_dim: int = 128,
    dropout: float = 0.1,
    activation: str = "gelu",
):
    """A ViT: ``patch_embedding`` (Conv2D, kernel = stride = ``patch_size``), ``patches`` (Reshape to
    (patches, embed_dim)), :func:`~tfopt.models.transformer.encoder` and a linear "logits" layer.

    Args:
        input_shape: Sequence of 3 integers, (height, width, channels).
        num_classes: Integer >= 1, the number of logits.
        patch_size: Integer or pair of integers, the patch height and width; each must divide the image's.
        num_layers: Integer >= 1, the encoder blocks.
        num_heads: Integer >= 1 dividing ``embed_dim``, the attention heads.
        embed_dim: Integer >= 1, the width of each patch vector.
        mlp_dim: Integer >= 1, the hidden width of each block's MLP.
        dropout: Float in [0, 1), the dropout rate in the encoder and after pooling.
        activation: String or callable, the MLP activation.

    Returns:
        A functional tf_keras model named "vit" that outputs logits.

    >>> model = vit((28, 28, 1), 10, patch_size=7, embed_dim=32)
    >>> model.get_layer("patches").output_shape, model.output_shape
    ((None, 16, 32), (None, 10))
    """
    input_shape = blocks.input_shape_of(input_shape, 3, "(height, width, channels)")
    num_classes = blocks.positive_int("num_classes", num_classes)
    num_layers, num_heads, embed_dim, mlp_dim, dropout, activation = check_encoder(
        num_layers, num_heads, embed_dim, mlp_dim, dropout, activation)
    patch = _patch_size(patch_size, input_shape)
    n_patches = (input_shape[0] // patch[0]) * (input_shape[1] // patch[1])
    with blocks.parameter_budget():
        inputs = keras.Input(input_shape, name="input")
        x = keras.layers.Conv2D(embed_dim, patch, strides=patch, padding="valid", name="patch_embedding")(inputs)
        x = keras.layers.Reshape((n_patches, embed_dim), name="patches")(x)
        x = encoder(x, num_layers, num_heads, mlp_dim, dropout, activation, head_dropout=dropout)
        return keras.Model(inputs, blocks.logits(x, num_classes), name="vit")
