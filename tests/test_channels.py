"""prune_channels: whole channels removed from a rebuilt model, exactly where they were dead, on tfopt's builders,
tf_keras applications and a user's own model; save, load and TFLite parity; every bad value named."""

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tfmot
from tfopt.compress import channel_groups, flops, prune_channels, prune
from tfopt.errors import CompressionError, ConfigError
from tfopt.export import evaluate, to_tflite
from tfopt.pipeline import run_recipe
from tfopt.saving import load_model


def _kill(model, share=0.5):
    """Make the last ``share`` of each prunable group's channels dead (ReLU gives 0) and the least important, so
    removing exactly them must leave the model's outputs unchanged."""
    for group in channel_groups(model).prunable():
        dead = np.arange(group.size - int(group.size * share), group.size)
        norms = [f for f in group.followers if type(model.get_layer(f)).__name__ == "BatchNormalization"]
        for name in group.producers:
            weights = model.get_layer(name).get_weights()
            weights[0][..., dead] *= 1e-4
            if not norms and len(weights) > 1:
                weights[-1][dead] = -50.0
            model.get_layer(name).set_weights(weights)
        for name in norms:
            gamma, beta, mean, var = model.get_layer(name).get_weights()
            gamma[dead], beta[dead] = 1e-4, -50.0
            model.get_layer(name).set_weights([gamma, beta, mean, var])
    return model


BUILDERS = [("cnn", {}, (28, 28, 1)), ("mlp", {}, (64,)), ("resnet", {"connection": "residual"}, (16, 16, 3)),
            ("resnet", {"connection": "dense"}, (16, 16, 3)), ("resnet", {"connection": "plain"}, (16, 16, 3))]


@pytest.mark.parametrize("name, kwargs, shape", BUILDERS, ids=lambda v: str(v))
@pytest.mark.parametrize("importance", ["l1", "bn"])
def test_removing_dead_channels_leaves_outputs_unchanged(name, kwargs, shape, importance):
    model = _kill(tfopt.models.build(name, input_shape=shape, num_classes=10, **kwargs))
    x = np.random.default_rng(0).random((4, *shape), dtype="float32")
    small, report = prune_channels(model, fraction=0.45, epochs=0, importance=importance, return_report=True,
                                   verbose=0)
    np.testing.assert_allclose(small(x, training=False), model(x, training=False), atol=1e-5)
    assert report["flops"]["after"] == flops(small) < flops(model) / 2  # 45% of channels in and out
    assert report["params"]["after"] < report["params"]["before"]
    assert any(c["after"] < c["before"] for c in report["channels"].values())


def test_report_counts_channels_and_keeps_the_logits_whole():
    model = tfopt.models.build("cnn", input_shape=(28, 28, 1), num_classes=10, filters=(8, 16), dense=(32,))
    small, report = prune_channels(model, fraction=0.5, epochs=0, scope="layer", return_report=True, verbose=0)
    conv1, conv2, dense, logits = [layer.name for layer in model.layers if layer.weights]
    assert report["channels"][conv1] == {"before": 8, "after": 4}
    assert report["channels"][conv2] == {"before": 16, "after": 8}
    assert report["channels"][dense] == {"before": 32, "after": 16}
    assert small.get_layer(logits).units == 10
    assert any("model's output" in reason for reason in report["kept_whole"])


def test_target_flops_is_reached_and_iterative_steps_compound():
    model = tfopt.models.build("resnet", input_shape=(16, 16, 3), num_classes=10, connection="residual")
    small = prune_channels(model, target_flops=0.4, epochs=0, verbose=0)
    assert flops(small) <= 0.4 * flops(model)
    _, report = prune_channels(model, fraction=0.5, steps=2, epochs=0, return_report=True, verbose=0)
    kept = sum(c["after"] for c in report["channels"].values()) / sum(c["before"] for c in report["channels"].values())
    assert kept == pytest.approx(0.5, abs=0.06)


def test_layers_option_prunes_only_the_named_groups():
    model = tfopt.models.build("mlp", input_shape=(64,), num_classes=10, units=(32, 16))
    first, second = [layer.name for layer in model.layers if layer.weights][:2]
    small = prune_channels(model, fraction=0.5, layers=[second], epochs=0, verbose=0)
    assert (small.get_layer(first).units, small.get_layer(second).units) == (32, 8)


@pytest.mark.parametrize("app", ["MobileNetV2", "ResNet50", "EfficientNetB0", "MobileNetV3Small", "DenseNet121"])
def test_keras_applications_shrink_save_load_and_match_in_tflite(app, tmp_path):
    model = getattr(keras.applications, app)(input_shape=(32, 32, 3), weights=None, classes=10,
                                             classifier_activation=None)
    small, report = prune_channels(model, fraction=0.3, epochs=0, return_report=True, verbose=0)
    assert report["flops"]["ratio"] > 1.3 and report["params"]["after"] < report["params"]["before"]
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32")
    small.save(tmp_path / "small.keras")
    loaded = load_model(tmp_path / "small.keras")  # safe mode: a plain model of stock layers
    np.testing.assert_allclose(loaded(x, training=False), small(x, training=False), atol=1e-5)
    if app == "MobileNetV2":  # (ResNet50's conversion adds ~20 s and tests nothing MobileNetV2 does not)
        lite = to_tflite(small)
        np.testing.assert_allclose(lite.predict(x), small(x, training=False), atol=1e-4)


