"""`tfopt run RECIPE --workers ... --worker-index I`: two worker processes train a recipe together."""

import csv
import json
import os
import subprocess
import sys
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
  - export: {variants: [{name: float32}]}
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
    assert [s["status"] for s in manifest["stages"]] == ["done"] * 3
    with open(run_dir / "01_train" / "history.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["variants"][0]["accuracy"] > 0.3  # 2 epochs on digits, 10 classes
    # the other worker kept its own files beside the chief's run directory, not in it
    assert (tmp_path / "run.worker-1" / "manifest.json").is_file()
    assert not list(run_dir.glob("*worker*"))
