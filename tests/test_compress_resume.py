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
