"""Kill-and-resume: real ``tfopt`` subprocesses killed with SIGKILL at precise points (the ``TFOPT_FAULT``
testing hook, tfopt._faults) and restarted with the same command; also the run-directory lock, atomic
checkpoints and the NaN stop keeping the last good checkpoint."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tfopt._io import read_json
from tfopt._keras import keras, tf
from tfopt.errors import TrainingError
from tfopt.train import fit

TIMEOUT = 240  # seconds, per subprocess
KEPT = "finished in an earlier run, kept"

RECIPE = """\
name: faults
seed: 3
data: {name: digits}
model:
  builder: cnn
  args: {filters: [8], dense: [32], dropout: 0.3}
training: {epochs: 3, batch_size: 32, optimizer: adam, learning_rate: 0.01, deterministic: true}
stages:
  - train
  - prune: {target_sparsity: 0.5, epochs: 2, teacher: train}
  - export:
      variants:
        - {name: float32, model: train}
        - {name: pruned, model: prune}
  - evaluate: {runs: 3, warmup: 1}
"""

TUNE_RECIPE = """\
name: faults_tune
seed: 0
data: {name: digits}
model: {builder: cnn}
training: {epochs: 1, batch_size: 64, deterministic: true}
stages:
  - tune:
      algorithm: random
      max_trials: 3
      max_epochs: 1
      space: {model: cnn, filters: {choice: [[4], [8], [12]]}, dense: [[16]], learning_rate: {min: 1.0e-3, max: 1.0e-2}}
