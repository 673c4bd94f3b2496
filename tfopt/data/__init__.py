"""Datasets as batched, cached, prefetched tf.data pipelines, with in-graph augmentation.

>>> from tfopt import data
>>> train_ds, val_ds, info = data.load("digits", batch_size=64, augment="light")
>>> info.input_shape, info.num_classes
((8, 8, 1), 10)
"""

from tfopt.data.augment import AUGMENTATIONS, get_augmentation
from tfopt.data.datasets import EMBEDDED, KINDS, DatasetInfo, from_arrays, load

__all__ = ["load", "from_arrays", "DatasetInfo", "EMBEDDED", "KINDS", "AUGMENTATIONS", "get_augmentation"]
