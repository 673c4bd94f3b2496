"""4-bit weight QAT (quantize_aware_int4): kernels on the LiteRT int4 levels, stored exactly in the int4 file, zeros
kept, the other kernels reported, and the recipe stage."""

import json

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tf
from tfopt.compress import prune, quantize_aware_int4, snap_to_int4, sparsity
from tfopt.errors import ConfigError, UnsupportedLayerError
from tfopt.export import evaluate, tflite_weight_bits, tflite_weights, to_tflite
from tfopt.pipeline import load_recipe, run_recipe
from tfopt.saving import load_model

_CACHE = {}


def _digits():
    if "data" not in _CACHE:
        _CACHE["data"] = tfopt.data.load("digits", batch_size=32)
    return _CACHE["data"]


def _pruned_cnn():
    """A small CNN on the 8x8 digits (conv, dense, logits), trained 3 epochs and pruned to 80%, cached."""
    train_ds, *_ = _digits()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Dense(64, activation="relu", name="hidden")(keras.layers.Flatten(name="flat")(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    if "pruned" not in _CACHE:
        model.fit(train_ds, epochs=3, verbose=0)
        _CACHE["pruned"] = [w.copy() for w in prune(model, train_ds, 0.8, epochs=2, verbose=0).get_weights()]
    model.set_weights(_CACHE["pruned"])
    return model


def _stored_exactly(kernel: np.ndarray, codes: np.ndarray) -> bool:
    """Whether a file's int4 ``codes`` (output channel first) times each channel's scale ``max|w| / 7`` (the
    quantizer's) give back every weight of the Keras ``kernel``: true only for a kernel already on the levels
    (post-training int4 rounds the others)."""
    channels = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1).astype(np.float64)
    scale = np.abs(channels).max(axis=1, keepdims=True) / 7
    return np.allclose(codes.reshape(channels.shape[0], -1) * scale, channels, rtol=1e-6, atol=1e-9)


def test_snap_to_int4_puts_each_channel_on_15_levels_of_its_own_scale():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    kernel[..., 2] = 0  # an all-zero channel stays zero
    snapped = snap_to_int4(kernel)
    assert np.array_equal(np.abs(snapped).max(axis=(0, 1, 2)), np.abs(kernel).max(axis=(0, 1, 2)))  # max kept
    for c in range(6):
        levels = np.unique(np.round(snapped[..., c] / (np.abs(kernel[..., c]).max() / 7 or 1)))
        assert levels.size <= 15 and np.abs(levels).max() <= 7
    assert not snapped[..., 2].any()
    assert np.abs(snapped - kernel).max() <= np.abs(kernel).max() / 14 + 1e-6  # at most half a level away
    assert np.array_equal(snap_to_int4(snapped), snapped)  # on the levels already: unchanged


def test_the_int4_file_stores_every_trained_kernel_exactly_and_keeps_the_zeros():
    """Pruned 80%, fine-tuned through 4-bit weights: the file's codes are the Keras kernels' own, value for value,
    each channel holds at most 15 values, every pruned weight is still 0, and the file's accuracy is measured."""
    train_ds, _, test_ds, _ = _digits()
    pruned = _pruned_cnn()
    four, report = quantize_aware_int4(pruned, train_ds, epochs=2, preserve_sparsity=True, learning_rate=1e-3,
                                       return_report=True, verbose=0)
    assert report == {"on_levels": ["conv", "hidden", "logits"], "left": {}}
    assert not any("quant" in layer.name for layer in four.layers)  # a plain model, no tfmot wrapper
    assert sparsity(four)["overall"] == pytest.approx(sparsity(pruned)["overall"])
    for layer in ("conv", "hidden", "logits"):
        assert np.array_equal(pruned.get_layer(layer).kernel.numpy() == 0, four.get_layer(layer).kernel.numpy() == 0)
    tfl = to_tflite(four, "int4")
    stored = tflite_weights(tfl.content)
    assert {tflite_weight_bits(tfl.content)[name] for name in stored} == {4}
    for layer, name in (("conv", "model/conv/Conv2D"), ("hidden", "model/hidden/MatMul"),
                        ("logits", "model/logits/MatMul")):
        codes = stored[name].reshape(stored[name].shape[0], -1)
        assert _stored_exactly(four.get_layer(layer).kernel.numpy(), codes), layer  # exactly what it trained
        assert not _stored_exactly(pruned.get_layer(layer).kernel.numpy(), tflite_weights(
            to_tflite(pruned, "int4").content)[name]), layer  # post-training int4 rounds the weights
        assert max(np.unique(channel).size for channel in codes) <= 15
    assert evaluate(tfl, test_ds, runs=0)["accuracy"] > 0.5  # measured, never assumed; chance is 0.1


def test_epochs_0_snaps_only_and_other_kernels_are_reported_left():
    """With epochs=0 the kernels are only snapped (the file then stores them exactly too); an LSTM is left to the
    quantizer (and the converter fuses it), a depthwise convolution too; nested models are flattened first."""
    lstm = tfopt.models.build("lstm", input_shape=(12, 6), num_classes=3)
    snapped, report = quantize_aware_int4(lstm, None, epochs=0, return_report=True)
    assert report == {"on_levels": ["logits"], "left": {"lstm1": "LSTM"}}
    assert np.array_equal(snapped.get_layer("logits").kernel.numpy(), snap_to_int4(lstm.get_layer("logits").kernel))
    assert np.array_equal(snapped.get_layer("lstm1").get_weights()[0], lstm.get_layer("lstm1").get_weights()[0])
    inner = keras.Sequential([keras.layers.DepthwiseConv2D(3, name="depthwise", input_shape=(8, 8, 2)),
                              keras.layers.Conv2D(4, 1, name="pointwise")], name="block")
    inp = keras.Input((8, 8, 2))
    nested = keras.Model(inp, keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(inner(inp))))
    _, report = quantize_aware_int4(nested, None, epochs=0, return_report=True)
    assert report == {"on_levels": ["pointwise", "logits"], "left": {"depthwise": "DepthwiseConv2D"}}


