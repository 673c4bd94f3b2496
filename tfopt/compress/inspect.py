"""Looking inside (compressed) models: sparsity, distinct weight values, m-by-n patterns, layer choice.

Works on plain tf_keras models (e.g. what ``tfopt.compress.prune`` / ``cluster`` return) and on
tfmot-wrapped models (``PruneLowMagnitude`` layers are read through their masks).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from tfopt._keras import check_model, keras, tfmot
from tfopt._private import private
from tfopt.errors import ConfigError

__all__ = [
    "sparsity",
    "cluster_counts",
    "m_by_n_ok",
    "prunable_weights",
    "clusterable_weights",
    "match_layers",
    "layer_values",
    "walk_layers",
]

_MISSING = object()


def _pruning_wrapper():
    return private("tfmot_pruning_wrapper")


def _registry_weights(make, getter: str, layer) -> list:
    """The weights tfmot's own registry code hands its wrapper for ``layer``, ``layer`` left as it was.

    tfmot's ``make_prunable`` / ``make_clusterable`` set a ``get_prunable_weights`` / ``get_clusterable_weights``
    method on the layer (what its wrappers call): that method is read here and removed again, so the registry
    decides (Dense ``kernel``, SeparableConv ``pointwise_kernel``, Embedding ``embeddings``, RNN cells' ``kernel``
    and ``recurrent_kernel``, MultiHeadAttention's query/key/value/output kernels in its sub-layers), not a second
    list kept here.
    """
    before = vars(layer).get(getter, _MISSING)
    make(layer)
    try:
        found = getattr(layer, getter)()
    finally:
        if before is _MISSING:
            delattr(layer, getter)
        else:
            setattr(layer, getter, before)
    return [w[1] if isinstance(w, tuple) else w for w in found]  # clustering gives (name, variable) pairs


def prunable_weights(layer) -> list:
    """List of the variables tfmot would prune in ``layer`` (empty when it prunes none or cannot wrap it).

    Args:
        layer: tf_keras layer (not wrapped).

    >>> prunable_weights(keras.layers.Flatten())
    []
    >>> attention = keras.layers.MultiHeadAttention(2, 4, name="att")
    >>> _ = attention(np.zeros((1, 3, 8), "float32"), np.zeros((1, 3, 8), "float32"))
    >>> [w.name for w in prunable_weights(attention)]
    ['att/query/kernel:0', 'att/key/kernel:0', 'att/value/kernel:0', 'att/attention_output/kernel:0']
    """
    if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
        return list(layer.get_prunable_weights())
    registry = private("tfmot_prune_registry")
    if not registry.supports(layer) or not layer.built:
        return []
    return _registry_weights(registry.make_prunable, "get_prunable_weights", layer)


def clusterable_weights(layer) -> list:
    """List of the kernel variables tfmot would cluster in ``layer`` (empty when none).

    Args:
        layer: tf_keras layer (not wrapped).

    >>> dense = keras.layers.Dense(2, name="d")
    >>> _ = dense(np.zeros((1, 3), "float32"))
    >>> [w.name for w in clusterable_weights(dense)]
    ['d/kernel:0']
    """
    if isinstance(layer, tfmot.clustering.keras.ClusterableLayer):
        return [w for _, w in layer.get_clusterable_weights()]
    registry = private("tfmot_clustering_registry")
    if not layer.built or not registry.supports(layer):
        return []
    return _registry_weights(registry.make_clusterable, "get_clusterable_weights", layer)


def walk_layers(model) -> Iterator:
    """Yield the layers of ``model``, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from walk_layers(layer)
        else:
            yield layer


def _weight_keys(layer_name: str, variable_names: list) -> list[str]:
    """The keys ``sparsity`` and ``cluster_counts`` report a layer's weights under: the layer's name alone for
    one weight, else ``layer/<the shortest tail of each variable's name that tells them apart>`` (so the
    sub-layer is named where one holds the weight: ``block1_attention/query/kernel``; ``lstm/kernel`` and
    ``lstm/recurrent_kernel``); the same whether or not a tfmot wrapper added its prefix.

    Args:
        layer_name: String, the (unwrapped) layer's name.
        variable_names: List of the variables' names (``"att/query/kernel:0"``...).

    >>> _weight_keys("att", ["att/query/kernel:0", "att/key/kernel:0"])
    ['att/query/kernel', 'att/key/kernel']
    >>> _weight_keys("d", ["d/kernel:0"])
    ['d']
    """
    if len(variable_names) <= 1:
        return [layer_name] * len(variable_names)
    parts = [name.split(":")[0].split("/") for name in variable_names]
    for depth in range(1, max(len(p) for p in parts) + 1):
        tails = ["/".join(p[-depth:]) for p in parts]
        if len(set(tails)) == len(tails):
            return [f"{layer_name}/{tail}" for tail in tails]
    return [f"{layer_name}/{'/'.join(p[-1:])}_{i}" for i, p in enumerate(parts)]  # same names: numbered


def _named(layer, weights) -> Iterator[tuple[str, object]]:
    yield from zip(_weight_keys(layer.name, [w.name for w in weights]), weights)


def _effective_kernels(model) -> Iterator[tuple[str, np.ndarray]]:
    """(name, values) of every prunable kernel; wrapped layers give kernel * mask (what they compute with)."""
    wrapper = _pruning_wrapper()
    for layer in walk_layers(model):
        if isinstance(layer, wrapper):
            pairs = [(w, m) for w, m, _ in layer.pruning_vars]
            for (name, w), (_, m) in zip(_named(layer.layer, [w for w, _ in pairs]), pairs):
                yield name, np.asarray(w.numpy()) * np.asarray(m.numpy())
        else:
            for name, w in _named(layer, prunable_weights(layer)):
                yield name, np.asarray(w.numpy())


def sparsity(model) -> dict:
    """Dictionary of the fraction of exact zeros in each prunable kernel, and overall (size-weighted).

    Args:
        model: tf_keras model, stripped or still wrapped by ``prune_low_magnitude``.

    Returns:
        ``{"layers": {layer_name: fraction}, "overall": fraction, "sizes": {layer_name: n_weights}}``.

    >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(2,), kernel_initializer="zeros")])
    >>> sparsity(m)["overall"]
    1.0
    """
    check_model(model, "sparsity")
    fractions, sizes = {}, {}
    for name, values in _effective_kernels(model):
        sizes[name] = int(values.size)
        fractions[name] = float(np.mean(values == 0)) if values.size else 0.0
    total = sum(sizes.values())
    overall = sum(fractions[k] * sizes[k] for k in sizes) / total if total else 0.0
    return {"layers": fractions, "overall": float(overall), "sizes": sizes}


def cluster_counts(model) -> dict:
    """Dictionary of the number of distinct values in each clusterable kernel (and per output channel for convs).

    Args:
        model: tf_keras model (e.g. the stripped model ``tfopt.compress.cluster`` returns).

    Returns:
        ``{"layers": {layer_name: n_distinct}, "per_channel": {conv_layer_name: max n_distinct over
        output channels}}``.

    >>> m = keras.Sequential([keras.layers.Dense(3, input_shape=(2,), kernel_initializer="ones", name="d")])
    >>> cluster_counts(m)["layers"]
    {'d': 1}
    """
    check_model(model, "cluster_counts")
    counts, per_channel = {}, {}
    wrapper = private("tfmot_cluster_wrapper")
    for layer in walk_layers(model):
        # a clustering wrapper's own layer; a Bidirectional's ``.layer`` is its unbuilt template, not its weights
        layer = layer.layer if isinstance(layer, wrapper) else layer
        weights = clusterable_weights(layer)
        for name, w in _named(layer, weights):
            values = np.asarray(w.numpy())
            counts[name] = int(np.unique(values).size)
            if isinstance(layer, keras.layers.Conv2D) and values.ndim == 4:
                flat = values.reshape(-1, values.shape[-1])
                per_channel[name] = max(int(np.unique(flat[:, c]).size) for c in range(flat.shape[1]))
    return {"layers": counts, "per_channel": per_channel}


def m_by_n_ok(kernel, m: int, n: int) -> bool:
    """True when every group of ``n`` consecutive input-channel weights of ``kernel`` has at least ``m`` zeros.

    Same convention and grouping as tfmot's ``sparsity_m_by_n=(m, n)`` (m zeros out of n, groups along the
    input-channel axis as TFLite stores it; a short last group counts missing weights as zeros).

    Args:
        kernel: Array-like, a Dense ``(in, out)`` or Conv2D ``(h, w, in, out)`` kernel.
        m: Integer, the number of zeros required in each group.
        n: Integer, the group size.

    >>> m_by_n_ok(np.array([[0.0], [1.0], [0.0], [2.0]]), 2, 4)
    True
    """
    values = np.asarray(kernel)
    rows = np.moveaxis(values, -2, -1).reshape(-1, values.shape[-2])
    pad = (-rows.shape[1]) % n
    groups = np.pad(rows, [(0, 0), (0, pad)]).reshape(-1, n)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n - m))


