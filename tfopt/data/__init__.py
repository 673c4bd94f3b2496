"""Datasets as batched, cached, prefetched tf.data pipelines, with a fixed test split, class balancing of train,
and in-graph augmentation.

>>> from tfopt import data
>>> train_ds, val_ds, test_ds, info = data.load("digits", batch_size=64, augment="light")
>>> info.input_shape, info.num_classes, info.n_test
((8, 8, 1), 10, 360)
"""

from tfopt.data.augment import AUGMENTATIONS, get_augmentation
from tfopt.data.balance import BALANCE, class_weights
from tfopt.data.datasets import EMBEDDED, KINDS, DatasetInfo, Splits, from_arrays, load

__all__ = ["load", "from_arrays", "Splits", "DatasetInfo", "EMBEDDED", "KINDS", "BALANCE", "class_weights",
           "AUGMENTATIONS", "get_augmentation"]
