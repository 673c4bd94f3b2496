"""Transfer learning: replace a trained model's classifier with a new head, train it, then fine-tune.

The new model is built directly on a copy of the base's own graph (nested sub-models flattened), so
it stays one flat functional model that QAT (``quantize_aware``) accepts. Every BatchNormalization
layer of the base is set ``trainable=False`` for both phases: in tf_keras that also makes it run in
inference mode, so its moving mean/variance (and gamma/beta) never change, which is what
fine-tuning on a small new dataset needs. The base model passed in is never modified.
"""

from __future__ import annotations

from pathlib import Path

from tfopt._keras import check_model, keras
from tfopt._model import compile_like, count_steps, flatten_model, strategy_scope
from tfopt.checkpoints import remove_backup
from tfopt.compress._fit import compression_fit, stage_resume
from tfopt.errors import ConfigError, UnsupportedLayerError, check_range
from tfopt.options import INT, MAP, NONE, STR, Field, at_least, in_unit, int_list, one_of_or, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["fine_tune", "build_transfer_model"]

# Rank of the feature tensor -> pooling layer that makes it (batch, channels).
_POOLING = {3: keras.layers.GlobalAveragePooling1D, 4: keras.layers.GlobalAveragePooling2D}
# Trailing layers that belong to the old classifier, cut before a final Dense.
_CLASSIFIER_TAIL = (keras.layers.Softmax, keras.layers.Activation)


def _copy(model):
    flat = flatten_model(model)
    copy = keras.models.clone_model(flat)
    copy.set_weights(flat.get_weights())
    return copy


def _feature_layer(model):
    """The layer whose output feeds the new head: the one before a final Dense classifier, if any."""
    layers = [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]
    while layers and isinstance(layers[-1], _CLASSIFIER_TAIL):
        layers.pop()
    if layers and isinstance(layers[-1], keras.layers.Dense) and len(layers) > 1:
        inbound = layers[-1]._inbound_nodes  # pylint: disable=protected-access
        if len(inbound) == 1 and not isinstance(inbound[0].inbound_layers, list):
            return inbound[0].inbound_layers
    return layers[-1] if layers else None


def build_transfer_model(base, num_classes: int, head_dropout: float = 0.0):
    """Return ``(model, base_layers)``: a copy of ``base`` with a new ``Dense(num_classes)`` "logits" head.

    Args:
        base: tf_keras functional or Sequential model (trained), with one input and one output.
        num_classes: Integer >= 2, the classes of the new task.
        head_dropout: Float in [0, 1), dropout before the new head.

    >>> base = keras.Sequential([keras.layers.Dense(4, input_shape=(3,)), keras.layers.Dense(2)])
    >>> model, base_layers = build_transfer_model(base, 5)
    >>> model.output_shape, len(base_layers)
    ((None, 5), 2)
    """
    check_model(base, "build_transfer_model")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes={num_classes!r} must be an integer >= 2")
    check_range("head_dropout", head_dropout, 0, 1, high_open=True)
    if len(base.outputs or []) != 1 or len(base.inputs or []) != 1:
        raise UnsupportedLayerError(f"fine_tune needs a base with one input and one output; {base.name!r} has "
                                    f"{len(base.inputs or [])} inputs and {len(base.outputs or [])} outputs")
    copy = _copy(base)
    feature_layer = _feature_layer(copy)
    features = copy.input if feature_layer is None else feature_layer.output
    rank = len(features.shape)
    if rank in _POOLING:
        features = _POOLING[rank](name="head_pool")(features)
    elif rank != 2:
        raise UnsupportedLayerError(
            f"the base's features have shape {tuple(features.shape)}; fine_tune handles rank 2, 3 or 4 features"
        )
    if head_dropout:
        features = keras.layers.Dropout(head_dropout, name="head_dropout")(features)
    outputs = keras.layers.Dense(num_classes, name="logits")(features)
    model = keras.Model(copy.inputs, outputs, name=f"{base.name}_transfer")
    head = {"head_pool", "head_dropout", "logits"}
    base_layers = [lay for lay in model.layers if lay.name not in head]
    for layer in base_layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model, base_layers


def _check_epochs(epochs):
    ok = (
        isinstance(epochs, (tuple, list))
        and len(epochs) == 2
        and all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in epochs)
    )
    if not ok:
        raise ConfigError(f"epochs={epochs!r} must be a pair (head_epochs, fine_tune_epochs) of integers >= 0")


def _frozen_count(freeze, n_layers: int) -> int:
    if freeze == "all":
        return 0
    if isinstance(freeze, bool) or not isinstance(freeze, int) or not 0 <= freeze <= n_layers:
        raise ConfigError(
            f"freeze={freeze!r} is not allowed; allowed: 'all' or an integer 0 <= freeze <= {n_layers} "
            f"(the base keeps {n_layers} layers, input layer included)"
        )
    return freeze


def _set_trainable(base_layers, first_trainable: int) -> None:
    for i, layer in enumerate(base_layers):
        layer.trainable = i >= first_trainable and not isinstance(layer, keras.layers.BatchNormalization)


