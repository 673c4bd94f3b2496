"""Low-rank factorization (tfopt.compress.lowrank): exact at the kernel's rank, ranks by energy and by a FLOPs
budget, a plain model that saves, loads and converts, fine-tuning on digits, every refusal, and a recipe stage."""

from __future__ import annotations

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tf, tfmot
from tfopt.compress.lowrank import factorize, rank_for_energy
from tfopt.errors import CompressionError, ConfigError, DataError, UnsupportedLayerError
from tfopt.export import to_tflite
from tfopt.flops import flops
from tfopt.pipeline import load_recipe, run_recipe
from tfopt.saving import load_model

SINGULAR = np.array([5.0, 4.0, 3.0, 2.0, 1.0])  # squares 25, 16, 9, 4, 1 of 55: 0.4545, 0.7455, 0.9091, 0.9818, 1


def _orthonormal(rng, n, k):
    return np.linalg.qr(rng.normal(size=(n, n)))[0][:, :k]


def _low_rank(rng, shape, rank, singular=None):
    """A kernel of ``shape`` whose [k..*in, out] matrix has exactly ``rank`` singular values (``singular``)."""
    fan_in, out = int(np.prod(shape[:-1])), shape[-1]
    s = np.linspace(2.0, 1.0, rank) if singular is None else singular
    matrix = _orthonormal(rng, fan_in, rank) * s @ _orthonormal(rng, out, rank).T
    return matrix.reshape(shape).astype("float32")


def _set_kernel(layer, kernel, rng):
    layer.set_weights([kernel, rng.normal(size=layer.bias.shape).astype("float32")])


def _mlp(rng):
    """Sequential Dense 16 -> 48 (rank-5 kernel, SINGULAR) -> 40 (rank 3) -> 3."""
    model = keras.Sequential([keras.layers.Dense(48, activation="relu", input_shape=(16,), name="wide"),
                              keras.layers.Dense(40, activation="relu", name="mid"), keras.layers.Dense(3, name="out")])
    _set_kernel(model.get_layer("wide"), _low_rank(rng, (16, 48), 5, SINGULAR), rng)
    _set_kernel(model.get_layer("mid"), _low_rank(rng, (48, 40), 3), rng)
    return model


