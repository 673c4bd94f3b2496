"""The resumable runner: tiny end-to-end runs on `digits`, resume after an interrupt, force, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tfopt._io import read_json
from tfopt.errors import ConfigError
from tfopt.pipeline import STAGES, run_recipe
from tfopt.pipeline.config.recipe import merge

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
QUIET_EVAL = {"runs": 5, "warmup": 1}


def tiny_recipe(**extra) -> dict:
    """train -> prune 50% -> QAT -> export (float32, pruned, int8) -> evaluate, on the 8x8 digits."""
    base = {
        "name": "tiny", "seed": 0, "data": {"name": "digits"},
        "model": {"builder": "cnn", "args": {"filters": [8], "dense": [32]}},
        "training": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.01},
        "stages": ["train", {"prune": {"target_sparsity": 0.5, "epochs": 1}}, {"quantize_aware": {"epochs": 1}},
                   {"export": {"variants": [{"name": "float32", "model": "train"}, {"name": "pruned", "model": "prune"},
                                            {"name": "qat_int8", "quantization": "int8"}]}},
                   {"evaluate": QUIET_EVAL}],
    }
    return merge(base, extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    return run_dir, run_recipe(tiny_recipe(), run_dir=run_dir, verbose=0)


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of every stage function."""
    calls = {name: 0 for name in STAGES}
    for name, fn in list(STAGES.items()):
        def wrapper(ctx, spec, stage_dir, _fn=fn, _name=name):
            calls[_name] += 1
            return _fn(ctx, spec, stage_dir)
        monkeypatch.setitem(STAGES, name, wrapper)
    return calls


def _variants(results) -> dict:
    return {v["variant"]: v for v in results["variants"]}


