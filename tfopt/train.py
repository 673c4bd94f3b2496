"""``fit``: Keras training with checkpoints, resume after a kill, TensorBoard, CSV history and NaN guard."""

from __future__ import annotations

import inspect
import logging
import math
import re
import shutil
import tempfile
from pathlib import Path

from tfopt import _faults, distribute
from tfopt.checkpoints import FaultPoints, resumable_randomness, run_callbacks
from tfopt._keras import check_model, keras, tf
from tfopt._model import check_data_fits, compile_like, count_steps, strategy_scope
from tfopt.errors import ConfigError, DataError, TrainingError, check_range
from tfopt.options import INT, NONE, at_least, options_from
from tfopt.progress import keras_verbose
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["fit", "keras_fit", "compile_from_settings", "run_callbacks", "StopOnNaN", "in_strategy"]

log = logging.getLogger(__name__)


class StopOnNaN(keras.callbacks.Callback):
    """Stops training at the first NaN or infinite loss and remembers where (epoch, step, loss)."""

    def __init__(self):
        super().__init__()
        self.epoch = 0
        self.where = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = {"epoch": self.epoch + 1, "step": batch + 1, "loss": float(loss)}
            self.model.stop_training = True


def in_strategy(model, strategy) -> bool:
    """True when ``model``'s variables were created under ``strategy``'s scope."""
    return not model.weights or strategy.extended.variable_created_in_scope(model.weights[0])


def _user_metrics(model) -> list:
    return list(getattr(getattr(model, "compiled_metrics", None), "_user_metrics", None) or ["accuracy"])


def _fresh_optimizer(model, policy: str | None):
    """A new optimizer like ``model``'s (same class and config), loss-scaled under mixed_float16."""
    opt = model.optimizer
    if isinstance(opt, keras.mixed_precision.LossScaleOptimizer):
        opt = opt.inner_optimizer
    opt = type(opt).from_config(opt.get_config())
    if policy == "mixed_float16":
        opt = keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def _spe(model):
    value = getattr(model, "_steps_per_execution", None)
    return None if value is None else int(value.numpy())


def _recompile(model, source, optimizer, jit_compile=None, steps_per_execution=None) -> None:
    """Compile ``model`` with ``source``'s loss and metrics; None flags keep ``source``'s settings."""
    model.compile(
        optimizer=optimizer,
        loss=source.loss,
        metrics=_user_metrics(source),
        jit_compile=source._jit_compile if jit_compile is None else jit_compile,
        steps_per_execution=(_spe(source) or 1) if steps_per_execution is None else steps_per_execution,
    )


def _with_policy(policy: str | None, outputs: set):
    """A clone_function giving each layer ``policy``, except output layers (kept float32) and sub-models."""

    def clone(layer):
        config = layer.get_config()
        if policy is not None and not isinstance(layer, keras.Model):
            config["dtype"] = "float32" if layer.name in outputs else policy
        return layer.__class__.from_config(config)

    return clone


def _replicate(model, strategy=None, policy=None, jit_compile=None, steps_per_execution=None):
    """A copy of ``model`` made and compiled under ``strategy``'s scope (and ``policy``), with its weights."""
    with strategy_scope(strategy):
        clone = keras.models.clone_model(model, clone_function=_with_policy(policy, set(model.output_names)))
        clone.set_weights(model.get_weights())
        _recompile(clone, model, _fresh_optimizer(model, policy), jit_compile, steps_per_execution)
    return clone


def _static_batch_size(dataset):
    """Integer or None, the batch size ``dataset``'s element spec states (None when only the data knows it).

    Never iterates ``dataset``: an iterator draws a reshuffling dataset's next shuffle seed, so a peek here
    would shift every epoch of the training that follows by one shuffle (what made mirrored training differ
    from one device on tfopt's own pipelines).
    """
    spec = tf.nest.flatten(dataset.element_spec)[0]
    if spec.shape.rank and spec.shape[0] is not None:
        return int(spec.shape[0])
    return None


def _check_precision(mixed_precision):
    if mixed_precision is not None and mixed_precision not in distribute.PRECISIONS:
        raise ConfigError(
            f"mixed_precision={mixed_precision!r} is not allowed; allowed: {', '.join(distribute.PRECISIONS)}"
        )


