"""tfopt.export: conversion variants, LiteRT accuracy/size/latency, agreement with Keras, bad input."""

import gzip

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, DataError, ExportError, KerasVersionError
from tfopt.export import TFLiteModel, compare, evaluate, tflite_weights, to_tflite, weight_stats


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).reshape(-1, 8, 8, 1).astype("float32"), y.astype("int32")


@pytest.fixture(scope="module")
def trained(digits):
    keras.utils.set_random_seed(0)
    x, y = digits
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, name="logits")(h)
    model = keras.Model(inp, out)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=8, batch_size=32, verbose=0)
    return model


def _val(digits):
    x, y = digits
    return tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(50)


@pytest.mark.parametrize("quantization,tol", [(None, 1e-5), ("float16", 5e-3), ("dynamic", 0.1), ("int8", 0.5), ("int16x8", 0.1)])
def test_variants_match_keras_and_have_expected_weight_types(trained, digits, quantization, tol):
    x, _ = digits
    tfl = to_tflite(trained, quantization=quantization, representative_data=x[:200])
    ref = trained.predict(x[1400:1450], verbose=0)
    out = tfl.predict(x[1400:1450])
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < tol
    kinds = {w.dtype.name for w in tflite_weights(tfl.content).values()}
    expected = {None: {"float32"}, "float16": {"float16"}, "dynamic": {"int8"}, "int8": {"int8"}, "int16x8": {"int8"}}
    assert expected[quantization] <= kinds


def test_quantized_files_are_smaller_and_gzip_is_measured(trained, digits):
    x, _ = digits
    f32 = to_tflite(trained)
    i8 = to_tflite(trained, "int8", representative_data=x[:100])
    assert f32.gzip_bytes == len(gzip.compress(f32.content, 9, mtime=0))
    assert i8.bytes < f32.bytes / 2


def test_int8_io_model_takes_int8_and_evaluates_accurately(trained, digits):
    x, _ = digits
    tfl = to_tflite(trained, "int8", representative_data=x[:200], io_dtype="int8")
    assert tfl.interpreter().get_input_details()[0]["dtype"] == np.int8
    res = evaluate(tfl, _val(digits), runs=5, return_predictions=True)
    keras_top1 = np.argmax(trained.predict(x[1400:], verbose=0), axis=-1)
    assert res["input_dtype"] == "int8"
    assert res["accuracy"] > 0.8  # chance is 0.1
    # the same model quantized: paired agreement with the float model, not a gap between two accuracies
    # (which one near tie flipped on another CPU can move)
    assert np.mean(np.asarray(res["predictions"]) == keras_top1) >= 0.95
    assert res["n"] == len(x) - 1400


def test_evaluate_reports_accuracy_size_and_latency(trained, digits, tmp_path):
    tfl = to_tflite(trained, path=tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").read_bytes() == tfl.content
    res = evaluate(tmp_path / "m.tflite", _val(digits), warmup=2, runs=20)
    keras_acc = trained.evaluate(_val(digits), verbose=0)[1]
    # a float32 file computes what Keras computes, up to the CPU's rounding: at most one near tie may flip
    assert res["accuracy"] == pytest.approx(keras_acc, abs=1.5 / res["n"])
    assert res["bytes"] == tfl.bytes and res["gzip_bytes"] == tfl.gzip_bytes
    assert 0 < res["latency_us_p50"] <= res["latency_us_p90"]
    assert res["runs"] == 20


def test_compare_reports_agreement(trained, digits):
    res = compare(trained, to_tflite(trained), _val(digits))
    assert res["agreement"] >= 1 - 1.5 / res["n"]  # at most one near tie flipped by the CPU's rounding
    assert res["max_abs_diff"] < 1e-4
    assert res["keras_accuracy"] > 0.8 and res["tflite_accuracy"] == pytest.approx(res["keras_accuracy"],
                                                                                   abs=1.5 / res["n"])


def test_lstm_converts_at_fixed_batch_and_matches_keras():
    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 6))
    out = keras.layers.Dense(3)(keras.layers.LSTM(8)(inp))
    model = keras.Model(inp, out)
    tfl = to_tflite(model)
    assert any("fixed batch 1" in n for n in tfl.notes)
    ops = [op["op_name"] for op in tfl.interpreter()._get_ops_details()]
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops
    x = np.random.default_rng(0).random((5, 12, 6), dtype=np.float32)
    # Several samples in a row: the fused LSTM's state must be reset between them.
    np.testing.assert_allclose(tfl.predict(x), model.predict(x, verbose=0), atol=1e-5)


def test_sparsity_is_visible_in_the_file(trained):
    model = keras.models.clone_model(trained)
    weights = trained.get_weights()
    kernel = weights[2].copy()
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.8)] = 0
    weights[2] = kernel
    model.set_weights(weights)
    tfl = to_tflite(model)
    dense = [w for w in tflite_weights(tfl.content).values() if w.size == kernel.size]
    assert len(dense) == 1 and (dense[0] == 0).mean() == pytest.approx((kernel == 0).mean(), abs=1e-6)