def test_a_users_model_with_gru_attention_and_a_nested_model_keeps_what_it_cannot_prune():
    tokens = keras.Input((12, 8))
    h = keras.layers.Dense(32, activation="relu", name="embed")(tokens)
    h = keras.layers.GRU(16, return_sequences=True, name="gru")(h)
    h = keras.layers.MultiHeadAttention(2, 8, name="attention")(h, h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    head = keras.Sequential([keras.layers.Dense(24, activation="relu", name="hidden", input_shape=(16,)),
                             keras.layers.Dense(3, name="logits")], name="head")
    model = keras.Model(tokens, head(h))
    small, report = prune_channels(model, fraction=0.5, epochs=0, return_report=True, verbose=0)
    assert report["channels"]["hidden"]["after"] < 24
    assert report["channels"]["embed"]["after"] == 32  # it feeds the GRU
    assert any("'gru' (GRU)" in reason for reason in report["kept_whole"])
    x = np.random.default_rng(0).random((2, 12, 8), dtype="float32")
    assert small(x).shape == (2, 3)


def test_fine_tuned_on_digits_it_stays_well_above_chance_and_exports():
    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=64, seed=0)
    model = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(16, 32), dense=(64,))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train_ds, epochs=4, verbose=0)
    small = prune_channels(model, train_ds, fraction=0.5, importance="taylor", epochs=2, val_ds=val_ds, verbose=0)
    assert flops(small) < flops(model) / 2
    metrics = evaluate(to_tflite(small, quantization="dynamic"), test_ds, runs=5)
    assert metrics["accuracy"] > 0.6  # chance is 0.1
    # compose: magnitude pruning after channel pruning keeps the smaller shape
    pruned = prune(small, train_ds, 0.5, epochs=1, verbose=0)
    assert flops(pruned) == flops(small)


def test_recipe_stage_runs_between_train_and_export(tmp_path):
    recipe = {"name": "channels", "seed": 0, "data": {"name": "digits"},
              "model": {"builder": "mlp", "args": {"units": [32]}},
              "training": {"epochs": 1, "batch_size": 64},
              "stages": ["train", {"prune_channels": {"fraction": 0.5, "epochs": 1}},
                         {"export": {"variants": [{"name": "f32"}]}}]}
    results = run_recipe(recipe, run_dir=tmp_path, verbose=0)
    metrics = results["stages"][1]["metrics"]
    assert metrics["flops_after"] < metrics["flops_before"] and metrics["val_accuracy"] > 0.1


@pytest.mark.parametrize("kwargs, needle", [
    ({"fraction": 0.0}, "fraction=0.0 must be in \\(0, 1\\)"),
    ({"fraction": 1.5}, "fraction=1.5 must be in \\(0, 1\\)"),
    ({}, "exactly one of fraction= .* or target_flops="),
    ({"fraction": 0.5, "target_flops": 0.5}, "exactly one of"),
    ({"target_flops": -2}, "target_flops=-2 must be"),
    ({"fraction": 0.5, "importance": "l3"}, "importance='l3'"),
    ({"fraction": 0.5, "steps": 0}, "steps=0 must be an integer >= 1"),
    ({"fraction": 0.5, "max_fraction": 1.0}, "max_fraction=1.0 must be in \\(0, 1\\)"),
    ({"fraction": 0.5, "importance": "taylor"}, "needs train_ds"),
    ({"fraction": 0.5, "layers": ["nope"]}, "no layer 'nope'"),
    ({"fraction": 0.5, "layers": ["logits"]}, "'logits'.s channels must be kept whole: 'logits' gives the model's out"),
    ({"target_flops": 10}, "target_flops=10 .* is below what max_fraction=0.9 allows"),
])
def test_bad_values_are_named(kwargs, needle):
    model = tfopt.models.build("mlp", input_shape=(64,), num_classes=10, units=(32,))
    kwargs.setdefault("epochs", 0)
    with pytest.raises((ConfigError, CompressionError), match=needle):
        prune_channels(model, **kwargs)


def test_nothing_to_prune_and_wrapped_models_are_refused():
    only_logits = keras.Sequential([keras.layers.Dense(3, input_shape=(4,), name="logits")])
    with pytest.raises(CompressionError, match="nothing to prune .* 'logits' gives the model's output"):
        prune_channels(only_logits, fraction=0.5, epochs=0)
    model = tfopt.models.build("mlp", input_shape=(64,), num_classes=10, units=(32,))
    wrapped = tfmot.sparsity.keras.prune_low_magnitude(model)
    with pytest.raises(CompressionError, match="plain model"):
        prune_channels(wrapped, fraction=0.5, epochs=0)


