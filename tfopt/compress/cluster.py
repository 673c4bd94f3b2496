"""Weight clustering with tfmot: wrap, fine-tune, strip, and check each kernel kept at most n_clusters values.

>>> from tfopt.compress.cluster import INITS
>>> sorted(INITS)
['density', 'kmeans++', 'linear', 'random']
"""

from __future__ import annotations

from tfopt._keras import check_model, tf, tfmot
from tfopt._private import private
from tfopt._model import compile_like, holds_kernel, private_copy, strategy_scope, wrap_layers
from tfopt.compress._fit import TEACHER_OPTIONS, compression_fit, distillation_settings, stage_resume, stage_teacher
from tfopt.compress.inspect import (cluster_counts, clusterable_weights, layer_values, match_layers, sparsity,
                                    walk_layers)
from tfopt.errors import CompressionError, ConfigError, UnsupportedLayerError, check_choice
from tfopt.options import BOOL, INT, NONE, Field, at_least, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["cluster", "INITS"]

_CI = tfmot.clustering.keras.CentroidInitialization
INITS = {
    "kmeans++": _CI.KMEANS_PLUS_PLUS,
    "linear": _CI.LINEAR,
    "density": _CI.DENSITY_BASED,
    "random": _CI.RANDOM,
}
SPARSITY_TOLERANCE = 0.005  # preserve_sparsity: allowed drop of a layer's zero fraction


def _check_count(name: str, value, preserve_sparsity: bool, skip: bool = False) -> None:
    """ConfigError unless ``value`` is an integer >= 2 (>= 3 keeping zeros); with ``skip`` also 0 or None (that
    layer left unclustered, in a per-layer dict)."""
    low = 3 if preserve_sparsity else 2
    if skip and value in (0, None) and not isinstance(value, bool):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        extra = " with preserve_sparsity=True (one centroid is pinned at zero)" if preserve_sparsity else ""
        skipped = " (or 0/None: leave the layer unclustered)" if skip else ""
        raise ConfigError(f"{name}={value!r} is out of range; allowed: an integer >= {low}{extra}{skipped}")


def _validate(n_clusters, init, epochs, preserve_sparsity):
    if not isinstance(n_clusters, dict):  # a per-layer dict is checked against the model's layers in cluster()
        _check_count("n_clusters", n_clusters, preserve_sparsity)
    check_choice("init", init, tuple(INITS))
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} is out of range; allowed: an integer >= 1")


def _wrapper_type():
    return private("tfmot_cluster_wrapper")


def _counts(work, n_clusters, layers, preserve_sparsity) -> dict:
    """``{layer name: clusters}`` of the layers to cluster: every layer ``layers`` chooses at ``n_clusters``, or, with a
    per-layer dict, its layers at their own counts (0/None: left unclustered)."""
    if not isinstance(n_clusters, dict):
        return {name: n_clusters for name in _targets(work, layers)}
    if layers is not None:
        raise ConfigError("n_clusters is a dict of layer -> clusters: its keys choose the layers; leave layers=None "
                          f"(got layers={layers!r})")
    counts = layer_values(work, n_clusters, "cluster", "n_clusters",
                          lambda name, value: _check_count(name, value, preserve_sparsity, skip=True))
    counts = {name: value for name, value in counts.items() if value}
    if not counts:
        raise ConfigError(f"n_clusters={n_clusters!r} clusters no layer (every value is 0 or None); allowed: a dict "
                          "with at least one count >= 2")
    _targets(work, list(counts))
    return counts


def _targets(work, layers) -> list[str]:
    usable = lambda layer: bool(clusterable_weights(layer))  # noqa: E731
    names = match_layers(work, layers, "cluster", usable)
    by_name = {layer.name: layer for layer in walk_layers(work)}
    if layers is not None:
        bad = [n for n in names if not usable(by_name[n])]
        if bad:
            raise UnsupportedLayerError(
                f"cluster: layers {bad} have no clusterable kernel (Dense, Conv, Embedding...); choose other layers"
            )
    if not names:
        raise UnsupportedLayerError(
            "cluster: the model has no clusterable layer (needs Dense/Conv/Embedding kernels); layers: "
            + ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in work.layers)
        )
    return names


