"""``fit``: Keras training with checkpoints, resume after a kill, TensorBoard, CSV history and NaN guard."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from tfopt import distribute
from tfopt._keras import check_model, keras
from tfopt.compress._common import compile_like, count_steps, strategy_scope
from tfopt.errors import ConfigError, TrainingError

__all__ = ["fit", "run_callbacks", "StopOnNaN", "in_strategy"]

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


def run_callbacks(run_dir, monitor: str = "val_loss") -> list:
    """The callbacks ``fit`` adds for a run directory.

    ``checkpoints/best.weights.h5`` (best ``monitor``), ``checkpoints/last.weights.h5``, ``backup/``
    (``BackupAndRestore``: a killed run resumes at the epoch it was in), ``logs/`` (TensorBoard) and
    ``history.csv`` (appended across resumes).
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        keras.callbacks.ModelCheckpoint(
            str(ckpt / "best.weights.h5"), monitor=monitor, save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.ModelCheckpoint(str(ckpt / "last.weights.h5"), save_weights_only=True),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), histogram_freq=0, write_graph=False),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]


def in_strategy(model, strategy) -> bool:
    """True when ``model``'s variables were created under ``strategy``'s scope."""
    return not model.weights or strategy.extended.variable_created_in_scope(model.weights[0])


def _replicate(model, strategy):
    """A copy of ``model`` made and compiled under ``strategy``'s scope, with the same weights and compile settings."""
    with strategy_scope(strategy):
        clone = keras.models.clone_model(model)
        clone.set_weights(model.get_weights())
        metrics = [m for m in getattr(model.compiled_metrics, "_user_metrics", None) or ["accuracy"]]
        compile_like(clone, source=model, metrics=metrics, learning_rate=None)
    return clone


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
):
    """Train ``model`` (compiled, or compiled here with Adam and sparse cross-entropy) like ``model.fit``.

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
        verbose: Keras verbosity ("auto": a progress bar on a terminal).
        monitor: Metric for the best checkpoint (default ``val_loss`` with validation data, else ``loss``).

    Returns:
        The Keras ``History``; ``model`` holds the trained weights.

    Raises:
        TrainingError: the loss became NaN or infinite (the message names the epoch and step).

    >>> history = fit(model, train_ds, val_ds, epochs=3, run_dir="runs/x")  # doctest: +SKIP
    """
    check_model(model, "fit")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be a positive integer")
    count_steps(train_ds, "train_ds")
    if val_ds is not None:
        count_steps(val_ds, "val_ds")
    if model.optimizer is None or not getattr(model, "compiled_loss", None):
        log.info("fit: model was not compiled; using Adam(1e-3) and sparse categorical cross-entropy")
        compile_like(model, learning_rate=1e-3)

    trained = model
    if strategy is not None:
        strategy = distribute.get_strategy(strategy)
        if not in_strategy(model, strategy):
            trained = _replicate(model, strategy)

    nan_guard = StopOnNaN()
    all_callbacks = [nan_guard, *callbacks]
    if run_dir is not None:
        monitor = monitor or ("val_loss" if val_ds is not None else "loss")
        all_callbacks = run_callbacks(run_dir, monitor) + all_callbacks
    try:
        history = trained.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=all_callbacks, verbose=verbose)
    finally:
        # tf_keras trap: BackupAndRestore deletes model._training_state at the end of training, and the
        # next fit() on the same model then fails with AttributeError. Put the attribute back.
        if not hasattr(trained, "_training_state"):
            trained._training_state = None
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