"""


def _env(fault: str | None = None, sig: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFOPT_FAULT")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    if fault:
        env["TFOPT_FAULT"] = fault
    if sig:
        env["TFOPT_FAULT_SIGNAL"] = sig
    return env


def _tfopt(args, cwd: Path, fault: str | None = None):
    """Run ``tfopt ARGS`` to the end (or its self-kill); returns (exit code, stdout + stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "tfopt.cli", *map(str, args)], cwd=cwd, env=_env(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out


def _epochs(stage_dir: Path) -> list:
    with open(stage_dir / "history.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def _stages(run_dir: Path) -> dict:
    return {s["name"]: s for s in read_json(run_dir / "manifest.json")["stages"]}


def _weights(path: Path) -> list:
    return [w.numpy() for w in keras.models.load_model(path, compile=False).weights]


def _h5_arrays(path: Path) -> list:
    import h5py

    arrays = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: arrays.append((name, obj[()])) if isinstance(obj, h5py.Dataset) else None)
    assert arrays, path
    return [a for _, a in sorted(arrays, key=lambda item: item[0])]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    (root / "faults.yaml").write_text(RECIPE)
    return root


@pytest.fixture(scope="module")
def reference(recipe):
    """One uninterrupted run, the yardstick of every resumed one."""
    code, out = _tfopt(["run", "faults.yaml", "--run-dir", "ref"], recipe)
    assert code == 0, out
    return recipe / "ref", read_json(recipe / "ref" / "results.json")


def _wait_stopped(pid: int, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} never reached its stop point")


def test_second_run_on_a_locked_run_dir_is_refused(recipe):
    # the first run freezes (SIGSTOP) at the start of its train stage, holding the lock: no timing race
    first = subprocess.Popen([sys.executable, "-m", "tfopt.cli", "run", "faults.yaml", "--run-dir", "locked"],
                             cwd=recipe, env=_env("stage:train:before", "STOP"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_stopped(first.pid)
        code, out = _tfopt(["run", "faults.yaml", "--run-dir", "locked"], recipe)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert code == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfopt: error: ConfigError:"), out
    assert "locked" in lines[0] and "in use by another tfopt run" in lines[0] and f"pid {first.pid}" in lines[0]
    assert _stages(recipe / "locked")["train"]["status"] == "pending"  # the refused run changed nothing


def test_killed_run_resumes_and_ends_like_an_uninterrupted_one(recipe, reference):
    ref_dir, ref_results = reference
    run = recipe / "killed"
    cmd = ["run", "faults.yaml", "--run-dir", "killed"]

    # 1. killed in the middle of epoch 1 (0-based) of the train stage (a model with dropout): epoch 0 is backed up
    code, out = _tfopt(cmd, recipe, fault="epoch:1:batch:20")
    assert code == -signal.SIGKILL, out
    assert _stages(run)["train"]["status"] == "running"
    assert _epochs(run / "01_train") == [0]
    assert (run / "01_train" / "backup").is_dir()

    # 2. resumed at the start of epoch 1; killed after training, before the stage is recorded done
    code, out = _tfopt(cmd, recipe, fault="stage:train:after")
    assert code == -signal.SIGKILL, out
    assert _stages(run)["train"]["status"] == "running"
    assert _epochs(run / "01_train") == [0, 1, 2]  # epoch 0 not trained again
    assert (run / "01_train" / "backup").is_dir()  # kept until the manifest says done

    # 3. the train stage ends without training any epoch again; killed between train and prune
    code, out = _tfopt(cmd, recipe, fault="stage:prune:before")
    assert code == -signal.SIGKILL, out
    stages = _stages(run)
    assert stages["train"]["status"] == "done" and stages["prune"]["status"] == "pending"
    assert _epochs(run / "01_train") == [0, 1, 2]
    assert not (run / "01_train" / "backup").exists()  # removed once recorded done
    train_started = stages["train"]["started"]

    # 3b. killed inside prune (distilled from the train stage's model), in its second epoch: the first is backed up
    code, out = _tfopt(cmd, recipe, fault="prune:epoch:1:batch:3")
    assert code == -signal.SIGKILL, out
    assert _stages(run)["prune"]["status"] == "running"
    assert _epochs(run / "02_prune") == [0]
    assert (run / "02_prune" / "backup" / "chief").is_dir()

    # 4. prune resumes at its epoch 1; killed during export, after float32.tflite is written and before pruned.tflite is
    code, out = _tfopt(cmd, recipe, fault="export:pruned")
    assert code == -signal.SIGKILL, out
    assert out.count(KEPT) == 1  # train
    stages = _stages(run)
    assert stages["prune"]["status"] == "done" and stages["export"]["status"] == "running"
    assert _epochs(run / "02_prune") == [0, 1]  # epoch 0 not trained again
    assert not (run / "02_prune" / "backup").exists()  # removed once recorded done
    assert (run / "03_export" / "float32.tflite").is_file() and not (run / "03_export" / "pruned.tflite").exists()
    prune_started = stages["prune"]["started"]
    # a truncated file where a non-atomic writer would have died: the restart must not trust it
    (run / "03_export" / "pruned.tflite").write_bytes(b"TFL3\x00")

    # 5. the last restart completes the run
    code, out = _tfopt(cmd, recipe)
    assert code == 0, out
    assert out.count(KEPT) == 2  # train, prune: not re-run
    stages = _stages(run)
    assert [s["status"] for s in stages.values()] == ["done"] * 4
    assert stages["train"]["started"] == train_started and stages["prune"]["started"] == prune_started
    assert _epochs(run / "01_train") == [0, 1, 2] and _epochs(run / "02_prune") == [0, 1]

    # with op determinism, the result equals the uninterrupted run's exactly
    results = read_json(run / "results.json")
    got = {v["variant"]: v for v in results["variants"]}
    want = {v["variant"]: v for v in ref_results["variants"]}
    assert set(got) == {"float32", "pruned"}
    for name in got:
        assert got[name]["accuracy"] == want[name]["accuracy"] > 0.5, name
        assert got[name]["bytes"] == want[name]["bytes"] and got[name]["gzip_bytes"] == want[name]["gzip_bytes"]
        assert (run / "03_export" / f"{name}.tflite").read_bytes() == (ref_dir / "03_export" / f"{name}.tflite").read_bytes()
    assert stages["train"]["metrics"]["val_loss"] == _stages(ref_dir)["train"]["metrics"]["val_loss"]
    for a, b in zip(_weights(run / "01_train" / "model.keras"), _weights(ref_dir / "01_train" / "model.keras")):
        np.testing.assert_array_equal(a, b)
    # the best checkpoint kept competing across the kill: it is the best epoch's of the whole history
    with open(run / "01_train" / "history.csv") as f:
        ours = [float(r["val_loss"]) for r in csv.DictReader(f)]
    with open(ref_dir / "01_train" / "history.csv") as f:
        theirs = [float(r["val_loss"]) for r in csv.DictReader(f)]
    assert ours == theirs
    with open(run / "02_prune" / "history.csv") as f, open(ref_dir / "02_prune" / "history.csv") as g:
        assert list(csv.DictReader(f)) == list(csv.DictReader(g))  # the resumed prune's epochs, value for value
    for a, b in zip(_h5_arrays(run / "01_train" / "checkpoints" / "best.weights.h5"),
                    _h5_arrays(ref_dir / "01_train" / "checkpoints" / "best.weights.h5")):
        np.testing.assert_array_equal(a, b)


def test_killed_search_does_not_rerun_completed_trials(tmp_path):
    (tmp_path / "tune.yaml").write_text(TUNE_RECIPE)
    cmd = ["tune", "tune.yaml", "--directory", "search"]
    code, out = _tfopt(cmd, tmp_path, fault="trial:2:end")
    assert code == -signal.SIGKILL, out
    assert out.count("[tfopt.tune] trial #") == 2
    project = tmp_path / "search" / "faults_tune"
    first = {p.parent.name: p.read_bytes() for p in project.glob("trial_*/tfopt_trial.json")}
    assert len(first) == 2

    code, out = _tfopt(cmd, tmp_path)
    assert code == 0, out
    assert out.count("[tfopt.tune] trial #") == 1  # only the missing trial ran
    trials = read_json(project / "trials.json")["trials"]
    assert len(trials) == 3 and all(t["status"] == "COMPLETED" for t in trials)
    for name, content in first.items():  # the completed trials' records are untouched
        assert (project / name / "tfopt_trial.json").read_bytes() == content

    # an uninterrupted search tries the same hyperparameters and scores them the same
    code, out = _tfopt(["tune", "tune.yaml", "--directory", "ref"], tmp_path)
    assert code == 0, out
    ref = read_json(tmp_path / "ref" / "faults_tune" / "trials.json")["trials"]
    def key(t):
        return t["trial_id"], t["hyperparameters"], t["metrics"]["val_accuracy"]
    assert sorted(map(key, trials)) == sorted(map(key, ref))


class _PoisonAt(keras.callbacks.Callback):
    """Records the weights at each epoch end; turns the weights NaN after batch ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.at = (epoch, batch)
        self.kept = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            for w in self.model.trainable_weights:
                w.assign(tf.fill(w.shape, float("nan")))

    def on_epoch_end(self, epoch, logs=None):
        self.kept.append([w.numpy().copy() for w in self.model.weights])


def test_divergence_keeps_the_last_good_best_checkpoint(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x[:1400], y[:1400])).batch(100)
    val = tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(100)

    def model():
        inp = keras.Input((8, 8, 1))
        return keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))

    net = model()
    net.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    poison = _PoisonAt(epoch=2, batch=3)
    with pytest.raises(TrainingError, match=r"loss=nan at epoch 3, step 5") as err:
        fit(net, train, val, epochs=5, run_dir=tmp_path, callbacks=[poison], verbose=0)
    assert str(tmp_path / "checkpoints") in str(err.value)
    with open(tmp_path / "history.csv") as f:
        rows = list(csv.DictReader(f))
    val_losses = [float(r["val_loss"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2] and np.isnan(val_losses[2])
    best_epoch = int(np.argmin(val_losses[:2]))
    best = model()
    best.load_weights(tmp_path / "checkpoints" / "best.weights.h5")
    for got, want in zip(best.get_weights(), poison.kept[best_epoch]):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, want)
    assert not list((tmp_path / "checkpoints").glob(".*"))  # atomic writes leave no temporary file behind
