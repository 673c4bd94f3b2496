"""The callbacks ``tfopt.train.fit`` adds for a run directory: atomic best/last checkpoints, a
BackupAndRestore taken after every other callback recorded the epoch, and the state a resumed run needs
(history rows, the best value so far, the shuffle seeds of the epochs already trained)."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import shutil
import weakref
import zlib
from pathlib import Path

import numpy as np

from tfopt import _faults
from tfopt._io import atomic_path, atomic_write_text, h5_bytes, read_json, write_json
from tfopt._keras import keras, tf
from tfopt._private import private

__all__ = ["run_callbacks", "resume_callbacks", "FaultPoints", "backup_damage", "resumable_randomness",
           "remove_backup", "started"]

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
        # TensorFlow has joined a relative entry to ``folder`` already: the path is absolute or relative to the
        # working directory (joining it to ``folder`` again discarded every backup of a relative run_dir)
        latest = Path(state.model_checkpoint_path)
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
    """The ``[<prefix>:]epoch:<n>:batch:<k>`` points of the ``TFOPT_FAULT`` testing hook (see ``tfopt._faults``):
    ``tfopt.train.fit`` has no prefix, a compression's fine-tuning names its function (``prune:epoch:0:batch:3``)."""

    def __init__(self, prefix: str = ""):
        super().__init__()
        self.prefix = f"{prefix}:" if prefix else ""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        _faults.reached(f"{self.prefix}epoch:{self.epoch}:batch:{batch}")


HISTORY_ROWS = "history_rows.json"  # in a compression backup: each CSV history's row count when its fit began