def test_end_to_end_tiny_run(tiny_run):
    run_dir, results = tiny_run
    manifest = read_json(run_dir / "manifest.json")
    assert [(s["dir"], s["status"], s["seed"]) for s in manifest["stages"]] == [
        ("01_train", "done", 1), ("02_prune", "done", 2), ("03_quantize_aware", "done", 3), ("04_export", "done", 4),
        ("05_evaluate", "done", 5)]
    for rel in ("01_train/model.keras", "01_train/history.csv", "02_prune/model.keras", "03_quantize_aware/model.h5",
                "04_export/float32.tflite", "04_export/qat_int8.tflite", "05_evaluate/metrics.json", "report.md"):
        assert (run_dir / rel).is_file(), rel
    assert read_json(run_dir / "results.json") == json.loads(json.dumps(results))
    v = _variants(results)
    train = results["stages"][0]["metrics"]
    # accuracy measured on the exported float32 file equals the Keras model's on the same 360 validation digits;
    # what is reported (accuracy) is the test split's
    assert v["float32"]["n"] == v["float32"]["test_n"] == 360 and v["float32"]["accuracy"] == v["float32"]["test_accuracy"]
    assert abs(v["float32"]["val_accuracy"] - train["val_accuracy"]) <= 1 / 360
    assert all(r["accuracy"] > 0.5 for r in v.values())  # chance is 0.1
    assert results["stages"][1]["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert v["pruned"]["gzip_bytes"] < v["float32"]["gzip_bytes"] and v["qat_int8"]["bytes"] < v["float32"]["bytes"]
    assert v["pruned"]["gzip_x_smaller"] == pytest.approx(v["float32"]["gzip_bytes"] / v["pruned"]["gzip_bytes"])
    assert v["pruned"]["nonzero_params"] < 0.6 * v["pruned"]["params"]


def test_resume_after_interrupt_skips_finished_stages(tmp_path, tiny_run, counted, monkeypatch):
    real_qat = STAGES["quantize_aware"]
    raised = []

    def interrupted(ctx, spec, stage_dir):
        if not raised:
            raised.append(1)
            raise KeyboardInterrupt
        return real_qat(ctx, spec, stage_dir)

    monkeypatch.setitem(STAGES, "quantize_aware", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(tiny_recipe(), run_dir=tmp_path, verbose=0)
    manifest = read_json(tmp_path / "manifest.json")
    assert [s["status"] for s in manifest["stages"]] == ["done", "done", "interrupted", "pending", "pending"]
    assert not (tmp_path / "results.json").exists()
    assert (counted["train"], counted["prune"]) == (1, 1)

    results = run_recipe(tiny_recipe(), run_dir=tmp_path, verbose=0)
    # the interrupted call raised before reaching the real stage; the rerun ran it once
    assert raised == [1] and (counted["train"], counted["prune"], counted["quantize_aware"]) == (1, 1, 1)
    assert (counted["export"], counted["evaluate"]) == (1, 1)
    # the same numbers as the run that was never interrupted (latency aside)
    expected = _variants(tiny_run[1])
    for name, row in _variants(results).items():
        assert row["accuracy"] == pytest.approx(expected[name]["accuracy"], abs=1e-9), name
    assert results["stages"][2]["metrics"]["val_accuracy"] == pytest.approx(
        tiny_run[1]["stages"][2]["metrics"]["val_accuracy"], abs=1e-6)


def test_force_reruns_the_stage_and_every_later_one(tmp_path, tiny_run, counted):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    before = read_json(run_dir / "manifest.json")
    run_recipe(tiny_recipe(), run_dir=run_dir, verbose=0)
    assert sum(counted.values()) == 0  # finished: nothing re-runs
    results = run_recipe(tiny_recipe(), run_dir=run_dir, force=["03_quantize_aware"], verbose=0)
    assert counted == {**counted, "train": 0, "prune": 0, "quantize_aware": 1, "export": 1, "evaluate": 1}
    after = read_json(run_dir / "manifest.json")
    assert [a["seconds"] == b["seconds"] for a, b in zip(after["stages"], before["stages"])] == [
        True, True, False, False, False]
    # re-run from the same saved inputs with the same stage seed: the same model again
    assert results["stages"][2]["metrics"]["val_accuracy"] == pytest.approx(
        tiny_run[1]["stages"][2]["metrics"]["val_accuracy"], abs=1e-6)
    with pytest.raises(ConfigError, match=r"force=\['bogus'\] names no stage .*allowed: train, prune"):
        run_recipe(tiny_recipe(), run_dir=run_dir, force=["bogus"])


def test_other_recipe_refused_then_overwritten(tmp_path, tiny_run):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run[0], run_dir)
    other = tiny_recipe(name="other", training={"epochs": 1})
    other["stages"] = ["train", {"export": {"variants": [{"name": "float32"}]}}, {"evaluate": QUIET_EVAL}]
    with pytest.raises(ConfigError) as info:
        run_recipe(other, run_dir=run_dir)
    message = str(info.value)
    assert "different recipe" in message and "'tiny'" in message and "overwrite" in message
    assert read_json(run_dir / "manifest.json")["recipe_hash"] == tiny_run[1]["recipe_hash"]
    assert (run_dir / "02_prune" / "model.keras").is_file()  # nothing lost on refusal
    results = run_recipe(other, run_dir=run_dir, overwrite=True, verbose=0)
    assert read_json(run_dir / "manifest.json")["recipe_hash"] == results["recipe_hash"] != tiny_run[1]["recipe_hash"]
    assert not (run_dir / "02_prune").exists() and (run_dir / "02_export" / "float32.tflite").is_file()
    assert [v["variant"] for v in results["variants"]] == ["float32"]


def test_unwritable_and_foreign_run_directories(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="run directory .*file.txt/run.* is not writable"):
        run_recipe(tiny_recipe(), run_dir=blocker / "run")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no tfopt run"):
        run_recipe(tiny_recipe(), run_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine" and not (foreign / "manifest.json").exists()


def test_demo_recipe_end_to_end_on_digits(tmp_path):
    overrides = {"training": {"epochs": 1}, "stages": {"prune": {"epochs": 1}, "quantize_aware": {"epochs": 1},
                                                       "evaluate": QUIET_EVAL}}
    results = run_recipe(RECIPES / "demo.yaml", run_dir=tmp_path, data="digits", overrides=overrides, verbose=0)
    assert results["data"]["name"] == "digits" and results["data"]["input_shape"] == [8, 8, 1]
    v = _variants(results)
    assert list(v) == ["float32", "float16", "dynamic", "int8", "pruned_float32", "pruned_qat_int8"]
    assert all(r["n"] == 360 for r in v.values())
    train = results["stages"][0]["metrics"]
    assert v["float32"]["accuracy"] > 0.3 and abs(v["float32"]["val_accuracy"] - train["val_accuracy"]) <= 1 / 360
    assert abs(v["float16"]["accuracy"] - v["float32"]["accuracy"]) <= 2 / 360
    prune = next(s for s in results["stages"] if s["type"] == "prune")["metrics"]
    assert prune["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert v["pruned_qat_int8"]["gzip_x_smaller"] > 4 and v["float16"]["bytes"] < 0.6 * v["float32"]["bytes"]
    assert (tmp_path / "report.html").is_file()


def test_fine_tune_recipe_measures_each_task_on_its_own_classes(tmp_path):
    overrides = {"training": {"epochs": 2}, "stages": {"fine_tune": {"epochs": [3, 0], "learning_rate": 0.01}}}
    results = run_recipe(RECIPES / "fine_tune.yaml", run_dir=tmp_path, data="digits", overrides=overrides, verbose=0)
    v = _variants(results)
    # digits' held-out 360 rows are split by class: 0-4 for the base task, 5-9 for the new one
    assert v["base_float32"]["n"] + v["new_task_float32"]["n"] == 360
    assert abs(v["base_float32"]["n"] - 180) <= 5
    assert v["new_task_int8"]["n"] == v["new_task_float32"]["n"]
    assert results["stages"][1]["metrics"]["num_classes"] == 5
    assert all(r["accuracy"] > 0.3 for r in v.values())  # chance is 0.2
    assert v["new_task_float32"]["accuracy_delta"] == 0.0
    # the base model's file was measured on the other task's digits: no difference to the baseline, paired or not
    assert v["base_float32"]["accuracy_delta"] is None and v["base_float32"].get("test_delta") is None
    assert v["new_task_int8"].get("test_delta") is not None
    front = (tmp_path / "report.md").read_text().split("Pareto-optimal (validation accuracy vs gzip size): ")[1]
    assert "new_task" in front.split(".")[0] and "base_float32" not in front.split(".")[0]  # chosen within a task


def test_saved_model_path_recipe_and_its_data_check(tmp_path, tiny_run):
    model_path = tiny_run[0] / "01_train" / "model.keras"
    recipe = {"name": "saved", "data": {"name": "digits"}, "model": {"path": str(model_path)},
              "stages": [{"export": {"variants": [{"name": "dynamic", "quantization": "dynamic"}]}},
                         {"evaluate": QUIET_EVAL}]}
    results = run_recipe(recipe, run_dir=tmp_path / "ok", verbose=0)
    assert [s["name"] for s in results["stages"]] == ["export", "evaluate"]  # no implicit train for a saved model
    assert results["variants"][0]["accuracy"] == pytest.approx(_variants(tiny_run[1])["float32"]["accuracy"], abs=0.02)
    with pytest.raises(ConfigError, match=r"takes inputs of shape \[8, 8, 1\] but the data 'mnist_5k' gives \[28, 28, 1\]"):
        run_recipe(recipe, run_dir=tmp_path / "bad", data="mnist_5k")


def test_tune_stage_runs_tfopt_tune_search(tmp_path):
    tune = pytest.importorskip("tfopt.tune")
    if getattr(tune, "search", None) is None:
        pytest.skip("tfopt.tune.search is not available")
    recipe = tiny_recipe()
    recipe["stages"] = [{"tune": {"space": {"model": "cnn", "filters": [[4], [8]], "dense": [[16]]},
                                  "algorithm": "random", "max_trials": 2, "max_epochs": 1}},
                        {"export": {"variants": [{"name": "best_float32"}]}}, {"evaluate": QUIET_EVAL}]
    results = run_recipe(recipe, run_dir=tmp_path, verbose=0)
    tuned = results["stages"][0]["metrics"]
    assert tuned["best_hyperparameters"] and tuned["params"] > 0
    assert results["variants"][0]["val_accuracy"] == pytest.approx(tuned["val_accuracy"], abs=1 / 360)