def _convnet(rng):
    """Conv2D (stride 2, same) -> Conv2D (dilated, valid) -> Conv1D (causal) -> Dense, low-rank kernels."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(32, 3, dilation_rate=2, padding="valid", name="c2")(x)
    x = keras.layers.Reshape((-1, 32))(x)
    x = keras.layers.Conv1D(24, 2, padding="causal", activation="relu", name="c3")(x)
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    for name, rank in (("c1", 3), ("c2", 5), ("c3", 4)):
        layer = model.get_layer(name)
        _set_kernel(layer, _low_rank(rng, tuple(layer.kernel.shape), rank), rng)
    return model


def _outputs(model, x):
    return model.predict(x, verbose=0)


# ---------------------------------------------------------------- the factors


def test_at_the_kernels_rank_the_outputs_are_kept():
    rng = np.random.default_rng(0)
    model, x = _mlp(rng), rng.normal(size=(8, 16)).astype("float32")
    small, report = factorize(model, rank={"wide": 5, "mid": 3}, epochs=0, return_report=True)
    np.testing.assert_allclose(_outputs(small, x), _outputs(model, x), atol=1e-4)
    assert isinstance(small, keras.Model) and not isinstance(small, keras.Sequential)  # Sequential -> functional
    assert [layer.name for layer in small.layers[1:]] == ["wide_lowrank", "wide", "mid_lowrank", "mid", "out"]
    assert [tuple(w.shape) for w in small.get_layer("wide_lowrank").weights] == [(16, 5)]  # linear, no bias
    assert small.get_layer("wide_lowrank").get_config()["activation"] == "linear"
    assert small.get_layer("wide").get_config()["activation"] == "relu"
    wide = report["layers"]["wide"]
    assert (wide["rank"], wide["kept_energy"], wide["params_before"], wide["params_after"]) == (5, 1.0, 816, 368)
    assert (wide["macs_before"], wide["macs_after"], wide["layers"]) == (768, 320, ["wide_lowrank", "wide"])
    assert report["flops_after"] == flops(small) == 320 + 3 * 88 + 120
    assert report["params_after"] == small.count_params() and report["params_before"] == model.count_params()
    assert (report["method"], report["epochs"], report["skipped"]) == ("rank", 0, {})
    assert model.get_layer("wide").kernel.shape == (16, 48)  # the model given is left as it was


@pytest.mark.parametrize("energy,rank", [(0.4, 1), (0.7, 2), (41 / 55, 2), (0.9, 3), (50 / 55, 3), (0.95, 4),
                                         (0.99, 5), (1.0, 5)])
def test_energy_keeps_the_smallest_rank_holding_it(energy, rank):
    rng = np.random.default_rng(0)
    assert rank_for_energy(SINGULAR, energy) == rank
    small, report = factorize(_mlp(rng), energy=energy, layers=["wide"], epochs=0, return_report=True)
    assert report["layers"]["wide"]["rank"] == rank and small.get_layer("wide_lowrank").units == rank
    assert report["layers"]["wide"]["kept_energy"] == pytest.approx(np.sum(SINGULAR[:rank] ** 2) / 55, abs=1e-6)
    assert report["method"] == "energy" and list(report["layers"]) == ["wide"]


def test_convolutions_keep_strides_padding_and_dilation():
    rng = np.random.default_rng(1)
    model, x = _convnet(rng), rng.random((4, 12, 12, 3)).astype("float32")
    small, report = factorize(model, energy=1.0, min_size=0, epochs=0, return_report=True)
    assert {name: v["rank"] for name, v in report["layers"].items()} == {"c1": 3, "c2": 5, "c3": 4}
    assert "logits" in report["skipped"] and "does not pay" in report["skipped"]["logits"]
    first, second = small.get_layer("c1_lowrank"), small.get_layer("c1")
    assert (first.filters, first.kernel_size, first.strides, first.padding, first.use_bias) == (3, (3, 3), (2, 2),
                                                                                               "same", False)
    assert (second.filters, second.kernel_size, second.strides, second.padding) == (16, (1, 1), (1, 1), "valid")
    assert small.get_layer("c2_lowrank").dilation_rate == (2, 2) and small.get_layer("c3_lowrank").padding == "causal"
    np.testing.assert_allclose(_outputs(small, x), _outputs(model, x), atol=1e-4)
    assert report["flops_after"] == flops(small) < report["flops_before"] == flops(model)


def test_target_flops_is_reached_with_one_energy_for_every_layer():
    rng = np.random.default_rng(2)
    model, x = _convnet(rng), rng.random((4, 12, 12, 3)).astype("float32")
    # the kernels' own ranks (3, 5, 4) give 10,532 of 41,088 multiply-adds: a budget above that loses nothing
    small, report = factorize(model, target_flops=0.5, min_size=0, epochs=0, return_report=True)
    assert (report["method"], report["energy"]) == ("target_flops", 1.0)
    assert {name: v["rank"] for name, v in report["layers"].items()} == {"c1": 3, "c2": 5, "c3": 4}
    np.testing.assert_allclose(_outputs(small, x), _outputs(model, x), atol=1e-4)
    for target in (0.2, 5_000):  # a fraction of the model's multiply-adds, or a whole count of them
        small, report = factorize(model, target_flops=target, min_size=0, epochs=0, return_report=True)
        assert flops(small) == report["flops_after"] <= (target * flops(model) if target < 1 else target)
        assert report["energy"] < 1.0
        for name, layer in report["layers"].items():  # every layer at the rank of that one energy
            kernel = model.get_layer(name).kernel.numpy().astype("float64")
            singular = np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False)
            assert layer["rank"] == rank_for_energy(singular, report["energy"])
    with pytest.raises(CompressionError, match=r"target_flops=0.01 \(411 multiply-adds\) is out of reach: every "
                                               r"factorizable layer at rank 1 leaves [\d,]+ \(0\.\d+\) of the model's"):
        factorize(model, target_flops=0.01, min_size=0, epochs=0)


def test_the_result_saves_loads_and_converts(tmp_path):
    rng = np.random.default_rng(3)
    model, x = _convnet(rng), rng.random((4, 12, 12, 3)).astype("float32")
    small = factorize(model, rank={"c1": 2, "c2": 4, "c3": 3, "logits": 4}, epochs=0)
    small.save(tmp_path / "small.keras")
    loaded = load_model(tmp_path / "small.keras")  # safe mode: plain Dense/Conv layers only
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in small.layers]
    assert {"c1_lowrank", "c2_lowrank", "c3_lowrank", "logits_lowrank"} <= {layer.name for layer in loaded.layers}
    np.testing.assert_allclose(_outputs(loaded, x), _outputs(small, x), atol=1e-6)
    np.testing.assert_allclose(to_tflite(small).predict(x), _outputs(small, x), atol=1e-4)


def test_digits_mlp_keeps_its_accuracy_after_fine_tuning():
    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=64)
    model = tfopt.models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes)  # 300-100
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_ds, epochs=2, verbose=0)
    small, report = factorize(model, train_ds, energy=0.9, epochs=1, val_ds=val_ds, verbose=0, return_report=True)
    assert set(report["layers"]) == {"dense1", "dense2"} and "logits" in report["skipped"]  # 1,010 < min_size
    assert report["params_after"] < report["params_before"] and report["flops_after"] < report["flops_before"]
    assert small.optimizer is not None and small.loss is model.loss  # compiled like the model
    assert small.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"] > 0.5  # chance is 0.1


# ---------------------------------------------------------------- refusals


def test_bad_values_are_named():
    rng = np.random.default_rng(4)
    model = _mlp(rng)
    for energy in (0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=f"energy={energy!r} is out of range; allowed: 0 < energy <= 1"):
            factorize(model, energy=energy, epochs=0)
    with pytest.raises(ConfigError, match=r"rank=0 is out of range; allowed: an integer >= 1"):
        factorize(model, rank=0, epochs=0)
    with pytest.raises(ConfigError, match=r"rank=2.5 is out of range"):
        factorize(model, rank={"wide": 2.5}, epochs=0)
    with pytest.raises(ConfigError, match=r"rank=17 is larger than layer 'wide' allows; allowed: 1 <= rank <= 16 "
                                          r"\(min of its 16 x 48 kernel\), factorizing pays up to rank 11"):
        factorize(model, rank={"wide": 17}, epochs=0)
    with pytest.raises(ConfigError, match=r"rank=17 is larger than layer 'wide' allows"):
        factorize(model, rank=17, layers=["wide"], epochs=0)
    with pytest.raises(ConfigError, match=r"rank=40 fits no layer; allowed per layer: wide <= 11, mid <= 21"):
        factorize(model, rank=40, min_size=0, epochs=0)
    with pytest.raises(ConfigError, match=r"target_flops=0 is out of range; allowed: 0 < target_flops"):
        factorize(model, target_flops=0, epochs=0)
    with pytest.raises(ConfigError, match=r"target_flops=1.5 is out of range; allowed: a fraction 0 < target_flops "
                                          r"< 1 of the model's multiply-adds, or a whole count of them"):
        factorize(model, target_flops=1.5, epochs=0)
    with pytest.raises(ConfigError, match=r"give rank=4 or target_flops=0.5, not both"):
        factorize(model, rank=4, target_flops=0.5, epochs=0)
    with pytest.raises(ConfigError, match=r"epochs=1 fine-tunes on train_ds, which is None"):
        factorize(model)
    with pytest.raises(DataError, match="train_ds must be a tf.data.Dataset"):
        factorize(model, np.zeros((4, 16)))
    with pytest.raises(ConfigError, match=r"epochs=-1 is out of range; allowed: an integer >= 0"):
        factorize(model, epochs=-1)


def test_layers_that_cannot_be_factorized_are_named():
    rng = np.random.default_rng(5)
    model = _mlp(rng)
    with pytest.raises(ConfigError, match=r"layers entry 'nosuch' matches no layer of the model; allowed: layer "
                                          r"names \(wide, mid, out\)"):
        factorize(model, layers=["nosuch"], epochs=0)
    with pytest.raises(ConfigError, match=r"rank names layers \['nosuch'\] the model does not have; allowed: wide, "
                                          r"mid, out"):
        factorize(model, rank={"nosuch": 2}, epochs=0)
    conv = _convnet(rng)
    with pytest.raises(UnsupportedLayerError, match=r"cannot factorize layer 'flatten': Flatten is not one of Dense, "
                                                    r"Conv1D, Conv2D\. Allowed: .*layers of this model: c1, c2, c3"):
        factorize(conv, layers=["flatten"], epochs=0)
    tiny = keras.Sequential([keras.layers.Dense(2, input_shape=(2,), name="d")])
    with pytest.raises(CompressionError, match=r"nothing to factorize in .*d: no rank pays for its 2 x 2 kernel"):
        factorize(tiny, min_size=0, epochs=0)
    with pytest.raises(CompressionError, match=r"nothing to factorize in .*has no Dense, Conv1D, Conv2D layer"):
        factorize(keras.Sequential([keras.layers.Flatten(input_shape=(2, 2))]), epochs=0)
    _, report = factorize(model, rank=2, epochs=0, return_report=True)  # min_size=1024 by default
    assert report["skipped"] == {"wide": "its kernel has 768 weights, fewer than min_size=1024",
                                 "out": "its kernel has 120 weights, fewer than min_size=1024"}
    qat = tfmot.quantization.keras.quantize_model(keras.Sequential([keras.layers.Dense(4, input_shape=(8,))]))
    with pytest.raises(UnsupportedLayerError, match="quantization-aware model; factorize the float model"):
        factorize(qat, epochs=0)


# ---------------------------------------------------------------- the recipe stage

RECIPE = {"name": "lowrank", "seed": 0, "data": {"name": "digits"},
          "model": {"builder": "mlp", "args": {"units": [128]}},
          "training": {"epochs": 1, "batch_size": 64},
          "stages": ["train", {"factorize": {"energy": 0.8}}]}


def test_recipe_stage_validates_and_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"energy=1.5 is out of range; allowed: 0 < value <= 1"):
        load_recipe({**RECIPE, "stages": ["train", {"factorize": {"energy": 1.5}}]})
    with pytest.raises(ConfigError, match=r"target_flops=2.5 is out of range; allowed: a fraction"):
        load_recipe({**RECIPE, "stages": ["train", {"factorize": {"target_flops": 2.5}}]})
    with pytest.raises(ConfigError, match=r"'factorize' after 'prune' loses it"):
        load_recipe({**RECIPE, "stages": ["train", {"prune": {"target_sparsity": 0.5}}, "factorize"]})
    with pytest.raises(ConfigError, match=r"'factorize' after 'quantize_aware' is not supported"):
        load_recipe({**RECIPE, "stages": ["train", "quantize_aware", "factorize"]})
    results = run_recipe(RECIPE, run_dir=tmp_path, verbose=0)
    metrics = results["stages"][1]["metrics"]
    assert metrics["ranks"] == {name: v["rank"] for name, v in metrics["report"]["layers"].items()}
    assert set(metrics["ranks"]) == {"dense1", "logits"}  # 64 x 128 and 128 x 10 kernels, both >= min_size
    assert metrics["flops_after"] < metrics["flops_before"] == 64 * 128 + 128 * 10
    saved = load_model(tmp_path / "02_factorize" / "model.keras")
    assert [layer.name for layer in saved.layers][2:4] == ["dense1_lowrank", "dense1"]
    assert flops(saved) == metrics["flops_after"]
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    assert np.isfinite(saved(tf.constant(x)).numpy()).all()


def test_search_trials_apply_it_from_their_space_keys():
    from tfopt.tune import spaces
    from tfopt.tune import training as tune_training

    validators = spaces.compression_keys()
    assert validators["factorize_energy"](0.8) == 0.8 and validators["factorize_energy"](None) is None  # None: off
    with pytest.raises(ConfigError, match=r"factorize_energy=1.5 is out of range; allowed: 0 < value <= 1"):
        validators["factorize_energy"](1.5)
    rng = np.random.default_rng(6)
    model = _mlp(rng)
    model.compile(optimizer="adam", loss="mse")
    chain = [t.name for t in tune_training.chain()]
    assert chain.index("factorize") < chain.index("prune")  # factors first: pruning them keeps the zeros
    small = tune_training.compress(model, None, {"factorize_energy": 1.0, "factorize_epochs": 0})
    assert small.get_layer("mid_lowrank").units == 3  # "mid" has 1,920 weights; "wide" is below min_size
