"""Which technique works on which model family: the cells of the README's technique table that no other test
backs (recurrent models, the Transformer, the Keras applications), each on a tiny model and random data.

What is asserted is what holds on any CPU: sparsities and distinct values reached, the weight types stored in the
TFLite file, the error a technique gives where it does not apply; never an accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tf
from tfopt.compress import cluster, cluster_counts, distill, factorize, prune, prune_channels, quantize_aware
from tfopt.errors import CompressionError, UnsupportedLayerError
from tfopt.export import to_tflite
from tfopt.export.tflite import weight_stats
from tfopt.models import build

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _data(shape, n: int = 32, batch_size: int = 8, seed: int = 0):
    """(x, tf.data.Dataset of (x, y) batches): ``n`` normal samples of ``shape``, labels 0..2 in turn."""
    x = np.random.default_rng(seed).normal(size=(n, *shape)).astype("float32")
    return x, tf.data.Dataset.from_tensor_slices((x, np.arange(n) % 3)).batch(batch_size)


def _compiled(model):
    model.compile(optimizer="adam", loss=LOSS)
    return model


def _relative_error(actual, expected) -> float:
    """Largest difference relative to the output's scale (untrained deep nets give tiny logits)."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


# ------------------------------------------------------------------------------- recurrent (the lstm builder)
def _lstm(features: int = 3, units: int = 8):
    tfopt.set_seed(0)
    return _compiled(build("lstm", input_shape=(4, features), units=(units,), num_classes=3))


def test_lstm_prune_reaches_the_target_in_its_kernel_and_recurrent_kernel():
    # tfmot's registry prunes an LSTM cell's kernel and recurrent kernel: each measured under its own key.
    _, train = _data((4, 3))
    _, report = prune(_lstm(), train, 0.5, epochs=2, verbose=0, return_report=True)
    assert set(report["reached"]) == {"lstm1/kernel", "lstm1/recurrent_kernel", "logits"}
    assert all(value >= 0.5 - 1e-6 for value in report["reached"].values())


def test_lstm_cluster_limits_its_kernel_and_recurrent_kernel():
    _, train = _data((4, 3))
    counts = cluster_counts(cluster(_lstm(), train, n_clusters=4, verbose=0))["layers"]
    assert set(counts) == {"lstm1/kernel", "lstm1/recurrent_kernel", "logits"}
    assert max(counts.values()) <= 4


def test_lstm_channels_and_factorize_say_the_recurrent_layer_is_not_theirs():
    # prune_channels keeps a recurrent layer whole (and the logits): the lstm builder leaves it nothing to prune;
    # factorize takes Dense and convolutions only.
    model = _lstm()
    with pytest.raises(CompressionError, match="nothing to prune in 'lstm': every channel group is kept whole"):
        prune_channels(model, fraction=0.5, epochs=0, verbose=0)
    with pytest.raises(UnsupportedLayerError, match=r"cannot factorize layer 'lstm1': LSTM is not one of Dense, "
                                                     r"Conv1D, Conv2D.*factorizable layers of this model: logits"):
        factorize(model, layers=["lstm1"], epochs=0)


def test_lstm_post_training_quantizations_and_what_each_stores():
    # Gate matrices of 40 x 40 (TFLite's dynamic range quantizes weights of 1,024 values or more): dynamic and full
    # int8 (converted in a child process: recurrent layers can crash the converter) store the fused LSTM's weights
    # in int8, float16 in float16; the LiteRT int4 quantizer reaches only the Dense logits (the fused LSTM op's
    # weights stay float32).
    model = _lstm(features=40, units=40)
    x, _ = _data((4, 40), n=16)
    expected = model.predict(x[:3], verbose=0)
    bits = {}
    for quantization in ("float16", "dynamic", "int8", "int4"):
        converted = to_tflite(model, quantization, representative_data=x if quantization == "int8" else None)
        ops = {op["op_name"] for op in converted.interpreter()._get_ops_details()}
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops, quantization
        actual = converted.predict(x[:3])
        assert actual.shape == expected.shape and np.all(np.isfinite(actual))
        bits[quantization] = weight_stats(converted.content, min_size=16)["bits"]
        if quantization == "float16":
            assert _relative_error(actual, expected) < 1e-2
        if quantization == "int8":
            assert any("child process" in note for note in converted.notes)
    assert bits["float16"] == {}  # no integer kernel: float16 ones
    assert bits["dynamic"]["int8"] >= 8 and bits["int8"]["int8"] >= 8  # the 8 gate matrices (and the logits)
    assert bits["int4"] == {"int4": 1}  # the logits only


def test_an_lstm_student_distills_from_an_lstm_teacher():
    _, train = _data((4, 3))
    teacher = _lstm(units=16)
    student = _lstm(units=4)
    before = [w.copy() for w in student.get_weights()]
    distilled = distill(teacher, student, train, temperature=4.0, alpha=0.1, epochs=1, verbose=0)
    assert distilled.count_params() == student.count_params() < teacher.count_params()
    assert any(not np.array_equal(a, b) for a, b in zip(before, distilled.get_weights()))