@pytest.mark.parametrize("kwargs,error,match", [
    ({"epochs": -1}, ConfigError, r"epochs=-1 is out of range"),
    ({"epochs": 1.5}, ConfigError, r"epochs=1.5 must be an integer >= 0"),
    ({"learning_rate": 0.0}, ConfigError, r"learning_rate=0.0 is out of range"),
    ({"preserve_sparsity": "yes"}, ConfigError, r"preserve_sparsity='yes' must be true or false"),
])
def test_bad_arguments_are_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        quantize_aware_int4(_pruned_cnn(), None, **{"epochs": 0, **kwargs})


def test_a_quantization_aware_or_tfmot_wrapped_model_is_refused_with_what_to_do():
    from tfopt._keras import tfmot
    from tfopt.compress import quantize_aware

    train_ds, *_ = _digits()
    model = _pruned_cnn()
    with pytest.raises(ConfigError, match=r"needs a float model, and 'model' is quantization-aware .* give it the "
                                          r"model from before quantize_aware"):
        quantize_aware_int4(quantize_aware(model, train_ds, epochs=0), train_ds, epochs=0)
    with pytest.raises(ConfigError, match=r"'prune_low_magnitude_conv', .* still wear tfmot's pruning or clustering "
                                          r"wrapper: strip them first"):
        quantize_aware_int4(tfmot.sparsity.keras.prune_low_magnitude(model), train_ds, epochs=0)


def test_a_model_without_a_dense_or_convolution_kernel_is_refused_by_name():
    model = keras.Sequential([keras.layers.Embedding(20, 4, input_length=5, name="emb"),
                              keras.layers.GlobalAveragePooling1D()], name="bag")
    with pytest.raises(UnsupportedLayerError, match=r"no Dense, Conv1D or Conv2D kernel in model 'bag' to train on "
                                                    r"the int4 levels; kernels: \{'emb': 'Embedding'\}"):
        quantize_aware_int4(model, None, epochs=0)


