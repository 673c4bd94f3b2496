"""Per-layer compression search of a trained model: space keys "<key>/<layer>", trials that start from the trained
weights (max_epochs=0), per-layer clusters, and tune.search_compression with the gzip objective and the
validation-accuracy constraint."""

import json

import numpy as np
import pytest

from tfopt import compress, data, models, train, tune
from tfopt._keras import keras, tf
from tfopt.compress.inspect import cluster_counts, sparsity
from tfopt.errors import ConfigError
from tfopt.tune.spaces import Space, split


@pytest.fixture(scope="module")
def digits():
    train_ds, val_ds, _, info = data.load("digits", batch_size=64)
    return train_ds, val_ds, info


@pytest.fixture(scope="module")
def trained(digits):
    train_ds, val_ds, info = digits
    model = models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes, units=(32, 16))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train.fit(model, train_ds, epochs=15, verbose=0)
    assert model.evaluate(val_ds, verbose=0)[1] > 0.8
    return model


def test_per_layer_keys_become_one_dict_per_technique():
    build, training, compression = split({"model": "mlp", "learning_rate": 0.01, "target_sparsity/dense1": 0.9,
                                          "target_sparsity/logits": 0.5, "n_clusters/dense1": 8,
                                          "layer_bits/logits": 8, "quantization": "int4"})
    assert build == {"model": "mlp"} and training == {"learning_rate": 0.01}
    assert compression == {"target_sparsity": {"dense1": 0.9, "logits": 0.5}, "n_clusters": {"dense1": 8},
                           "layer_bits": {"logits": 8}, "quantization": "int4"}


@pytest.mark.parametrize("space, message", [
    ({"model": "mlp", "target_sparsity/dense1": [0.5, 1.5]}, "target_sparsity/dense1=1.5"),
    ({"model": "mlp", "n_clusters/dense1": [1]}, "n_clusters/dense1=1"),
    ({"model": "mlp", "layer_bits/dense1": [2], "quantization": "int4"}, "layer_bits/dense1=2"),
    ({"model": "mlp", "layer_bits/dense1": [4, 8], "quantization": "int8"}, "need an int4 quantization"),
    ({"model": "mlp", "target_sparsity": 0.5, "target_sparsity/dense1": [0.5, 0.9]}, "both set target_sparsity"),
])
def test_bad_per_layer_keys_are_refused_naming_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        Space.parse(space)


def test_trained_model_space_takes_no_builder_arguments_and_epochs_zero_only_with_it(trained, digits):
    with pytest.raises(ConfigError, match="trained model"):
        Space.parse({"model": trained, "units": [[8]]})
    with pytest.raises(ConfigError, match="max_epochs"):
        tune.search({"model": "mlp", "units": [[8], [16]]}, digits[0], digits[1], algorithm="random", max_epochs=0,
                    max_trials=1, verbose=0)


def test_cluster_takes_a_count_per_layer_and_zero_leaves_a_layer_alone(trained, digits):
    out = compress.cluster(trained, digits[0], n_clusters={"dense1": 4, "dense2": 0, "logits": 6}, epochs=1,
                           verbose=0)
    counts = cluster_counts(out)["layers"]
    assert counts["dense1"] <= 4 and counts["logits"] <= 6
    assert counts["dense2"] > 16  # left as trained
    with pytest.raises(ConfigError, match=r"n_clusters\['dense1'\]=1"):
        compress.cluster(trained, digits[0], n_clusters={"dense1": 1}, verbose=0)
    with pytest.raises(ConfigError, match="clusters no layer"):
        compress.cluster(trained, digits[0], n_clusters={"dense1": 0}, verbose=0)


def test_search_compression_finds_per_layer_settings_within_the_validation_constraint(trained, digits, tmp_path):
    train_ds, val_ds, _ = digits
    result = tune.search_compression(trained, train_ds, val_ds, sparsity={"dense1": [0.5, 0.9], "logits": [0.0, 0.5]},
                                     clusters={"dense1": [0, 8]}, bits={"logits": [4, 8]}, max_drop=0.2,
                                     max_trials=3, prune_epochs=1, directory=tmp_path, verbose=0)
    baseline = json.loads((result.directory / "baseline.json").read_text())
    assert baseline["min_val_accuracy"] == pytest.approx(baseline["float32_val_accuracy"] - 0.2)
    assert baseline["layers"] == ["dense1", "dense2", "logits"]
    done = [r for r in result.trials if r["status"] in ("COMPLETED", "INFEASIBLE")]
    assert len(done) == 3 and all(r["epochs_trained"] == 0 for r in done)
    for rec in done:  # every trial's file was measured, and infeasible means below the floor
        metrics = rec["metrics"]
        assert metrics["tflite_gzip_bytes"] > 0
        assert (metrics["tflite_accuracy"] >= baseline["min_val_accuracy"]) == (rec["status"] == "COMPLETED")
    best = result.best_trial
    assert best is not None and best["metrics"]["tflite_gzip_bytes"] == min(
        r["metrics"]["tflite_gzip_bytes"] for r in done if r["status"] == "COMPLETED")
    model = result.best_model  # the trained model's copy, with the trial's pruned weights
    hp = best["hyperparameters"]
    layers = sparsity(model)["layers"]
    assert layers["dense1"] == pytest.approx(hp["target_sparsity/dense1"], abs=0.02)
    assert layers["dense2"] == 0.0  # not searched: left dense
    if hp["n_clusters/dense1"]:
        assert cluster_counts(model)["layers"]["dense1"] <= hp["n_clusters/dense1"]
    assert not np.shares_memory(model.get_weights()[0], trained.get_weights()[0])


