"""tfopt.export.evaluate on a model whose predictions are known: accuracy, Wilson interval, recall, confusion."""

from __future__ import annotations

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, DataError
from tfopt.export import compare_with_baseline, evaluate, evaluate_splits, read_predictions, to_tflite, write_predictions
from tfopt.stats import paired_comparison, wilson_interval

PREDICTED = [0, 0, 1, 2, 2, 1, 0, 2]
LABELS = [0, 1, 1, 2, 0, 1, 0, 2]  # 6 of 8 right; class 3 never occurs


@pytest.fixture(scope="module")
def argmax_model():
    """A float32 TFLite model that predicts argmax of its 4 inputs (identity weights, zero bias)."""
    inp = keras.Input((4,))
    dense = keras.layers.Dense(4, name="identity")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([np.eye(4, dtype="float32"), np.zeros(4, "float32")])
    return to_tflite(model)


def _inputs(predicted) -> np.ndarray:
    return np.eye(4, dtype="float32")[predicted]


def test_values_equal_a_hand_made_dataset(argmax_model):
    ds = tf.data.Dataset.from_tensor_slices((_inputs(PREDICTED), np.array(LABELS, "int32"))).batch(3)
    res = evaluate(argmax_model, ds, runs=0, return_predictions=True)
    assert res["n"] == 8 and res["accuracy"] == 0.75
    assert res["predictions"] == PREDICTED and res["labels"] == LABELS
    # rows are the true class: class 0 (3 examples) predicted 0, 2, 0; class 1 predicted 0, 1, 1; class 2 twice 2
    assert res["confusion"] == [[2, 0, 1, 0], [1, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    assert res["per_class_recall"] == pytest.approx([2 / 3, 2 / 3, 1.0, None])
    assert sum(map(sum, res["confusion"])) == res["n"]
    low, high = res["accuracy_ci95"]
    assert [low, high] == pytest.approx(list(wilson_interval(6, 8)))
    assert low < res["accuracy"] < high
    assert "latency_us_p50" not in res and res["bytes"] > 0 and res["gzip_bytes"] > 0


def test_one_hot_labels_limit_and_no_predictions_by_default(argmax_model):
    one_hot = np.eye(4, dtype="float32")[LABELS]
    res = evaluate(argmax_model, (_inputs(PREDICTED), one_hot), runs=0, limit=4)
    assert res["n"] == 4 and res["accuracy"] == 0.75  # the first four: 0/0, 0/1, 1/1, 2/2
    assert "predictions" not in res and "labels" not in res
    assert res["confusion"][0] == [1, 0, 0, 0] and res["confusion"][1] == [1, 1, 0, 0]


def test_predictions_pair_two_models_on_the_same_examples(argmax_model):
    x, y = _inputs(PREDICTED), np.array(LABELS)
    perfect = evaluate(argmax_model, (_inputs(LABELS), y), runs=0, return_predictions=True)
    ours = evaluate(argmax_model, (x, y), runs=0, return_predictions=True)
    right = [np.equal(r["predictions"], r["labels"]) for r in (perfect, ours)]
    r = paired_comparison(*right)
    assert (r["delta"], r["a_only"], r["b_only"]) == (-0.25, 2, 0)
    assert r["p_value"] == 0.5  # 2 discordant pairs, both against b: 2 * (1/2)**2


def test_labels_outside_the_outputs_widen_the_matrix_and_bad_labels_are_refused(argmax_model):
    res = evaluate(argmax_model, (_inputs([0, 1]), np.array([0, 5])), runs=0)
    assert len(res["confusion"]) == 6 and res["per_class_recall"][5] == 0.0 and res["accuracy"] == 0.5
    with pytest.raises(DataError, match="labels must be class ids >= 0"):
        evaluate(argmax_model, (_inputs([0, 1]), np.array([0, -1])), runs=0)


def test_evaluate_splits_reports_test_and_keeps_validation_for_choosing(argmax_model):
    val = (_inputs([0, 1, 2, 3]), np.array([0, 1, 2, 0]))  # 3 of 4
    test = (_inputs(PREDICTED), np.array(LABELS))  # 6 of 8
    row = evaluate_splits(argmax_model, val, test, warmup=1, runs=3)
    assert (row["val_accuracy"], row["val_n"]) == (0.75, 4)
    assert (row["test_accuracy"], row["test_n"]) == (row["accuracy"], row["n"]) == (0.75, 8)
    assert row["test_accuracy_ci95"] == row["accuracy_ci95"] == pytest.approx(list(wilson_interval(6, 8)))
    assert row["val_accuracy_ci95"] == pytest.approx(list(wilson_interval(3, 4)))
    assert row["test_confusion"][0] == [2, 0, 1, 0] and row["test_per_class_recall"][2] == 1.0
    assert "confusion" not in row and "per_class_recall" not in row
    assert row["predictions"] == PREDICTED and row["latency_us_p50"] > 0 and row["runs"] == 3


def test_compare_with_baseline_and_predictions_round_trip(tmp_path):
    digits = {"name": "mnist_5k", "classes": [0, 1, 2, 3, 4]}
    outcomes = {"base": {"labels": LABELS, "predictions": LABELS, "data": digits},  # all right
                "small": {"labels": LABELS, "predictions": PREDICTED, "data": digits},  # 2 lost
                "other_data": {"labels": [0, 1], "predictions": [0, 1], "data": digits},
                # another task with as many classes and test examples: the same labels, other examples
                "new_task": {"labels": LABELS, "predictions": LABELS, "data": {**digits, "classes": [5, 6, 7, 8, 9]}}}
    path = write_predictions(tmp_path / "predictions.json", outcomes)
    assert read_predictions(path) == outcomes
    got = compare_with_baseline(read_predictions(path), "base")
    assert set(got) == {"base", "small"}  # other examples: no paired comparison
    assert got["base"] == {"test_delta": 0.0, "test_delta_ci95": [0.0, 0.0], "mcnemar_p": 1.0,
                           "significant_drop": False, "test_discordant": [0, 0]}
    assert got["small"]["test_delta"] == -0.25 and got["small"]["mcnemar_p"] == 0.5
    assert got["small"]["test_discordant"] == [2, 0] and got["small"]["significant_drop"] is False
    assert compare_with_baseline(outcomes, "missing") == {} and compare_with_baseline(outcomes, None) == {}


@pytest.mark.parametrize("content,why", [
    ('{"variants": {"a": {"labels": [0, 1], "predictions": [0]}}}', "a has 2 labels and 1 predictions"),
    ('{"variants": {"a": {"labels": [0, -1], "predictions": [0, 1]}}}', "a.labels is not a list of class ids"),
    ('{"variants": {"a": {"labels": [0, 1]}}}', "not the shape tfopt writes .no 'predictions'"),
    ('{"variants": []}', "'variants' is not an object"),
    ('{"variants": {"a": {"labels": [0], "predictions": [0], "data": "mnist"}}}', "a.data is not an object"),
    ("[1, 2]", "not the shape tfopt writes"),
    ('{"variants": {"a": {"lab', "not valid JSON"),
    (b"\xff\xfe", "unreadable"),
])
def test_damaged_predictions_are_one_config_error(tmp_path, content, why):
    path = tmp_path / "predictions.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=f"predictions.json is damaged: .*{why}") as info:
        read_predictions(path)
    assert "\n" not in str(info.value)


def test_tfopt_evaluate_prints_the_test_interval(tmp_path, capsys):
    import json

    from tfopt.cli import main

    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    to_tflite(model, path=tmp_path / "m.tflite")
    assert main(["evaluate", str(tmp_path / "m.tflite"), "--data", "digits"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    low, high = result["accuracy_ci95"]
    assert result["n"] == 360 and low <= result["accuracy"] <= high
    assert f"test accuracy {result['accuracy']:.4f} [95% CI {low:.4f}, {high:.4f}] on the 360 examples of the " \
           "fixed test split of digits" in err
