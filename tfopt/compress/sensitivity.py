"""Per-layer sensitivity scan: how much validation accuracy each layer loses alone when pruned, clustered or
quantized, and a per-layer plan (sparsity, clusters, bits) drawn from it.

Han et al. (2015) chose each layer's pruning threshold from such a scan: one layer at a time is pruned by
magnitude in one shot (no fine-tuning), the rest left as trained, and the validation accuracy is measured.
The first convolution and the logits layer usually lose more at a given sparsity than the big Dense layer
that holds most of the weights, so one global sparsity wastes accuracy on the small layers.
:func:`sensitivity` measures, per layer, the drop at several sparsities, cluster counts and bit widths;
:func:`layer_budgets` turns it into per-layer budgets for ``tfopt.compress.prune`` (``target_sparsity`` as a dict),
``tfopt.compress.cluster`` and ``tfopt.export.to_tflite(..., layer_bits=...)``. ``prune(..., budgets="sensitivity",
val_ds=...)`` runs both (on :data:`PLAN_SPARSITIES`) for an overall ``target_sparsity``.

>>> curve = {"size": 100, "sparsity": {0.5: 0.0, 0.9: 2.0}, "clusters": {}, "bits": {}}
>>> layer_budgets({"layers": {"dense": curve}}, max_drop=1.0)["sparsity"]
{'dense': 0.7}
"""

from __future__ import annotations

import numpy as np

from tfopt._keras import check_model, tf
from tfopt._model import check_data_fits
from tfopt.compress.inspect import match_layers, prunable_weights, walk_layers
from tfopt.errors import ConfigError, DataError, check_range

__all__ = ["sensitivity", "layer_budgets", "SPARSITIES", "PLAN_SPARSITIES", "CLUSTER_COUNTS", "BITS"]

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
# the finer grid an overall target is planned on (prune's budgets="sensitivity"): up to 0.99, the default max_sparsity
PLAN_SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
CLUSTER_COUNTS = (32, 16, 8, 4)
BITS = (8, 4)
_KMEANS_ITERATIONS = 20


# ---------------------------------------------------------------- what one layer's kernel becomes


def magnitude_prune(kernel: np.ndarray, fraction: float) -> np.ndarray:
    """``kernel`` with its ``round(fraction * size)`` smallest-magnitude weights set to zero (ties: the first).

    >>> magnitude_prune(np.array([0.1, -0.4, 0.2, 0.8]), 0.5).tolist()
    [0.0, -0.4, 0.0, 0.8]
    """
    k = int(round(fraction * kernel.size))
    out = kernel.copy()
    if k > 0:
        out.reshape(-1)[np.argsort(np.abs(kernel).reshape(-1), kind="stable")[:k]] = 0
    return out


def kmeans_1d(values: np.ndarray, n_clusters: int, keep_zeros: bool = True) -> np.ndarray:
    """``values`` replaced by the nearest of ``n_clusters`` centroids (1-D k-means, linear initialization).

    With ``keep_zeros`` exact zeros stay zero and count as one of the clusters (as tfmot's
    ``preserve_sparsity`` pins one centroid at zero).

    >>> sorted(set(kmeans_1d(np.array([0.0, 0.0, 1.0, 1.1, 3.0, 3.2]), 3).round(2).tolist()))
    [0.0, 1.05, 3.1]
    """
    out = values.astype(np.float64).copy()
    mask = out != 0 if keep_zeros and (out == 0).any() else np.ones(out.shape, bool)
    k = n_clusters - 1 if keep_zeros and not mask.all() else n_clusters
    live = out[mask]
    if live.size == 0 or k < 1:
        return values.copy()
    centroids = np.linspace(live.min(), live.max(), k)
    for _ in range(_KMEANS_ITERATIONS):
        index = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, live)
        sums = np.bincount(index, live, minlength=k)
        counts = np.bincount(index, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        order = np.argsort(moved)
        if np.allclose(moved[order], centroids):
            break
        centroids = moved[order]
    out[mask] = centroids[np.searchsorted((centroids[1:] + centroids[:-1]) / 2, live)]
    return out.astype(values.dtype)


def fake_quantize(kernel: np.ndarray, bits: int) -> np.ndarray:
    """``kernel`` rounded to a symmetric ``bits``-bit grid with one scale per output channel (the last axis), as
    a per-channel int8 or int4 TFLite kernel stores it.

    >>> fake_quantize(np.array([[0.7, -0.1], [0.3, 1.0]]), 4).round(3).tolist()
    [[0.7, -0.143], [0.3, 1.0]]
    """
    levels = 2 ** (bits - 1) - 1
    flat = kernel.reshape(-1, kernel.shape[-1])
    scale = np.abs(flat).max(axis=0) / levels
    scale = np.where(scale > 0, scale, 1.0)
    return (np.round(flat / scale) * scale).reshape(kernel.shape).astype(kernel.dtype)


# ---------------------------------------------------------------- the scan


def _batches(dataset, what: str) -> list:
    batches = []
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DataError(f"{what} must yield (x, y) batches with labels; got {type(batch).__name__}")
        x, y = batch[0], np.asarray(batch[1])
        labels = y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1)
        batches.append((x, labels.astype(np.int64)))
    if not batches:
        raise DataError(f"{what} is empty: the scan needs labelled validation batches")
    return batches