def test_search_compression_refuses_bad_arguments(trained, digits):
    train_ds, val_ds, _ = digits
    with pytest.raises(ConfigError, match="quantization='int8'"):
        tune.search_compression(trained, train_ds, val_ds, quantization="int8")
    with pytest.raises(ConfigError, match="hyperband"):
        tune.search_compression(trained, train_ds, val_ds, algorithm="hyperband")
    with pytest.raises(ConfigError, match=r"sparsity names layers \['nope'\]"):
        tune.search_compression(trained, train_ds, val_ds, sparsity={"nope": [0.5]})


def test_search_compression_stage_ships_its_file_and_evaluate_measures_it(tmp_path):
    from tfopt.pipeline import run_recipe

    recipe = {
        "name": "searched", "seed": 0, "data": {"name": "digits"},
        "model": {"builder": "mlp", "args": {"units": [32, 16]}},
        "training": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "learning_rate": 0.003},
        "stages": ["train",
                   {"search_compression": {"sparsity": {"dense1": [0.5, 0.8]}, "clusters": None,
                                           "bits": {"logits": [4, 8]}, "max_drop": 0.3, "max_trials": 2,
                                           "prune_epochs": 1}},
                   {"export": {"variants": [{"name": "float32", "model": "train"}]}},
                   {"evaluate": {"runs": 5, "warmup": 1}}],
    }
    results = run_recipe(recipe, run_dir=tmp_path / "run", verbose=0)
    stage = results["stages"][1]["metrics"]
    assert stage["trials"] == 2 and 1 <= stage["feasible_trials"] <= 2
    assert set(stage["per_layer"]) == {"target_sparsity", "layer_bits"}
    assert stage["per_layer"]["target_sparsity"]["dense1"] in (0.5, 0.8)
    variants = {v["variant"]: v for v in results["variants"]}
    searched = variants["search_compression_int4"]
    assert (tmp_path / "run" / searched["path"]).is_file()
    assert searched["gzip_bytes"] < variants["float32"]["gzip_bytes"]
    assert searched["test_n"] == 360 and searched["test_accuracy"] > 0.5  # chance is 0.1
    with pytest.raises(ConfigError, match="max_drop"):
        run_recipe({**recipe, "stages": ["train", {"search_compression": {"max_drop": 2}}]},
                   run_dir=tmp_path / "bad", verbose=0)


def test_a_users_model_with_a_gru_and_a_nested_model_is_searched_with_bits_for_the_grus_loop(tmp_path):
    rng = np.random.RandomState(0)
    ds = tf.data.Dataset.from_tensor_slices((rng.rand(64, 8, 8).astype("float32"), rng.randint(0, 3, 64))).batch(16)
    inp = keras.Input((8, 8))
    seq = keras.layers.Dense(8, name="embed")(inp)
    head = keras.Sequential([keras.layers.Dense(8, activation="relu", name="inner")], name="head")
    out = keras.layers.Dense(3, name="logits")(head(keras.layers.GRU(8, name="gru")(seq)))
    user = keras.Model(inp, out)
    user.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    result = tune.search_compression(user, ds, ds, sparsity=[0.5], clusters=None, bits=[4, 8], max_drop=0.99,
                                     max_trials=1, prune_epochs=1, directory=tmp_path, verbose=0)
    trial = result.trials[0]
    assert trial["status"] == "COMPLETED", trial.get("error")
    keys = {k for k in trial["hyperparameters"] if "/" in k}
    # the GRU's kernels are in the file's loop subgraph (while/MatMul), found as the GRU's by their values
    assert {"target_sparsity/gru", "target_sparsity/inner", "layer_bits/inner", "layer_bits/logits",
            "layer_bits/gru"} <= keys
    with pytest.raises(ConfigError, match=r"bits names layers \['head'\]"):
        tune.search_compression(user, ds, ds, bits={"head": [4]}, directory=tmp_path, verbose=0)
