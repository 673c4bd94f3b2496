"""``fit``: Keras training with checkpoints, resume after a kill, TensorBoard, CSV history and NaN guard."""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tfopt import _faults, distribute
from tfopt._io import atomic_path, atomic_write_text
from tfopt._keras import check_model, keras, tf
from tfopt.compress._common import compile_like, count_steps, strategy_scope
from tfopt.errors import ConfigError, TrainingError, check_range

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


def _suffix(filepath) -> str:
    return ".weights.h5" if str(filepath).endswith(".weights.h5") else Path(filepath).suffix


def _save_plan(model) -> list:
    """``[(object, h5 path)]``: what ``model.save_weights("x.weights.h5")`` writes, in its order.

    tf_keras' saving_lib walks every attribute of every layer, optimizer and metric on each save (about half
    of a save's time); this walk is the same (``_save_state``), done once, so that each later save only
    writes the variables (:func:`_write_weights`): the same groups, datasets and values.
    """
    from tf_keras.src.saving import saving_lib
    from tf_keras.src.utils.generic_utils import to_snake_case

    plan, seen = [], set()

    def visit(obj, path):
        if id(obj) in seen:
            return
        if hasattr(obj, "save_own_variables"):
            plan.append((obj, path))
        seen.add(id(obj))
        for attr, child in saving_lib._walk_trackable(obj):
            if saving_lib._is_keras_trackable(child):
                visit(child, tf.io.gfile.join(path, attr))
            elif isinstance(child, (list, dict, tuple, set)):
                container(child, tf.io.gfile.join(path, attr))

    def container(items, path):
        used: dict = {}
        for item in list(items.values()) if isinstance(items, dict) else items:
            if saving_lib._is_keras_trackable(item):
                if id(item) in seen:
                    continue
                name = to_snake_case(item.__class__.__name__)
                used[name] = used[name] + 1 if name in used else 0
                visit(item, tf.io.gfile.join(path, f"{name}_{used[name]}" if used[name] else name))

    visit(model, "")
    return plan


def _write_weights(plan: list, filepath) -> None:
    """Write a ``.weights.h5`` file from a :func:`_save_plan` (loads with ``model.load_weights``)."""
    from tf_keras.src.saving import saving_lib

    store = saving_lib.H5IOStore(str(filepath), mode="w")
    try:
        for obj, path in plan:
            obj.save_own_variables(store.make(path))
    finally:
        store.close()


class _AtomicCheckpoint(keras.callbacks.ModelCheckpoint):
    """ModelCheckpoint writing to a temporary file renamed into place: a kill never leaves a truncated file.

    A ``.weights.h5`` file is written from a :func:`_save_plan` made at the first save (every variable,
    the optimizer's included, exists by the end of an epoch; callbacks are made per ``fit``), falling
    back to ``save_weights`` if tf_keras' internals ever differ. ``written`` is the file saved at the end
    of the current epoch (None before it is saved).
    """

    written = None
    _plan = None

    def on_epoch_begin(self, epoch, logs=None):
        self.written = None
        super().on_epoch_begin(epoch, logs)

    def _save_handler(self, filepath):
        with atomic_path(filepath, suffix=_suffix(filepath)) as tmp:
            if not (self.save_weights_only and _suffix(filepath) == ".weights.h5" and self._fast_save(tmp)):
                super()._save_handler(str(tmp))
        self.written = str(filepath)

    def _fast_save(self, tmp) -> bool:
        """Write ``tmp`` from the save plan; False (use ``save_weights``) when there is no usable plan."""
        if self._plan is None or self._plan[0] is not self.model:
            try:
                self._plan = (self.model, _save_plan(self.model))
            except Exception as err:  # noqa: BLE001  (tf_keras internals changed: plain save_weights)
                log.debug("checkpoint: no save plan (%s); using save_weights", err)
                self._plan = (self.model, None)
        if self._plan[1] is None:
            return False
        try:
            _write_weights(self._plan[1], tmp)
            return True
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            log.debug("checkpoint: save plan failed (%s); using save_weights", err)
            self._plan = (self.model, None)
            return False


