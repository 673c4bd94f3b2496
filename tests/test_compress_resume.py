"""Compression fine-tunings resume inside: ``tfopt.compress._fit.compression_fit`` with a ``backup_dir`` (prune,
quantize_aware, ... and their pipeline stages), killed with SIGKILL at ``<function>:epoch:<n>:batch:<k>`` (the
``TFOPT_FAULT`` hook) and run again, ends with the weights and history of an uninterrupted run; the pieces that
make it so (history rows, backup removal, the stage's arguments, dropout drawn from the step)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt.checkpoints import HISTORY_ROWS, backup_damage, remove_backup, resumable_randomness, resume_callbacks

ROOT = Path(__file__).parent.parent
TIMEOUT = 240


def _worker(out: str, backup: str) -> None:
    """One run: a small MLP with dropout trained 1 epoch on digits, then pruned (2 epochs) and QAT-fine-tuned
    (2 epochs), both with a kept backup; writes the final weights to ``out``.npz and the histories beside it."""
    tf.config.experimental.enable_op_determinism()
    import tfopt
    from tfopt.compress import prune, quantize_aware
    from tests.helpers import shuffled_digits

    tfopt.set_seed(0)
    x, y = shuffled_digits(images=False)
    train, val, _, _ = tfopt.data.from_arrays(x[:900], y[:900], batch_size=64, seed=0)  # reshuffled each pass
    inp = keras.Input((64,))
    h = keras.layers.Dropout(0.2)(keras.layers.Dense(32, activation="relu")(inp))
    model = keras.Model(inp, keras.layers.Dense(10)(h))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    model.fit(train, epochs=1, verbose=0)
    history = [keras.callbacks.CSVLogger(f"{out}.prune.csv", append=True)]
    pruned = prune(model, train, 0.5, epochs=2, val_ds=val, verbose=0, callbacks=history,
                   backup_dir=Path(backup) / "prune", keep_backup=True)
    history = [keras.callbacks.CSVLogger(f"{out}.qat.csv", append=True)]
    qat = quantize_aware(pruned, train, epochs=2, val_ds=val, verbose=0, callbacks=history,
                         backup_dir=Path(backup) / "qat", keep_backup=True)
    np.savez(out, *[w.numpy() for w in qat.weights])


def _run(tmp: Path, name: str, fault: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFOPT_FAULT")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    if fault:
        env["TFOPT_FAULT"] = fault
    code = f"from tests.test_compress_resume import _worker; _worker({str(tmp / name)!r}, {str(tmp / 'backup')!r})"
    if name == "ref":
        code = code.replace("'backup'", "'ref-backup'").replace(str(tmp / "backup"), str(tmp / "ref-backup"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def _rows(path: Path) -> list:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_kills_inside_prune_and_qat_resume_to_the_uninterrupted_weights(tmp_path):
    assert _run(tmp_path, "ref") == 0
    # killed in the second epoch of prune: its first epoch is backed up
    assert _run(tmp_path, "run", "prune:epoch:1:batch:3") == -signal.SIGKILL
    assert [r["epoch"] for r in _rows(tmp_path / "run.prune.csv")] == ["0"]
    assert (tmp_path / "backup" / "prune" / "chief").is_dir() and not (tmp_path / "backup" / "qat").exists()
    # resumed at prune's epoch 1, then killed in the second epoch of QAT
    assert _run(tmp_path, "run", "quantize_aware:epoch:1:batch:2") == -signal.SIGKILL
    assert [r["epoch"] for r in _rows(tmp_path / "run.prune.csv")] == ["0", "1"]
    assert [r["epoch"] for r in _rows(tmp_path / "run.qat.csv")] == ["0"]
    # prune restores its finished state (no epoch trained again), QAT resumes at its epoch 1
    assert _run(tmp_path, "run") == 0
    for part in ("prune", "qat"):
        ours, theirs = _rows(tmp_path / f"run.{part}.csv"), _rows(tmp_path / f"ref.{part}.csv")
        assert [r["epoch"] for r in ours] == ["0", "1"]
        assert ours == theirs, part  # the same losses and accuracies, epoch by epoch
    with np.load(tmp_path / "run.npz") as run, np.load(tmp_path / "ref.npz") as ref:
        assert len(run.files) == len(ref.files) > 6
        for key in ref.files:  # kernels, masks, quantizer ranges: exactly the uninterrupted run's
            np.testing.assert_array_equal(run[key], ref[key])


# ---------------------------------------------------------------- the pieces, in process


def _mlp(dropout=0.0):
    inp = keras.Input((4,))
    h = keras.layers.Dense(8, activation="relu")(inp)
    if dropout:
        h = keras.layers.Dropout(dropout, name="drop")(h)
    model = keras.Model(inp, keras.layers.Dense(3)(h))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _data(rows=40):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, 4)).astype("float32"), rng.integers(0, 3, rows).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def _fit_with_backup(model, backup, history, epochs, stop_at=None, keep=True):
    """``compression_fit``'s resume machinery around a plain fit; ``stop_at``: raise in that epoch (a crash)."""
    from tfopt.compress._fit import compression_fit

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == stop_at:
                raise KeyboardInterrupt

    logger = keras.callbacks.CSVLogger(str(history), append=True)
    return compression_fit(model, _data(), epochs, callbacks=[logger, Crash()], verbose=0, backup_dir=backup,
                           keep_backup=keep)


def _epochs(path):
    return [r["epoch"] for r in _rows(path)]