def test_recipe_without_a_goal_is_refused_at_its_line(tmp_path):
    from tfopt.pipeline import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: c\ndata: {name: digits}\nmodel: {builder: mlp}\nstages:\n  - train\n"
                    "  - prune_channels: {epochs: 1}\n")
    with pytest.raises(ConfigError, match="r.yaml:6.*give exactly one of fraction .* or target_flops"):
        load_recipe(path)


def test_squeeze_excite_tf_ops_and_concatenate_prune_exactly():
    """Multiply ties an SE branch to its input, Reshape((1, 1, C)) follows the channels, TF-op layers (x * 2.0,
    tf.nn.relu6) carry them, Concatenate stacks two groups: removing dead channels changes nothing."""
    from tfopt._keras import tf

    x = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(x)
    se = keras.layers.GlobalAveragePooling2D()(a)
    se = keras.layers.Reshape((1, 1, 8))(se)
    se = keras.layers.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = keras.layers.Conv2D(8, 1, activation="sigmoid", name="se_expand")(se)
    a = keras.layers.Multiply()([a, se])
    a = tf.nn.relu6(a * 2.0)
    b = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="b")(x)
    y = keras.layers.Concatenate()([a, b])
    y = keras.layers.Dense(3, name="logits")(keras.layers.Flatten()(y))
    model = _kill(keras.Model(x, y))
    groups = {tuple(sorted(g.producers)) for g in channel_groups(model).prunable()}
    assert {("a", "se_expand"), ("b",), ("se_reduce",)} == groups
    small = prune_channels(model, fraction=0.45, epochs=0, verbose=0)
    data = np.random.default_rng(0).random((4, 8, 8, 3), dtype="float32")
    np.testing.assert_allclose(small(data), model(data), atol=1e-5)
    assert small.get_layer("a").filters < 8 and small.get_layer("b").filters < 6


def test_batchnorm_statistics_are_re_estimated_after_the_rebuild():
    """Removing channels changes what the layers after them see; their BatchNorm statistics are re-measured."""
    train_ds, _, _, info = tfopt.data.load("digits", batch_size=64, seed=0)
    model = tfopt.models.build("resnet", input_shape=info.input_shape, num_classes=10, blocks=(1,), width=0.25)
    stale = prune_channels(model, train_ds, fraction=0.5, epochs=0, recalibrate=0, verbose=0)
    fresh = prune_channels(model, train_ds, fraction=0.5, epochs=0, recalibrate=5, verbose=0)
    name = next(layer.name for layer in fresh.layers if type(layer).__name__ == "BatchNormalization")
    x = next(iter(train_ds))[0]
    probe = keras.Model(fresh.inputs, fresh.get_layer(name).input)  # what that BatchNorm layer sees
    channels = fresh.get_layer(name).moving_mean.shape[0]
    measured = np.asarray(probe(x)).reshape(-1, channels).mean(axis=0)
    assert np.allclose(stale.get_layer(name).moving_mean.numpy(), 0.0)  # a fresh model's statistics, untouched
    assert not np.allclose(fresh.get_layer(name).moving_mean.numpy(), 0.0)
    assert np.corrcoef(fresh.get_layer(name).moving_mean.numpy(), measured)[0, 1] > 0.9


def test_attention_heads_and_mlp_neurons_of_a_transformer_prune_and_convert(tmp_path):
    model = tfopt.models.build("transformer", input_shape=(12, 8), num_classes=3, num_layers=1, num_heads=4,
                               embed_dim=16, mlp_dim=32)
    attention = next(layer.name for layer in model.layers if type(layer).__name__ == "MultiHeadAttention")
    groups = {tuple(g.producers): g.size for g in channel_groups(model).prunable()}
    assert groups[(f"{attention}:heads",)] == 4 and 32 in groups.values()  # heads and the MLP's hidden neurons
    layer = model.get_layer(attention)  # heads 2 and 3 write nothing: removing them must change nothing
    weights = [w.numpy() for w in layer.weights]
    for i, w in enumerate(layer.weights):
        if "attention_output/kernel" in w.name:
            weights[i][2:] = 0.0
        elif "kernel" in w.name:
            weights[i][:, 2:] *= 1e-6
    layer.set_weights(weights)
    small, report = prune_channels(model, fraction=0.5, layers=[f"{attention}:heads"], epochs=0, verbose=0,
                                   return_report=True)
    assert small.get_layer(attention).get_config()["num_heads"] == 2
    assert report["channels"][f"{attention}:heads"] == {"before": 4, "after": 2}
    assert flops(small) < flops(model)
    x = np.random.default_rng(0).random((2, 12, 8), dtype="float32")
    np.testing.assert_allclose(small(x), model(x), atol=1e-5)
    small.save(tmp_path / "t.keras")
    np.testing.assert_allclose(load_model(tmp_path / "t.keras")(x), small(x), atol=1e-6)
    np.testing.assert_allclose(to_tflite(small).predict(x[:1]), small(x[:1]), atol=1e-4)
    with pytest.raises(CompressionError, match=f"name '{attention}:heads' to prune its heads"):
        prune_channels(model, fraction=0.5, layers=[attention], epochs=0)
