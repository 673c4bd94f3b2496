"""``compression_fit``: the one fine-tuning loop of every compression technique.

prune, cluster, quantize_aware, prune_channels, factorize and distill fine-tune the model they compress
here, so each of them gets the same guarantees as ``tfopt.train.fit``:

* **resume inside the stage**: with ``backup_dir``, a BackupAndRestore state of the model being trained
  (tfmot pruning masks and steps, cluster centroids, QAT quantizer ranges, the optimizer) is saved at each
  epoch's end after every other callback recorded it (atomic checkpoints; a damaged backup is discarded
  with a warning). A killed fine-tuning restarts at the start of the epoch it was in, skips the shuffle
  seeds of the epochs already trained, and keeps its ``history.csv`` rows to the epochs it kept; dropout
  masks are drawn from (layer, step) (``tfopt.checkpoints.resumable_randomness``). With op determinism the
  result equals an uninterrupted run's.
* **even batches under a strategy**: the partial last batch is padded and weighted
  (``tfopt.distribute.even_batches``), so N replicas train like one device.
* **distillation** (``teacher=``): the loss becomes ``alpha * task loss + (1 - alpha) * T**2 *
  KL(teacher_T || student_T)`` through :class:`tfopt.compress.distill.Distiller` (defined in
  ``tfopt.compress._distiller``, below this module and ``distill``, which trains through this one); tfmot's callbacks
  (``UpdatePruningStep``) still reach the wrapped layers, which sit inside the Distiller's student.
"""

from __future__ import annotations

from pathlib import Path

from tfopt import _faults, distribute
from tfopt._keras import check_model, keras, tf
from tfopt._model import check_data_fits, strategy_scope
from tfopt.checkpoints import FaultPoints, remove_backup, resume_callbacks, started
from tfopt.compress._distiller import _EPS, ALPHA, TEMPERATURE, Distiller, _check_shapes
from tfopt.errors import ConfigError, check_range
from tfopt.options import FLOAT, NONE, STR, Field, in_unit, positive
from tfopt.progress import keras_verbose
from tfopt.train import keras_fit

__all__ = ["compression_fit", "distillation_settings", "stage_resume", "stage_teacher", "TEACHER_OPTIONS"]

# the recipe options of a technique that fine-tunes with compression_fit (prune, cluster, quantize_aware, ...)
TEACHER_OPTIONS = {
    "teacher": Field((STR, NONE), None, section="stage",
                     help="an earlier stage whose model teaches the fine-tuning (e.g. train: distil from the "
                          "uncompressed model); unset: no distillation"),
    "temperature": Field((FLOAT, NONE), None, check=positive,
                         help="with teacher: the softmax temperature (unset: distill's default)"),
    "alpha": Field((FLOAT, NONE), None, check=in_unit(high_open=False),
                   help="with teacher: the weight of the task loss (unset: distill's default)"),
}


def check_epochs_and_rate(epochs, learning_rate) -> None:
    """ConfigError unless ``epochs`` is an integer >= 0 (0: no fine-tuning) and ``learning_rate`` a number > 0.

    >>> check_epochs_and_rate(1.5, 1e-4)
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: epochs=1.5 must be an integer >= 0
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int):
        raise ConfigError(f"epochs={epochs!r} must be an integer >= 0")
    check_range("epochs", epochs, 0)
    check_range("learning_rate", learning_rate, 0, low_open=True)


def distillation_settings(teacher, temperature=None, alpha=None, student=None) -> tuple:
    """``(temperature, alpha)`` checked, None meaning :func:`tfopt.compress.distill`'s default; with a teacher,
    also that it is a tf_keras model whose output shape matches ``student``'s (when given).

    Args:
        teacher: tf_keras model or None.
        temperature: Float > 0 or None.
        alpha: Float in [0, 1] or None, the weight of the task (hard-label) loss.
        student: tf_keras model or None, checked against the teacher's output shape.

    >>> distillation_settings(None, 2.0, 0.5)
    (2.0, 0.5)
    """
    temperature = TEMPERATURE if temperature is None else temperature
    alpha = ALPHA if alpha is None else alpha
    check_range("temperature", temperature, 0, low_open=True)
    check_range("alpha", alpha, 0, 1)
    if teacher is not None:
        check_model(teacher, "teacher")
        if student is not None:
            _check_shapes(teacher, student)
    return float(temperature), float(alpha)


def _unwrapped_last(model):
    """The model's last layer, looking inside tfmot wrappers (and a QAT activation wrapper)."""
    layer = model.layers[-1]
    while isinstance(getattr(layer, "layer", None), keras.layers.Layer):
        layer = layer.layer
    return layer


def _student_logits(model):
    """The function turning the (wrapped) student's outputs into logits: tfmot wrappers hide the activation
    of the layer they wrap, so it is read from inside them (identity for logits, log for softmax)."""
    last = _unwrapped_last(model)
    activation = getattr(last, "activation", None)
    activation = getattr(activation, "activation", activation)  # tfmot's QuantizeAwareActivation holds it
    name = "softmax" if isinstance(last, keras.layers.Softmax) else getattr(activation, "__name__", str(activation))
    if name == "softmax":
        return lambda p: tf.math.log(tf.clip_by_value(p, _EPS, 1.0))
    if name == "sigmoid":
        raise ConfigError(f"teacher=: the model {model.name!r} ends in a sigmoid; distillation needs logits (or a "
                          "softmax output): remove the sigmoid")
    return tf.identity