def _accuracy_fn(model, batches):
    predict = tf.function(lambda x: model(x, training=False))
    n = sum(len(labels) for _, labels in batches)

    def accuracy() -> float:
        right = sum(int((np.asarray(predict(x)).argmax(-1) == labels).sum()) for x, labels in batches)
        return right / n

    return accuracy, n


def _check_levels(name, values, low, high, kind=float):
    if not isinstance(values, (tuple, list)) or not values:
        raise ConfigError(f"{name}={values!r} is not allowed; allowed: a non-empty list of numbers")
    for v in values:
        if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{name} entry {v!r} is not allowed; allowed: integers from {low} to {high}")
        check_range(f"{name} entry", v, low, high, high_open=kind is float)


def sensitivity(model, val_ds, sparsities=SPARSITIES, clusters=CLUSTER_COUNTS, bits=BITS, layers=None) -> dict:
    """Per layer, the validation accuracy drop (points) when that layer ALONE is pruned, clustered or quantized.

    Each layer's kernel is changed in one shot (no fine-tuning) while every other layer keeps its trained
    weights; the model's weights are restored afterwards. Pruning is by magnitude (what tfmot's schedules
    keep), clustering a 1-D k-means keeping the zeros, quantization per output channel.

    Args:
        model: tf_keras model, trained, classifying (its argmax is compared with the labels).
        val_ds: tf.data.Dataset (or iterable) of (x, y) batches: integer or one-hot labels.
        sparsities: Sequence of floats in [0, 1), the sparsities to try per layer.
        clusters: Sequence of integers >= 2, the cluster counts to try per layer (empty: none).
        bits: Sequence of integers from 2 to 8, the per-channel bit widths to try per layer (empty: none).
        layers: Iterable of layer names, classes or class names to scan, or None for every prunable layer.

    Returns:
        ``{"baseline": accuracy, "n": examples, "layers": {name: {"size": weights, "sparsity": {s: drop},
        "clusters": {k: drop}, "bits": {b: drop}}}}``; drop = baseline - accuracy, in points (> 0 is a loss).

    >>> scan = sensitivity(model, val_ds, sparsities=(0.5, 0.9))  # doctest: +SKIP
    >>> scan["layers"]["dense"]["sparsity"][0.9]  # doctest: +SKIP
    1.25
    """
    check_model(model, "sensitivity")
    _check_levels("sparsities", list(sparsities), 0, 1)
    if clusters:
        _check_levels("clusters", list(clusters), 2, 2**16, int)
    if bits:
        _check_levels("bits", list(bits), 2, 8, int)
    names = match_layers(model, layers, "sensitivity", lambda layer: bool(prunable_weights(layer)))
    by_name = {layer.name: layer for layer in walk_layers(model)}
    empty = [n for n in names if not prunable_weights(by_name[n])]
    if empty:
        raise ConfigError(f"sensitivity: layers {empty} have no prunable kernel (Dense, Conv, Embedding...)")
    check_data_fits(model, val_ds, "val_ds")
    batches = _batches(val_ds, "val_ds")
    accuracy, n = _accuracy_fn(model, batches)
    baseline = accuracy()
    result = {"baseline": baseline, "n": n, "layers": {}}
    trials = ([("sparsity", s, lambda w, s=s: magnitude_prune(w, s)) for s in sparsities]
              + [("clusters", k, lambda w, k=k: kmeans_1d(w, k)) for k in clusters or ()]
              + [("bits", b, lambda w, b=b: fake_quantize(w, b)) for b in bits or ()])
    for name in names:
        kernels = prunable_weights(by_name[name])
        saved = [w.numpy() for w in kernels]
        entry = {"size": int(sum(w.size for w in saved)), "sparsity": {}, "clusters": {}, "bits": {}}
        try:
            for kind, level, change in trials:
                for variable, original in zip(kernels, saved):
                    variable.assign(change(original))
                entry[kind][level] = 100.0 * (baseline - accuracy())
        finally:
            for variable, original in zip(kernels, saved):
                variable.assign(original)
        result["layers"][name] = entry
    return result


