"""Image augmentation inside the tf.data graph: one vectorised projective transform per batch.

Built-in augmentations take a batch ``x`` of shape ``[B, H, W, C]`` (float32 in [0, 1]) and its labels
``y`` and return a batch of the same shape, range and labels:

- ``"light"``: random crop with zero padding (an integer shift of up to ``pad`` pixels: 1 for 8x8,
  2 for 28x28, 4 for 32x32 and larger) and, when ``flip`` is set, a horizontal flip.
- ``"standard"``: the same shift plus a small rotation (+-10 degrees) and zoom (+-10%), bilinear.

Every sample of a batch gets its own transform, all applied by one ``ImageProjectiveTransformV3``
op, so the cost is one kernel per batch. Random numbers are stateless and drawn from a per-batch
``seed`` that :func:`tfopt.data.load` feeds from the dataset seed, so a seed reproduces the
augmented batches, and each epoch gets fresh ones.
"""

from __future__ import annotations

import math
from typing import Callable

from tfopt._keras import tf
from tfopt.errors import ConfigError

__all__ = ["AUGMENTATIONS", "get_augmentation", "crop_padding"]

# name -> (max rotation in radians, max relative zoom, interpolation)
_SPECS = {
    "light": (0.0, 0.0, "NEAREST"),
    "standard": (math.radians(10.0), 0.10, "BILINEAR"),
}
AUGMENTATIONS: tuple[str, ...] = tuple(_SPECS)


def crop_padding(input_shape) -> int:
    """Integer, the padding (in pixels) of the random crop for images of ``input_shape`` (H, W, C).

    >>> crop_padding((28, 28, 1)), crop_padding((32, 32, 3)), crop_padding((8, 8, 1))
    (2, 4, 1)
    """
    side = min(int(input_shape[0]), int(input_shape[1]))
    return 4 if side >= 32 else 2 if side >= 16 else 1


def _random_seed() -> tf.Tensor:
    """A fresh [2] int32 seed from the stateful generator (used when no seed is fed)."""
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)


def _transforms(batch, height, width, pad, max_angle, max_zoom, flip, seed):
    """[B, 8] projective transforms (output -> input coordinates) for a batch."""
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    shift = tf.random.stateless_uniform([batch, 2], seeds[0], minval=-pad, maxval=pad + 1, dtype=tf.int32)
    shift = tf.cast(shift, tf.float32)
    angle = tf.random.stateless_uniform([batch], seeds[1], -max_angle, max_angle) if max_angle else tf.zeros([batch])
    zoom = tf.random.stateless_uniform([batch], seeds[2], 1 - max_zoom, 1 + max_zoom) if max_zoom else tf.ones([batch])
    if flip:
        sign = tf.where(tf.random.stateless_uniform([batch], seeds[3]) < 0.5, -1.0, 1.0)
    else:
        sign = tf.ones([batch])
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # input = centre + M @ (output - centre) + shift, with M = R(angle) / zoom @ diag(sign, 1).
    m00, m01, m10, m11 = cos * sign, -sin, sin * sign, cos
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    off_x = cx - m00 * cx - m01 * cy + shift[:, 0]
    off_y = cy - m10 * cx - m11 * cy + shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([m00, m01, off_x, m10, m11, off_y, zeros, zeros], axis=1)


def _make(name: str, input_shape, flip: bool) -> Callable:
    max_angle, max_zoom, interpolation = _SPECS[name]
    height, width = int(input_shape[0]), int(input_shape[1])
    pad = crop_padding(input_shape)

    def augment(x, y, seed=None):
        """Augment a batch ``x`` [B, H, W, C]; ``seed`` is an optional [2] integer tensor."""
        seed = _random_seed() if seed is None else seed
        transforms = _transforms(tf.shape(x)[0], height, width, pad, max_angle, max_zoom, flip, seed)
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transforms,
            output_shape=tf.constant([height, width], tf.int32),
            fill_value=tf.constant(0.0, x.dtype),
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )
        return tf.ensure_shape(out, x.shape), y

    augment.__name__ = f"augment_{name}"
    augment.accepts_seed = True  # load() feeds a per-batch seed to built-in augmentations
    return augment


def get_augmentation(name, input_shape, flip: bool = False) -> Callable:
    """Return a batch augmentation function ``(x, y[, seed]) -> (x, y)`` for images.

    Args:
        name: String, one of ``AUGMENTATIONS`` ("light", "standard"), or a callable ``(x, y) -> (x, y)``
            (returned unchanged).
        input_shape: Tuple, the shape of one image (H, W, C).
        flip: Boolean, whether horizontal flips are allowed (False for digits and text-like images).

    >>> fn = get_augmentation("light", (28, 28, 1), flip=False)
    >>> fn(tf.zeros([4, 28, 28, 1]), tf.zeros([4], tf.int32))[0].shape
    TensorShape([4, 28, 28, 1])
    """
    if callable(name):
        return name
    if not isinstance(name, str) or name not in _SPECS:
        raise ConfigError(
            f"augment={name!r} is not allowed; allowed: None, {', '.join(map(repr, AUGMENTATIONS))}, "
            "or a callable (x, y) -> (x, y) applied to each batch"
        )
    if len(tuple(input_shape)) != 3:
        raise ConfigError(
            f"augment={name!r} needs images of shape (H, W, C); got input_shape={tuple(input_shape)}"
        )
    return _make(name, tuple(input_shape), bool(flip))