RECIPE = {"name": "int4qat", "seed": 0, "data": {"name": "digits"},
          "model": {"builder": "mlp", "args": {"units": [64]}},
          "training": {"epochs": 2, "batch_size": 64},
          "stages": ["train", {"prune": {"target_sparsity": 0.7, "epochs": 1}},
                     {"quantize_aware_int4": {"epochs": 1, "teacher": "train"}},
                     {"export": {"variants": [{"name": "int4", "quantization": "int4"}]}}]}


def test_recipe_stage_keeps_the_pruning_and_exports_exactly(tmp_path):
    with pytest.raises(ConfigError, match=r"preserve_sparsity: true needs an earlier 'prune' stage"):
        load_recipe({**RECIPE, "stages": ["train", {"quantize_aware_int4": {"preserve_sparsity": True}}]})
    with pytest.raises(ConfigError, match=r"epochs=-2 is out of range"):
        load_recipe({**RECIPE, "stages": ["train", {"quantize_aware_int4": {"epochs": -2}}]})
    results = run_recipe(RECIPE, run_dir=tmp_path, verbose=0)
    stage = results["stages"][2]
    assert stage["metrics"]["report"]["on_levels"] == ["dense1", "logits"]
    saved = load_model(tmp_path / "03_quantize_aware_int4" / "model.keras")
    assert sparsity(saved)["overall"] >= 0.69  # preserve_sparsity unset: true after a prune stage
    files = sorted(tmp_path.glob("04_export/*.tflite"))
    stored = tflite_weights(files[0].read_bytes())
    kernel = saved.get_layer("dense1").kernel.numpy()
    assert _stored_exactly(kernel, stored["mlp/dense1/MatMul"])
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"][2]["name"] == "quantize_aware_int4"


def test_a_conv1d_kernel_in_a_nested_model_trains_on_the_levels_and_is_stored_exactly():
    """tfmot's per-channel quantizer takes 2-D and 4-D tensors only: a Conv1D kernel (3-D) once failed inside it with
    UnboundLocalError. It now trains (the kernel changes) and the file stores it exactly, inside a nested model."""
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8), dtype=np.float32), np.arange(64) % 10
    train_ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.layers.Conv1D(8, 3, activation="relu", input_shape=(8, 8), name="c1"),
                              keras.layers.Flatten(), keras.layers.Dense(16, name="d_in")], name="inner")
    inp = keras.Input((8, 8))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(inner(inp)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    four, report = quantize_aware_int4(model, train_ds, epochs=2, learning_rate=1e-2, return_report=True, verbose=0)
    assert report == {"on_levels": ["c1", "d_in", "logits"], "left": {}}
    kernel = four.get_layer("c1").kernel.numpy()
    assert not np.allclose(kernel, snap_to_int4(inner.get_layer("c1").kernel.numpy()))  # trained, not only snapped
    stored = tflite_weights(to_tflite(four, "int4").content)
    codes = next(value for name, value in stored.items() if "/c1/" in name)
    assert _stored_exactly(kernel, codes.reshape(codes.shape[0], -1))


def test_a_convolution_folded_with_its_batchnorm_is_still_stored_exactly():
    """The converter folds Conv2D + BatchNormalization into one kernel, each output channel times one factor
    gamma / sqrt(var + eps): a channel on its own levels stays on them (the scale moves with it), so the file stores
    the folded kernel exactly too."""
    train_ds, *_ = _digits()
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inp)
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(name="bn")(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h)))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_ds, epochs=1, verbose=0)  # BatchNorm statistics and scales away from 1
    four = quantize_aware_int4(model, train_ds, epochs=1, verbose=0)
    gamma, _, _, var = (w.numpy() for w in four.get_layer("bn").weights)
    assert np.abs(gamma / np.sqrt(var + 1e-3) - 1).max() > 0.05  # the fold changes the kernel
    folded = four.get_layer("conv").kernel.numpy() * gamma / np.sqrt(var + four.get_layer("bn").epsilon)
    codes = tflite_weights(to_tflite(four, "int4").content)["model/conv/Conv2D"]
    assert _stored_exactly(folded, codes.reshape(codes.shape[0], -1))