class _BestCheckpoint(_AtomicCheckpoint):
    """The best checkpoint: when ``source`` (the last checkpoint, earlier in the callback list) already
    saved this epoch's weights, the best file becomes a hard link to that file (a copy where hard links
    are not supported) instead of serialising the same weights twice. The link is made under a temporary
    name renamed into place, and ``source`` later replaces its file by renaming a new one over it, so the
    best file's content never changes after it was written."""

    def __init__(self, filepath, source: _AtomicCheckpoint, **kwargs):
        super().__init__(filepath, **kwargs)
        self.source = source

    def _save_handler(self, filepath):
        src = self.source.written
        # Multi-worker: every worker must serialise (reading sync-on-read variables runs collectives, and a
        # non-chief's last file is already deleted), or the workers' collectives fall out of step.
        if (src is None or not Path(src).is_file() or _suffix(src) != _suffix(filepath)
                or self.model.distribute_strategy.extended._in_multi_worker_mode()):
            return super()._save_handler(filepath)
        with atomic_path(filepath, suffix=_suffix(filepath)) as tmp:
            Path(tmp).unlink()
            try:
                Path(tmp).hardlink_to(src)
            except OSError:
                shutil.copyfile(src, tmp)
        self.written = str(filepath)


class _Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose end-of-epoch backup is taken by :class:`_BackupLast`, after every other callback
    (history row and checkpoints) has recorded the epoch, so a kill never leaves a backed-up epoch unrecorded."""

    def on_epoch_end(self, epoch, logs=None):
        pass


class _BackupLast(keras.callbacks.Callback):
    """Takes ``backup``'s end-of-epoch backup; placed last in the callback list."""

    def __init__(self, backup: _Backup):
        super().__init__()
        self.backup = backup

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):  # a diverged epoch is never the one to resume from
            self.backup._backup(epoch=epoch)


