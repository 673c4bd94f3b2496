"""Which channels go: a score per channel of each group (weight norm, BatchNorm scale, first-order Taylor) and the
selection that removes the lowest, across groups or the same share from each, to a fraction or a multiply-add goal.

Scores are normalised to mean 1 per group so groups of different layers can be ranked together (as Torch-Pruning's
group importance does); an attention layer's heads are scored by the norm of their query, key, value and output
slices.
"""

from __future__ import annotations

import math

import numpy as np

from tfopt._keras import keras, tf

__all__ = ["IMPORTANCES", "importance_scores", "select", "select_per_group", "weight_kind"]

IMPORTANCES = ("l1", "bn", "taylor")

def weight_kind(layer, weight) -> str:
    """"kernel", "bias", "gamma"...; for attention "query/kernel", "attention_output/bias"..."""
    parts = weight.name.split(":")[0].split("/")
    return "/".join(parts[-2:]) if type(layer).__name__ == "MultiHeadAttention" else parts[-1]


def _l1(layer_weights: dict, group) -> np.ndarray:
    score = np.zeros(group.size)
    for name in group.producers:
        if name.endswith(":heads"):  # per head: its query/key/value columns and its output rows
            for kind, w in layer_weights[name[: -len(":heads")]].items():
                axis = 0 if kind.startswith("attention_output/") else 1
                if kind.endswith("kernel"):
                    score += np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).mean(axis=1)
            continue
        for kind, w in layer_weights[name].items():
            if kind in ("kernel", "pointwise_kernel", "embeddings"):
                score += np.abs(w).reshape(-1, w.shape[-1]).mean(axis=0)
    return score


def _bn(layer_weights: dict, group) -> np.ndarray | None:
    gammas = [layer_weights[name]["gamma"] for name in group.followers if "gamma" in layer_weights[name]]
    return np.sum([np.abs(g) for g in gammas], axis=0) if gammas else None


def _taylor(model, graph, train_ds, batches: int) -> dict:
    """First-order Taylor importance (Molchanov et al. 2019): per channel, (sum of w * dL/dw over its weights)^2,
    summed over ``batches`` batches, over the producers' and followers' weights of each group."""
    loss_fn = getattr(model, "loss", None)
    if not callable(loss_fn):
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    owners = {}  # weight -> (group, axis -1 is the channel axis)
    for group in graph.prunable():
        if any(name.endswith(":heads") or name in graph.heads for name in group.producers):
            continue  # attention's groups are scored by l1
        for name in group.producers + group.followers:
            for w in model.get_layer(name).trainable_weights:
                kind = w.name.split("/")[-1].split(":")[0]
                if kind in ("kernel", "bias", "pointwise_kernel", "embeddings", "gamma", "beta", "depthwise_kernel"):
                    owners[w.ref()] = group.gid
    weights = [w for w in model.trainable_weights if w.ref() in owners]
    scores = {g.gid: np.zeros(g.size) for g in graph.prunable()}
    for x, y in train_ds.take(batches):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads = tape.gradient(loss, weights)
        per_group = {gid: np.zeros(s.size) for gid, s in scores.items()}
        for w, g in zip(weights, grads):
            if g is None:
                continue
            prod = (w * tf.convert_to_tensor(g)).numpy()
            axis = -2 if w.name.split("/")[-1].startswith("depthwise_kernel") else -1
            per_group[owners[w.ref()]] += np.moveaxis(prod, axis, -1).reshape(-1, prod.shape[axis]).sum(axis=0)
        for gid in scores:
            scores[gid] += per_group[gid] ** 2
    return scores


def importance_scores(model, graph, importance: str = "l1", train_ds=None, batches: int = 8) -> dict:
    """Per prunable group id, one score per channel (higher = more important), normalised to mean 1 per group so
    groups can be ranked together."""
    layer_weights = {layer.name: {weight_kind(layer, w): w.numpy() for w in layer.weights} for layer in model.layers}
    raw = _taylor(model, graph, train_ds, batches) if importance == "taylor" else {}
    for group in graph.prunable():
        if group.gid not in raw or not raw[group.gid].any():  # (attention's groups: l1 also under 'taylor')
            score = _bn(layer_weights, group) if importance == "bn" else None
            raw[group.gid] = score if score is not None else _l1(layer_weights, group)
    return {gid: s / (s.mean() if s.mean() > 0 else 1.0) for gid, s in raw.items()}


# ------------------------------------------------------------------------------------------------- selection


def select(graph, scores, fraction, target_macs, max_fraction, min_channels, round_to, only):
    """Kept channel indices per group id: remove the lowest-scored channels of all groups together until
    ``fraction`` of the prunable channels are gone or the estimated multiply-adds reach ``target_macs``."""
    groups = {g.gid: g for g in graph.prunable() if only is None or set(g.producers) & only}
    floor = {gid: max(min_channels, math.ceil(g.size * (1 - max_fraction))) for gid, g in groups.items()}
    left = {gid: g.size for gid, g in groups.items()}
    sequence = []  # group of each removal, lowest score first, never below a group's floor
    for _, gid, _ in sorted((float(scores[gid][c]), gid, c) for gid in groups for c in range(groups[gid].size)):
        if left[gid] > floor[gid]:
            left[gid] -= 1
            sequence.append(gid)

    def kept_after(n):
        counts = {gid: g.size for gid, g in groups.items()}
        for gid in sequence[:n]:
            counts[gid] -= 1
        return counts

    if fraction is not None:
        n = min(len(sequence), int(round(fraction * sum(g.size for g in groups.values()))))
    else:  # the fewest removals that bring the estimate to the target (it falls as removals grow)
        low, high = 0, len(sequence)
        while low < high:
            mid = (low + high) // 2
            low, high = (mid + 1, high) if graph.estimate_macs(kept_after(mid)) > target_macs else (low, mid)
        n = low
    result = {}
    for gid, want in kept_after(n).items():
        if round_to > 1:
            want = min(groups[gid].size, int(math.ceil(want / round_to) * round_to))
        result[gid] = np.sort(np.argsort(-scores[gid], kind="stable")[:want])
    return result


def select_per_group(graph, scores, fraction, target_macs, max_fraction, min_channels, round_to, only):
    """The same share from every group: ``fraction``, or the share that brings the estimate to ``target_macs``."""
    groups = [g for g in graph.prunable() if only is None or set(g.producers) & only]

    def kept_at(share):
        return {g.gid: max(min_channels, g.size - int(round(min(share, max_fraction) * g.size))) for g in groups}

    share = fraction
    if share is None:
        low, high = 0.0, max_fraction
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if graph.estimate_macs(kept_at(mid)) > target_macs else (low, mid)
        share = high
    result = {}
    for gid, want in kept_at(share).items():
        if round_to > 1:
            want = min(graph.groups[gid].size, int(math.ceil(want / round_to) * round_to))
        result[gid] = np.sort(np.argsort(-scores[gid], kind="stable")[:want])
    return result