def test_families_a_transformer_and_mobilenet_v2_report_what_is_on_the_levels():
    """The Transformer's Dense layers go on the levels, attention and the position embedding are left; MobileNetV2's
    convolutions go on the levels, its depthwise convolutions are left."""
    transformer = tfopt.models.build("transformer", input_shape=(6, 4), num_classes=3)
    snapped, report = quantize_aware_int4(transformer, None, epochs=0, return_report=True)
    dense = [layer.name for layer in transformer.layers if type(layer) is keras.layers.Dense]
    assert report["on_levels"] == dense and "logits" in dense
    assert {"MultiHeadAttention", "AddPositionEmbedding"} <= set(report["left"].values())
    assert set(report["left"].values()) <= {"MultiHeadAttention", "AddPositionEmbedding"}
    x = np.random.default_rng(0).random((2, 6, 4), dtype=np.float32)
    assert np.abs(snapped.predict(x, verbose=0) - transformer.predict(x, verbose=0)).max() < 0.5
    mobilenet = tfopt.models.build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.35)
    _, report = quantize_aware_int4(mobilenet, None, epochs=0, return_report=True)
    assert len(report["on_levels"]) == sum(type(layer) in (keras.layers.Conv2D, keras.layers.Dense)
                                           for layer in tfopt.compress.flatten_model(mobilenet).layers) > 30
    assert set(report["left"].values()) == {"DepthwiseConv2D"}


# ---------------------------------------------------------------- killed and resumed (a subprocess, SIGKILL)


def _worker(out: str, backup: str) -> None:
    """A pruned MLP fine-tuned through int4 weights for 2 epochs with a kept backup; the weights go to ``out``.npz."""
    from tfopt._keras import tf

    tf.config.experimental.enable_op_determinism()
    from tests.helpers import shuffled_digits

    tfopt.set_seed(0)
    x, y = shuffled_digits(images=False)
    train, val, _, _ = tfopt.data.from_arrays(x[:900], y[:900], batch_size=64, seed=0)
    inp = keras.Input((64,))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Dense(32, activation="relu")(inp)))
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    model.fit(train, epochs=1, verbose=0)
    pruned = prune(model, train, 0.5, epochs=1, verbose=0)
    history = [keras.callbacks.CSVLogger(f"{out}.csv", append=True)]
    four = quantize_aware_int4(pruned, train, epochs=2, preserve_sparsity=True, val_ds=val, verbose=0,
                               callbacks=history, backup_dir=backup, keep_backup=True, learning_rate=1e-3)
    np.savez(out, *four.get_weights())


def _run(tmp, name: str, fault: str | None = None) -> int:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("TFOPT_FAULT")}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    if fault:
        env["TFOPT_FAULT"] = fault
    backup = tmp / f"{name if name == 'ref' else 'run'}-backup"
    code = f"from tests.test_quantize_int4 import _worker; _worker({str(tmp / name)!r}, {str(backup)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def test_killed_in_its_second_epoch_it_resumes_to_the_uninterrupted_weights(tmp_path):
    import csv
    import signal

    assert _run(tmp_path, "ref") == 0
    assert _run(tmp_path, "run", "quantize_aware_int4:epoch:1:batch:3") == -signal.SIGKILL
    with open(tmp_path / "run.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0"]
    assert _run(tmp_path, "run") == 0
    with open(tmp_path / "run.csv") as f, open(tmp_path / "ref.csv") as g:
        assert list(csv.DictReader(f)) == list(csv.DictReader(g))  # the same losses, epoch by epoch
    with np.load(tmp_path / "run.npz") as run, np.load(tmp_path / "ref.npz") as ref:
        assert len(run.files) == len(ref.files) == 4
        for key in ref.files:
            np.testing.assert_array_equal(run[key], ref[key])
