"""tfopt.tune: keras-tuner searches over tf_keras models, on the tiny embedded "digits" set."""

import gc
import json

import h5py
import numpy as np
import pytest

from tfopt import data, tune
from tfopt._keras import keras
from tfopt.compress.inspect import sparsity
from tfopt.errors import ConfigError, TrainingError
from tfopt.tune import TfoptTuner
from tfopt.tune.pareto import pareto_front
from tfopt.tune.spaces import Space

SMALL = {"model": "cnn", "filters": [[4], [8]], "dense": [[16]]}


@pytest.fixture(scope="module")
def digits():
    train_ds, val_ds, _, _ = data.load("digits", batch_size=64)
    return train_ds, val_ds


def _search(digits, tmp_path, space, **kw):
    kw = {"algorithm": "random", "max_trials": 3, "max_epochs": 1, "directory": tmp_path, "verbose": 0, **kw}
    return tune.search(space, *digits, **kw)


def test_random_search_records_scores_and_reloads_best_model(digits, tmp_path):
    space = {**SMALL, "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"}}
    result = _search(digits, tmp_path, space)
    assert len(result.trials) == 3
    assert all(r["status"] == "COMPLETED" and 0 <= r["metrics"]["val_accuracy"] <= 1 for r in result.trials)
    accs = [r["metrics"]["val_accuracy"] for r in result.trials]
    assert result.best_score == max(accs)
    got = result.best_model.evaluate(digits[1], verbose=0, return_dict=True)["accuracy"]
    assert abs(got - result.best_score) < 1e-6
    hp = result.best_hyperparameters
    assert Space.parse(space).contains(hp) and 1e-3 <= hp["learning_rate"] <= 1e-2 and hp["filters"] in ([4], [8])
    saved = json.loads((tmp_path / "search" / "trials.json").read_text())
    assert [t["trial_id"] for t in saved["trials"]] == [r["trial_id"] for r in result.trials]
    assert json.loads((tmp_path / "search" / "best_hyperparameters.json").read_text())["hyperparameters"] == hp
    assert len(result.table()) == 3 and "val_accuracy" in result.table().columns
    assert (tmp_path / "search" / "trials.csv").read_text().count("\n") == 4


def _h5_total(path):
    total = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: total.append(np.abs(obj[()]).sum()) if isinstance(obj, h5py.Dataset) else None)
    return float(sum(total))


def test_hyperband_continued_trial_resumes_from_parent_weights(digits, tmp_path, monkeypatch):
    loads = []
    original = TfoptTuner.resume_weights

    def spy(self, model, parent_id):
        path = original(self, model, parent_id)
        loads.append((parent_id, path, float(sum(np.abs(w).sum() for w in model.get_weights()))))
        return path

    monkeypatch.setattr(TfoptTuner, "resume_weights", spy)
    space = {**SMALL, "learning_rate": [0.002, 0.005, 0.01]}
    result = _search(digits, tmp_path, space, algorithm="hyperband", max_trials=4, max_epochs=3, factor=3)
    resumed = [r for r in result.trials if r["resumed_from"] is not None]
    assert len(result.trials) == 4 and len(resumed) == 1 and len(loads) == 1
    child = resumed[0]
    assert (child["initial_epoch"], child["epochs"]) == (1, 3)
    assert child["epochs_trained"] == child["epochs"] - child["initial_epoch"] == 2
    assert all(r["epochs_trained"] == r["epochs"] == 1 for r in result.trials if r is not child)
    parent_id, path, loaded_total = loads[0]
    assert parent_id == child["resumed_from"] and f"trial_{parent_id}" in path
    assert loaded_total == pytest.approx(_h5_total(path), rel=1e-6)
    parent = next(r for r in result.trials if r["trial_id"] == parent_id)
    assert child["hyperparameters"] == parent["hyperparameters"]


def test_constraint_marks_big_models_infeasible_and_best_is_feasible(digits, tmp_path):
    space = {"model": "cnn", "filters": [[4], [32]], "dense": [[16], [64]]}
    result = _search(digits, tmp_path, space, algorithm="grid", max_trials=4,
                     constraints={"tflite_gzip_bytes": 7_000})
    by_size = {(r["hyperparameters"]["filters"][0], r["hyperparameters"]["dense"][0]): r for r in result.trials}
    assert len(by_size) == 4
    small, big = by_size[(4, 16)], by_size[(32, 64)]
    assert small["status"] == "COMPLETED" and small["metrics"]["tflite_gzip_bytes"] <= 7_000
    assert big["status"] == "INFEASIBLE" and big["metrics"]["tflite_gzip_bytes"] > 7_000
    assert "tflite_gzip_bytes=" in big["violations"][0] and "> 7000" in big["violations"][0]
    feasible = [r for r in result.trials if r["status"] == "COMPLETED"]
    infeasible = [r for r in result.trials if r["status"] == "INFEASIBLE"]
    assert result.best_trial["status"] == "COMPLETED"
    assert result.best_score == max(r["metrics"]["val_accuracy"] for r in feasible)
    # the oracle's score of an infeasible trial is a penalty below every feasible score
    assert max(r["score"] for r in infeasible) < min(r["score"] for r in feasible)