def _in_scope(model, strategy):
    """``model`` itself, or (under a strategy it was not made in) a copy made in the strategy's scope."""
    from tfopt.train import in_strategy

    if strategy is None or in_strategy(model, strategy):
        return model
    with strategy_scope(strategy):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
    return copy


def _distiller(student, teacher, temperature: float, alpha: float, strategy):
    """A Distiller training ``student`` (compiled: its optimizer is the Distiller's) from ``teacher``."""
    logits = _student_logits(student)
    teacher = _in_scope(teacher, strategy)
    with strategy_scope(strategy):
        distiller = Distiller(student, teacher, temperature=temperature, alpha=alpha,
                              name=f"{student.name}_distilled")
        distiller._student_logits = logits
        distiller.compile(optimizer=student.optimizer)
    return distiller


def compression_fit(model, train_ds, epochs: int, val_ds=None, callbacks=(), verbose="auto", strategy=None,
                    backup_dir=None, keep_backup: bool = False, teacher=None, temperature=None, alpha=None,
                    what: str = "compress"):
    """Fine-tune ``model``, a model being compressed (compiled), like ``model.fit``: resumable, even batches
    under a strategy, optionally distilled from ``teacher``.

    Args:
        model: Compiled tf_keras model (tfmot-wrapped, rebuilt or factorized), trained in place.
        train_ds: tf.data.Dataset of (x, y) or (x, y, sample_weight) batches (global batches under a strategy).
        epochs: Integer >= 1, the total epochs (a resumed fine-tuning trains only the ones left).
        val_ds: tf.data.Dataset or None, validation data.
        callbacks: Sequence of Keras callbacks (tfmot's ``UpdatePruningStep``, a ``CSVLogger``, ...). A
            ``CSVLogger`` with ``append=True`` keeps, on a resume, only the rows of the epochs the backup holds.
        verbose: "auto", 0, 1 or 2, as in ``tfopt.train.fit``.
        strategy: tf.distribute.Strategy or None (the model was built in its scope).
        backup_dir: String, Path or None: where the resumable state goes (a BackupAndRestore ``chief/`` folder
            and ``history_rows.json``). A later call with the same ``backup_dir`` resumes from it.
        keep_backup: Boolean, keep the state after the last epoch (a later call then trains no epoch and
            restores the trained state: for callers that record the result afterwards, such as a pipeline
            stage, which removes it once recorded); False removes it when training ends.
        teacher: tf_keras model or None: distil from it (``alpha * task loss + (1 - alpha) * T**2 * KL``).
        temperature: Float > 0 or None (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        what: String, the caller's name: its fault-injection points are ``<what>:epoch:<n>:batch:<k>``.

    Returns:
        The Keras ``History`` (of the Distiller when ``teacher`` is given: ``loss``, ``hard_loss``,
        ``soft_loss``, ``accuracy``).

    >>> compression_fit(wrapped, train_ds, 2, backup_dir="runs/x/backup")  # doctest: +SKIP
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be an integer >= 1")
    check_data_fits(model, train_ds, "train_ds")
    if val_ds is not None:
        check_data_fits(model, val_ds, "val_ds")
    if teacher is not None:
        check_data_fits(teacher, train_ds, "train_ds (for the teacher)")
    trained = model
    if teacher is not None:
        temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
        trained = _distiller(model, teacher, temperature, alpha, strategy)
    all_callbacks = list(callbacks)
    faults = [FaultPoints(what)] if _faults.armed() else []
    if backup_dir is not None:
        # Keras iterates train_ds itself only without a strategy (a strategy distributes a copy of it)
        finite = strategy is None and int(train_ds.cardinality()) != int(tf.data.INFINITE_CARDINALITY)
        first, last = resume_callbacks(backup_dir, keep_backup=keep_backup, train_ds=train_ds if finite else None,
                                       histories=all_callbacks,
                                       owner=strategy is None or distribute.is_chief(strategy))
        all_callbacks = first + all_callbacks + faults + last
    else:
        all_callbacks += faults
    history = keras_fit(trained, train_ds, strategy, validation_data=val_ds, epochs=epochs, callbacks=all_callbacks,
                        verbose=keras_verbose(verbose))
    if backup_dir is not None and not keep_backup:
        remove_backup(backup_dir)
    return history


# ---------------------------------------------------------------- what a compression stage passes


def stage_resume(inputs, strategy=None) -> dict:
    """The arguments a compression stage gives its function so that it resumes inside the stage after a kill:
    ``backup_dir`` (the stage's ``backup/``; the runner removes it once the stage is recorded done),
    ``keep_backup=True`` and ``callbacks`` (the stage's ``history.csv``, started afresh unless a fine-tuning
    of this stage already began).

    Args:
        inputs: :class:`tfopt.techniques.StageInputs`.
        strategy: The strategy the stage trains under, or None. Under one, every worker shares the chief's
            backup (``inputs.backup_dir``); without, each process keeps its own (its stage folder's).
    """
    backup = Path(inputs.backup_dir) if strategy is not None else Path(inputs.stage_dir) / "backup"
    return {"backup_dir": backup, "keep_backup": True, "callbacks": inputs.history(fresh=not started(backup))}


def stage_teacher(inputs, options: dict) -> dict:
    """``teacher``, ``temperature`` and ``alpha`` for a compression stage: ``options["teacher"]`` names the stage
    whose model teaches (e.g. ``train``; None: no distillation)."""
    name = options.get("teacher")
    return {"teacher": None if name is None else inputs.model(name),
            "temperature": options.get("temperature"), "alpha": options.get("alpha")}
