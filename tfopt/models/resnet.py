"""ResNets (He et al. 2016) for small (CIFAR) and ImageNet-sized inputs, with plain and dense variants.

``connection`` chooses how each block meets its input:

* "residual": the ResNet: add the shortcut (a 1x1 conv + BN projection when the shape changes).
* "plain": the same main-path layers with no shortcut at all (the "plain" nets of the paper).
* "dense": DenseNet-like: each block's output is concatenated with its input (average-pooled 2x2 when the
  block strides), so channels grow within a stage; each stage then ends with a 1x1 conv + BN + ReLU
  transition (``stage{i}_transition``) back to the stage width.
"""

from __future__ import annotations

import numbers
from typing import Sequence

from tfopt._keras import keras
from tfopt.errors import ConfigError, check_choice, check_range
from tfopt.models import blocks as _blocks
from tfopt.models.registry import register

__all__ = ["resnet", "DEPTHS", "STEMS"]

# depth -> (block type, blocks per stage)
DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
LAYERS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


def _small_stem(x, width: int):
    """3x3 conv stride 1 + BN + ReLU (CIFAR-sized inputs)."""
    return _blocks.conv_bn(x, width, 3, 1, name="conv1")


def _imagenet_stem(x, width: int):
    """7x7 conv stride 2 + BN + ReLU, then a 3x3 max pool stride 2."""
    x = _blocks.conv_bn(x, width, 7, 2, name="conv1")
    return keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)


# name -> (stem function, its total stride)
STEMS = {"small": (_small_stem, 1), "imagenet": (_imagenet_stem, 4)}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


@register("resnet")
def resnet(
    input_shape: Sequence[int],
    num_classes: int,
    depth: int = 18,
    blocks: Sequence[int] | None = None,
    width: float = 1.0,
    block: str | None = None,
    connection: str = "residual",
    stem: str = "small",
):
    """A ResNet: stem, up to 4 stages of blocks (widths 64, 128, 256, 512 times ``width``; strides 1, 2, 2, 2),
    GlobalAveragePooling2D ("avg_pool") and a linear "logits" layer.

    Every conv has no bias and is followed by BatchNormalization. Layers are named "conv1" (stem),
    "stage{s}_block{b}_conv{k}", "stage{s}_block{b}_shortcut", "stage{s}_block{b}_add"...

    Args:
        input_shape: Sequence of 3 integers, (height, width, channels).
        num_classes: Integer >= 1, the number of logits.
        depth: Integer, one of 18, 34, 50, 101, 152: picks the blocks per stage and the block type.
        blocks: Sequence of 1 to 4 integers >= 1, the blocks per stage; overrides ``depth``'s table.
        width: Float > 0, the multiplier of every channel count (rounded, at least 1 channel).
        block: String or None, "basic" or "bottleneck"; None takes ``depth``'s block type.
        connection: String, "residual", "plain" or "dense" (see the module docstring).
        stem: String, "small" (3x3 conv, stride 1: CIFAR) or "imagenet" (7x7/2 conv and 3x3/2 max pool).

    Returns:
        A functional tf_keras model named e.g. "resnet18" (or "resnet18_plain", "resnet18_dense").

    >>> model = resnet((32, 32, 3), 10, depth=18, stem="small")
    >>> sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    11173962
    """
    input_shape = _blocks.input_shape_of(input_shape, 3, "(height, width, channels)")
    num_classes = _blocks.positive_int("num_classes", num_classes)
    check_choice("depth", depth, tuple(DEPTHS))
    table_block, stage_blocks = DEPTHS[depth]
    if blocks is not None:
        stage_blocks = _blocks.positive_ints("blocks", blocks, allow_empty=False)
        if len(stage_blocks) > len(STAGE_WIDTHS):
            raise ConfigError(f"blocks={tuple(blocks)!r} has {len(stage_blocks)} stages; allowed: 1 to 4 stages")
    block = table_block if block is None else block
    check_choice("block", block, tuple(_blocks.BLOCKS))
    check_choice("connection", connection, tuple(_blocks.CONNECTIONS))
    check_choice("stem", stem, tuple(STEMS))
    if not isinstance(width, numbers.Real) or isinstance(width, bool):
        raise ConfigError(f"width={width!r} is not allowed; allowed: a number > 0")
    check_range("width", width, 0, low_open=True)
    stem_fn, stem_stride = STEMS[stem]
    total_stride = stem_stride
    for s in STAGE_STRIDES[1 : len(stage_blocks)]:
        total_stride *= s
    if min(input_shape[:2]) < total_stride:
        raise ConfigError(
            f"input_shape={input_shape!r} is too small for stem={stem!r} with {len(stage_blocks)} stages "
            f"(total stride {total_stride}); allowed: height and width >= {total_stride}"
        )

    with _blocks.parameter_budget():
        expansion = _blocks.BLOCKS[block][1]
        inputs = keras.Input(input_shape, name="input")
        x = stem_fn(inputs, _scaled(64, width))
        for s, (n_blocks, channels, stride) in enumerate(zip(stage_blocks, STAGE_WIDTHS, STAGE_STRIDES), start=1):
            filters = _scaled(channels, width)
            for b in range(1, n_blocks + 1):
                x = _blocks.connect(x, block, filters, stride if b == 1 else 1, connection, name=f"stage{s}_block{b}")
            if connection == "dense":
                x = _blocks.transition(x, filters * expansion, name=f"stage{s}")
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        outputs = _blocks.logits(x, num_classes)
        layers = 2 + sum(stage_blocks) * LAYERS_PER_BLOCK[block]
        name = f"resnet{layers}" + ("" if connection == "residual" else f"_{connection}")
        return keras.Model(inputs, outputs, name=name)
