"""Uncertainty of measured accuracies: Wilson intervals, and paired comparisons of two models on the same examples.

An accuracy measured on ``n`` test examples is an estimate; these functions say how far it may be off and
whether the difference between two models evaluated on the same examples is more than noise.
"""

from __future__ import annotations

import numbers

import numpy as np

from tfopt.errors import ConfigError, DataError, check_seed

__all__ = ["wilson_interval", "paired_comparison", "confusion_matrix", "per_class_recall", "BOOTSTRAP_RESAMPLES",
           "INTERVALS"]

BOOTSTRAP_RESAMPLES = 10_000


def _check_confidence(confidence) -> float:
    if (not isinstance(confidence, numbers.Real) or isinstance(confidence, bool) or not 0 < confidence < 1):
        raise ConfigError(f"confidence={confidence!r} is out of range; allowed: 0 < confidence < 1")
    return float(confidence)


def _check_count(name: str, value, low: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")
    return int(value)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n`` (e.g. ``k`` correct predictions of ``n``).

    Computed by ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")``. Unlike the
    normal approximation it stays inside [0, 1] and is sensible at 0 and ``n``.

    Args:
        k: Integer in [0, n], the successes (correct predictions).
        n: Integer >= 1, the trials (examples).
        confidence: Float in (0, 1), the coverage of the interval.

    Returns:
        ``(low, high)``, floats.

    >>> [round(v, 4) for v in wilson_interval(95, 100)]
    [0.8882, 0.9785]
    >>> [round(v, 4) for v in wilson_interval(0, 10)]
    [0.0, 0.2775]
    """
    from scipy.stats import binomtest

    n = _check_count("n", n, 1)
    k = _check_count("k", k, 0)
    if k > n:
        raise ConfigError(f"k={k} is larger than n={n}; allowed: 0 <= k <= n")
    ci = binomtest(k, n).proportion_ci(_check_confidence(confidence), method="wilson")
    return float(max(0.0, ci.low)), float(min(1.0, ci.high))


def _correctness(name: str, values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise DataError(f"{name} must be a 1-D sequence of per-example correctness (True/False or 1/0), got shape "
                        f"{list(array.shape)}")
    if array.dtype != bool:
        if array.dtype.kind not in "iuf" or not np.isin(array, (0, 1)).all():
            raise DataError(f"{name} must hold only True/False or 1/0 (one entry per example)")
        array = array.astype(bool)
    return array


INTERVALS = ("bootstrap", "exact")


def paired_comparison(correct_a, correct_b, confidence: float = 0.95, seed: int = 0,
                      interval: str = "bootstrap") -> dict:
    """Compare two models evaluated on the same examples: is model b's accuracy different from model a's?

    The difference is ``accuracy(b) - accuracy(a)``. Only the discordant pairs (examples exactly one model
    gets right; ``d = a_only + b_only`` of them) tell the models apart: when both are equally accurate,
    ``b_only`` is Binomial(d, 1/2). The p-value is the exact McNemar test,
    ``scipy.stats.binomtest(b_only, d, 0.5).pvalue`` (1 when ``d == 0``), and ``significant`` is decided by it.

    The interval of the difference is, by default, a paired percentile bootstrap: ``BOOTSTRAP_RESAMPLES``
    resamples of the examples with replacement, drawn as counts of the four kinds of pair with
    ``numpy.random.default_rng(seed)`` (the same on every machine for a seed). It counts the uncertainty of
    ``d`` too, so it says how large a drop could be; near p = 0.05 it may exclude 0 for a difference the
    exact test does not call significant (or the reverse). ``interval="exact"`` gives instead the exact
    test turned around: the Clopper-Pearson interval ``[lo, hi]`` of the share of discordant pairs b wins
    (``binomtest(b_only, d).proportion_ci(confidence, method="exact")``) as a difference,
    ``[d/n (2 lo - 1), d/n (2 hi - 1)]``. It excludes 0 exactly when the test is significant, but being
    conditional on ``d`` it cannot reach past ``±d/n`` and so understates how large the difference may be.

    Args:
        correct_a: 1-D booleans (or 0/1), per example whether model a (e.g. the baseline) was right.
        correct_b: 1-D booleans (or 0/1), the same examples in the same order, for model b.
        confidence: Float in (0, 1), the coverage of the interval; a difference is ``significant`` when
            ``p < 1 - confidence``.
        seed: Integer in [0, 2**32), the bootstrap's seed.
        interval: ``"bootstrap"`` or ``"exact"``, how the interval of the difference is made.

    Returns:
        Dict with ``n``, ``accuracy_a``, ``accuracy_b``, ``delta`` (b - a), ``delta_ci`` ([low, high]),
        ``a_only`` (pairs only a got right), ``b_only`` (only b), ``p_value`` and ``significant``.

    >>> a = [True] * 90 + [False] * 10        # baseline: 90 of 100 right
    >>> b = [True] * 80 + [False] * 20        # b loses the last 10 of those 90, gains none
    >>> r = paired_comparison(a, b)
    >>> r["delta"], r["a_only"], r["b_only"], round(r["p_value"], 5), r["significant"]
    (-0.1, 10, 0, 0.00195, True)
    >>> low, high = r["delta_ci"]; low < -0.1 < high < 0
    True
    >>> [round(v, 4) for v in paired_comparison(a, b, interval="exact")["delta_ci"]]
    [-0.1, -0.0383]
    >>> paired_comparison(a, a)["p_value"], paired_comparison(a, a)["delta_ci"]
    (1.0, [0.0, 0.0])
    """
    from scipy.stats import binomtest

    confidence = _check_confidence(confidence)
    if interval not in INTERVALS:
        raise ConfigError(f"interval={interval!r} is not allowed; allowed: {', '.join(map(repr, INTERVALS))}")
    seed = check_seed(seed)
    a, b = _correctness("correct_a", correct_a), _correctness("correct_b", correct_b)
    if len(a) != len(b):
        raise DataError(f"correct_a has {len(a)} examples but correct_b has {len(b)}; a paired comparison needs "
                        "the same examples for both")
    n = len(a)
    if n == 0:
        raise DataError("no examples: a paired comparison needs at least one")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(b & ~a))
    discordant = a_only + b_only
    test = binomtest(b_only, discordant, 0.5) if discordant else None
    p_value = min(1.0, float(test.pvalue)) if test else 1.0
    if interval == "bootstrap":
        counts = np.random.default_rng(seed).multinomial(n, [a_only / n, b_only / n, 1 - discordant / n],
                                                         size=BOOTSTRAP_RESAMPLES)
        tail = (1 - confidence) / 2 * 100
        low, high = np.percentile((counts[:, 1] - counts[:, 0]) / n, [tail, 100 - tail])
    elif test is None:
        low = high = 0.0
    else:
        share = test.proportion_ci(confidence, method="exact")
        low, high = discordant / n * (2 * share.low - 1), discordant / n * (2 * share.high - 1)
    return {
        "n": n,
        "accuracy_a": float(a.mean()),
        "accuracy_b": float(b.mean()),
        "delta": (b_only - a_only) / n,
        "delta_ci": [float(low), float(high)],
        "a_only": a_only,
        "b_only": b_only,
        "p_value": p_value,
        "significant": bool(p_value < 1 - confidence),
    }


def confusion_matrix(labels, predictions, num_classes: int | None = None) -> list[list[int]]:
    """Counts of (true class, predicted class): row ``i`` holds the examples of class ``i`` by prediction.

    Args:
        labels: 1-D integer class ids, the true classes.
        predictions: 1-D integer class ids, the predicted classes, one per label.
        num_classes: Integer or None, the matrix size (None: one more than the largest id seen).

    Returns:
        List of ``num_classes`` lists of ``num_classes`` integers; the total is the number of examples.

    >>> confusion_matrix([0, 0, 1, 2], [0, 1, 1, 2])
    [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    """
    labels, predictions = np.asarray(labels).reshape(-1), np.asarray(predictions).reshape(-1)
    if len(labels) != len(predictions):
        raise DataError(f"{len(labels)} labels but {len(predictions)} predictions; allowed: one prediction per label")
    for name, ids in (("labels", labels), ("predictions", predictions)):
        if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0):
            raise DataError(f"{name} must be class ids (integers >= 0), got {ids.dtype.name} values "
                            f"from {ids.min()} to {ids.max()}")
    largest = int(max(labels.max(initial=-1), predictions.max(initial=-1))) + 1
    size = largest if num_classes is None else _check_count("num_classes", num_classes, 1)
    if largest > size:
        raise DataError(f"class id {largest - 1} is outside num_classes={size}; allowed: ids 0..{size - 1}")
    matrix = np.zeros((size, size), np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix.tolist()


def per_class_recall(confusion) -> list[float | None]:
    """Recall of each class from a confusion matrix (rows = true class): the diagonal over the row's total.

    A class without examples has recall None.

    Args:
        confusion: Square matrix of counts, as :func:`confusion_matrix` returns.

    >>> per_class_recall([[1, 1, 0], [0, 1, 0], [0, 0, 0]])
    [0.5, 1.0, None]
    """
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise DataError(f"a confusion matrix is square, got shape {list(matrix.shape)}")
    totals = matrix.sum(axis=1)
    return [float(matrix[i, i] / totals[i]) if totals[i] else None for i in range(len(matrix))]