def _check_xla(strategy, jit_compile) -> None:
    """XLA cannot run a train step mirrored over several logical CPU devices of one process."""
    if not jit_compile:
        return
    local = distribute.describe(strategy)["devices"]
    if len(local) > 1 and all("CPU" in d.upper() for d in local):
        raise ConfigError(
            f"jit_compile=True does not work with a strategy mirrored over {len(local)} CPU devices "
            "(XLA cannot read a replica's variables on another logical CPU device); use jit_compile=False "
            "there, or XLA on GPUs"
        )


def _check_dir(name: str, path) -> None:
    """ConfigError when ``path``, or the nearest of its parents that exists, is not a directory."""
    path = Path(path)
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                raise ConfigError(f"{name}={str(path)!r} cannot be a directory: {str(existing)!r} is a file; "
                                  "pass a directory (new or a run directory)")
            return


def _write_dir(run_dir, strategy):
    """Where this task writes run files: ``run_dir`` on the chief, a throwaway temp dir on other workers."""
    if strategy is None or distribute.is_chief(strategy):
        return Path(run_dir), None
    temp = Path(tempfile.mkdtemp(prefix=f"tfopt-worker{distribute.task_index(strategy)}-"))
    return temp, temp


_LABEL_OUT_OF_RANGE = re.compile(r"Received a label value of (-?\d+) which is outside the valid range of \[0, (\d+)\)")


def keras_fit(model, train_ds, strategy=None, **fit_kwargs):
    """``model.fit(train_ds, **fit_kwargs)`` with the traps every tfopt training handles (``fit`` and the
    compression fine-tunings): under a strategy, batches that do not split evenly over the replicas are padded and
    weighed (the partial last one); dropout masks come from (layer, step), so a resumed run draws those of the run
    it continues; tf_keras's BackupAndRestore deletes ``model._training_state`` at the end of training (the next
    ``fit`` then fails with AttributeError), so it is put back. A label outside the model's classes, which
    TensorFlow's sparse cross-entropy refuses on the CPU, is a DataError naming it (on a GPU the loss turns NaN,
    which ``fit``'s NaN guard names with its epoch and step)."""
    try:
        with resumable_randomness(model):
            return model.fit(distribute.even_batches(train_ds, strategy), **fit_kwargs)
    except tf.errors.InvalidArgumentError as err:
        found = _LABEL_OUT_OF_RANGE.search(str(err))
        if found is None:
            raise
        label, classes = found.groups()
        raise DataError(f"a label {label} is outside the model's {classes} classes: labels must be class ids 0 to "
                        f"{int(classes) - 1} (or give a model with more outputs)") from err
    finally:
        if not hasattr(model, "_training_state"):
            model._training_state = None