def _brute_pareto(records, names, ways):
    ok = [r for r in records if r["status"] == "COMPLETED"]
    pts = np.array([[r["metrics"][n] * (1 if w == "min" else -1) for n, w in zip(names, ways)] for r in ok])
    keep = []
    for i, p in enumerate(pts):
        dominated = any(np.all(q <= p) and np.any(q < p) for j, q in enumerate(pts) if j != i)
        if not dominated:
            keep.append(ok[i]["trial_id"])
    return keep


def test_two_objectives_give_the_real_pareto_front_and_a_png(digits, tmp_path):
    space = {"model": "cnn", "filters": [[4], [8], [16]], "dense": [[16], [32]], "learning_rate": [0.003, 0.01]}
    result = _search(digits, tmp_path, space, max_trials=5, objectives=["val_accuracy", "tflite_gzip_bytes"])
    assert len(result.trials) == 5
    expected = _brute_pareto(result.trials, ["val_accuracy", "tflite_gzip_bytes"], ["max", "min"])
    assert sorted(r["trial_id"] for r in result.pareto) == sorted(expected) and expected
    assert all(r["pareto"] == (r["trial_id"] in expected) for r in result.trials)
    png = (tmp_path / "search" / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert result.best_trial["trial_id"] in expected


def test_pareto_front_on_handmade_records():
    recs = [{"trial_id": str(i), "status": "COMPLETED", "metrics": {"a": a, "b": b}}
            for i, (a, b) in enumerate([(0.9, 10), (0.8, 5), (0.7, 6), (0.9, 12), (0.95, 30)])]
    recs.append({"trial_id": "x", "status": "INFEASIBLE", "metrics": {"a": 1.0, "b": 1}})
    assert [r["trial_id"] for r in pareto_front(recs, {"a": "max", "b": "min"})] == ["0", "1", "4"]


def test_sparsity_and_quantization_in_the_space(digits, tmp_path):
    space = {**SMALL, "filters": [[8]], "target_sparsity": [0.0, 0.5], "quantization": [None, "dynamic"]}
    result = _search(digits, tmp_path, space, algorithm="grid", max_trials=4)
    recs = {(r["hyperparameters"]["target_sparsity"], r["hyperparameters"]["quantization"]): r for r in result.trials}
    assert len(recs) == 4 and all(r["status"] == "COMPLETED" for r in recs.values())
    pruned = result.load_model(recs[(0.5, None)]["trial_id"])
    assert sparsity(pruned)["overall"] == pytest.approx(0.5, abs=0.02)
    assert sparsity(result.load_model(recs[(0.0, None)]["trial_id"]))["overall"] < 0.05
    for s in (0.0, 0.5):
        assert recs[(s, "dynamic")]["metrics"]["tflite_bytes"] < 0.8 * recs[(s, None)]["metrics"]["tflite_bytes"]
    m = recs[(0.5, None)]["metrics"]
    assert m["nonzero_params"] < 0.7 * m["params"]


def test_channel_pruning_in_the_space_lowers_the_multiply_adds(digits, tmp_path):
    space = {**SMALL, "filters": [[8]], "dense": [[32]], "channel_fraction": [0.0, 0.5], "channel_epochs": [1]}
    result = _search(digits, tmp_path, space, algorithm="grid", max_trials=2, objectives=["val_accuracy", "flops"])
    recs = {r["hyperparameters"]["channel_fraction"]: r for r in result.trials}
    assert set(recs) == {0.0, 0.5} and all(r["status"] == "COMPLETED" for r in recs.values())
    assert recs[0.5]["metrics"]["flops"] < 0.6 * recs[0.0]["metrics"]["flops"]
    assert result.load_model(recs[0.5]["trial_id"]).count_params() < result.load_model(recs[0.0]["trial_id"]).count_params()


def test_resume_runs_only_the_missing_trials(digits, tmp_path, monkeypatch):
    calls = []
    original = TfoptTuner.run_trial

    def counting(self, trial, *args, **kw):
        calls.append(trial.trial_id)
        return original(self, trial, *args, **kw)

    monkeypatch.setattr(TfoptTuner, "run_trial", counting)
    space = {**SMALL, "learning_rate": {"min": 1e-3, "max": 1e-2}}
    first = _search(digits, tmp_path, space, max_trials=2)
    assert len(calls) == 2
    second = _search(digits, tmp_path, space, max_trials=4)
    assert len(calls) == 4 and calls[2:] == ["2", "3"]
    assert [r["trial_id"] for r in second.trials] == ["0", "1", "2", "3"]
    assert second.trials[0]["metrics"] == first.trials[0]["metrics"]


def _flaky(hp):
    units = hp.Choice("units", [8, 13, 16])
    if units == 13:
        raise ValueError("units=13 is unlucky")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def test_failed_trial_is_recorded_and_the_search_goes_on(digits, tmp_path):
    result = _search(digits, tmp_path, _flaky, algorithm="grid", max_trials=3)
    status = {r["hyperparameters"]["units"]: r for r in result.trials}
    assert status[13]["status"] == "FAILED" and "units=13 is unlucky" in status[13]["error"]
    assert status[8]["status"] == status[16]["status"] == "COMPLETED"
    assert result.best_hyperparameters["units"] in (8, 16)


def test_consecutive_failures_stop_the_search(digits, tmp_path):
    built = []

    def broken(hp):  # declares its space fine (first build), then fails in every trial
        built.append(hp.Int("units", 4, 64))
        if len(built) > 1:
            raise RuntimeError("no model today")
        return _flaky(hp)

    with pytest.raises(TrainingError, match="2 consecutive trials failed") as err:
        _search(digits, tmp_path, broken, max_trials=5, max_consecutive_failed_trials=2)
    assert "no model today" in str(err.value)
    saved = json.loads((tmp_path / "search" / "trials.json").read_text())["trials"]
    assert len(saved) == 2 and all(t["status"] == "FAILED" for t in saved)


def test_space_function_failing_on_defaults_is_a_config_error(digits, tmp_path):
    def broken(hp):
        hp.Int("units", 4, 64)
        raise RuntimeError("no model today")

    with pytest.raises(ConfigError, match="'broken' raised .*no model today"):
        _search(digits, tmp_path, broken)


def test_live_models_do_not_grow_with_trials(digits, tmp_path, monkeypatch):
    counts = []
    original = TfoptTuner.on_trial_end

    def live_models():
        gc.collect()
        return sum(isinstance(o, keras.Model) for o in gc.get_objects())

    def counting(self, trial):
        original(self, trial)
        counts.append(live_models())

    before = live_models()  # (what earlier tests of this process still hold is not the search's)
    monkeypatch.setattr(TfoptTuner, "on_trial_end", counting)
    space = {**SMALL, "learning_rate": {"min": 1e-3, "max": 1e-2}}
    _search(digits, tmp_path, space, max_trials=8)
    assert len(counts) == 8
    assert max(counts) <= counts[0] and counts[-1] <= before + 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"space": {}}, "empty"),
        ({"space": {"model": "cnn", "dropout": {"min": 0.5, "max": 0.1}}}, "min=0.5 > max=0.1"),
        ({"space": {"model": "cnn", "filters": {"choice": []}}}, "'filters'.*no values"),
        ({"space": "no_such_model"}, "'no_such_model'"),
        ({"space": {"model": "cnn", "kernel": 3}}, "'kernel'"),
        ({"space": {"model": "cnn", "target_sparsity": [0.5, 1.2]}}, "target_sparsity=1.2"),
        ({"algorithm": "annealing"}, "'annealing'"),
        ({"objective": "gflops"}, "'gflops'"),
        ({"constraints": {"gflops": 1e6}}, "'gflops'"),
        ({"constraints": {"params": {"min": 10, "max": 5}}}, "min=10 > max=5"),
        ({"max_trials": 0}, "max_trials=0"),
    ],
)
def test_bad_inputs_raise_config_errors_naming_the_value(digits, tmp_path, kwargs, match):
    kwargs = {"space": SMALL, **kwargs}
    with pytest.raises(ConfigError, match=match):
        _search(digits, tmp_path, kwargs.pop("space"), **kwargs)
    assert not (tmp_path / "search").exists()


def test_space_encodes_non_scalar_choices_and_ranges():
    from keras_tuner.src.engine import hyperparameters as hp_module

    space = Space.parse({"model": "cnn", "filters": [[4], [4, 8]], "quantization": [None, "int8"],
                         "dropout": {"min": 0.0, "max": 0.4, "step": 0.2}, "dense": {"min": 8, "max": 32, "step": 8},
                         "pool": "avg", "kernel_size": (3, 3)})
    hp = hp_module.HyperParameters()
    space.declare(hp)
    kinds = {p.name: type(p).__name__ for p in hp.space}
    assert kinds == {"filters": "Choice", "quantization": "Choice", "dropout": "Float", "dense": "Int"}
    hp.values.update({"filters": "[4, 8]", "quantization": "null", "dropout": 0.2, "dense": 24})
    values = space.values(hp)
    assert values == {"model": "cnn", "pool": "avg", "kernel_size": (3, 3), "filters": [4, 8],
                      "quantization": None, "dropout": 0.2, "dense": 24}
    assert space.contains(values) and not space.contains({**values, "dense": 40})
