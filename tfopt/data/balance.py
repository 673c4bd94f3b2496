"""Class balancing of a training split with tf.data's own tools: resampling per class, or per-example weights.

``oversample`` repeats every class up to the largest one, ``undersample`` draws every class down to the
smallest one (a fresh draw each epoch), ``class_weight`` keeps the examples and adds a third element
``w = n / (k * count[y])`` that Keras ``fit`` uses as a sample weight. Only ever applied to train.
"""

from __future__ import annotations

import numpy as np

from tfopt._keras import tf
from tfopt.errors import ConfigError

__all__ = ["BALANCE", "check_balance", "class_counts", "class_weights", "resample", "add_weights"]

BALANCE = ("oversample", "undersample", "class_weight")


def check_balance(balance) -> str | None:
    """``balance`` when it is None or one of :data:`BALANCE`, else ConfigError naming it and the allowed values.

    >>> check_balance("oversample")
    'oversample'
    >>> check_balance("smote")
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: balance='smote' is not allowed; allowed: None, 'oversample', 'undersample', 'class_weight'
    """
    if balance is None or (isinstance(balance, str) and balance in BALANCE):
        return balance
    raise ConfigError(f"balance={balance!r} is not allowed; allowed: None, {', '.join(map(repr, BALANCE))}")


def class_counts(y, num_classes: int) -> tuple:
    """Tuple of ``num_classes`` integers, the number of rows of each label in ``y``.

    >>> class_counts(np.array([0, 2, 2]), 4)
    (1, 0, 2, 0)
    """
    return tuple(int(c) for c in np.bincount(np.asarray(y, np.int64), minlength=num_classes)[:num_classes])


def class_weights(counts) -> np.ndarray:
    """Float32 array, ``n / (k * count)`` per class (Keras' and scikit-learn's "balanced" weights).

    ``n`` is the number of rows and ``k`` the number of classes present; an absent class gets 0. Weighted,
    every present class contributes the same total (``n / k``) to the loss of an epoch.

    Args:
        counts: Sequence of per-class row counts (see :func:`class_counts`).

    >>> class_weights([30, 10, 0]).tolist()
    [0.6666666865348816, 2.0, 0.0]
    """
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.astype(np.float32)


def resample(per_class: dict, counts, balance: str, seed: int):
    """One balanced epoch drawn from per-class datasets: ``(dataset, n_examples)``.

    Every present class gives the same number of examples per epoch: the largest class's count
    (``oversample``: smaller classes repeat, each example as evenly as possible) or the smallest
    class's (``undersample``: a fresh random subset of each larger class every epoch). The classes are
    interleaved in a random order by ``tf.data.Dataset.choose_from_datasets`` (each class exactly its
    share, unlike ``sample_from_datasets``' random draws); seeded, and reshuffled each epoch.

    Args:
        per_class: Dict, class -> unbatched dataset of that class's examples (already cached if wanted).
        counts: Sequence of per-class row counts.
        balance: String, "oversample" or "undersample".
        seed: Integer, seeds the per-class shuffles and the interleaving order.

    >>> ds = {c: tf.data.Dataset.from_tensor_slices(([float(c)] * n, [c] * n)) for c, n in ((0, 6), (1, 2))}
    >>> epoch, n = resample(ds, [6, 2], "oversample", seed=0)
    >>> n, sorted(np.bincount([int(y) for _, y in epoch]).tolist())
    (12, [6, 6])
    """
    classes = [c for c in sorted(per_class) if counts[c] > 0]
    sizes = [int(counts[c]) for c in classes]
    per_epoch = max(sizes) if balance == "oversample" else min(sizes)
    sources = []
    for i, c in enumerate(classes):
        ds = per_class[c].shuffle(sizes[i], seed=seed + i + 1, reshuffle_each_iteration=True)
        sources.append(ds.repeat() if balance == "oversample" else ds)
    n = per_epoch * len(classes)
    order = tf.data.Dataset.from_tensor_slices(np.repeat(np.arange(len(classes), dtype=np.int64), per_epoch))
    order = order.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    epoch = tf.data.Dataset.choose_from_datasets(sources, order)
    return epoch.apply(tf.data.experimental.assert_cardinality(n)), n


def add_weights(ds, weights):
    """``ds`` of ``(x, y)`` batches as ``(x, y, w)`` with ``w = weights[y]`` (float32), for Keras ``fit``.

    >>> ds = add_weights(tf.data.Dataset.from_tensor_slices(([1.0, 2.0], [0, 1])).batch(2), [0.5, 2.0])
    >>> next(iter(ds))[2].numpy().tolist()
    [0.5, 2.0]
    """
    table = tf.constant(np.asarray(weights, np.float32))

    def weigh(x, y):
        return x, y, tf.gather(table, tf.cast(y, tf.int32))

    return ds.map(weigh, num_parallel_calls=tf.data.AUTOTUNE)
