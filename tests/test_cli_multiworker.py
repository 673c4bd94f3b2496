"""`tfopt run RECIPE --workers ... --worker-index I`: two worker processes train a recipe together."""

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_multiworker import _free_ports, _kill

RECIPE = """
name: mw
seed: 0
data: {name: digits}
model: {builder: cnn, args: {filters: [8], dense: [16]}}
training: {epochs: 2, batch_size: 32, learning_rate: 3.0e-3}
stages:
  - train
  - prune: {target_sparsity: 0.5, epochs: 1}
  - export: {variants: [{name: float32, model: train}, {name: pruned}]}
  - evaluate
"""


def test_two_workers_run_a_recipe_and_only_the_chief_writes_the_run(tmp_path):
    recipe = tmp_path / "mw.yaml"
    recipe.write_text(RECIPE)
    run_dir = tmp_path / "run"
    workers = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    procs = []
    try:
        for i in range(2):
            log = open(tmp_path / f"w{i}.log", "w")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tfopt.cli", "run", str(recipe), "--run-dir", str(run_dir),
                 "--workers", workers, "--worker-index", str(i)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).parent.parent))
        for i, p in enumerate(procs):
            try:
                code = p.wait(timeout=240)
            except subprocess.TimeoutExpired:
                pytest.fail(f"worker {i} did not finish in 240 s")
            assert code == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    finally:
        _kill(procs)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["recipe"]["training"]["strategy"] == "multi_worker"
    assert [s["status"] for s in manifest["stages"]] == ["done"] * 4
    with open(run_dir / "01_train" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    results = json.loads((run_dir / "results.json").read_text())
    assert all(v["accuracy"] > 0.3 for v in results["variants"])  # 2 epochs on digits, 10 classes
    # the prune stage fine-tuned under the workers' strategy (and its model, built in the scope, evaluated)
    prune_metrics = json.loads((run_dir / "02_prune" / "metrics.json").read_text())
    assert prune_metrics["sparsity"] == pytest.approx(0.5, abs=0.01) and prune_metrics["val_accuracy"] > 0.3
    # the other worker kept its own files beside the chief's run directory, not in it
    assert (tmp_path / "run.worker-1" / "manifest.json").is_file()
    assert not list(run_dir.glob("*worker*"))


def test_tune_command_as_chief_and_two_workers(tmp_path):
    from tests.test_cli import TUNE_RECIPE
    from tests.test_tune_distributed import TRIAL_BARRIER

    recipe = tmp_path / "tune.yaml"
    recipe.write_text(TUNE_RECIPE.replace("MAX", "4"))
    (port,) = _free_ports(1)
    # tfopt's main() after the imports, with a marker saying the process is ready: the workers (which wait
    # for the chief) start first, so that both are up before the chief hands out the trials.
    # Both workers begin a trial before either runs one (TRIAL_BARRIER), so that the trials are split for sure.
    launcher = TRIAL_BARRIER + (f"_install_trial_barrier({str(tmp_path)!r}, ['w0', 'w1'])\n"
                                "import pathlib, sys, tfopt.cli; pathlib.Path(sys.argv[1]).write_text('ready'); "
                                "sys.exit(tfopt.cli.main(sys.argv[2:]))")
    args = ["tune", str(recipe), "--directory", str(tmp_path / "s"), "--address", f"127.0.0.1:{port}"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    roles = [["--role", "worker", "--tuner-id", "w0"], ["--role", "worker", "--tuner-id", "w1"],
             ["--role", "chief", "--serve-timeout", "150"]]
    procs = []
    try:
        for i, extra in enumerate(roles):
            if extra[1] == "chief":
                deadline = time.monotonic() + 120
                while not all((tmp_path / f"ready{k}").exists() for k in range(2)):
                    assert time.monotonic() < deadline, "workers not ready in 120 s"
                    assert all(p.poll() is None for p in procs), "a worker exited before the chief started"
                    time.sleep(0.2)
            log = open(tmp_path / f"p{i}.log", "w")
            procs.append(subprocess.Popen([sys.executable, "-c", launcher, str(tmp_path / f"ready{i}"), *args, *extra],
                                          stdout=log, stderr=subprocess.STDOUT, env=env))
        for i, p in enumerate(procs):
            try:
                assert p.wait(timeout=180) == 0, (tmp_path / f"p{i}.log").read_text()[-3000:]
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {i} ({roles[i][1]}) did not finish in 180 s")
    finally:
        _kill(procs)
    trials = json.loads((tmp_path / "s" / "tt" / "trials.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 4
    assert {t["tuner_id"] for t in trials} == {"w0", "w1"}  # split between the two workers
    assert "best hyperparameters:" in (tmp_path / "p2.log").read_text()  # the chief reports the best