def _check(stripped, clustered: dict, per_channel, before, preserve_sparsity):
    """``clustered``: {layer name: its n_clusters} of the layers tfmot wrapped."""
    counts = cluster_counts(stripped)
    too_many = {}
    for name, count in counts["layers"].items():
        limit = clustered.get(name.split("/")[0])
        if limit is None:
            continue
        per = counts["per_channel"].get(name) if per_channel else None
        value = per if per is not None else count
        if value > limit:
            too_many[name] = (value, limit)
    if too_many:
        unit = "per output channel " if per_channel else ""
        raise CompressionError(
            f"cluster: layers {too_many} (values, n_clusters) have more distinct kernel values {unit}than their "
            "n_clusters after stripping"
        )
    if preserve_sparsity:
        after = sparsity(stripped)["layers"]
        lost = {
            name: (round(before[name], 4), round(after.get(name, 0.0), 4))
            for name in before
            if name.split("/")[0] in clustered and after.get(name, 0.0) < before[name] - SPARSITY_TOLERANCE
        }
        if lost:
            raise CompressionError(
                f"cluster: preserve_sparsity=True but zeros were lost (layer: (before, after)) {lost}"
            )
    return counts


def cluster(
    model,
    train_ds,
    n_clusters: int = 16,
    init: str = "kmeans++",
    per_channel: bool = False,
    preserve_sparsity: bool = False,
    epochs: int = 1,
    layers=None,
    val_ds=None,
    callbacks=(),
    optimizer=None,
    loss=None,
    learning_rate: float = 1e-5,
    strategy=None,
    verbose="auto",
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """Fine-tune a copy of ``model`` with weight clustering and return it stripped (<= n_clusters values per kernel).

    Args:
        model: tf_keras functional or Sequential model, trained (or pruned); it is not modified.
        train_ds: tf.data.Dataset of (x, y) batches.
        n_clusters: Integer, the number of centroids per kernel (>= 2; >= 3 with preserve_sparsity), or a dict of
            layer name (or class) -> its count, 0 or None leaving that layer unclustered (``layers`` then None).
        init: String, the centroid initialization: "kmeans++", "linear", "density" or "random".
        per_channel: Boolean, cluster each output channel of Conv2D kernels separately (other layers ignore it).
        preserve_sparsity: Boolean, keep the zeros of a pruned model (one centroid pinned at zero).
        epochs: Integer, the number of fine-tuning epochs (>= 1).
        layers: Iterable of layer names, classes or class names to cluster, or None for every clusterable layer.
        val_ds: tf.data.Dataset or None, validation data for ``fit``.
        callbacks: Sequence of extra Keras callbacks.
        optimizer: Optimizer or None (None: a fresh copy of the model's optimizer, else Adam(learning_rate)).
        loss: Loss or None (None: the model's compiled loss, else sparse categorical cross-entropy).
        learning_rate: Float, the rate of the default Adam.
        strategy: tf.distribute strategy or None; the wrapped model is built in its scope.
        verbose: "auto", 0, 1 or 2, as in ``tfopt.train.fit``.
        teacher: tf_keras model or None: distil the fine-tuning from it (e.g. the unclustered model).
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there (see ``prune``).
        keep_backup: Boolean, keep that state when fine-tuning ends.

    Returns:
        The stripped, compiled tf_keras model; ``cluster_counts(model)`` shows the distinct values per kernel.
        Raises CompressionError when a clustered kernel has more than n_clusters values (per channel when
        ``per_channel``) or, with ``preserve_sparsity``, lost more than half a point of zeros.

    >>> clustered = cluster(model, train_ds, n_clusters=8)  # doctest: +SKIP
    >>> max(cluster_counts(clustered)["layers"].values()) <= 8  # doctest: +SKIP
    True
    """
    check_model(model, "cluster")
    _validate(n_clusters, init, epochs, preserve_sparsity)
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    before = sparsity(model)["layers"] if preserve_sparsity else {}
    params = {
        "cluster_centroids_init": INITS[init],
        "cluster_per_channel": bool(per_channel),
        "preserve_sparsity": bool(preserve_sparsity),
    }
    with strategy_scope(strategy):
        work = private_copy(model, "cluster")
        counts = _counts(work, n_clusters, layers, preserve_sparsity)
        names = list(counts)
        try:
            wrapped = wrap_layers(work, lambda layer: tfmot.clustering.keras.cluster_weights(
                layer, number_of_clusters=counts[layer.name], **params), names)
        except ValueError as err:
            raise UnsupportedLayerError(f"cluster: tfmot cannot wrap the model's layers {names}: {err}") from err
        except tf.errors.InvalidArgumentError as err:
            raise ConfigError(
                f"cluster: tfmot could not initialize n_clusters={n_clusters} centroids with init={init!r} "
                f"(per_channel={per_channel}, preserve_sparsity={preserve_sparsity}) for layers {names}: "
                f"{err.message.strip()}. Some kernel (or channel) has fewer distinct non-zero weights than "
                "clusters; use fewer clusters, init='linear', or layers=[...] to skip small layers"
            ) from err
        wrapper = _wrapper_type()
        clustered = {layer.layer.name: counts[layer.layer.name] for layer in walk_layers(wrapped)
                     if isinstance(layer, wrapper)}
        if not clustered:
            raise UnsupportedLayerError(
                f"cluster: no layer among {names} has more weights than n_clusters={n_clusters}"
                f"{' per channel' if per_channel else ''}; use fewer clusters"
            )
        compile_like(wrapped, model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
    compression_fit(wrapped, train_ds, epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose, strategy=strategy,
                    backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher, temperature=temperature,
                    alpha=alpha, what="cluster")
    stripped = tfmot.clustering.keras.strip_clustering(wrapped)
    with strategy_scope(strategy):
        # strip_clustering rebuilds the layers of nested sub-models with weights named "kernel:0", not
        # "<layer>/kernel:0": two in one sub-model and .h5 saving fails ("name already exists"). A clone builds
        # every layer again under its own name.
        stripped = private_copy(stripped, "cluster")
        compile_like(stripped, model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
    _check(stripped, clustered, per_channel, before, preserve_sparsity)
    return stripped


# ---------------------------------------------------------------- the "cluster" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The cluster stage: weight clustering of the current model, keeping an earlier pruning's zeros by default."""
    train_ds, val_ds, _ = inputs.load()
    clustered = cluster(inputs.model(), train_ds, n_clusters=o["n_clusters"], init=o["init"],
                        per_channel=o["per_channel"], preserve_sparsity=bool(o["preserve_sparsity"]),
                        epochs=o["epochs"], val_ds=val_ds, learning_rate=o["learning_rate"], verbose=inputs.verbose,
                        **stage_teacher(inputs, o), strategy=inputs.strategy, **stage_resume(inputs, inputs.strategy))
    counts = cluster_counts(clustered)
    metrics = {"n_clusters": o["n_clusters"], "cluster_counts": counts["layers"],
               "sparsity": sparsity(clustered)["overall"], **inputs.held_out(clustered, val_ds)}
    most = max(counts["layers"].values(), default=0)
    note = f"<= {most} values per kernel"
    left = {} if isinstance(o["n_clusters"], dict) else _left_unclustered(clustered)  # a dict leaves layers by choice
    if left:
        metrics["left_unclustered"] = left
        note += f", left unclustered: {', '.join(left)}"
    return StageResult(clustered, metrics, f"{note}, val accuracy {metrics['val_accuracy']:.4f}")


def _left_unclustered(model) -> dict:
    """Layer name -> why: the layers holding a kernel of which tfmot clusters nothing (a DepthwiseConv2D, a position
    embedding)."""
    return {layer.name: f"tfmot clusters no weight of {type(layer).__name__} layers" for layer in walk_layers(model)
            if holds_kernel(layer) and not clusterable_weights(layer)}


def _apply(model, train_ds, n_clusters, epochs=1, preserve_sparsity=False, strategy=None, verbose=0):
    """A search trial's clustering (keeping the zeros of a pruning earlier in the trial)."""
    return cluster(model, train_ds, n_clusters, epochs=epochs, preserve_sparsity=preserve_sparsity,
                   strategy=strategy, verbose=verbose)


TECHNIQUE = register_technique(Technique(
    "cluster",
    options_from(cluster, ["n_clusters", "init", "per_channel", "preserve_sparsity", "epochs", "learning_rate",
                           *TEACHER_OPTIONS], **TEACHER_OPTIONS,
                 n_clusters={"check": at_least(2), "help": "centroids per kernel"},
                 init={"choices": tuple(INITS)},
                 preserve_sparsity={"kinds": (BOOL, NONE), "default": None,
                                    "help": "keep a pruned model's zeros (unset: whether a prune stage came before)"},
                 epochs={"check": at_least(1)},
                 learning_rate={"check": positive}),
    _run_stage, summary="weight clustering (tfmot): at most n_clusters values per kernel, then stripped",
    function=cluster, own_defaults=("preserve_sparsity",), sets=("clustered",),
    preserves={"preserve_sparsity": "pruned"},
    tune_keys={"n_clusters": "n_clusters", "cluster_epochs": "epochs"}, tune_order=20, apply=_apply,
    per_layer={"n_clusters": Field((INT, NONE), None, check=lambda v: None if v in (0, None) or v >= 2 else
                                   "0 or None (leave the layer unclustered) or an integer >= 2",
                                   help="one layer's centroids (0 or None: leave it unclustered)")}))