def test_history_keeps_earlier_fits_rows_and_only_the_backed_up_epochs(tmp_path):
    history, backup = tmp_path / "history.csv", tmp_path / "backup"
    _fit_with_backup(_mlp(), backup / "step1", history, 2)  # an earlier fit of the same stage: 2 rows
    with pytest.raises(KeyboardInterrupt):
        _fit_with_backup(_mlp(), backup / "step2", history, 3, stop_at=2)
    assert _epochs(history) == ["0", "1", "0", "1"]
    with open(history, "a") as f:  # a row written after the backup was taken (a kill between the two)
        f.write("2,9.9\n")
    # the run again: step 1 restores its finished state and writes nothing; step 2 resumes at epoch 2
    model = _mlp()
    assert _fit_with_backup(model, backup / "step1", history, 2).epoch == []
    _fit_with_backup(_mlp(), backup / "step2", history, 3)
    assert _epochs(history) == ["0", "1", "0", "1", "2"]
    assert (backup / "step1" / "chief").is_dir() and (backup / "step1" / HISTORY_ROWS).is_file()


def test_without_keep_backup_the_state_goes_and_a_new_call_starts_afresh(tmp_path):
    history, backup = tmp_path / "history.csv", tmp_path / "backup"
    (tmp_path / "backup").mkdir()
    (backup / "notes.txt").write_text("not ours")
    _fit_with_backup(_mlp(), backup, history, 2, keep=False)
    assert sorted(p.name for p in backup.iterdir()) == ["notes.txt"]  # only what tfopt wrote went
    assert len(_fit_with_backup(_mlp(), backup, history, 2, keep=False).epoch) == 2


def test_remove_backup_removes_only_its_own_files(tmp_path):
    outside = tmp_path / "outside"
    (outside / "chief").mkdir(parents=True)
    backup = tmp_path / "backup"
    (backup / "step1" / "chief").mkdir(parents=True)
    (backup / "step1" / HISTORY_ROWS).write_text("{}")
    (backup / "link").symlink_to(outside)
    remove_backup(backup)
    assert (outside / "chief").is_dir()  # a symlink is not followed
    assert sorted(p.name for p in backup.iterdir()) == ["link"]
    remove_backup(tmp_path / "missing")  # nothing there: nothing to do


def test_a_relative_backup_dir_is_restored_not_discarded(tmp_path, monkeypatch):
    """TensorFlow returns a relative backup's checkpoint path already joined to its folder; it was joined again,
    so every backup of a relative run_dir was reported damaged and discarded."""
    monkeypatch.chdir(tmp_path)
    model = _mlp()
    first, last = resume_callbacks("rel/backup", keep_backup=True)
    model.fit(_data(), epochs=1, callbacks=first + last, verbose=0)
    assert Path("rel/backup/chief/checkpoint").is_file()
    assert backup_damage("rel/backup") is None


def test_stage_resume_starts_the_history_afresh_only_before_a_fit_began(tmp_path):
    from tfopt.compress._fit import stage_resume
    from tfopt.techniques import StageInputs

    stage = tmp_path / "02_prune"
    stage.mkdir()
    inputs = StageInputs(*([None] * 8), stage_dir=stage, run_dir=tmp_path, backup_dir=tmp_path / "shared",
                         training={})
    (stage / "history.csv").write_text("epoch,loss\n0,1.0\n")
    args = stage_resume(inputs)
    assert args["backup_dir"] == stage / "backup" and args["keep_backup"] is True
    assert not (stage / "history.csv").exists()  # no fit began: the stage starts afresh
    (stage / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (stage / "backup" / "step1").mkdir(parents=True)
    (stage / "backup" / "step1" / HISTORY_ROWS).write_text("{}")
    stage_resume(inputs)
    assert (stage / "history.csv").is_file()  # a fit began: its rows are kept (and trimmed by it)
    assert stage_resume(inputs, strategy=object())["backup_dir"] == tmp_path / "shared"  # shared under a strategy


def test_dropout_draws_from_the_step_and_the_layer_keeps_its_generator():
    model = _mlp(dropout=0.5)
    layer = model.get_layer("drop")
    original, config = layer._random_generator, layer.get_config()
    x = tf.ones((4, 8))
    with resumable_randomness(model):
        assert layer._random_generator is not original and layer.get_config() == config
        first = layer(x, training=True).numpy()
        again = layer(x, training=True).numpy()
        np.testing.assert_array_equal(first, again)  # same step, same masks: a function of the step
        assert set(np.unique(first)) == {0.0, 2.0}  # rows dropped and scaled by 1 / (1 - rate)
        model.optimizer.iterations.assign_add(1)
        assert not np.array_equal(layer(x, training=True).numpy(), first)  # the next step draws other masks
    assert layer._random_generator is original and model.train_function is None


def test_teacher_must_name_an_earlier_stage_that_makes_a_model(tmp_path):
    from tfopt.errors import ConfigError
    from tfopt.pipeline import load_recipe

    text = """\
name: t
data: {name: digits}
model: {builder: mlp}
stages:
  - train
  - prune: {target_sparsity: 0.5, teacher: prune}
  - quantize_aware: {teacher: train, temperature: 2, alpha: 0.5}
"""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"r\.yaml:6: .*prune: teacher='prune' is not an earlier stage that makes "
                                          r"a model; allowed: train"):
        load_recipe(path)
    path.write_text(text.replace("teacher: prune}", "teacher: train}"))
    recipe = load_recipe(path)
    assert [s.options.get("teacher") for s in recipe.stages] == [None, "train", "train"]