def test_bad_input_is_named(trained, tmp_path):
    with pytest.raises(ConfigError, match="int8.*representative_data"):
        to_tflite(trained, "int8")
    with pytest.raises(ConfigError, match="quantization='int3' is not allowed; allowed: .*'int4'"):
        to_tflite(trained, "int3")  # int4 is offered (the LiteRT quantizer), int3 is not
    with pytest.raises(ConfigError, match="io_dtype='int8'"):
        to_tflite(trained, None, io_dtype="int8")
    with pytest.raises(ExportError, match="no TFLite file"):
        TFLiteModel.load(tmp_path / "missing.tflite")
    trained.save(tmp_path / "m.keras")
    with pytest.raises(ExportError, match=r"m.keras' is not a TFLite file \(no TFL3 identifier\): a .keras model "
                                          r"\(a zip archive\): export it first"):
        evaluate(str(tmp_path / "m.keras"), (np.zeros((1, 8, 8, 1), np.float32), np.zeros((1,), np.int32)))
    (tmp_path / "g.tflite").write_bytes(b"garbage!")
    with pytest.raises(ExportError, match=r"is not a TFLite file \(no TFL3 identifier\): it starts with b'garbage!'"):
        TFLiteModel.load(tmp_path / "g.tflite")
    with pytest.raises(ExportError, match="LiteRT could not load"):
        TFLiteModel(b"not a flatbuffer").predict(np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(DataError, match="empty"):
        evaluate(to_tflite(trained), (np.zeros((0, 8, 8, 1), np.float32), np.zeros((0,), np.int32)))
    with pytest.raises(KerasVersionError, match="expected a tf_keras.Model"):
        to_tflite(object())


def test_sparse_encoded_int8_runs_on_builtin_kernels_when_xnnpack_refuses(trained, digits):
    x, _ = digits
    model = keras.models.clone_model(trained)
    weights = trained.get_weights()
    kernel = weights[2]
    kernel[np.abs(kernel) < np.quantile(np.abs(kernel), 0.9)] = 0
    model.set_weights(weights)
    tfl = to_tflite(model, "int8", representative_data=x[:100], sparse=True)
    plain = to_tflite(model, "int8", representative_data=x[:100])
    assert tfl.bytes < plain.bytes  # the sparse encoding is really in the file
    np.testing.assert_allclose(tfl.predict(x[:20]), plain.predict(x[:20]), atol=0.3)
    sparse = evaluate(tfl, _val(digits), runs=3, return_predictions=True)
    dense = evaluate(plain, _val(digits), runs=0, return_predictions=True)
    assert sparse["accuracy"] > 0.3  # 90% of the kernel zeroed without fine-tuning (0.56 seen); chance is 0.1
    # one file with two encodings of the same int8 weights: paired agreement of the predictions
    assert np.mean(np.asarray(sparse["predictions"]) == np.asarray(dense["predictions"])) >= 0.95
    # read back from the sparse encoding, the pruned kernel is the dense file's, value for value
    (read,) = [w for w in tflite_weights(tfl.content).values() if w.shape == kernel.T.shape]
    (stored,) = [w for w in tflite_weights(plain.content).values() if w.shape == kernel.T.shape]
    np.testing.assert_array_equal(read, stored)
    assert read.dtype == np.int8 and (read == 0).mean() >= 0.9
    assert weight_stats(tfl.content)["sparsity"] == pytest.approx(weight_stats(plain.content)["sparsity"])


def test_sparse_encoded_convolution_and_dense_kernels_read_back_dense():
    """The converter's sparse encoding (leading dimensions dense, the last compressed) is expanded again, so the
    file's kernels, sparsity and values are the dense file's, for a convolution as for a Dense kernel."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, name="conv")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x)))
    weights = model.get_weights()
    for i in (0, 2):  # the two kernels: 80% zeros
        weights[i][np.abs(weights[i]) < np.quantile(np.abs(weights[i]), 0.8)] = 0
    model.set_weights(weights)
    files = {flag: to_tflite(model, sparse=flag).content for flag in (True, False)}
    assert len(files[True]) < 0.5 * len(files[False])  # the encoding is really in the file
    sparse, dense = (sorted(tflite_weights(files[flag]).values(), key=lambda w: w.size) for flag in (True, False))
    assert [w.shape for w in sparse] == [(16, 3, 3, 3), (10, 576)]
    for read, stored in zip(sparse, dense):
        np.testing.assert_array_equal(read, stored)
        assert (read == 0).mean() == pytest.approx(0.8, abs=0.01)


def test_written_files_get_normal_permissions(trained, tmp_path):
    import os

    path = to_tflite(trained, path=tmp_path / "m.tflite").path
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