# ---------------------------------------------------------------- the plan


def _largest_within(curve: dict, tolerance: float) -> float:
    """The largest sparsity whose (running-maximum) drop stays within ``tolerance``, interpolated linearly
    between the scanned points (0 sparsity costs nothing)."""
    points = [(0.0, 0.0)] + sorted((float(s), float(d)) for s, d in curve.items())
    worst = 0.0
    best = 0.0
    for (s0, d0), (s1, d1) in zip(points, points[1:]):
        d0, d1 = max(worst, d0), max(worst, d0, d1)
        worst = d1
        if d1 <= tolerance:
            best = s1
            continue
        if d0 <= tolerance:
            best = s0 + (s1 - s0) * (tolerance - d0) / (d1 - d0)
        break
    return round(best, 3)


def _overall(sparsity: dict, sizes: dict) -> float:
    total = sum(sizes.values())
    return sum(sparsity[n] * sizes[n] for n in sparsity) / total if total else 0.0


def _hull(curve: dict, max_sparsity: float) -> list:
    """The lower convex hull of a layer's drop curve from (0, 0), made non-decreasing (a drop that falls back at a
    higher sparsity is noise) and cut at ``max_sparsity``: ``[(s, drop), ...]`` with rising slopes."""
    points, worst = [(0.0, 0.0)], 0.0
    for s, d in sorted((float(s), float(d)) for s, d in curve.items()):
        if s > max_sparsity:
            prev_s, prev_d = points[-1]
            if prev_s < max_sparsity:  # the curve's value at max_sparsity, by interpolation
                points.append((max_sparsity, prev_d + (max(worst, d) - prev_d) * (max_sparsity - prev_s) / (s - prev_s)))
            break
        worst = max(worst, d)
        points.append((s, worst))
    hull = []
    for point in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) <= 0:
            hull.pop()
        hull.append(point)
    return hull


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _cheapest_first(layers: dict, sizes: dict, target: float, max_sparsity: float) -> tuple[dict, float]:
    """Per-layer sparsities reaching ``target`` overall, taking the pruning that costs the least one-shot drop per
    weight removed first (a fractional knapsack over each layer's convex drop curve); returns them and the last
    rate taken (points per 1,000 weights removed)."""
    segments = []
    for order, (name, entry) in enumerate(layers.items()):
        hull = _hull(entry["sparsity"], max_sparsity)
        for (s0, d0), (s1, d1) in zip(hull, hull[1:]):
            rate = 1000.0 * (d1 - d0) / ((s1 - s0) * max(1, sizes[name]))
            segments.append((rate, -sizes[name], order, s0, name, s1))
    chosen = {name: 0.0 for name in layers}
    needed = target * sum(sizes.values())
    removed, last = 0.0, 0.0
    for rate, _, _, s0, name, s1 in sorted(segments):
        if removed >= needed - 1e-9:
            break
        gain = (s1 - s0) * sizes[name]
        take = min(1.0, (needed - removed) / gain)
        chosen[name] = s0 + take * (s1 - s0)
        removed, last = removed + take * gain, rate
    if removed < needed - 1e-6:
        raise ConfigError(f"target_sparsity={target} is beyond what the scan covers (at most "
                          f"{removed / sum(sizes.values()):.3f} overall with max_sparsity={max_sparsity}); scan "
                          "higher sparsities")
    return {name: round(value, 4) for name, value in chosen.items()}, last


