"""A search over each layer's compression of a TRAINED model: its sparsity, its clusters and its weight bits, with
the gzip size of the exported TFLite file as the objective and the drop of that file's VALIDATION accuracy as the
constraint.

One trial prunes a copy of the trained model with a sparsity per layer (``tfopt.compress.prune`` with a dict),
clusters the layers given a count (keeping the zeros), exports an int4 file with 4 or 8 bits per layer
(``layer_bits``), gzips it and runs it over the validation split. Every setting is a keras-tuner hyperparameter of
the space keys ``target_sparsity/<layer>``, ``n_clusters/<layer>`` and ``layer_bits/<layer>`` (see
:mod:`tfopt.tune.spaces`), so the search is :func:`tfopt.tune.search` itself: resumable, distributable, with its
trial records and Pareto plot. Report the chosen file on the test split, which the search never saw.

>>> result = search_compression(trained, train_ds, val_ds, max_trials=20, directory="runs")  # doctest: +SKIP
>>> result.best_hyperparameters["target_sparsity/dense1"], result.best_score  # doctest: +SKIP
"""

from __future__ import annotations

from tfopt._io import write_json
from tfopt._keras import check_model
from tfopt.compress.inspect import match_layers, prunable_weights, walk_layers
from tfopt.errors import ConfigError, check_range

__all__ = ["search_compression", "SPARSITIES", "CLUSTERS", "BITS"]

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98)  # each layer's sparsity choices
CLUSTERS = (0, 16, 8)  # each layer's cluster counts; 0 leaves it unclustered
BITS = (4, 8)  # each layer's weight bits in the int4 file


