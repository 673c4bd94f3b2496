"""Faults mid-run: a full disk, a run directory that turns read-only, Ctrl-C while TensorFlow imports and
during export. Each ends the command with one ``tfopt: error: ...`` line naming the file (exit 2) or the
"interrupted" line (exit 130), leaves no temporary file in the run directory, and the same command run
again once space or permission is back completes the run.

Faults are injected (a writer made to fail as the OS would) so that every machine runs them; where this
process may mount a tmpfs or drop root's permission override, the same happens for real in a subprocess.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_fault_injection import TIMEOUT, _env, _stages, _wait_stopped
from tfopt._io import read_json
from tfopt._launch import INTERRUPTED
from tfopt.cli import main

RECIPE = """\
name: io_faults
seed: 1
data: {name: digits}
model:
  builder: cnn
  args: {filters: [4], dense: [16]}
training: {epochs: 2, batch_size: 64}
stages:
  - train
  - export:
      variants:
        - {name: float32, model: train}
        - {name: int8, model: train, quantization: int8}
  - evaluate: {runs: 2, warmup: 1}
"""
ENOSPC = "no space left on the device (ENOSPC); free some space and run the same command again"


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "io.yaml"
    path.write_text(RECIPE)
    return path


def _leftovers(run: Path) -> list:
    """Temporary files and folders anywhere in the run directory (atomic writes', TensorFlow's)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if ".tmp" in p.name or p.name.endswith("_temp") or ".tempstate" in p.name)


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("tfopt: error: ") and "Traceback" not in err, err
    assert sum(line.startswith("tfopt: ") for line in lines) == 1, err
    return lines[-1]


def _assert_complete(run: Path) -> None:
    assert [s["status"] for s in _stages(run).values()] == ["done"] * 3
    assert {v["variant"] for v in read_json(run / "results.json")["variants"]} == {"float32", "int8"}
    assert (run / "02_export" / "float32.tflite").is_file() and (run / "02_export" / "int8.tflite").is_file()
    assert _leftovers(run) == []


