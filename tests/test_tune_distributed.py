"""tfopt.tune chief/worker search: one chief and two workers as separate processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

# Each worker, on beginning its first trial, waits until the other has begun one too: the split of the trials
# between the workers is then certain rather than a race a loaded CPU can lose (in CI one worker once took all
# four trials while the other was still starting). Executed inside the search processes, before the search.
TRIAL_BARRIER = textwrap.dedent(
    """
    def _install_trial_barrier(directory, tuner_ids, timeout=120):
        import time
        from pathlib import Path
        from keras_tuner.engine import base_tuner

        def on_trial_begin(self, trial):
            Path(directory, f"began.{self.tuner_id}").write_text(trial.trial_id)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not all(Path(directory, f"began.{t}").exists() for t in tuner_ids):
                time.sleep(0.1)

        base_tuner.BaseTuner.on_trial_begin = on_trial_begin
    """
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tfopt import data, tune
    from tfopt._keras import keras

    role, tuner_id, address, directory = sys.argv[1:5]
    train_ds, val_ds, _, _ = data.load("digits", batch_size=64)

    def space(hp):
        units = hp.Choice("units", [8, 12, 16, 20, 24, 28])
        inputs = keras.Input((8, 8, 1))
        x = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(inputs))
        return keras.Model(inputs, keras.layers.Dense(10)(x))

    _install_trial_barrier(directory, ["worker0", "worker1"])
    Path(directory, f"{tuner_id}.ready").write_text("ready")
    result = tune.search(space, train_ds, val_ds, algorithm="random", max_trials=4, max_epochs=1,
                         directory=directory, role=role, address=address, tuner_id=tuner_id,
                         serve_timeout=100, verbose=1)
    out = {"trials": [{"trial_id": r["trial_id"], "status": r["status"], "tuner_id": r["tuner_id"],
                       "val_accuracy": r["metrics"].get("val_accuracy")} for r in result.trials],
           "best": result.best_trial and result.best_trial["trial_id"]}
    Path(directory, f"{tuner_id}.result.json").write_text(json.dumps(out))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(paths, procs, deadline):
    while not all(p.exists() for p in paths):
        for proc in procs:
            if proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(f"a search process exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.2)


def test_chief_and_two_workers_split_the_trials(tmp_path):
    script = tmp_path / "search_role.py"
    script.write_text(TRIAL_BARRIER + SCRIPT)
    address = f"127.0.0.1:{_free_port()}"
    work = tmp_path / "tune"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERASTUNER_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_USE_LEGACY_KERAS="1", OMP_NUM_THREADS="1")
    deadline = time.monotonic() + 150
    procs, logs = [], []

    def start(role, tid):
        log = open(tmp_path / f"{tid}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(script), role, tid, address, str(work)],
                                      stdout=log, stderr=subprocess.STDOUT, env=env))

    try:
        # The workers wait (gRPC wait_for_ready) until the chief listens: start them first so both are
        # connected when the first trial is handed out.
        start("worker", "worker0")
        start("worker", "worker1")
        _wait([work / "worker0.ready", work / "worker1.ready"], procs, deadline)
        start("chief", "chief")
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        codes = [p.returncode for p in procs]
        assert codes == [0, 0, 0], codes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs:
            log.close()

    chief = json.loads((work / "chief.result.json").read_text())
    ids = [t["trial_id"] for t in chief["trials"]]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert all(t["status"] == "COMPLETED" and 0 <= t["val_accuracy"] <= 1 for t in chief["trials"])
    runners = [t["tuner_id"] for t in chief["trials"]]
    assert set(runners) == {"worker0", "worker1"}, runners
    workers = {tid: json.loads((work / f"{tid}.result.json").read_text()) for tid in ("worker0", "worker1")}
    for tid, res in workers.items():
        assert res["trials"] and all(t["tuner_id"] == tid for t in res["trials"])
        assert res["best"] is None or res["best"] in ids
    ran = sorted(t["trial_id"] for res in workers.values() for t in res["trials"])
    assert ran == sorted(ids)
    assert chief["best"] == max(chief["trials"], key=lambda t: t["val_accuracy"])["trial_id"]
    saved = json.loads((work / "search" / "trials.json").read_text())["trials"]
    assert sorted(t["trial_id"] for t in saved) == sorted(ids)
    assert "[tfopt.tune] trial" in (tmp_path / "worker0.log").read_text()