def fit(
    model,
    train_ds,
    val_ds=None,
    epochs: int = 1,
    run_dir=None,
    callbacks=(),
    strategy=None,
    verbose="auto",
    monitor: str | None = None,
    jit_compile: bool | None = None,
    steps_per_execution: int | None = None,
    mixed_precision: str | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """Train ``model`` (compiled, or compiled here with Adam and sparse cross-entropy) like ``model.fit``.

    Under a strategy the datasets hold GLOBAL batches (``distribute.scale_batch_size``), split over the
    replicas; a batch that does not split evenly (the partial last one) is padded with zero-weight rows and
    weighted (``distribute.even_batches``), so N replicas train like one device on the same batches, up to
    float32 summation order (no dropout or BatchNormalization: those see each replica's rows). ``train_ds`` is
    never iterated before training (a peek would draw a reshuffling dataset's next shuffle). In multi-worker
    training only the chief writes ``run_dir``; other workers write to a temporary directory removed at the
    end (Keras convention), except the BackupAndRestore state, which every worker keeps under
    ``run_dir/backup`` (all workers must see the chief's: a shared filesystem).

    Args:
        model: tf_keras model; if not compiled, it is compiled with Adam(1e-3), sparse categorical
            cross-entropy (from logits when the last layer has no softmax) and accuracy.
        train_ds: tf.data.Dataset of (x, y) batches.
        val_ds: Optional tf.data.Dataset for validation.
        epochs: Integer, the total number of epochs (a resumed run trains only the ones left).
        run_dir: Optional directory for checkpoints, backup (resume after a kill), TensorBoard logs and
            ``history.csv``.
        callbacks: Extra Keras callbacks.
        strategy: None, a strategy name (see ``tfopt.distribute.get_strategy``) or a Strategy. A model not
            created under it is copied into its scope, trained there, and the weights copied back.
        verbose: "auto", 0, 1 or 2 (Keras verbosity; "auto": a progress bar on a terminal, else one line
            per epoch, see ``tfopt.progress.keras_verbose``).
        monitor: Metric for the best checkpoint (default ``val_loss`` with validation data, else ``loss``).
        jit_compile: Boolean or None, compile the train step with XLA (None keeps the model's setting).
        steps_per_execution: Integer >= 1 or None, train steps per ``tf.function`` call (None keeps it).
        mixed_precision: None, "float32", "mixed_float16" or "mixed_bfloat16": train a copy whose layers
            use that policy, output layers kept in float32 (mixed_float16 adds loss scaling).
        backup_dir: Directory of the BackupAndRestore state (default ``run_dir/backup``); in multi-worker
            training every worker must name the same one (the chief's).
        keep_backup: Boolean, keep the backup when training ends: a later ``fit`` with the same
            ``run_dir`` then trains no epoch and returns with the trained weights (for callers that record
            the result after ``fit`` and may be killed before; they delete the backup once recorded).

    Returns:
        The Keras ``History`` (``history.model`` is the model that trained); ``model`` holds the trained weights.

    Raises:
        TrainingError: the loss became NaN or infinite (the message names the epoch and step).
        ConfigError: a bad option, or a batch size not divisible by the number of replicas.

    >>> history = fit(model, train_ds, val_ds, epochs=3, run_dir="runs/x")  # doctest: +SKIP
    """
    check_model(model, "fit")
    for name, path in (("run_dir", run_dir), ("backup_dir", backup_dir)):
        if path is not None:
            _check_dir(name, path)
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be a positive integer")
    _check_precision(mixed_precision)
    if steps_per_execution is not None:
        check_range("steps_per_execution", steps_per_execution, 1)
    count_steps(train_ds, "train_ds")
    check_data_fits(model, train_ds, "train_ds")
    if val_ds is not None:
        count_steps(val_ds, "val_ds")
        check_data_fits(model, val_ds, "val_ds")
    if model.optimizer is None or not getattr(model, "compiled_loss", None):
        log.info("fit: model was not compiled; using Adam(1e-3) and sparse categorical cross-entropy")
        compile_like(model, learning_rate=1e-3)

    if strategy is not None:
        strategy = distribute.get_strategy(strategy)
        if strategy.num_replicas_in_sync > 1 and _static_batch_size(train_ds) is not None:
            distribute.check_batch_size(_static_batch_size(train_ds), strategy)
        _check_xla(strategy, jit_compile if jit_compile is not None else model._jit_compile)
    trained = model
    if mixed_precision is not None or (strategy is not None and not in_strategy(model, strategy)):
        trained = _replicate(model, strategy, mixed_precision, jit_compile, steps_per_execution)
    elif jit_compile is not None or steps_per_execution is not None:
        _recompile(model, model, model.optimizer, jit_compile, steps_per_execution)

    nan_guard = StopOnNaN()
    all_callbacks = [nan_guard, *callbacks] + ([FaultPoints()] if _faults.armed() else [])
    throwaway = None
    if run_dir is not None:
        monitor = monitor or ("val_loss" if val_ds is not None else "loss")
        write_dir, throwaway = _write_dir(run_dir, strategy)
        # Keras iterates train_ds itself only without a strategy (a strategy distributes a copy of it)
        same_data = train_ds if strategy is None and isinstance(train_ds, tf.data.Dataset) else None
        if same_data is not None and int(same_data.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            same_data = None  # infinite: Keras keeps one iterator across epochs
        all_callbacks = run_callbacks(write_dir, monitor, backup_dir=Path(backup_dir or Path(run_dir) / "backup"),
                                      keep_backup=keep_backup, train_ds=same_data) + all_callbacks
    try:
        history = keras_fit(trained, train_ds, strategy, validation_data=val_ds, epochs=epochs,
                            callbacks=all_callbacks, verbose=keras_verbose(verbose))
    finally:
        if throwaway is not None:
            shutil.rmtree(throwaway, ignore_errors=True)
    history.run_dir = throwaway or run_dir
    if trained is not model:
        model.set_weights(trained.get_weights())
    if nan_guard.where is not None:
        w = nan_guard.where
        raise TrainingError(
            f"training diverged: loss={w['loss']} at epoch {w['epoch']}, step {w['step']}; "
            "lower the learning rate or add gradient clipping"
            + (f" (the best checkpoint before it is in {Path(run_dir) / 'checkpoints'})" if run_dir else "")
        )
    return history


def compile_from_settings(model, settings: dict, steps_per_epoch: int, epochs: int):
    """Compile ``model`` from training settings, as a recipe's ``training`` section and a search space write them.

    Args:
        model: tf_keras model.
        settings: Dict; reads ``optimizer`` (a name of :data:`tfopt.optimizers.OPTIMIZERS` or a dict with
            ``name`` and its arguments; default "adam"), ``learning_rate`` (default 1e-3), ``schedule`` (see
            :func:`tfopt.schedules.from_settings`: a name or a dict; what it leaves out comes from the run),
            ``weight_decay`` (None: the optimizer's default), ``loss`` (a name of :data:`tfopt.losses.LOSSES`
            or a dict; default sparse categorical cross-entropy, from logits when the model outputs logits)
            and ``label_smoothing`` (a float > 0 replaces the loss by label-smoothed cross-entropy).
        steps_per_epoch: Integer, batches per epoch.
        epochs: Integer, the epochs the schedule spans.

    Returns:
        The model, compiled with the accuracy metric.

    >>> m = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    >>> compile_from_settings(m, {"optimizer": "sgd", "learning_rate": 0.1}, 10, 1).optimizer.name
    'SGD'
    """
    from tfopt import losses, optimizers, schedules
    from tfopt._model import outputs_logits

    rate = schedules.from_settings(settings.get("schedule"), settings.get("learning_rate", 1e-3),
                                   steps_per_epoch * max(1, epochs))
    opt = settings.get("optimizer") or "adam"
    opt = {"name": opt} if isinstance(opt, str) else dict(opt)
    if settings.get("weight_decay") is not None:
        opt["weight_decay"] = settings["weight_decay"]
    from_logits = outputs_logits(model)
    if settings.get("label_smoothing"):
        loss = losses.LabelSmoothingCrossEntropy(settings["label_smoothing"], sparse=True, from_logits=from_logits)
    else:
        loss = settings.get("loss") or "sparse_categorical_crossentropy"
        loss = {"name": loss} if isinstance(loss, str) else dict(loss)
        name = loss.pop("name")
        if "from_logits" in inspect.signature(losses.LOSSES[name.lower()]).parameters:
            loss.setdefault("from_logits", from_logits)
        loss = losses.get(name, **loss)
    model.compile(optimizer=optimizers.get(**opt, learning_rate=rate), loss=loss, metrics=["accuracy"])
    return model


# ---------------------------------------------------------------- the "train" technique (a recipe stage)


def _run_stage(inputs, options: dict):
    """The train stage: the current model (or a new one from the recipe's builder), trained with the recipe's
    training settings; resumes at its last finished epoch (BackupAndRestore in ``inputs.backup_dir``)."""
    train_ds, val_ds, info = inputs.load()
    model = inputs.build(None, info) if inputs.current is None else inputs.model()
    model = inputs.regularize(model)
    epochs = options.get("epochs") or inputs.training["epochs"]
    inputs.compile(model, train_ds, epochs)
    t = inputs.training
    fit(model, train_ds, val_ds, epochs=epochs, run_dir=inputs.stage_dir, strategy=inputs.strategy,
        verbose=inputs.verbose, backup_dir=inputs.backup_dir, keep_backup=True, mixed_precision=t["mixed_precision"],
        jit_compile=t["jit_compile"], steps_per_execution=t["steps_per_execution"])
    metrics = {"epochs": epochs, **inputs.held_out(model, val_ds)}
    return StageResult(model, metrics, f"val accuracy {metrics['val_accuracy']:.4f}, "
                                       f"{metrics['params']:,} parameters")


_UNDOES = "plain training after prune/cluster would undo the compression; give that stage more epochs"
TECHNIQUE = register_technique(Technique(
    "train", options_from(fit, ["epochs"], epochs={
        "kinds": (INT, NONE), "default": None, "check": at_least(1),
        "help": "unset: the recipe's training.epochs"}),
    _run_stage, summary="train the model (a new one from the recipe's builder, or the current one)",
    function=fit, own_defaults=("epochs",), needs=(), sets=("trained",),
    refuses_after={"pruned": _UNDOES, "clustered": _UNDOES}))