def _choices(name: str, value, layers: list[str]) -> dict:
    """``{layer: [choices]}`` from one list for every layer or a dict of layer -> list (a layer left out gets none)."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(layers))
        if unknown:
            raise ConfigError(f"{name} names layers {unknown} that are not searched; allowed: {', '.join(layers)}")
        out = {layer: value[layer] for layer in layers if layer in value}
    else:
        out = {layer: value for layer in layers}
    for layer, choices in out.items():
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ConfigError(f"{name}[{layer!r}]={choices!r} is not allowed; allowed: a non-empty list of values")
    return {layer: list(choices) for layer, choices in out.items()}


def search_compression(model, train_ds, val_ds, sparsity=SPARSITIES, clusters=CLUSTERS, bits=BITS, layers=None,
                       max_drop: float = 0.005, quantization: str = "int4", prune_epochs: int = 2,
                       cluster_epochs: int = 1, learning_rate: float | None = None, training: dict | None = None,
                       algorithm: str = "random",
                       max_trials: int = 20, directory="tune",
                       project_name: str = "per_layer", overwrite: bool = False, seed: int = 0, verbose: int = 1,
                       **search_kwargs):
    """Search each layer's sparsity, clusters and bits of trained ``model`` for the smallest gzip TFLite file whose
    validation accuracy is at most ``max_drop`` below the float32 file's.

    Args:
        model: Trained tf_keras functional or Sequential model (not modified; every trial compresses a copy).
        train_ds: tf.data.Dataset of (x, y) batches: the fine-tuning data (an augmenting one helps at high sparsity).
        val_ds: tf.data.Dataset of (x, y) batches: the constraint is measured on it. Never pass the test split.
        sparsity: List of each layer's sparsity choices, or a dict layer -> list (a layer left out is not pruned).
        clusters: List of each layer's cluster counts (0: unclustered), a dict layer -> list, or None (no clustering).
        bits: List of each layer's weight bits (4, 8, None: left float), a dict layer -> list, or None (the
            quantization's bits everywhere).
        layers: List of layer names (or classes) to search, or None for every layer with prunable weights.
        max_drop: Float in [0, 1), the validation accuracy the compressed file may lose against the float32 file
            (0.005 = half a point). The best trial sits at that edge, where validation flatters: to hold a drop on
            test, keep a margin (``benchmarks/compression.py`` allows half a point on test and chooses within a
            quarter on 800 validation digits; even so, the CNN's best trial lost 0.5 to 0.8 points on test at five
            seeds of six, while planned per-layer budgets of about the same size held within half a point).
        quantization: String, the file's quantization: an int4 one ("int4", "int4_weight_only", "int4_block32").
        prune_epochs: Integer >= 1, each trial's pruning fine-tuning epochs.
        cluster_epochs: Integer >= 1, each trial's clustering fine-tuning epochs.
        learning_rate: Float > 0 or None: each trial fine-tunes with a fresh AdamW (weight decay 1e-4) from this rate,
            cosine-decayed to 0 over the pruning epochs (the compression benchmark's fine-tuning); None: ``training``,
            else a fresh copy of the model's own optimizer.
        training: Dict of training settings for the fine-tuning (``optimizer``, ``learning_rate``, ``schedule``,
            ``weight_decay``, ``label_smoothing``: see :data:`tfopt.tune.TRAINING_KEYS`; a schedule spans the pruning
            epochs), or None (a fresh copy of the model's own optimizer). To augment, pass an augmenting ``train_ds``.
        algorithm: String, "random" or "bayesian" (keras-tuner's oracles).
        max_trials: Integer >= 1, the number of trials.
        directory, project_name, overwrite, seed, verbose: As for :func:`tfopt.tune.search`.
        **search_kwargs: Passed to :func:`tfopt.tune.search` (``strategy``, ``data_fn``, ``role``...).

    Returns:
        The :class:`tfopt.tune.SearchResult`; ``result.best_trial`` is the smallest file within the constraint
        (``result.best_model`` its model). The float32 file's validation accuracy and the constraint are in
        ``<directory>/<project_name>/baseline.json``.
    """
    from tfopt.export import INT4_QUANTIZATIONS, evaluate, to_tflite
    from tfopt.export.int4 import layers_with_weight_ops
    from tfopt.tune.tuner import search

    check_model(model, "search_compression")
    check_range("max_drop", max_drop, 0, 1, high_open=True)
    if quantization not in INT4_QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r} is not allowed; allowed: {', '.join(INT4_QUANTIZATIONS)}")
    if algorithm not in ("random", "bayesian"):
        raise ConfigError(f"algorithm={algorithm!r} is not allowed; allowed: 'random', 'bayesian' (a trained model's "
                          "search has no epochs for hyperband to share out)")
    names = match_layers(model, layers, "search_compression", lambda layer: bool(prunable_weights(layer)))
    if not names:
        raise ConfigError("search_compression: the model has no layer with prunable weights (Dense, Conv...)")
    training = dict(training or {})
    if learning_rate is not None:
        check_range("learning_rate", learning_rate, 0, low_open=True)
        training = {"optimizer": "adamw", "weight_decay": 1e-4, "schedule": "cosine", **training,
                    "learning_rate": learning_rate}
    if "augment" in training:
        raise ConfigError("training={'augment': ...} is not allowed here (a trained model's trials do not train); "
                          "pass an augmenting train_ds (tfopt.data.load(..., augment=...))")
    space: dict = {"model": model, "quantization": quantization, "prune_epochs": prune_epochs,
                   "cluster_epochs": cluster_epochs, **{key: {"fixed": value} for key, value in training.items()}}
    float_file = to_tflite(model)
    # layer_bits can only name layers with a weight op in the file (a fused LSTM has none; a GRU's loop has its own)
    by_name = {layer.name: layer for layer in walk_layers(model)}
    with_ops = layers_with_weight_ops(float_file.content, {name: by_name.get(name) for name in names})
    for key, value, searched in (("target_sparsity", sparsity, names), ("n_clusters", clusters, names),
                                 ("layer_bits", bits, with_ops)):
        if value is None:
            continue
        if isinstance(value, dict) and key == "layer_bits" and set(value) - set(with_ops):
            raise ConfigError(f"bits names layers {sorted(set(value) - set(with_ops))} that have no weight op in the "
                              f"TFLite file (a fused recurrent layer has none); allowed: {', '.join(with_ops)}")
        for layer, choices in _choices(key if key != "target_sparsity" else "sparsity", value, searched).items():
            space[f"{key}/{layer}"] = choices if len(choices) > 1 else {"fixed": choices[0]}
    base = evaluate(float_file, val_ds, runs=5, warmup=1)["accuracy"]
    floor = base - max_drop
    result = search(space, train_ds, val_ds, algorithm=algorithm, objective="tflite_gzip_bytes",
                    constraints={"tflite_accuracy": {"min": floor}}, max_trials=max_trials, max_epochs=0,
                    directory=directory, project_name=project_name, overwrite=overwrite, seed=seed, verbose=verbose,
                    **search_kwargs)
    write_json(result.directory / "baseline.json",
               {"float32_val_accuracy": base, "max_drop": max_drop, "min_val_accuracy": floor, "layers": names,
                "quantization": quantization, "seed": seed})
    return result


# ---------------------------------------------------------------- the "search_compression" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The search_compression stage: the per-layer search on the current model; its best trial becomes the current
    model, and its int4 file (``searched.tflite``) an exported variant that an ``evaluate`` stage measures."""
    import json
    from pathlib import Path

    from tfopt.errors import CompressionError
    from tfopt.export import to_tflite
    from tfopt.export.tflite import variant_row
    from tfopt.techniques import StageResult
    from tfopt.tune.spaces import split

    train_ds, val_ds, _ = inputs.load()
    folder = Path(inputs.stage_dir)
    result = search_compression(
        inputs.model(), train_ds, val_ds, sparsity=o["sparsity"], clusters=o["clusters"], bits=o["bits"],
        layers=o["layers"], max_drop=o["max_drop"], quantization=o["quantization"], prune_epochs=o["prune_epochs"],
        cluster_epochs=o["cluster_epochs"], learning_rate=o["learning_rate"], algorithm=o["algorithm"],
        max_trials=o["max_trials"],
        directory=str(folder / "search"), project_name=inputs.project, seed=inputs.seed,
        verbose=1 if inputs.verbose == "auto" else int(inputs.verbose))
    baseline = json.loads((result.directory / "baseline.json").read_text())
    if result.best_trial is None:
        accuracies = sorted((r.get("metrics") or {}).get("tflite_accuracy", float("nan")) for r in result.trials)
        raise CompressionError(
            f"search_compression: none of {len(result.trials)} trials kept the validation accuracy within "
            f"max_drop={o['max_drop']} of the float32 file's {baseline['float32_val_accuracy']:.4f} (at least "
            f"{baseline['min_val_accuracy']:.4f}); their accuracies: {[round(a, 4) for a in accuracies]}; allow a "
            "larger max_drop, lower sparsities, more prune_epochs or trials, or a learning_rate")
    chosen = split(result.best_hyperparameters)[2]
    model = result.best_model
    tfl = to_tflite(model, o["quantization"], layer_bits=chosen.get("layer_bits"))
    path = tfl.save(folder / "searched.tflite")
    row = variant_row(f"{inputs.name}_{o['quantization']}", inputs.name, o["quantization"], tfl, model, path,
                      inputs.run_dir, inputs.model_data(inputs.current))
    per_layer = {key: chosen[key] for key in ("target_sparsity", "n_clusters", "layer_bits") if key in chosen}
    feasible = sum(r["status"] == "COMPLETED" for r in result.trials)
    metrics = {"variants": [row], "baseline": None, "per_layer": per_layer, "trials": len(result.trials),
               "feasible_trials": feasible, "search": str(result.directory.relative_to(inputs.run_dir)),
               "val_tflite_accuracy": result.best_trial["metrics"].get("tflite_accuracy"),
               "gzip_bytes": tfl.gzip_bytes, **inputs.held_out(model, val_ds)}
    return StageResult(model, metrics, f"best of {len(result.trials)} trials ({feasible} within max_drop): "
                                       f"{tfl.gzip_bytes:,} gzip bytes, val accuracy of the file "
                                       f"{metrics['val_tflite_accuracy']:.4f}")


def _register():
    from tfopt.export import INT4_QUANTIZATIONS
    from tfopt.options import FLOAT, INT, LIST, MAP, NONE, Field, at_least, in_unit, options_from, positive
    from tfopt.techniques import Technique, register_technique

    def lists(value):
        return None if value is None or (isinstance(value, (list, dict)) and value) else "a non-empty list or dict"

    return register_technique(Technique(
        "search_compression",
        options_from(search_compression, ["sparsity", "clusters", "bits", "layers", "max_drop", "quantization",
                                          "prune_epochs", "cluster_epochs", "learning_rate", "algorithm",
                                          "max_trials"],
                     sparsity=Field((LIST, MAP), list(SPARSITIES), check=lists,
                                    help="each layer's sparsity choices (a list, or {layer: [...]})"),
                     clusters=Field((LIST, MAP, NONE), list(CLUSTERS), check=lists,
                                    help="each layer's cluster counts, 0 = unclustered (null: no clustering)"),
                     bits=Field((LIST, MAP, NONE), list(BITS), check=lists,
                                help="each layer's weight bits, 4 or 8 (null: the quantization's everywhere)"),
                     layers=Field((LIST, NONE), None, help="the layers searched (unset: every prunable layer)"),
                     max_drop=Field((FLOAT, INT), 0.005, check=in_unit(),
                                    help="validation accuracy the file may lose against the float32 file"),
                     quantization={"choices": tuple(INT4_QUANTIZATIONS)},
                     prune_epochs={"check": at_least(1)}, cluster_epochs={"check": at_least(1)},
                     learning_rate={"kinds": (FLOAT, NONE), "check": positive,
                                    "help": "AdamW from this rate, cosine-decayed over the pruning (unset: the "
                                            "model's optimizer)"},
                     algorithm={"choices": ("random", "bayesian")}, max_trials={"check": at_least(1)}),
        _run_stage, summary="per-layer search of sparsity, clusters and int4/int8 bits: the smallest gzip file within "
                            "max_drop of the float32 file on validation",
        function=search_compression, sets=("pruned", "exported"),
        refuses_after={"pruned": "'search_compression' prunes the trained model itself: put it before 'prune'",
                       "clustered": "'search_compression' clusters itself: put it before 'cluster'",
                       "qat": "'search_compression' cannot follow 'quantize_aware'"}))


TECHNIQUE = _register()
