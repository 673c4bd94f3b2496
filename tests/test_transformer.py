"""The Transformer and ViT builders: trained on real data, exported to TFLite (dynamic, int8) and run in LiteRT,
under tfmot pruning and QAT, distilled, saved and loaded in safe mode; and their argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError
from tfopt.models import AddPositionEmbedding, build, build_for
from tests.helpers import run_model_saving_test, run_serialization_test

CHANCE = 0.1  # ten digits
# What the models reach here (2 epochs; tokens 6): ViT 0.68, rows 0.67, digit tokens 0.8-0.9 (Keras and LiteRT
# float, dynamic and int8 within 2 points); the bar leaves a wide margin above chance.
ABOVE_CHANCE = 0.45
ENCODER = dict(num_layers=2, num_heads=4, embed_dim=32, mlp_dim=64, dropout=0.0)


def _fit(model, train_ds, epochs: int, learning_rate: float):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(train_ds, epochs=epochs, verbose=0)
    return model


def _accuracy(model, test_ds) -> float:
    return float(model.evaluate(test_ds, verbose=0)[1])


@pytest.fixture(scope="module")
def vit_mnist():
    """A small ViT trained 2 epochs on mnist_5k (7x7 patches: 16 tokens): (model, train_ds, test_ds)."""
    tfopt.set_seed(0)
    train_ds, _, test_ds, info = tfopt.data.load("mnist_5k", batch_size=64)
    model = build_for("vit", info, patch_size=7, **ENCODER)
    return _fit(model, train_ds, 2, 1e-3), train_ds, test_ds


@pytest.fixture(scope="module")
def rows_transformer():
    """A Transformer over row-wise MNIST (28 tokens of 28 features) trained 2 epochs: (model, train_ds, test_ds)."""
    tfopt.set_seed(0)
    train_ds, _, test_ds, info = tfopt.data.load("mnist_rows", batch_size=64)
    model = build_for("transformer", info, **ENCODER)
    return _fit(model, train_ds, 2, 1e-3), train_ds, test_ds


@pytest.fixture(scope="module")
def token_transformer():
    """A Transformer over token ids trained 6 epochs: scikit-learn's 8x8 digits as 64 tokens whose ids are the
    pixel intensities 0..16 (a real task on ids: the Embedding, not a projection): (model, train_ds, test_ds)."""
    from sklearn.datasets import load_digits

    tfopt.set_seed(0)
    digits = load_digits()
    ids = digits.images.reshape(-1, 64).astype("int32")
    train_ds, _, test_ds, info = tfopt.data.from_arrays(ids, digits.target.astype("int32"), batch_size=32,
                                                        kind="tokens")
    assert (info.vocab_size, info.seq_len) == (17, 64)
    model = build_for("transformer", info, **ENCODER)
    assert model.input.dtype == tf.int32
    return _fit(model, train_ds, 6, 3e-3), train_ds, test_ds


# ------------------------------------------------------------------------------------ trained, exported
@pytest.mark.parametrize("fixture", ["vit_mnist", "rows_transformer"])
def test_trains_above_chance_and_stays_there_in_litert_dynamic_and_int8(fixture, request):
    from tfopt.export import evaluate, to_tflite

    model, train_ds, test_ds = request.getfixturevalue(fixture)
    assert _accuracy(model, test_ds) > ABOVE_CHANCE
    for quantization in ("dynamic", "int8"):
        converted = to_tflite(model, quantization, representative_data=train_ds, num_samples=100)
        measured = evaluate(converted, test_ds, runs=0)
        assert measured["accuracy"] > ABOVE_CHANCE, (quantization, measured["accuracy"])
        assert measured["n"] == 1000  # the fixed test split of mnist_5k / mnist_rows


def test_token_transformer_trains_and_converts_to_full_int8_calibrated_from_its_dataset(token_transformer):
    # Full int8 with token-id inputs, calibrated from the tf.data training set itself: its ids reach the converter
    # as the model's int32 (not cast to float32, which the converter refuses), the ids stay int32 in the file (a
    # GATHER reads the int8 embedding table) and everything after them is int8.
    from tfopt.export import evaluate, to_tflite
    from tfopt.export.tflite import representative_samples

    model, train_ds, test_ds = token_transformer
    assert _accuracy(model, test_ds) > ABOVE_CHANCE
    assert {x.dtype for [x] in representative_samples(train_ds, 5, np.int32)} == {np.dtype(np.int32)}
    dynamic = to_tflite(model, "dynamic")
    assert evaluate(dynamic, test_ds, runs=0)["accuracy"] > ABOVE_CHANCE
    int8 = to_tflite(model, "int8", representative_data=train_ds, num_samples=100, io_dtype="int8")
    it = int8.interpreter()
    assert it.get_input_details()[0]["dtype"] == np.int32 and it.get_output_details()[0]["dtype"] == np.int8
    ops = {op["op_name"] for op in it._get_ops_details()}
    assert {"GATHER", "BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"} <= ops
    assert evaluate(int8, test_ds, runs=0)["accuracy"] > ABOVE_CHANCE


def test_imdb_reviews_tokens_build_and_train_a_transformer():
    # The tfds text path (mocked: nothing is downloaded): build_for reads vocab_size and seq_len from the data.
    import tensorflow_datasets as tfds

    texts = np.array(["good good movie", "bad awful movie", "a fine good film", "awful"] * 10)

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        n = 40 if str(split).startswith("train") else 8
        data = {"text": texts[:n], "label": np.arange(n, dtype=np.int64) % 2}
        return tf.data.Dataset.from_tensor_slices(data)

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset):
        train_ds, _, _, info = tfopt.data.load("imdb_reviews", batch_size=8, vocab_size=20, seq_len=6)
    model = build_for("transformer", info, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=8)
    assert model.input_shape == (None, 6) and model.output_shape == (None, 2)
    assert model.get_layer("token_embedding").input_dim == info.vocab_size
    _fit(model, train_ds, 1, 1e-3)
    assert np.isfinite(model.history.history["loss"][0])


# ------------------------------------------------------------------------------------------ compression
def _small_transformer():
    return build("transformer", input_shape=(6, 4), num_classes=3, num_layers=1, num_heads=2, embed_dim=8,
                 mlp_dim=8, dropout=0.0)


ATTENTION_KERNELS = [f"block1_attention/{name}/kernel" for name in ("query", "key", "value", "attention_output")]


def _small_data(n: int = 64):
    """Random sequences (6 steps of 4 features) with 3 labels, in batches of 8: enough steps for a schedule."""
    x = np.random.default_rng(0).normal(size=(n, 6, 4)).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x, np.arange(n) % 3)).batch(8)


def test_prune_reaches_half_sparsity_in_the_four_attention_kernels():
    # tfopt.compress.prune follows tfmot's registry: MultiHeadAttention's query/key/value/output kernels (held in its
    # sub-layers) are pruned and measured, each under its own key (the sub-layer named).
    from tfopt.compress import prune, sparsity

    model = _small_transformer()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned, report = prune(model, _small_data(), 0.5, epochs=2, verbose=0, return_report=True)
    assert "block1_attention" in report["pruned_layers"]
    assert all(report["reached"][name] >= 0.5 - 1e-6 for name in ATTENTION_KERNELS), report["reached"]
    measured = sparsity(pruned)
    assert set(ATTENTION_KERNELS) <= set(measured["layers"])
    assert {measured["sizes"][name] for name in ATTENTION_KERNELS} == {8 * 2 * 4}  # (embed, heads, key_dim)
    kernels = [w.numpy() for w in pruned.get_layer("block1_attention").weights if w.name.endswith("kernel:0")]
    assert [float(np.mean(k == 0)) for k in kernels] == [measured["layers"][name] for name in ATTENTION_KERNELS]
    # tfopt's AddPositionEmbedding offers tfmot no weight (get_prunable_weights): its position vectors stay whole
    assert not np.any(pruned.get_layer("position_embedding").get_weights()[0] == 0)


def test_prune_names_an_attention_kernel_that_missed_the_target():
    # The reached-sparsity check reads every attention kernel: masks updated only every 1000 steps never prune.
    from tfopt.compress import prune
    from tfopt.errors import CompressionError

    model = _small_transformer()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(CompressionError, match=r"block1_attention/query/kernel=0\.000.*frequency=1000"):
        prune(model, _small_data(), 0.5, epochs=1, frequency=1000, verbose=0)


def test_cluster_limits_the_attention_kernels_and_the_result_saves(tmp_path):
    # tfmot clusters MultiHeadAttention's four kernels too; its strip leaves them ahead of the biases in the layer's
    # weights, which the returned (re-built) model does not inherit: it saves as .keras and .h5 and loads back.
    from tfopt.compress import cluster, cluster_counts, prune, sparsity
    from tfopt.saving import load_model

    model = _small_transformer()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned = prune(model, _small_data(), 0.5, epochs=2, verbose=0)
    clustered = cluster(pruned, _small_data(), n_clusters=4, preserve_sparsity=True, verbose=0)
    counts = cluster_counts(clustered)["layers"]
    assert all(counts[name] <= 4 for name in ATTENTION_KERNELS), counts
    assert all(sparsity(clustered)["layers"][name] >= 0.5 - 1e-6 for name in ATTENTION_KERNELS)
    names = [w.name for w in clustered.get_layer("block1_attention").weights]
    assert names[:2] == ["block1_attention/query/kernel:0", "block1_attention/query/bias:0"]
    x = np.random.default_rng(1).normal(size=(3, 6, 4)).astype("float32")
    for name in ("model.keras", "model.h5"):
        clustered.save(tmp_path / name)
        loaded = load_model(tmp_path / name)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0), atol=1e-6)


def test_prune_reaches_the_target_in_the_dense_and_attention_kernels(rows_transformer):
    from tfopt.compress import prune

    model, train_ds, _ = rows_transformer
    pruned, report = prune(model, train_ds.take(8), 0.5, epochs=1, verbose=0, return_report=True)
    dense = ["projection", "block1_mlp1", "block1_mlp2", "block2_mlp1", "block2_mlp2", "logits"]
    attention = [f"block{i}_attention/{name}/kernel" for i in (1, 2)
                 for name in ("query", "key", "value", "attention_output")]
    assert set(dense) <= set(report["pruned_layers"])
    assert all(report["reached"][name] >= 0.49 for name in dense + attention)


def test_quantize_aware_quantizes_the_dense_layers_and_exports_to_int8(rows_transformer):
    # tfmot's 8-bit registry has no quantize config for MultiHeadAttention, LayerNormalization or tfopt's
    # AddPositionEmbedding: those stay float (reported); the Dense, Add and pooling layers are quantized.
    from tfopt.compress import quantize_aware
    from tfopt.export import evaluate, to_tflite

    model, train_ds, test_ds = rows_transformer
    qat, report = quantize_aware(model, train_ds.take(8), epochs=1, verbose=0, return_report=True)
    layers = [layer.name for layer in model.layers[1:]]
    assert sorted(report["quantized"] + list(report["float"])) == sorted(layers)
    assert {"projection", "block1_mlp1", "block1_mlp2", "block2_add2", "pool", "logits"} <= set(report["quantized"])
    converted = to_tflite(qat)
    assert converted.quantization == "int8"
    assert evaluate(converted, test_ds, runs=0)["accuracy"] > ABOVE_CHANCE


def test_distill_into_a_smaller_transformer(rows_transformer):
    from tfopt.compress import distill

    teacher, train_ds, test_ds = rows_transformer
    student = build("transformer", input_shape=(28, 28), num_classes=10, num_layers=1, num_heads=2, embed_dim=16,
                    mlp_dim=32, dropout=0.0)
    assert student.count_params() < teacher.count_params() / 3
    distill(teacher, student, train_ds, temperature=4.0, alpha=0.1, epochs=2, learning_rate=2e-3, verbose=0)
    assert _accuracy(student, test_ds) > 2 * CHANCE


# ------------------------------------------------------------------------------------ saving, the layer
def test_position_embedding_round_trips_and_loads_in_safe_mode(tmp_path):
    from tfopt.saving import load_model

    layer = AddPositionEmbedding(5, name="positions")
    clone = run_serialization_test(layer)
    assert clone.sequence_length == 5 and clone.name == "positions"
    model = build("vit", input_shape=(8, 8, 2), num_classes=3, patch_size=4, num_layers=1, num_heads=1,
                  embed_dim=4, mlp_dim=4)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 2)).astype("float32")
    run_model_saving_test(model, x, tmp_path)
    loaded = load_model(tmp_path / "model.keras")  # tfopt's safe loader: a registered tfopt layer is allowed
    assert type(loaded.get_layer("position_embedding")) is AddPositionEmbedding
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_position_embedding_refuses_a_sequence_of_another_length():
    with pytest.raises(ConfigError, match=r"positions: input shape \(None, 4, 3\) does not fit sequence_length=5"):
        AddPositionEmbedding(5, name="positions")(keras.Input((4, 3)))
    with pytest.raises(ConfigError, match="sequence_length=0"):
        AddPositionEmbedding(0)


@pytest.mark.parametrize(
    "name,kwargs,needles",
    [
        ("transformer", dict(vocab_size=10, seq_len=4, num_classes=2, embed_dim=10, num_heads=4),
         ["num_heads=4", "embed_dim=10", "[1, 2, 5, 10]"]),
        ("transformer", dict(input_shape=(4, 3), vocab_size=10, seq_len=4, num_classes=2),
         ["input_shape=(4, 3)", "exactly one"]),
        ("transformer", dict(vocab_size=10, num_classes=2), ["seq_len=None", "both"]),
        ("transformer", dict(input_shape=(4, 3, 1), num_classes=2), ["(4, 3, 1)", "2 axes"]),
        ("transformer", dict(vocab_size=10, seq_len=4), ["'num_classes'"]),
        ("transformer", dict(vocab_size=10, seq_len=4, num_classes=2, num_layers=0), ["num_layers=0", ">= 1"]),
        ("transformer", dict(vocab_size=10, seq_len=4, num_classes=2, dropout=1.0), ["dropout=1.0"]),
        ("vit", dict(input_shape=(28, 28, 1), num_classes=10, patch_size=5), ["patch_size=5", "28", "[1, 2, 4, 7, 14, 28]"]),
        ("vit", dict(input_shape=(28, 28), num_classes=10), ["(28, 28)", "3 axes"]),
        ("vit", dict(input_shape=(8, 8, 1), num_classes=3, patch_size=(2, 2, 2)), ["(2, 2, 2)", "pair"]),
        ("vit", dict(input_shape=(8, 8, 1), num_classes=3, activation="gelux"), ["'gelux'"]),
    ],
)
def test_impossible_arguments_raise_config_error_naming_the_value(name, kwargs, needles):
    with pytest.raises(ConfigError) as err:
        build(name, **kwargs)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
