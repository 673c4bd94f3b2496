"""Multi-worker training (MultiWorkerMirroredStrategy over TF_CONFIG) with two worker processes on 127.0.0.1.

Every process runs with a deadline and is killed in ``finally``; every wait polls with a timeout.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
WORKER = HERE / "_worker_main.py"
DEADLINE = 150  # seconds any one worker process may live


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _start(out, workers, index, run_dir, epochs, slow=0.0):
    cmd = [sys.executable, str(WORKER), "worker", str(out), "--workers", workers, "--index", str(index),
           "--run-dir", str(run_dir), "--epochs", str(epochs), "--slow", str(slow), "--timeout", "60"]
    log = open(f"{out}.log", "w")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent)


def _wait_all(procs, timeout):
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker pid {p.pid} still running after {timeout} s: {p.args}")


def _kill(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


def _log(out):
    text = Path(f"{out}.log").read_text()
    return "\n".join(line for line in text.splitlines() if not line.startswith(("I0000", "W0000", "E0000")))[-3000:]


def _epochs(run_dir):
    with open(Path(run_dir) / "history.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _weights(out):
    with np.load(f"{out}.npz") as data:
        return [data[k] for k in data.files]


def _run_pair(tmp_path, run_dir, epochs, tag, workers=None):
    workers = workers or ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    outs = [tmp_path / f"{tag}{i}" for i in range(2)]
    procs = [_start(outs[i], workers, i, run_dir, epochs) for i in range(2)]
    try:
        _wait_all(procs, DEADLINE)
    finally:
        _kill(procs)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, _log(out)
    return outs, workers


def test_two_workers_train_together_and_only_the_chief_writes_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    outs, _ = _run_pair(tmp_path, run_dir, epochs=2, tag="w")
    facts = [json.loads(Path(f"{o}.json").read_text()) for o in outs]
    assert [f["chief"] for f in facts] == [True, False]
    assert [f["replicas"] for f in facts] == [2, 2]  # one CPU replica per worker, in sync
    for a, b in zip(*(_weights(o) for o in outs)):
        np.testing.assert_array_equal(a, b)
    # The chief wrote run_dir; worker 1 wrote to a throwaway temp dir, removed at the end.
    assert facts[0]["write_dir"] == str(run_dir)
    assert facts[1]["write_dir"] != str(run_dir) and not Path(facts[1]["write_dir"]).exists()
    assert _epochs(run_dir) == [0, 1]  # one row per epoch: worker 1 did not append to the chief's history
    assert (run_dir / "checkpoints" / "last.weights.h5").is_file()
    assert list((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert not list(run_dir.rglob("workertemp_*"))


def _progress(run_dir, index=0):
    try:
        epoch, batch = (Path(run_dir) / f"progress-{index}.txt").read_text().split()
        return int(epoch), int(batch)
    except (FileNotFoundError, ValueError):
        return -1, -1


def test_killed_worker_restart_resumes_from_backup(tmp_path):
    """SIGKILL worker 1 during epoch 2 (the third); the chief then fails (heartbeat/collective deadline);
    both restart with the same TF_CONFIG and run_dir and finish epochs 2..3 from BackupAndRestore."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    outs = [tmp_path / f"first{i}" for i in range(2)]
    procs = [_start(outs[i], workers, i, run_dir, epochs=4, slow=0.05) for i in range(2)]
    try:
        deadline = time.monotonic() + DEADLINE
        while _progress(run_dir) < (2, 3):
            assert all(p.poll() is None for p in procs), _log(outs[0]) + _log(outs[1])
            assert time.monotonic() < deadline, "the workers never reached epoch 2"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=10)
        try:  # the chief errors out once the coordination heartbeat (10 s) misses worker 1
            procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        chief_failed_alone = procs[0].returncode not in (None, 0)
    finally:
        _kill(procs)
    assert _epochs(run_dir) == [0, 1]  # epoch 2 was interrupted
    assert chief_failed_alone, "the chief did not notice the dead worker within 60 s"

    outs, _ = _run_pair(tmp_path, run_dir, epochs=4, tag="again", workers=workers)  # the same TF_CONFIG
    facts = [json.loads(Path(f"{o}.json").read_text()) for o in outs]
    assert [f["epochs"] for f in facts] == [[2, 3], [2, 3]]  # resumed: epochs 0 and 1 not trained again
    assert _epochs(run_dir) == [0, 1, 2, 3]
    for a, b in zip(*(_weights(o) for o in outs)):
        np.testing.assert_array_equal(a, b)
