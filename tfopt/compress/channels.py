"""Structured pruning: remove whole channels (Conv filters, Dense neurons) and rebuild a smaller tf_keras model.

Weight pruning leaves every multiply in place; this removes them. The model's layer graph is read from its
config, and channels that must go together are tied into groups, as Torch-Pruning's DepGraph does for PyTorch:
a producer (Dense, Conv, SeparableConv, Embedding) starts a group of output channels; BatchNorm, LayerNorm,
depthwise convolutions, activations, pooling, padding and dropout carry it through; a residual ``Add`` (or
Multiply, Subtract, ...) ties its inputs' groups into one; ``Concatenate`` lays groups side by side; Flatten ->
Dense maps each channel to its positions in the flattened vector. A group that reaches the model's inputs or
outputs, or a layer this module does not understand (LSTM, attention, Permute, custom layers), is kept whole
and the report names the layer and why. The model is rebuilt from its edited config (fewer ``filters`` or
``units``) with the kept weights copied in, then fine-tuned.

No maintained library does this for Keras 2 on this stack: tfmot prunes weights only; Sony's MCT
(``keras_pruning_experimental``) needs matplotlib<3.10 and TF<=2.15; kerassurgeon was last released in 2019.
So the graph walk and the slicing are written here; the fine-tuning is Keras's ``fit``.

>>> small, report = prune_channels(model, train_ds, fraction=0.5, epochs=2, return_report=True)  # doctest: +SKIP
>>> report["flops"]  # doctest: +SKIP
{'before': 4241152, 'after': 1123456, 'ratio': 3.78}
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np

from tfopt._keras import check_model, keras
from tfopt._model import compile_like, count_steps, flatten_model, is_qat, recalibrate_batchnorm, strategy_scope, weight_count
from tfopt.compress._fit import TEACHER_OPTIONS, compression_fit, distillation_settings, stage_resume, stage_teacher
from tfopt.compress.channel_graph import ChannelGraph, analyse
from tfopt.compress.channel_select import IMPORTANCES, importance_scores, select, select_per_group, weight_kind
from tfopt.errors import CompressionError, ConfigError, check_choice
from tfopt.flops import flops, flops_by_layer
from tfopt.options import FLOAT, INT, LIST, NONE, Field, at_least, in_unit, options_from, positive
from tfopt.progress import keras_verbose
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["prune_channels", "IMPORTANCES", "channel_groups"]

SCOPES = ("global", "layer")


def channel_groups(model) -> ChannelGraph:
    """The channel groups of ``model`` (what prunes together, what is kept whole and why), without pruning.

    >>> from tfopt._keras import keras
    >>> m = keras.Sequential([keras.layers.Dense(8, input_shape=(4,), name="hidden"), keras.layers.Dense(2)])
    >>> [(g.producers, g.size) for g in channel_groups(m).prunable()]
    [(['hidden'], 8)]
    """
    check_model(model, "prune_channels")
    return analyse(_functional(model))


def _functional(model):
    """A flat functional model: nested sub-models inlined, a Sequential model re-expressed over its layers."""
    if is_qat(model) or any(type(layer).__name__.startswith("Prune") for layer in model.layers):
        raise CompressionError(
            "prune_channels needs a plain model: it got a quantization-aware or tfmot-wrapped one; prune channels "
            "first, then prune weights or apply QAT")
    flat = flatten_model(model)
    if isinstance(flat, keras.Sequential):
        flat = keras.Model(flat.inputs, flat.outputs, name=flat.name)
    return flat


# -------------------------------------------------------------------------------------------------- rebuild


_CHANNEL_KEYS = {"Dense": "units", "Conv1D": "filters", "Conv2D": "filters", "Conv3D": "filters",
                 "SeparableConv1D": "filters", "SeparableConv2D": "filters", "Embedding": "output_dim"}


def rebuild(model, graph, kept: dict, strategy=None):
    """A new functional model with only the ``kept`` channels of each group, weights copied in."""
    config = copy.deepcopy(model.get_config())
    for entry in config["layers"]:
        name, kind = entry["name"], entry["class_name"]
        out = graph.out_index(name, kept)
        if kind in _CHANNEL_KEYS and name in graph.producer_of and out is not None:
            entry["config"][_CHANNEL_KEYS[kind]] = int(len(out))
        if kind == "MultiHeadAttention" and name in graph.heads:
            entry["config"]["num_heads"] = int(len(graph.head_index(name, kept)))
            if len(out) < model.get_layer(name).output_shape[-1]:
                entry["config"]["output_shape"] = [int(len(out))]
        if kind == "Reshape" and name in graph.reshapes:
            target = list(entry["config"]["target_shape"])
            target[-1] = int(graph.layout_size(graph.reshapes[name], kept))
            entry["config"]["target_shape"] = target
    with strategy_scope(strategy):
        small = keras.Model.from_config(config)
        for layer in small.layers:
            old = model.get_layer(layer.name)
            if not old.weights:
                continue
            in_idx, out_idx = graph.in_index(layer.name, kept), graph.out_index(layer.name, kept)
            heads = graph.head_index(layer.name, kept)
            layer.set_weights([_slice_attention(weight_kind(old, w), w.numpy(), heads, out_idx) if heads is not None
                               else _slice(weight_kind(old, w), w.numpy(), in_idx, out_idx) for w in old.weights])
    return small


def _slice(kind: str, value: np.ndarray, in_idx, out_idx) -> np.ndarray:
    """One weight with the kept input channels (axis -2 of kernels) and output channels (its last axis)."""
    if kind in ("kernel", "pointwise_kernel", "depthwise_kernel") and in_idx is not None and value.ndim >= 2:
        value = np.take(value, in_idx, axis=-2)
    if kind == "depthwise_kernel":
        return value
    if out_idx is not None and kind in ("kernel", "pointwise_kernel", "bias", "embeddings", "gamma", "beta",
                                        "moving_mean", "moving_variance", "alpha"):
        value = np.take(value, out_idx, axis=-1)
    return value


def _slice_attention(kind: str, value: np.ndarray, heads, out_idx) -> np.ndarray:
    """One attention weight with the kept heads: query/key/value kernels [d, heads, k] and biases [heads, k],
    the output kernel [heads, v, d_out] (and its bias [d_out]) with the kept output channels too."""
    if kind.startswith("attention_output/"):
        if kind.endswith("kernel"):
            value = np.take(value, heads, axis=0)
        return np.take(value, out_idx, axis=-1)
    return np.take(value, heads, axis=1 if kind.endswith("kernel") else 0)


# --------------------------------------------------------------------------------------------------- public


def _check(fraction, target_flops, importance, scope, steps, max_fraction, min_channels, round_to, epochs,
           train_ds):
    if (fraction is None) == (target_flops is None):
        raise ConfigError("prune_channels needs exactly one of fraction= (channels to remove) or target_flops= "
                          f"(multiply-adds to keep); got fraction={fraction!r}, target_flops={target_flops!r}")
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ConfigError(f"fraction={fraction!r} must be in (0, 1): the share of prunable channels to remove")
    if target_flops is not None and not (isinstance(target_flops, (int, float)) and target_flops > 0
                                         and (target_flops < 1 or float(target_flops).is_integer())):
        raise ConfigError(f"target_flops={target_flops!r} must be a fraction in (0, 1) of the model's multiply-adds "
                          "or a whole number of multiply-adds")
    check_choice("importance", importance, IMPORTANCES)
    check_choice("scope", scope, SCOPES)
    for name, value, low in (("steps", steps, 1), ("min_channels", min_channels, 1), ("round_to", round_to, 1),
                             ("epochs", epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} must be an integer >= {low}")
    if not (isinstance(max_fraction, (int, float)) and 0 < max_fraction < 1):
        raise ConfigError(f"max_fraction={max_fraction!r} must be in (0, 1): the most any one group may lose")
    if train_ds is None and (epochs > 0 or importance == "taylor"):
        raise ConfigError("prune_channels needs train_ds to fine-tune (epochs > 0) or to score channels by 'taylor'; "
                          "pass train_ds, or epochs=0 with importance 'l1' or 'bn'")


def prune_channels(
    model,
    train_ds=None,
    fraction: float | None = None,
    target_flops: float | None = None,
    importance: str = "l1",
    scope: str = "global",
    epochs: int = 1,
    steps: int = 1,
    val_ds=None,
    layers=None,
    max_fraction: float = 0.9,
    min_channels: int = 1,
    round_to: int = 1,
    importance_batches: int = 8,
    learning_rate: float = 1e-3,
    decay: bool = False,
    recalibrate: int = 50,
    callbacks=(),
    strategy=None,
    verbose="auto",
    return_report: bool = False,
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """Remove whole channels from ``model`` (a smaller, rebuilt tf_keras model) and fine-tune it.

    Args:
        model: tf_keras functional, Sequential or nested model, trained; it is not modified.
        train_ds: tf.data.Dataset of (x, y) batches, for fine-tuning and 'taylor' scores (None when epochs=0).
        fraction: Float in (0, 1), the share of prunable channels to remove (or give ``target_flops``).
        target_flops: Float in (0, 1), the share of the model's multiply-adds to keep, or an absolute count.
        importance: String, "l1" (mean |weight| of each channel's filters), "bn" (|BatchNorm gamma|; l1 where a
            group has no BatchNorm) or "taylor" (first-order loss change on ``importance_batches`` batches).
        scope: String, "global" (rank all groups' channels together, scores normalised per group) or "layer"
            (remove the same share from every group).
        epochs: Integer, fine-tuning epochs after each step (0: no fine-tuning).
        steps: Integer, prune in this many rounds of (prune a little, fine-tune) to reach the goal.
        val_ds: tf.data.Dataset or None, validation data for ``fit``.
        layers: Iterable of layer names or None: prune only groups these layers produce (others kept whole).
        max_fraction: Float in (0, 1), the most any one group may lose in one step.
        min_channels: Integer, the fewest channels a group keeps.
        round_to: Integer, keep a multiple of this many channels (e.g. 8 for SIMD widths).
        importance_batches: Integer, batches scored by 'taylor'.
        learning_rate: Float, the fine-tuning rate (the optimizer is the model's, re-made at this rate).
        decay: Boolean, decay the rate to 0 along a cosine over each step's fine-tuning (else constant; measured on
            a small ResNet and LeNet-300-100 at 50%: no better than constant once BatchNorm is recalibrated).
        recalibrate: Integer, batches of ``train_ds`` over which BatchNorm statistics are re-estimated after
            each rebuild and each fine-tuning (0: never; see ``tfopt._model.recalibrate_batchnorm``).
        callbacks: Sequence of extra Keras callbacks for ``fit``.
        strategy: tf.distribute strategy or None; the rebuilt model is made in its scope.
        verbose: "auto", 0, 1 or 2, as in ``tfopt.train.fit``.
        return_report: Boolean, return ``(model, report)``: channels per layer, parameters, multiply-adds, the
            layers kept whole and why.
        teacher: tf_keras model or None: distil each step's fine-tuning from it (e.g. ``model`` itself).
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there, one ``step<k>/`` folder per step (see
            ``tfopt.compress.prune``); a call made again after a kill resumes in the step and epoch it was in.
        keep_backup: Boolean, keep that state when fine-tuning ends.

    Returns:
        The compiled smaller model (or ``(model, report)``).

    >>> small = prune_channels(model, train_ds, fraction=0.5, epochs=2)  # doctest: +SKIP
    """
    check_model(model, "prune_channels")
    _check(fraction, target_flops, importance, scope, steps, max_fraction, min_channels, round_to, epochs, train_ds)
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    current = _functional(model)
    graph = analyse(current)
    only = _check_layers(layers, current, graph)
    if not graph.prunable() or (only is not None and not any(set(g.producers) & only for g in graph.prunable())):
        raise CompressionError(f"prune_channels found nothing to prune in {model.name!r}: " + graph.why_nothing())
    before = {"params": weight_count(current)[0], "flops": flops(current), "channels": graph.channels()}
    goal_macs = None
    if target_flops is not None:
        goal_macs = target_flops * before["flops"] if target_flops < 1 else float(target_flops)
        floor = graph.estimate_macs({g.gid: max(min_channels, math.ceil(g.size * (1 - max_fraction)))
                                     for g in graph.prunable()})
        if goal_macs < floor and steps == 1:
            raise CompressionError(
                f"target_flops={target_flops!r} ({goal_macs:,.0f} multiply-adds) is below what max_fraction="
                f"{max_fraction} allows ({floor:,.0f}); raise max_fraction or steps, or lower the goal")
    for step in range(1, steps + 1):
        if step > 1:
            graph = analyse(current)
        scores = importance_scores(current, graph, importance, train_ds, importance_batches)
        step_fraction = None if fraction is None else 1 - (1 - fraction) ** (1 / steps)
        step_macs = None if goal_macs is None else before["flops"] * (goal_macs / before["flops"]) ** (step / steps)
        if scope == "layer":
            kept = select_per_group(graph, scores, step_fraction, step_macs, max_fraction, min_channels, round_to,
                                     only)
        else:
            kept = select(graph, scores, step_fraction, step_macs, max_fraction, min_channels, round_to, only)
        small = rebuild(current, graph, kept, strategy)
        recalibrate_batchnorm(small, train_ds, recalibrate)  # the layers after a pruned one see other inputs
        rate = learning_rate
        if epochs and decay:
            rate = keras.optimizers.schedules.CosineDecay(learning_rate, epochs * count_steps(train_ds))
        with strategy_scope(strategy):
            compile_like(small, model, learning_rate=rate)
        if keras_verbose(verbose):
            print(f"prune_channels step {step}/{steps}: multiply-adds {flops(current):,} -> {flops(small):,}",
                  flush=True)
        if epochs:
            compression_fit(small, train_ds, epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose,
                            strategy=strategy, backup_dir=None if backup_dir is None else Path(backup_dir) / f"step{step}",
                            keep_backup=keep_backup, teacher=teacher, temperature=temperature, alpha=alpha,
                            what="prune_channels")
            recalibrate_batchnorm(small, train_ds, recalibrate)  # statistics lag weights trained at a high rate
        current = small
    after = analyse(current).channels()
    report = {
        "importance": importance, "scope": scope, "steps": steps, "fraction": fraction, "target_flops": target_flops,
        "channels": {name: {"before": n, "after": after.get(name, n)} for name, n in before["channels"].items()},
        "params": {"before": before["params"], "after": weight_count(current)[0]},
        "flops": {"before": before["flops"], "after": flops(current),
                  "ratio": round(before["flops"] / max(1, flops(current)), 3)},
        "flops_by_layer": flops_by_layer(current),
        "kept_whole": graph.frozen_reasons(),
    }
    return (current, report) if return_report else current


def _check_layers(layers, model, graph):
    if layers is None:
        return None
    names = [layers] if isinstance(layers, str) else list(layers)
    known = {layer.name for layer in model.layers} | {f"{name}:heads" for name in graph.heads}
    for name in names:
        if name not in known:
            raise ConfigError(f"layers: no layer {name!r} in {model.name!r}; layers (and attention heads, "
                              f"'NAME:heads'): {', '.join(sorted(known))}")
        if name not in graph.producer_of:
            raise CompressionError(f"layers: {name!r} ({type(model.get_layer(name)).__name__}) has no output "
                                   "channels prune_channels can remove (Dense, Conv and SeparableConv layers do)")
        group = graph.groups[graph.find(graph.producer_of[name])]
        if group.frozen:
            heads = f"; name '{name}:heads' to prune its heads" if name in graph.heads else ""
            raise CompressionError(f"layers: {name!r}'s channels must be kept whole: {group.frozen[0]}{heads}")
    return set(names)


# ------------------------------------------------------------------ the "prune_channels" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The prune_channels stage: a smaller model with whole channels removed, fine-tuned."""
    train_ds, val_ds, _ = inputs.load()
    small, report = prune_channels(
        inputs.model(), train_ds, fraction=o["fraction"], target_flops=o["target_flops"], importance=o["importance"],
        scope=o["scope"], epochs=o["epochs"], steps=o["steps"], val_ds=val_ds, layers=o["layers"],
        max_fraction=o["max_fraction"], min_channels=o["min_channels"], round_to=o["round_to"],
        learning_rate=o["learning_rate"], decay=o["decay"], recalibrate=o["recalibrate"], strategy=inputs.strategy,
        verbose=inputs.verbose, return_report=True, **stage_teacher(inputs, o), **stage_resume(inputs, inputs.strategy))
    metrics = {"flops_before": report["flops"]["before"], "flops_after": report["flops"]["after"],
               "flops_ratio": report["flops"]["ratio"], "params_before": report["params"]["before"],
               "channels": report["channels"], "kept_whole": report["kept_whole"],
               **inputs.held_out(small, val_ds)}
    return StageResult(small, metrics, f"multiply-adds {report['flops']['before']:,} -> {report['flops']['after']:,} "
                                       f"({report['flops']['ratio']}x fewer), val accuracy "
                                       f"{metrics['val_accuracy']:.4f}")


def _apply(model, train_ds, channel_fraction, epochs=1, importance="l1", strategy=None, verbose=0):
    """A search trial's channel pruning (``channel_fraction`` in (0, 1); 0 turns it off before this is called)."""
    return prune_channels(model, train_ds, fraction=channel_fraction, epochs=epochs, importance=importance,
                          strategy=strategy, verbose=verbose)


def _one_goal(o: dict) -> str | None:
    """Exactly one of fraction and target_flops (the pipeline reports it at the stage's line)."""
    if (o.get("fraction") is None) == (o.get("target_flops") is None):
        return ("give exactly one of fraction (the share of channels to remove) or target_flops (the multiply-adds "
                f"to keep); got fraction={o.get('fraction')!r}, target_flops={o.get('target_flops')!r}")
    return None


_AFTER_WEIGHTS = ("'prune_channels' rebuilds the model and fine-tunes it without masks, which loses {}; remove channels "
                  "first, then prune or cluster the weights")

TECHNIQUE = register_technique(Technique(
    "prune_channels",
    options_from(prune_channels, ["fraction", "target_flops", "importance", "scope", "epochs", "steps", "layers",
                                  "max_fraction", "min_channels", "round_to", "learning_rate", "decay",
                                  "recalibrate", *TEACHER_OPTIONS], **TEACHER_OPTIONS,
                 fraction={"kinds": (FLOAT, NONE), "check": in_unit(low_open=True),
                           "help": "the share of prunable channels to remove (or give target_flops)"},
                 target_flops={"kinds": (FLOAT, INT, NONE), "check": positive,
                               "help": "multiply-adds to keep: a fraction (0, 1) of the model's, or a count"},
                 importance={"choices": IMPORTANCES}, scope={"choices": SCOPES},
                 epochs={"check": at_least(0)}, steps={"check": at_least(1)},
                 layers={"kinds": (LIST, NONE), "help": "prune only the groups these layers produce"},
                 max_fraction={"check": in_unit(low_open=True)}, min_channels={"check": at_least(1)},
                 round_to={"check": at_least(1)}, learning_rate={"check": positive},
                 recalibrate={"check": at_least(0), "help": "batches re-estimating BatchNorm statistics (0: never)"}),
    _run_stage, summary="structured pruning: remove whole filters and neurons, rebuild a smaller model, fine-tune",
    function=prune_channels,
    refuses_after={"pruned": _AFTER_WEIGHTS.format("the pruned zeros"),
                   "clustered": _AFTER_WEIGHTS.format("the clusters")},
    tune_keys={"channel_fraction": Field((FLOAT, NONE), None, check=in_unit(),
                                         help="share of channels removed in a trial; 0 or null: no channel pruning"),
               "channel_epochs": "epochs", "channel_importance": "importance"},
    tune_order=3, apply=_apply, check=_one_goal))