class _ResumeState(keras.callbacks.Callback):
    """On a resume (after ``_Backup`` restored the state), makes the run continue as if never stopped.

    * ``history.csv`` loses the rows of epochs that will be trained again (each epoch is recorded once);
    * the best checkpoint's reference value is the best of the epochs already trained (not reset);
    * a reshuffling ``train_ds`` skips the shuffle seeds of the epochs already trained, so epoch ``n``
      sees the batches it sees in an uninterrupted run (tf.data draws a new shuffle seed per iterator).
    """

    def __init__(self, run_dir: Path, best: keras.callbacks.ModelCheckpoint, train_ds=None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.best = best
        self.train_ds = train_ds
        self.initial_epoch = 0

    def on_train_begin(self, logs=None):
        epoch, _ = self.model._maybe_load_initial_counters_from_ckpt(self.params.get("steps"), 0)
        self.initial_epoch = int(epoch)
        if self.initial_epoch <= 0:
            return
        rows = self._trim_history()
        values = [float(r[self.best.monitor]) for r in rows if r.get(self.best.monitor) not in (None, "")]
        values = [v for v in values if math.isfinite(v)]
        if values:
            self.best.best = min(values) if self.best.monitor_op is np.less else max(values)
        if self.train_ds is not None:
            for _ in range(self.initial_epoch):
                iter(self.train_ds)  # draws (and discards) one epoch's shuffle/augmentation seeds

    def _trim_history(self) -> list:
        path = self.run_dir / "history.csv"
        if not path.is_file():
            return []
        text = path.read_text(encoding="utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        kept = [r for r in rows if r.get("epoch", "").isdigit() and int(r["epoch"]) < self.initial_epoch]
        if len(kept) != len(rows) and rows:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(path, out.getvalue())
        return kept


class _FaultPoints(keras.callbacks.Callback):
    """The ``epoch:<n>:batch:<k>`` points of the ``TFOPT_FAULT`` testing hook (see ``tfopt._faults``)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        _faults.reached(f"epoch:{self.epoch}:batch:{batch}")


def run_callbacks(run_dir, monitor: str = "val_loss", backup_dir=None, keep_backup: bool = False,
                  train_ds=None) -> list:
    """The callbacks ``fit`` adds for a run directory.

    ``checkpoints/best.weights.h5`` (best ``monitor``), ``checkpoints/last.weights.h5``, ``backup/``
    (BackupAndRestore: a killed run resumes at the start of the epoch it was in), ``logs/`` (TensorBoard) and
    ``history.csv`` (one row per epoch, kept across resumes). Checkpoint files are written atomically, and
    on a resume the best checkpoint keeps competing with the epochs trained before the kill. Each epoch
    serialises the weights once (``last.weights.h5``; an improved ``best.weights.h5`` is a hard link to
    it), plus the BackupAndRestore checkpoint.

    Args:
        run_dir: String or path, where checkpoints, logs and history go.
        monitor: String, the metric of the best checkpoint.
        backup_dir: String, path or None, the BackupAndRestore directory (default ``run_dir/backup``).
        keep_backup: Boolean, keep the backup when training ends (a later ``fit`` on it trains no epoch).
        train_ds: The training tf.data.Dataset, or None: given, a resumed run skips the shuffle seeds of
            the epochs already trained (only valid when Keras iterates this very dataset: no strategy).

    >>> [type(c).__name__ for c in run_callbacks("runs/x")][:4]  # doctest: +SKIP
    ['_Backup', '_ResumeState', '_AtomicCheckpoint', '_BestCheckpoint']
    """
    run_dir = Path(run_dir)
    ckpt = run_dir / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    backup = _Backup(str(backup_dir or run_dir / "backup"), delete_checkpoint=not keep_backup)
    last = _AtomicCheckpoint(str(ckpt / "last.weights.h5"), save_weights_only=True)
    best = _BestCheckpoint(str(ckpt / "best.weights.h5"), last, monitor=monitor, save_best_only=True,
                           save_weights_only=True)
    return [
        backup,
        _ResumeState(run_dir, best, train_ds),
        last,  # before best: an improved epoch's best file is a hard link to this epoch's last file
        best,
        # per-epoch scalars only: no graph, no per-batch summaries, no profiler trace
        keras.callbacks.TensorBoard(str(run_dir / "logs"), histogram_freq=0, write_graph=False,
                                    update_freq="epoch", profile_batch=0),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        _BackupLast(backup),
    ]


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


def _batch_size(dataset):
    """Integer or None, the size of the first batch of ``dataset``."""
    spec = tf.nest.flatten(dataset.element_spec)[0]
    if spec.shape.rank and spec.shape[0] is not None:
        return int(spec.shape[0])
    for batch in dataset.take(1):
        return int(tf.nest.flatten(batch)[0].shape[0])
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


def _write_dir(run_dir, strategy):
    """Where this task writes run files: ``run_dir`` on the chief, a throwaway temp dir on other workers."""
    if strategy is None or distribute.is_chief(strategy):
        return Path(run_dir), None
    temp = Path(tempfile.mkdtemp(prefix=f"tfopt-worker{distribute.task_index(strategy)}-"))
    return temp, temp


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

    Under a strategy the datasets hold GLOBAL batches (``distribute.scale_batch_size``), split evenly over
    the replicas. In multi-worker training only the chief writes ``run_dir``; other workers write to a
    temporary directory removed at the end (Keras convention), except the BackupAndRestore state, which
    every worker keeps under ``run_dir/backup`` (all workers must see the chief's: a shared filesystem).

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
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be a positive integer")
    _check_precision(mixed_precision)
    if steps_per_execution is not None:
        check_range("steps_per_execution", steps_per_execution, 1)
    count_steps(train_ds, "train_ds")
    if val_ds is not None:
        count_steps(val_ds, "val_ds")
    if model.optimizer is None or not getattr(model, "compiled_loss", None):
        log.info("fit: model was not compiled; using Adam(1e-3) and sparse categorical cross-entropy")
        compile_like(model, learning_rate=1e-3)

    if strategy is not None:
        strategy = distribute.get_strategy(strategy)
        if strategy.num_replicas_in_sync > 1:
            distribute.check_batch_size(_batch_size(train_ds), strategy)
        _check_xla(strategy, jit_compile if jit_compile is not None else model._jit_compile)
    trained = model
    if mixed_precision is not None or (strategy is not None and not in_strategy(model, strategy)):
        trained = _replicate(model, strategy, mixed_precision, jit_compile, steps_per_execution)
    elif jit_compile is not None or steps_per_execution is not None:
        _recompile(model, model, model.optimizer, jit_compile, steps_per_execution)

    nan_guard = StopOnNaN()
    all_callbacks = [nan_guard, *callbacks] + ([_FaultPoints()] if _faults.armed() else [])
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
        history = trained.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=all_callbacks, verbose=verbose)
    finally:
        # tf_keras trap: BackupAndRestore deletes model._training_state at the end of training, and the
        # next fit() on the same model then fails with AttributeError. Put the attribute back.
        if not hasattr(trained, "_training_state"):
            trained._training_state = None
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