# -------------------------------------------------------------------------------------------------- Transformer
def _transformer():
    tfopt.set_seed(0)
    return _compiled(build("transformer", input_shape=(6, 4), num_classes=3, num_layers=1, num_heads=2,
                           embed_dim=16, mlp_dim=64, dropout=0.0))


def test_transformer_factorize_splits_the_dense_layers_and_leaves_attention_whole():
    model = _transformer()
    x, train = _data((6, 4))
    thin, report = factorize(model, train, energy=0.5, min_size=0, epochs=0, verbose=0, return_report=True)
    assert {"block1_mlp1", "block1_mlp2"} <= set(report["layers"])
    assert "block1_attention" not in report["layers"]  # MultiHeadAttention is not a Dense/Conv layer
    assert report["flops_after"] < report["flops_before"]
    converted = to_tflite(thin)
    assert _relative_error(converted.predict(x[:3]), thin.predict(x[:3], verbose=0)) < 1e-4


def test_transformer_float16_and_int4_store_their_weight_types():
    # (dynamic and int8 with accuracy: tests/test_transformer.py)
    model = _transformer()
    x, _ = _data((6, 4))
    expected = model.predict(x[:3], verbose=0)
    half = to_tflite(model, "float16")
    assert weight_stats(half.content, min_size=16)["bits"] == {}
    assert _relative_error(half.predict(x[:3]), expected) < 1e-2
    four = to_tflite(model, "int4")
    assert four.notes == ["left float32, the quantizer takes none of their ops (a fused LSTM, an Embedding's GATHER): "
                          "'position_embedding' (AddPositionEmbedding)"]  # a constant added, not a weight op's
    assert weight_stats(four.content, min_size=16)["bits"]["int4"] >= 4  # projections, MLP
    assert np.all(np.isfinite(four.predict(x[:3])))


# --------------------------------------------------------------------------------------------- Keras applications
@pytest.fixture(scope="module")
def mobilenet():
    """MobileNetV2 at 32x32, width 0.35, 3 classes, and a few random images: (model, x, train_ds)."""
    tfopt.set_seed(0)
    model = _compiled(build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=3, alpha=0.35))
    x, train = _data((32, 32, 3), n=16)
    return model, x, train


def test_application_prune_wraps_what_tfmot_can_and_reaches_the_target():
    # tfmot's prune_low_magnitude refuses MobileNetV3Small whole (no registry entry for its TFOpLambda and
    # Rescaling layers, which hold no weights); tfopt.compress.prune wraps the layers holding prunable weights.
    tfopt.set_seed(0)
    model = _compiled(build("mobilenet_v3_small", input_shape=(32, 32, 3), num_classes=3, alpha=0.75))
    _, train = _data((32, 32, 3), n=16, batch_size=4)
    _, report = prune(model, train, 0.5, epochs=1, verbose=0, return_report=True)
    kinds = {type(model.get_layer(name)).__name__ for name in report["pruned_layers"]}
    assert kinds == {"Conv2D", "Dense"}  # depthwise kernels: no entry in tfmot's registry
    assert all(value >= 0.5 - 0.01 for value in report["reached"].values())


def test_application_cluster_limits_every_kernel(mobilenet):
    model, _, train = mobilenet
    clustered = cluster(model, train, n_clusters=8, verbose=0)
    counts = cluster_counts(clustered)["layers"]
    assert len(counts) > 30 and max(counts.values()) <= 8


def test_application_factorize_splits_1x1_convolutions(mobilenet):
    model, x, _ = mobilenet
    thin, report = factorize(model, energy=0.5, epochs=0, verbose=0, return_report=True)
    assert report["layers"] and {layer["kind"] for layer in report["layers"].values()} <= {"Conv2D", "Dense"}
    assert report["flops_after"] < report["flops_before"]
    assert thin.predict(x[:2], verbose=0).shape == (2, 3)


def test_application_quantize_aware_quantizes_every_layer(mobilenet):
    model, _, _ = mobilenet
    _, report = quantize_aware(model, None, epochs=0, return_report=True)
    assert report["float"] == {} and "logits" in report["quantized"]


@pytest.mark.parametrize("quantization,stored", [("float16", set()), ("dynamic", {"int8"}), ("int8", {"int8"}),
                                                 ("int4", {"int4", "int8"})])  # int4: depthwise in 8 bits
def test_application_post_training_quantizations_store_their_weight_types(mobilenet, quantization, stored):
    # (accuracy on real digits: notebooks/11_compressing_a_keras_application.ipynb)
    model, x, _ = mobilenet
    converted = to_tflite(model, quantization, representative_data=x if quantization == "int8" else None)
    assert set(weight_stats(converted.content)["bits"]) == stored
    actual = converted.predict(x[:2])
    assert actual.shape == (2, 3) and np.all(np.isfinite(actual))
    if quantization == "float16":
        assert _relative_error(actual, model.predict(x[:2], verbose=0)) < 1e-2


def test_an_application_teacher_distills_into_a_small_cnn(mobilenet):
    teacher, _, train = mobilenet
    student = _compiled(build("cnn", input_shape=(32, 32, 3), num_classes=3, filters=(4,), dense=(8,)))
    before = [w.copy() for w in student.get_weights()]
    distilled = distill(teacher, student, train, temperature=4.0, alpha=0.1, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, distilled.get_weights()))