def _csv_rows(path: Path) -> list | None:
    """The data rows of the CSV file ``path`` (None when it does not exist)."""
    if not path.is_file():
        return None
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def _keep_rows(path: Path, keep: int) -> None:
    """Keep the header and the first ``keep`` rows of the CSV file ``path`` (rewritten atomically)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.splitlines(keepends=True)
    if len(lines) > keep + 1:
        atomic_write_text(path, "".join(lines[:keep + 1]))


class _ResumeFit(keras.callbacks.Callback):
    """A compression fine-tuning's resume (after ``_Backup`` restored the state): a reshuffling ``train_ds`` skips
    the shuffle seeds of the epochs already trained, and each ``CSVLogger`` (append mode) among ``histories``
    keeps the rows it had when this fit first began plus one per epoch the backup holds (a fit whose epochs are
    all done keeps its rows: later fits of the same stage wrote after them)."""

    def __init__(self, backup_dir, histories=(), train_ds=None, owner: bool = True):
        super().__init__()
        self.marker = Path(backup_dir) / HISTORY_ROWS
        self.files = [Path(c.filename) for c in histories
                      if isinstance(c, keras.callbacks.CSVLogger) and getattr(c, "append", False)]
        self.train_ds = train_ds
        self.owner = owner
        self.initial_epoch = 0

    def on_train_begin(self, logs=None):
        epoch, _ = self.model._maybe_load_initial_counters_from_ckpt(self.params.get("steps"), 0)
        self.initial_epoch = int(epoch)
        if self.owner and self.files:
            self._histories()
        if self.train_ds is not None:
            for _ in range(self.initial_epoch):
                iter(self.train_ds)  # draws (and discards) one epoch's shuffle/augmentation seeds

    def _histories(self) -> None:
        try:
            before = read_json(self.marker) if self.marker.is_file() else None
        except ValueError:  # never half-written (atomic), but a hand-edited file must not stop training
            before = None
        if before is None:  # this fit begins for the first time: remember where its rows start
            write_json(self.marker, {str(f): len(_csv_rows(f) or []) for f in self.files})
            return
        if self.initial_epoch >= (self.params.get("epochs") or 0):
            return
        for f in self.files:
            if str(f) in before:
                _keep_rows(f, int(before[str(f)]) + self.initial_epoch)


def resume_callbacks(backup_dir, keep_backup: bool = False, train_ds=None, histories=(), owner: bool = True):
    """``(first, last)``: the callbacks that make a fine-tuning resumable, to put before and after the others.

    ``first`` restores the BackupAndRestore state in ``backup_dir`` (a damaged one is discarded with a warning)
    and prepares the resume (:class:`_ResumeFit`); ``last`` takes the end-of-epoch backup after every other
    callback recorded the epoch. A killed fine-tuning resumes at the start of the epoch it was in.

    Args:
        backup_dir: String or Path, the folder of the state (``chief/``, ``history_rows.json``).
        keep_backup: Boolean, keep the state when training ends (a later fit on it trains no epoch).
        train_ds: The tf.data.Dataset Keras iterates (no strategy), or None: its shuffle seeds are skipped.
        histories: The other callbacks: the ``CSVLogger`` ones with ``append=True`` are kept in step.
        owner: Boolean, this process writes the state's files (False: a non-chief worker sharing the chief's).

    >>> first, last = resume_callbacks("run/backup")  # nothing is written before training begins
    >>> [type(c).__name__ for c in first + last]
    ['_Backup', '_ResumeFit', '_BackupLast']
    """
    backup = _Backup(str(backup_dir), delete_checkpoint=not keep_backup)
    return [backup, _ResumeFit(backup_dir, histories, train_ds, owner)], [_BackupLast(backup)]


def started(backup_dir) -> bool:
    """True when a fine-tuning with :func:`resume_callbacks` began in ``backup_dir`` (or a sub-folder of it)."""
    folder = Path(backup_dir)
    return folder.is_dir() and any(folder.rglob(HISTORY_ROWS)) or (folder / "chief").is_dir()


def remove_backup(backup_dir) -> None:
    """Remove what :func:`resume_callbacks` left in ``backup_dir`` (its ``chief/`` folder and ``history_rows.json``,
    also in sub-folders), then the folders left empty; never anything else (a symlink is not followed)."""
    folder = Path(backup_dir)
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if sub.name == "chief":
            shutil.rmtree(sub, ignore_errors=True)
    for marker in folder.rglob(HISTORY_ROWS):
        marker.unlink(missing_ok=True)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only empty ones go
    with contextlib.suppress(OSError):
        folder.rmdir()


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


# ------------------------------------------------------------------------------ random layers that resume


class _StepSeeded:
    """Stands in for a layer's tf_keras ``RandomGenerator`` while tfopt trains: every draw (a dropout mask,
    GaussianNoise, a random augmentation layer's numbers) is a stateless op seeded by the layer's seed, the
    training step (the optimizer's ``iterations``, which the backup holds), the draw's place in the traced step
    and the replica. Keras' own generator keeps its state in an op kernel (or, for ``tf.random.Generator``, in a
    variable it keeps out of checkpoints on purpose), so a resumed run drew other masks than the run it continues.
    ``_rng_type`` stays the layer's own: its config (what is saved) does not change.
    """

    def __init__(self, original, seed: int, step):
        self._original = original
        self._rng_type = original._rng_type
        self._seed = int(seed)
        self._step = step
        self._draws = weakref.WeakKeyDictionary()  # traced graph -> draws made in it so far

    def __getattr__(self, name):  # anything else a layer might read
        return getattr(self._original, name)

    def _maybe_init(self):
        pass

    def make_legacy_seed(self):
        return None

    def make_seed_for_stateless_op(self, nonce=None):
        draw = 0  # eager (run_eagerly): one draw per layer and step
        if not tf.executing_eagerly():  # numbered within the traced step: the same in every trace of it
            graph = tf.compat.v1.get_default_graph()
            draw = self._draws.get(graph, 0)
            self._draws[graph] = draw + 1
        seed = tf.random.experimental.stateless_fold_in(tf.constant([self._seed, draw], tf.int64),
                                                        tf.cast(self._step, tf.int64))
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(seed, replica.replica_id_in_sync_group)
        return seed if not nonce else tf.random.experimental.stateless_fold_in(seed, nonce)

    def random_uniform(self, shape, minval=0.0, maxval=None, dtype=None, nonce=None):
        return tf.random.stateless_uniform(shape, self.make_seed_for_stateless_op(nonce), minval=minval,
                                           maxval=maxval, dtype=dtype or keras.backend.floatx())

    def random_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return tf.random.stateless_normal(shape, self.make_seed_for_stateless_op(nonce), mean=mean, stddev=stddev,
                                          dtype=dtype or keras.backend.floatx())

    def truncated_normal(self, shape, mean=0.0, stddev=1.0, dtype=None, nonce=None):
        return tf.random.stateless_truncated_normal(shape, self.make_seed_for_stateless_op(nonce), mean=mean,
                                                    stddev=stddev, dtype=dtype or keras.backend.floatx())

    def dropout(self, inputs, rate, noise_shape=None):
        return tf.nn.experimental.stateless_dropout(inputs, rate=rate, noise_shape=noise_shape,
                                                    seed=self.make_seed_for_stateless_op())


def _all_layers(model):
    """Every layer under ``model``: nested models' layers and the layers tfmot wrappers hold."""
    seen, stack = set(), list(getattr(model, "layers", []))
    while stack:
        layer = stack.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(getattr(layer, "layers", None) or [])
        inner = getattr(layer, "layer", None)
        if isinstance(inner, keras.layers.Layer):
            stack.append(inner)


