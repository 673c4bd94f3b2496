"""The callbacks ``tfopt.train.fit`` adds for a run directory: atomic best/last checkpoints, a
BackupAndRestore taken after every other callback recorded the epoch, and the state a resumed run needs
(history rows, the best value so far, the shuffle seeds of the epochs already trained)."""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
from pathlib import Path

import numpy as np

from tfopt import _faults
from tfopt._io import atomic_path, atomic_write_text, h5_bytes
from tfopt._keras import keras, tf
from tfopt._private import private

__all__ = ["run_callbacks", "FaultPoints", "backup_damage"]

log = logging.getLogger(__name__)


def _suffix(filepath) -> str:
    return ".weights.h5" if str(filepath).endswith(".weights.h5") else Path(filepath).suffix


def _save_plan(model) -> list:
    """``[(object, h5 path)]``: what ``model.save_weights("x.weights.h5")`` writes, in its order.

    tf_keras' saving_lib walks every attribute of every layer, optimizer and metric on each save (about half
    of a save's time); this walk is the same (``_save_state``), done once, so that each later save only
    writes the variables (:func:`_write_weights`): the same groups, datasets and values.
    """
    saving_lib = private("tfk_saving_lib")
    to_snake_case = private("tfk_to_snake_case")

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
    """Write a ``.weights.h5`` file from a :func:`_save_plan` (loads with ``model.load_weights``).

    The groups are saving_lib's ``H5IOStore.make``'s. The HDF5 file is made in memory and written with one
    plain write: a disk filling up fails that write cleanly, where HDF5 failing mid-file could crash the
    process when the half-written file was closed.
    """

    def write(h5):
        for obj, path in plan:
            obj.save_own_variables((h5.create_group(path) if path else h5).create_group("vars"))

    with open(filepath, "wb") as f:
        f.write(h5_bytes(write))


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


def backup_damage(backup_dir) -> str | None:
    """Why the BackupAndRestore state in ``backup_dir`` cannot be restored (None: intact, or no backup).

    Every tensor of the latest checkpoint is read (a truncated or garbled file fails here, not in ``fit``),
    and the checkpoint must lie inside ``backup_dir`` (its index file could name any path).

    Args:
        backup_dir: String or Path, the ``backup_dir`` given to BackupAndRestore.

    >>> backup_damage("/nonexistent/backup") is None
    True
    """
    folder = Path(backup_dir) / "chief"
    if not folder.is_dir():
        return None
    try:
        state = tf.train.get_checkpoint_state(str(folder))
        if state is None or not state.model_checkpoint_path:
            return None if not (folder / "checkpoint").exists() else "its 'checkpoint' file names no checkpoint"
        latest = Path(state.model_checkpoint_path)
        latest = latest if latest.is_absolute() else folder / latest
        if not latest.resolve().is_relative_to(folder.resolve()):
            return f"its 'checkpoint' file names {str(latest)!r}, outside the backup"
        reader = tf.train.load_checkpoint(str(latest))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # noqa: BLE001  (TensorFlow raises OpError, IndexError, ValueError, ... here)
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    return None


class _Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose end-of-epoch backup is taken by :class:`_BackupLast`, after every other callback
    (history row and checkpoints) has recorded the epoch, so a kill never leaves a backed-up epoch unrecorded.
    A damaged backup (truncated or garbled files) is discarded with a warning and training starts afresh."""

    discarded = False

    def on_train_begin(self, logs=None):
        damage = backup_damage(self.backup_dir)
        if damage is not None:
            folder = Path(self.backup_dir) / "chief"
            log.warning("the training backup %s is damaged (%s); discarded, training starts again from "
                        "epoch 1", folder, damage)
            for path in folder.iterdir():  # only the checkpoint files; a symlink is removed, not followed
                if path.name == "checkpoint" or path.name.startswith("ckpt-"):
                    path.unlink(missing_ok=True)
            self.discarded = True
        super().on_train_begin(logs)

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

    def __init__(self, run_dir: Path, best: keras.callbacks.ModelCheckpoint, train_ds=None,
                 backup: _Backup | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.best = best
        self.train_ds = train_ds
        self.backup = backup
        self.initial_epoch = 0

    def on_train_begin(self, logs=None):
        epoch, _ = self.model._maybe_load_initial_counters_from_ckpt(self.params.get("steps"), 0)
        self.initial_epoch = int(epoch)
        if self.initial_epoch <= 0:
            if self.backup is not None and self.backup.discarded:
                self._trim_history()  # starting afresh: the rows of the discarded backup's epochs go
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


class FaultPoints(keras.callbacks.Callback):
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
        _ResumeState(run_dir, best, train_ds, backup),
        last,  # before best: an improved epoch's best file is a hard link to this epoch's last file
        best,
        # per-epoch scalars only: no graph, no per-batch summaries, no profiler trace
        keras.callbacks.TensorBoard(str(run_dir / "logs"), histogram_freq=0, write_graph=False,
                                    update_freq="epoch", profile_batch=0),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        _BackupLast(backup),
    ]