def fine_tune(
    base,
    num_classes: int,
    train_ds,
    freeze="all",
    epochs=(1, 1),
    lr_scale: float = 0.1,
    learning_rate: float = 1e-3,
    val_ds=None,
    head_dropout: float = 0.0,
    strategy=None,
    verbose="auto",
    callbacks=(),
    backup_dir=None,
    keep_backup: bool = False,
):
    """Transfer ``base`` to a new ``num_classes`` task: train a new head, then fine-tune the top layers.

    Phase 1 trains only the new "logits" head (base frozen) for ``epochs[0]`` epochs at
    ``learning_rate``. Phase 2 (``epochs[1]`` > 0) unfreezes the base -- all of it for ``freeze="all"``,
    or all but its first ``freeze`` layers (``model.layers`` order, input layer included) -- and trains
    at ``learning_rate * lr_scale``. BatchNormalization layers stay frozen (inference mode) throughout.

    Args:
        base: tf_keras functional or Sequential model trained on another task (not modified).
        num_classes: Integer >= 2, the classes of the new task.
        train_ds: tf.data.Dataset of (x, integer label) batches of the new task.
        freeze: "all" or Integer, how many of the base's first layers stay frozen in phase 2.
        epochs: Pair of integers >= 0, (head epochs, fine-tuning epochs).
        lr_scale: Float > 0, the phase-2 learning-rate factor.
        learning_rate: Float > 0, the phase-1 Adam learning rate.
        val_ds: tf.data.Dataset or None, validation batches.
        head_dropout: Float in [0, 1), dropout before the new head.
        strategy: tf.distribute.Strategy or None.
        verbose: "auto", 0, 1 or 2, as in ``fit``.
        callbacks: Sequence of Keras callbacks, given to both phases (a ``CSVLogger`` with ``append=True`` gets
            the rows of both).
        backup_dir: String, Path or None: keep a resumable state of each phase there (``head/``, ``fine_tune/``;
            see ``tfopt.compress.prune``): a killed fine-tuning called again with the same ``backup_dir`` restores
            a finished phase and resumes the other at the epoch it was in.
        keep_backup: Boolean, keep that state when both phases end.

    Returns:
        The new flat functional model, outputting logits, compiled for the last phase it ran.

    >>> model = fine_tune(base, 5, train_ds, freeze="all", epochs=(2, 1))  # doctest: +SKIP
    """
    check_model(base, "fine_tune")
    _check_epochs(epochs)
    check_range("lr_scale", lr_scale, 0, low_open=True)
    check_range("learning_rate", learning_rate, 0, low_open=True)
    count_steps(train_ds, "train_ds")
    with strategy_scope(strategy):
        model, base_layers = build_transfer_model(base, num_classes, head_dropout)
    first_trainable = _frozen_count(freeze, len(base_layers))
    phases = {"head": (len(base_layers), epochs[0], learning_rate),
              "fine_tune": (first_trainable, epochs[1], learning_rate * lr_scale)}
    for phase, (first, n_epochs, rate) in phases.items():
        if not n_epochs:
            continue
        _set_trainable(base_layers, first)
        with strategy_scope(strategy):
            compile_like(model, learning_rate=rate)
        # each phase keeps its state until both are done: a kill in the second restores the first, not retrains it
        compression_fit(model, train_ds, n_epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose,
                        strategy=strategy, backup_dir=None if backup_dir is None else Path(backup_dir) / phase,
                        keep_backup=True, what="fine_tune")
    if backup_dir is not None and not keep_backup:
        remove_backup(backup_dir)
    if not any(n_epochs for _, n_epochs, _ in phases.values()):
        with strategy_scope(strategy):
            compile_like(model, learning_rate=learning_rate)
    return model


# ---------------------------------------------------------------- the "fine_tune" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The fine_tune stage: the current model transferred to the task of its own ``data`` section."""
    new_data = o["data"]
    train_ds, val_ds, info = inputs.load(new_data)
    num_classes = o["num_classes"] or info.num_classes
    model = fine_tune(inputs.model(), num_classes, train_ds, freeze=o["freeze"], epochs=tuple(o["epochs"]),
                      lr_scale=o["lr_scale"], learning_rate=o["learning_rate"], val_ds=val_ds,
                      head_dropout=o["head_dropout"], verbose=inputs.verbose, strategy=inputs.strategy,
                      **stage_resume(inputs, inputs.strategy))
    metrics = {"num_classes": num_classes, "data": dict(new_data), **inputs.held_out(model, val_ds)}
    return StageResult(model, metrics, f"{num_classes} classes, val accuracy {metrics['val_accuracy']:.4f}",
                       data=new_data)


TECHNIQUE = register_technique(Technique(
    "fine_tune",
    options_from(fine_tune, ["data", "num_classes", "freeze", "epochs", "lr_scale", "learning_rate", "head_dropout"],
                 data=Field((MAP,), required=True, section="data", help="the new task's data section"),
                 num_classes={"kinds": (INT, NONE), "default": None, "required": False, "check": at_least(2),
                              "help": "unset: the new data's classes"},
                 freeze={"kinds": (STR, INT), "check": one_of_or(
                     ("all",), lambda v: isinstance(v, int) and v >= 0, "'all' or an integer >= 0")},
                 epochs={"check": int_list(2, 0, 2), "help": "[head epochs, fine-tuning epochs]"},
                 lr_scale={"check": positive},
                 learning_rate={"check": positive},
                 head_dropout={"check": in_unit()}),
    _run_stage, summary="transfer learning: a new head for the data of its own section, then fine-tuning",
    function=fine_tune, own_defaults=("num_classes",), sets=("trained",), clears=("pruned", "clustered")))