def _describe(spec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def match_layers(model, layers: Iterable | None, where: str, usable) -> list[str]:
    """List of the names of the layers of ``model`` selected by ``layers`` (all usable layers when None).

    Args:
        model: tf_keras model.
        layers: Iterable of layer names, layer classes or class names (e.g. ``["conv1", "Dense"]``), or None.
        where: String, the calling function's name, for messages.
        usable: Callable ``layer -> bool``, whether the technique can handle a layer.

    Returns:
        With ``layers=None`` the names of all usable layers, else the names of all layers matched (usable
        or not: the caller reports unusable ones); raises ConfigError for an entry matching no layer.

    >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(2,), name="d")])
    >>> match_layers(m, ["Dense"], "prune", lambda layer: True)
    ['d']
    """
    all_layers = [layer for layer in walk_layers(model) if not isinstance(layer, keras.layers.InputLayer)]
    if layers is None:
        return [layer.name for layer in all_layers if usable(layer)]
    if isinstance(layers, (str, type)):
        layers = [layers]
    chosen = []
    for spec in layers:
        if isinstance(spec, str):
            hits = [layer for layer in all_layers if spec in (layer.name, type(layer).__name__)]
        elif isinstance(spec, type):
            hits = [layer for layer in all_layers if isinstance(layer, spec)]
        else:
            raise ConfigError(
                f"{where}: layers entry {spec!r} must be a layer name, a layer class or a class name"
            )
        if not hits:
            names = ", ".join(layer.name for layer in all_layers)
            raise ConfigError(
                f"{where}: layers entry {_describe(spec)!r} matches no layer of the model; "
                f"allowed: layer names ({names}) or their classes"
            )
        chosen += [layer.name for layer in hits if layer.name not in chosen]
    return chosen


def layer_values(model, values: dict, where: str, option: str, check=None) -> dict:
    """``{layer name: value}`` from a per-layer option such as ``target_sparsity`` or ``n_clusters`` given as a dict
    whose keys are layer names, classes or class names (as ``layers`` takes them).

    Args:
        model: tf_keras model.
        values: Dict of layer name, class or class name -> value.
        where: String, the calling function's name, for messages.
        option: String, the option's name, for messages.
        check: Callable ``(name, value) -> None`` raising ConfigError for a value out of range, or None.

    Raises ConfigError for an empty dict, a key matching no layer, or a layer matched by two keys.

    >>> m = keras.Sequential([keras.layers.Dense(2, input_shape=(2,), name="d")])
    >>> layer_values(m, {"Dense": 0.5}, "prune", "target_sparsity")
    {'d': 0.5}
    """
    if not isinstance(values, dict) or not values:
        problem = "is empty" if isinstance(values, dict) else "is not allowed"
        raise ConfigError(f"{where}: {option}={values!r} {problem}; allowed: a non-empty dict of layer name -> value")
    out, source = {}, {}
    for key, value in values.items():
        if check is not None:
            check(f"{option}[{key!r}]", value)
        for name in match_layers(model, [key], where, lambda layer: True):
            if name in out:
                raise ConfigError(f"{where}: {option}: layer {name!r} is matched by both {source[name]!r} and {key!r}; "
                                  "give each layer one value")
            out[name], source[name] = value, key
    return out