def _epochs(run: Path) -> list:
    import csv

    with open(run / "01_train" / "history.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


# ---------------------------------------------------------------- injected: every machine
def test_disk_full_in_a_checkpoint_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    import tfopt.checkpoints

    recipe, run = _recipe(tmp_path), tmp_path / "run"
    real, calls = tfopt.checkpoints._write_weights, []

    def fill_up(plan, filepath):
        calls.append(filepath)
        if len(calls) == 2:  # epoch 1's checkpoint: half of it written, then the disk is full
            Path(filepath).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(plan, filepath)

    monkeypatch.setattr(tfopt.checkpoints, "_write_weights", fill_up)
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 2
    last = run / "01_train" / "checkpoints" / "last.weights.h5"
    assert _error_line(capsys.readouterr().err) == f"tfopt: error: WriteError: cannot write {str(last)!r}: {ENOSPC} " \
                                                   "(a run directory resumes where it stopped)"
    assert _leftovers(run) == []
    stage = _stages(run)["train"]
    assert stage["status"] == "failed" and "WriteError" in stage["error"]

    # what a writer killed mid-file (SIGKILL, or the segfault HDF5 could once cause) leaves: it cannot clean
    # up, so the stage's next run does (under the run lock)
    crashed = [run / "01_train" / "checkpoints" / ".last.weights.h5.tmp-k2j4h5g6.weights.h5",
               run / ".manifest.json.tmp-a1b2c3d4.json.tmp",
               run / "01_train" / "backup" / "chief" / "ckpt-3_temp" / "part-00000-of-00001.index"]
    for path in crashed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    (run / "01_train" / "notes.txt").write_text("not a temporary file: kept")

    monkeypatch.setattr(tfopt.checkpoints, "_write_weights", real)  # space is back
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    _assert_complete(run)
    assert _epochs(run) == [0, 1]
    assert (run / "01_train" / "notes.txt").read_text() == "not a temporary file: kept"


def test_leftovers_of_a_run_killed_after_its_last_stage_are_cleared(tmp_path):
    """A kill while results.json or the report is written, every stage already done: no stage runs again, so
    the runner itself clears the top of the run directory (under the run lock) before it writes."""
    recipe, run = _recipe(tmp_path), tmp_path / "run"
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    killed = [run / ".results.json.tmp-q1w2e3r4.json", run / ".report.html.tmp-z9x8c7v6.html"]
    for path in killed:
        path.write_bytes(b"half")
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    _assert_complete(run)
    assert not any(path.exists() for path in killed)


def test_read_only_checkpoint_folder_of_tensorflow_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """TensorFlow's own writer (the BackupAndRestore checkpoint) reports EROFS in words, leaving its _temp folder."""
    from tfopt._keras import tf

    recipe, run = _recipe(tmp_path), tmp_path / "run"
    real, calls = tf.train.CheckpointManager.save, []

    def read_only(self, *args, **kwargs):
        calls.append(self.directory)
        if len(calls) == 2:
            part = Path(self.directory) / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate42"
            part.parent.mkdir(parents=True)
            part.write_bytes(b"half")
            raise tf.errors.PermissionDeniedError(None, None, f"{{{{function_node __wrapped__SaveV2}}}} {part}; "
                                                              "Read-only file system [Op:SaveV2]")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", read_only)
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 2
    line = _error_line(capsys.readouterr().err)
    backup = Path(calls[1]) / "ckpt-2"
    assert line.startswith(f"tfopt: error: WriteError: cannot write {str(backup)!r}: read-only file system (EROFS); "
                           "make it writable and run the same command again")
    assert str(run) in str(backup) and _leftovers(run) == []
    assert _stages(run)["train"]["status"] == "failed"

    monkeypatch.setattr(tf.train.CheckpointManager, "save", real)
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    _assert_complete(run)


def test_permission_lost_on_the_manifest_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """The run directory turns unwritable after training: recording the stage fails (EACCES on the rename)."""
    import tfopt._io

    recipe, run = _recipe(tmp_path), tmp_path / "run"
    real = os.replace
    state = {"armed": False}

    def replace(src, dst, *args, **kwargs):
        if state["armed"] and Path(dst).name == "manifest.json":
            raise PermissionError(errno.EACCES, "Permission denied", str(src), None, str(dst))
        if Path(dst).name == "model.keras":  # the train stage's model is saved: from here on, no permission
            state["armed"] = True
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(tfopt._io.os, "replace", replace)
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 2
    manifest = run / "manifest.json"
    assert _error_line(capsys.readouterr().err).startswith(
        f"tfopt: error: WriteError: cannot write {str(manifest)!r}: permission denied (EACCES); make it writable")
    assert _leftovers(run) == []
    assert _stages(run)["train"]["status"] == "running"  # never recorded done: the next run checks its files

    monkeypatch.setattr(tfopt._io.os, "replace", real)
    assert main(["run", str(recipe), "--run-dir", str(run)]) == 0
    _assert_complete(run)
    assert _epochs(run) == [0, 1]  # the trained epochs were kept (BackupAndRestore), not trained again


class _CutShort:
    """A file whose first write stops half-way: the disk filled up in the middle of it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()
        return False

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_search_state_write_cut_short_leaves_a_resumable_search(tmp_path, monkeypatch):
    """keras-tuner's own state files (oracle.json, trial_*/trial.json, the tuner's) are written atomically: a write
    cut short fails with one WriteError naming the file and leaves the previous state whole (keras-tuner's own
    writer left half a JSON file, which the next run could not reload); the same search run again completes."""
    import builtins
    import json

    import tfopt._io
    from tfopt import data, tune
    from tfopt.errors import WriteError

    train_ds, val_ds, _, _ = data.load("digits", batch_size=64)
    space = {"model": "cnn", "filters": [[4], [8]], "dense": [[16]], "learning_rate": {"min": 1e-3, "max": 1e-2}}
    kw = {"algorithm": "random", "max_trials": 3, "max_epochs": 1, "directory": tmp_path, "verbose": 0}
    real_open, writes = builtins.open, []

    def filling(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(str(file)).name.startswith(".oracle.json"):
            writes.append(file)
            if len(writes) == 4:  # the oracle's state after the second trial began
                return _CutShort(f)
        return f

    monkeypatch.setattr(tfopt._io, "open", filling, raising=False)
    with pytest.raises(WriteError, match=r"cannot write '[^']*oracle\.json': no space left on the device"):
        tune.search(space, train_ds, val_ds, **kw)
    project = tmp_path / "search"
    assert len(writes) == 4
    for path in [project / "oracle.json", project / "tuner0.json", *project.glob("trial_*/trial.json")]:
        json.loads(path.read_text())  # every state file whole: the previous state of the one cut short
    assert not [p for p in project.rglob("*") if ".tmp" in p.name]

    monkeypatch.setattr(tfopt._io, "open", real_open, raising=False)  # space is back
    result = tune.search(space, train_ds, val_ds, **kw)
    assert len(result.trials) == 3 and all(t["status"] == "COMPLETED" for t in result.trials)


@pytest.fixture
def python_ctrl_c():
    """Python's own Ctrl-C handler in this process for the test (the suite may run with SIGINT ignored, as a
    background job of a non-interactive shell does), restored afterwards."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_swallowed_inside_the_converter_still_stops_the_export(tmp_path, monkeypatch, python_ctrl_c):
    """TensorFlow may turn Ctrl-C into an ordinary error (or swallow it) and convert another way: it must stop."""
    from tfopt._keras import keras
    from tfopt.export import to_tflite
    from tfopt.export.tflite import _concrete_converter

    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    converter_class = type(_concrete_converter(model))  # the converter to_tflite tries first
    real = converter_class.convert

    def swallowing(self):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as err:  # what C++ code wrapping the call may do
            raise RuntimeError("conversion failed") from err
        return real(self)

    monkeypatch.setattr(converter_class, "convert", swallowing)
    with pytest.raises(KeyboardInterrupt):
        to_tflite(model, path=tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []  # no other conversion path tried, nothing written
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    def swallowed(self):
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
        return real(self)

    monkeypatch.setattr(converter_class, "convert", swallowed)
    with pytest.raises(KeyboardInterrupt):
        to_tflite(model, path=tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(converter_class, "convert", real)
    assert to_tflite(model).bytes > 0  # and the handler is Python's again: a later conversion is unaffected


# ---------------------------------------------------------------- subprocesses: Ctrl-C
def _ctrl_c_reaches_it() -> None:
    """In the child: Ctrl-C's default disposition, as a command started from a terminal has. A test run started
    in the background by a non-interactive shell (CI may be) inherits SIGINT ignored, and Python then never turns
    it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args, cwd: Path, fault: str | None = None, sig: str | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfopt.cli", *map(str, args)], cwd=cwd, env=_env(fault, sig),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_reaches_it)


def _finish(proc: subprocess.Popen) -> tuple:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def test_ctrl_c_while_tensorflow_imports_is_one_line_and_exit_130(tmp_path):
    _recipe(tmp_path)
    proc = _start(["run", "io.yaml", "--run-dir", "run"], tmp_path)
    time.sleep(1.0)  # `import tfopt` (TensorFlow) takes seconds
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc)
    assert code == 130, err
    assert err.splitlines() == [INTERRUPTED] and out == ""
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_export_stops_the_run_and_the_next_run_completes(tmp_path):
    """SIGINT while the int8 variant calibrates (inside the converter): no int8.tflite, stage interrupted."""
    _recipe(tmp_path)
    run = tmp_path / "run"
    code, out, err = _finish(_start(["run", "io.yaml", "--run-dir", "run"], tmp_path, "calibrate:5", "INT"))
    assert code == 130, err
    assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err
    stages = _stages(run)
    assert stages["train"]["status"] == "done" and stages["export"]["status"] == "interrupted"
    assert stages["evaluate"]["status"] == "pending"
    assert (run / "02_export" / "float32.tflite").is_file() and not (run / "02_export" / "int8.tflite").exists()
    assert _leftovers(run) == [] and not (run / "results.json").exists()

    code, out, err = _finish(_start(["run", "io.yaml", "--run-dir", "run"], tmp_path))
    assert code == 0, err
    _assert_complete(run)


# ---------------------------------------------------------------- for real, where this process may
def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("mounting a tmpfs needs root (and a kernel that allows it here)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_real_disk_full_mid_training(tmp_path, small_disk):
    _recipe(tmp_path)
    run = small_disk / "run"
    cmd = ["run", "io.yaml", "--run-dir", run]
    proc = _start(cmd, tmp_path, "epoch:1:batch:3", "STOP")  # frozen in epoch 1, then the disk fills up
    try:
        _wait_stopped(proc.pid)
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            with pytest.raises(OSError):
                while True:
                    f.write(bytes(1 << 16))
    finally:
        proc.send_signal(signal.SIGCONT)
    code, out, err = _finish(proc)
    assert code == 2, err
    line = _error_line(err)
    assert line.startswith(f"tfopt: error: WriteError: cannot write '{run}/") and ENOSPC in line, line
    assert _leftovers(run) == []

    filler.unlink()  # space is back
    code, out, err = _finish(_start(cmd, tmp_path))
    assert code == 0, err
    _assert_complete(run)
    assert _epochs(run) == [0, 1]


def _without_root_override() -> list | None:
    """A command prefix running as this user without root's permission override (None: not possible)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    drop = ["--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]
    if subprocess.run([setpriv, *drop, "true"], capture_output=True).returncode != 0:
        return None
    return [setpriv, *drop]


def test_real_run_directory_turning_read_only_mid_training(tmp_path):
    prefix = _without_root_override()
    if prefix is None:
        pytest.skip("root without setpriv: permission bits do not stop root's writes")
    _recipe(tmp_path)
    run = tmp_path / "run"
    cmd = [*prefix, sys.executable, "-m", "tfopt.cli", "run", "io.yaml", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env("epoch:1:batch:3", "STOP"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    folders = []
    try:
        _wait_stopped(proc.pid)
        folders = [run, *(p for p in run.rglob("*") if p.is_dir())]
        for folder in folders:
            folder.chmod(0o555)
    finally:
        proc.send_signal(signal.SIGCONT)
    try:
        code, out, err = _finish(proc)
    finally:
        for folder in folders:
            folder.chmod(0o755)  # permission is back
    assert code == 2, err
    line = _error_line(err)
    assert line.startswith(f"tfopt: error: WriteError: cannot write '{run}/") and "permission denied (EACCES)" in line
    assert _leftovers(run) == []

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    code, out, err = _finish(proc)
    assert code == 0, err
    _assert_complete(run)
    assert _epochs(run) == [0, 1]