def _global_seed() -> int:
    """TensorFlow's global seed (``tf.random.set_seed``, ``tfopt.set_seed``), 0 when none is set; read without
    drawing anything (``tf.random`` has no public getter that does not advance the op-seed counter)."""
    return int(private("tf_eager_context").global_seed() or 0)


@contextlib.contextmanager
def resumable_randomness(model):
    """Within the block, ``model``'s random layers draw from (layer seed, training step) alone: a run resumed
    from a backup draws the same dropout masks as the run it continues, so it ends with the same weights.

    Each layer whose tf_keras generator is stateful (the default "legacy_stateful", or "stateful") gets a
    :class:`_StepSeeded` stand-in for the block, seeded by the layer's own ``seed`` or else by its name and
    TensorFlow's global seed; a layer the user made "stateless" keeps its generator. The step is
    ``model.optimizer.iterations``. ``model``'s traced train step is dropped so that the next ``fit`` traces
    with the stand-ins. Masks within one step are drawn per layer, per draw in the step and per replica.

    Args:
        model: The compiled tf_keras model about to be trained (its optimizer's ``iterations`` is the step).

    >>> m = keras.Sequential([keras.layers.Dropout(0.5, input_shape=(4,))])
    >>> m.compile("sgd", "mse")
    >>> with resumable_randomness(m):
    ...     type(m.layers[0]._random_generator).__name__
    '_StepSeeded'
    >>> type(m.layers[0]._random_generator).__name__
    'RandomGenerator'
    """
    optimizer = getattr(model, "optimizer", None)
    swapped = []
    if optimizer is not None:
        salt = _global_seed()
        for layer in _all_layers(model):
            generator = getattr(layer, "_random_generator", None)
            if generator is None or getattr(generator, "_rng_type", None) not in ("legacy_stateful", "stateful"):
                continue
            own = getattr(layer, "seed", None)
            seed = own if isinstance(own, int) else zlib.crc32(layer.name.encode()) + 1_000_003 * salt
            # set past Keras' attribute tracking: the stand-in never joins the layer's checkpoint or weights
            object.__setattr__(layer, "_random_generator", _StepSeeded(generator, seed % 2**62, optimizer.iterations))
            swapped.append((layer, generator))
    if swapped:
        model.train_function = None  # a step traced before the swap would keep drawing from the old generators
    try:
        yield model
    finally:
        for layer, generator in swapped:
            object.__setattr__(layer, "_random_generator", generator)