def _drop_at(curve: dict, sparsity: float) -> float:
    points = _hull(curve, 1.0)
    for (s0, d0), (s1, d1) in zip(points, points[1:]):
        if s0 <= sparsity <= s1:
            return d0 + (d1 - d0) * (sparsity - s0) / (s1 - s0)
    return points[-1][1]


def layer_budgets(scan: dict, max_drop: float | None = None, target_sparsity: float | None = None,
                  cluster_drop: float | None = None, bits_drop: float | None = None, max_sparsity: float = 0.99) -> dict:
    """Per-layer budgets from a :func:`sensitivity` scan.

    Give ``target_sparsity`` (the overall, size-weighted sparsity wanted: the pruning that costs the least one-shot
    drop per weight removed is taken first, so the big, insensitive layers take most of it and a small first
    convolution, which saves no bytes, is barely touched) or ``max_drop`` (each layer pruned to the largest sparsity
    whose own one-shot drop is within it). Curves are read through their lower convex hull, made non-decreasing.

    Args:
        scan: Dict from :func:`sensitivity`.
        max_drop: Float >= 0, points of one-shot validation drop allowed per layer, or None.
        target_sparsity: Float in [0, 1), the overall sparsity wanted, or None.
        cluster_drop: Float >= 0 or None (``max_drop``, else 0): per layer the fewest scanned clusters whose
            one-shot drop is within it (None for a layer when none is).
        bits_drop: Float >= 0 or None (``max_drop``, else 0): per layer the fewest scanned bits within it (else 8).
        max_sparsity: Float in (0, 1), no layer is planned beyond it.

    Returns:
        ``{"sparsity": {layer: s}, "clusters": {layer: k or None}, "bits": {layer: b}, "overall_sparsity": s,
        "predicted_drop": the sum of the layers' one-shot drops at their sparsity (an indication: fine-tuning
        recovers much of it), "rate": the last drop per 1,000 weights taken (target mode) or None}``.

    >>> curves = {"conv": {"size": 10, "sparsity": {0.5: 1.0, 0.9: 9.0}},
    ...           "dense": {"size": 90, "sparsity": {0.5: 0.0, 0.9: 0.5, 0.95: 3.0}}}
    >>> layer_budgets({"layers": curves}, target_sparsity=0.9)["sparsity"]
    {'conv': 0.5, 'dense': 0.9444}
    >>> layer_budgets({"layers": curves}, max_drop=1.0)["sparsity"]
    {'conv': 0.5, 'dense': 0.91}
    """
    if (max_drop is None) == (target_sparsity is None):
        raise ConfigError("layer_budgets needs exactly one of max_drop (points per layer) and target_sparsity "
                          f"(overall); got max_drop={max_drop!r}, target_sparsity={target_sparsity!r}")
    check_range("max_sparsity", max_sparsity, 0, 1, low_open=True, high_open=True)
    layers = scan.get("layers") if isinstance(scan, dict) else None
    if not layers:
        raise ConfigError("layer_budgets needs the dict sensitivity() returns, with at least one layer")
    sizes = {name: entry["size"] for name, entry in layers.items()}
    rate = None
    if max_drop is not None:
        check_range("max_drop", max_drop, 0)
        chosen = {name: min(max_sparsity, _largest_within(entry["sparsity"], max_drop))
                  for name, entry in layers.items()}
    else:
        check_range("target_sparsity", target_sparsity, 0, 1, high_open=True)
        chosen, rate = _cheapest_first(layers, sizes, target_sparsity, max_sparsity)
    default = 0.0 if max_drop is None else max_drop
    limit_c = default if cluster_drop is None else cluster_drop
    limit_b = default if bits_drop is None else bits_drop
    check_range("cluster_drop", limit_c, 0)
    check_range("bits_drop", limit_b, 0)
    clusters = {name: min((k for k, d in entry.get("clusters", {}).items() if d <= limit_c), default=None)
                for name, entry in layers.items()}
    bit_widths = {name: min((b for b, d in entry.get("bits", {}).items() if d <= limit_b), default=8)
                  for name, entry in layers.items()}
    predicted = sum(_drop_at(entry["sparsity"], chosen[name]) for name, entry in layers.items())
    return {"sparsity": chosen, "clusters": clusters, "bits": bit_widths, "overall_sparsity": _overall(chosen, sizes),
            "predicted_drop": predicted, "rate": rate}
