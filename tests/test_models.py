"""tfopt.models: the registry, every builder (forward, save/load, TFLite parity, prune), parameter counts, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt.errors import ConfigError
from tfopt.models import build, cnn, list_models, lstm, mlp, register, resnet
from tfopt.models import registry
from tests.helpers import run_model_saving_test

# Keras applications at their smallest input (32x32) and width.
_APP = dict(input_shape=(32, 32, 3), num_classes=3)
# A tiny configuration per registered model (fast to build, save and convert).
SMALL = {
    "cnn": dict(input_shape=(8, 8, 1), num_classes=3, filters=(4, 8), dense=(8,), batch_norm=True, dropout=0.1),
    "mlp": dict(input_shape=(6,), num_classes=3, units=(8, 4), dropout=0.1),
    "lstm": dict(input_shape=(5, 3), units=(4, 4), num_classes=3),
    "resnet": dict(input_shape=(8, 8, 3), num_classes=3, blocks=(1, 1), width=0.0625),
    "transformer": dict(vocab_size=20, seq_len=6, num_classes=3, num_layers=2, num_heads=2, embed_dim=8, mlp_dim=8),
    "vit": dict(input_shape=(8, 8, 1), num_classes=3, patch_size=4, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=8),
    "mobilenet_v2": dict(**_APP, alpha=0.35, dropout=0.1),
    "mobilenet_v3_small": dict(**_APP, alpha=0.75),
    "mobilenet_v3_large": dict(**_APP, alpha=0.75),
    "efficientnet_b0": dict(**_APP),
    "resnet50": dict(**_APP),
    "densenet121": dict(**_APP),
}
# The builders tfopt itself registers (a user's or another test's registration is not parametrized over).
BUILTIN = [n for n in list_models() if registry.get_builder(n).__module__.startswith("tfopt.models")]
APPLICATIONS = ["densenet121", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
                "resnet50"]
# Further variants of the same builders that take other code paths.
VARIANTS = [(name, SMALL[name]) for name in BUILTIN] + [
    ("lstm", dict(vocab_size=20, seq_len=6, embed_dim=4, units=(4,), bidirectional=True, num_classes=3)),
    ("resnet", dict(input_shape=(8, 8, 3), num_classes=3, blocks=(1, 1), width=0.0625, connection="dense")),
    ("resnet", dict(input_shape=(8, 8, 3), num_classes=3, blocks=(1, 1), width=0.0625, connection="plain")),
    ("resnet", dict(input_shape=(8, 8, 3), num_classes=3, blocks=(1,), width=0.0625, depth=50, stem="imagenet")),
    ("transformer", dict(input_shape=(5, 3), num_classes=3, num_layers=1, num_heads=2, embed_dim=8, mlp_dim=8,
                         dropout=0.0)),
    ("vit", dict(input_shape=(8, 12, 3), num_classes=3, patch_size=(4, 3), num_layers=1, num_heads=1, embed_dim=4,
                 mlp_dim=4)),
]
VARIANT_IDS = [f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)]
# Layer classes of the Keras applications tfmot's prune registry has no entry for (so prune_low_magnitude refuses
# the whole model): none holds a weight to prune (TFOpLambda: hard-swish arithmetic; Rescaling; Normalization: a
# fixed mean and variance). tfopt.compress.prune wraps only the layers with prunable weights.
NOT_WRAPPABLE = {
    "mobilenet_v3_small": {"Rescaling", "TFOpLambda"},
    "mobilenet_v3_large": {"Rescaling", "TFOpLambda"},
    "efficientnet_b0": {"Rescaling", "Normalization"},
}
def _sample(model, n=4, seed=0):
    """A batch of ``n`` inputs for ``model``: token ids below 20 for integer inputs, else normal floats."""
    rng = np.random.default_rng(seed)
    shape = (n, *model.input_shape[1:])
    if model.inputs[0].dtype.is_integer:
        return rng.integers(0, 20, size=shape).astype("int32")
    return rng.normal(size=shape).astype("float32")


def _layers_of(model, cls):
    return [layer for layer in model.layers if type(layer) is cls]


def _trainable_params(model) -> int:
    return sum(int(w.shape.num_elements()) for w in model.trainable_weights)


@functools.lru_cache(maxsize=None)
def _small(name):
    """The registered model ``name`` built once from ``SMALL``: the tests that use it only read it (an application
    takes seconds to build)."""
    return build(name, **SMALL[name])


# ------------------------------------------------------------------------------------------------ registry
def test_every_builder_is_registered_with_a_small_config():
    assert BUILTIN == sorted(["cnn", "lstm", "mlp", "resnet", "transformer", "vit", *APPLICATIONS]) == sorted(SMALL)
    assert list_models("res*") == ["resnet", "resnet50"]
    assert list_models("mobilenet*") == ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"]


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_forward_pass_gives_logits_per_class(name, kwargs):
    model = _small(name) if kwargs is SMALL[name] else build(name, **kwargs)
    x = _sample(model, n=5)
    y = model(x, training=False).numpy()
    assert y.shape == (5, kwargs["num_classes"])
    assert np.all(np.isfinite(y))
    # Logits, not probabilities: rows do not sum to 1 and values leave [0, 1].
    assert not np.allclose(y.sum(axis=1), 1.0)


@pytest.mark.parametrize("name,kwargs", VARIANTS, ids=VARIANT_IDS)
def test_model_is_flat_functional_with_linear_logits(name, kwargs):
    model = _small(name) if kwargs is SMALL[name] else build(name, **kwargs)
    assert model._is_graph_network
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # no nested sub-models
    last = model.layers[-1]
    assert last.name == "logits" and isinstance(last, keras.layers.Dense)
    assert last.activation is keras.activations.linear
    assert model.name.startswith(name) or (name == "lstm" and model.name == "bilstm")


@pytest.mark.parametrize("name", BUILTIN)
def test_save_and_load_gives_the_same_outputs(name, tmp_path):
    model = _small(name)
    loaded = run_model_saving_test(model, _sample(model), tmp_path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize("name", BUILTIN)
def test_tfmot_can_prune_every_layer(name):
    from tfopt._keras import tfmot
    from tfopt._model import wrap_layers

    model = _small(name)
    skip = NOT_WRAPPABLE.get(name, set())
    if skip:  # tfmot refuses the whole model, naming the first layer class its registry lacks
        with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer"):
            tfmot.sparsity.keras.prune_low_magnitude(model)
        kept = [layer for layer in model.layers[1:] if type(layer).__name__ in skip]
        assert kept and not any(layer.trainable_weights for layer in kept)  # nothing to prune in them
        names = [layer.name for layer in model.layers[1:] if type(layer).__name__ not in skip]
        pruned = wrap_layers(model, tfmot.sparsity.keras.prune_low_magnitude, names)  # as tfopt.compress.prune
    else:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    wrapped = [layer for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"]
    assert "prune_low_magnitude_logits" in [layer.name for layer in wrapped]
    unwrapped = [layer for layer in model.layers[1:] if type(layer).__name__ in skip]
    assert len(wrapped) == len(model.layers) - 1 - len(unwrapped)  # every layer but the Input (and those above)
    x = _sample(model)
    np.testing.assert_allclose(pruned(x, training=False).numpy(), model(x, training=False).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", BUILTIN)
def test_tflite_outputs_match_keras(name):
    # Each sample goes through the interpreter on its own for the LSTM (converted with a fixed batch of 1),
    # so a state carried over between samples shows up as a mismatch on the 2nd and 3rd rows.
    tflite = pytest.importorskip("tfopt.export.tflite")
    model = _small(name)
    x = _sample(model, n=3, seed=1)
    converted = tflite.to_tflite(model)  # every builder, the applications too
    # from a concrete function (seconds), not tf_keras's SavedModel export of every layer (20-60 s for applications)
    assert converted.notes == (["converted with a fixed batch 1 concrete function"] if name == "lstm" else [])
    assert len(converted.content) > 0
    actual, expected = converted.predict(x), model.predict(x, verbose=0)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    # and relative to their size: an untrained deep net's logits can be tiny (MobileNetV3, EfficientNetB0: ~1e-10)
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual / scale, expected / scale, atol=1e-4)


# ---------------------------------------------------------------------------------------- registry rules
def test_build_drops_none_kwargs_so_defaults_hold():
    model = build("cnn", input_shape=(8, 8, 1), num_classes=3, filters=None, dense=None, pool=None, dropout=None)
    assert [model.get_layer(n).filters for n in ("conv1", "conv2")] == [32, 64]  # the defaults
    assert model.get_layer("dense1").units == 128
    assert isinstance(model.get_layer("pool1"), keras.layers.MaxPooling2D)  # pool=None meant "default"
    assert model.count_params() == cnn((8, 8, 1), 3).count_params()


def test_input_shape_may_be_a_tensorshape_or_numpy_ints():
    from tfopt._keras import tf

    assert cnn(tf.TensorShape([8, 8, 1]), 3, filters=(4,)).input_shape == (None, 8, 8, 1)
    assert mlp(np.array([4, 2]), np.int64(3), units=(5,)).count_params() == 8 * 5 + 5 + 5 * 3 + 3


def test_user_builder_registers_and_builds():
    def tiny(input_shape=(4,), num_classes=2, hidden=3):
        inputs = keras.Input(input_shape)
        x = keras.layers.Dense(hidden, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))

    try:
        assert register("test_tiny")(tiny) is tiny
        assert "test_tiny" in list_models("test_*")
        model = build("test_tiny", hidden=5, num_classes=None)
        assert model.count_params() == 4 * 5 + 5 + 5 * 2 + 2
        with pytest.raises(ConfigError, match="already registered"):
            register("test_tiny")(cnn)
    finally:
        registry._BUILDERS.pop("test_tiny", None)


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError) as err:
        build("resnett", input_shape=(8, 8, 3), num_classes=3)
    assert "'resnett'" in str(err.value)
    assert all(repr(n) in str(err.value) for n in ("cnn", "lstm", "mlp", "resnet"))


def test_unknown_and_missing_kwargs_are_named():
    with pytest.raises(ConfigError) as err:
        build("cnn", input_shape=(8, 8, 1), num_classes=3, filtrs=(4,))
    assert "'filtrs'" in str(err.value) and "filters" in str(err.value) and "kernel_size" in str(err.value)
    with pytest.raises(ConfigError, match="'num_classes'"):
        build("mlp", input_shape=(4,))


# -------------------------------------------------------------------------------------- parameter counts
def test_lenet_300_100_has_266610_parameters():
    model = mlp((28, 28, 1), 10)
    assert model.count_params() == 266_610
    assert [model.get_layer(n).units for n in ("dense1", "dense2", "logits")] == [300, 100, 10]


def test_cifar_resnet18_has_11173962_trainable_parameters():
    model = resnet((32, 32, 3), 10, depth=18, stem="small")
    assert _trainable_params(model) == 11_173_962
    assert model.name == "resnet18"
    assert model.get_layer("stage4_block2_conv2").output_shape == (None, 4, 4, 512)
    assert model.get_layer("stage2_block1_shortcut").kernel_size == (1, 1)


def test_cnn_parameter_count_by_hand():
    # conv1 3*3*1*4+4 = 40; conv2 3*3*4*8+8 = 296; 8x8 -> 2x2x8 = 32 after two pools;
    # dense1 32*16+16 = 528; logits 16*3+3 = 51.
    assert cnn((8, 8, 1), 3, filters=(4, 8), dense=(16,)).count_params() == 40 + 296 + 528 + 51
    # With batch norm the convs lose their bias and gain gamma/beta (+ 2 non-trainable moments).
    bn = cnn((8, 8, 1), 3, filters=(4, 8), dense=(16,), batch_norm=True)
    assert _trainable_params(bn) == (36 + 8) + (288 + 16) + 528 + 51
    assert bn.count_params() == (36 + 16) + (288 + 32) + 528 + 51


def test_cnn_l1_l2_regularize_every_kernel():
    model = cnn((8, 8, 1), 3, filters=(4, 8), dense=(16,), l2=1e-3)
    kernels = [model.get_layer(n).kernel.numpy() for n in ("conv1", "conv2", "dense1", "logits")]
    assert len(model.losses) == 4
    expected = sum(1e-3 * np.sum(k**2) for k in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-5)


def test_resnet_width_scales_channels_and_parameters():
    half = resnet((16, 16, 3), 3, blocks=(1, 1), width=0.5)
    full = resnet((16, 16, 3), 3, blocks=(1, 1), width=1.0)
    assert half.get_layer("conv1").filters == 32 and half.get_layer("stage2_block1_conv2").filters == 64
    assert full.get_layer("conv1").filters == 64 and full.get_layer("stage2_block1_conv2").filters == 128
    assert full.count_params() > 3 * half.count_params()  # conv weights scale with width squared
    assert resnet((16, 16, 3), 3, blocks=(1,), width=0.001).get_layer("conv1").filters == 1  # at least 1


def test_resnet_bottleneck_expands_four_times():
    model = resnet((16, 16, 3), 3, blocks=(1, 1), width=0.125, block="bottleneck")
    assert model.get_layer("stage2_block1_conv3").filters == 4 * 16
    assert model.name == "resnet8"  # 2 + 2 blocks * 3 convs


def test_connection_variants_differ():
    kw = dict(input_shape=(16, 16, 3), num_classes=3, blocks=(2, 1), width=0.125)
    residual, plain, dense = (resnet(**kw, connection=c) for c in ("residual", "plain", "dense"))
    assert len(_layers_of(residual, keras.layers.Add)) == 3 and not _layers_of(residual, keras.layers.Concatenate)
    assert not _layers_of(plain, keras.layers.Add) and not _layers_of(plain, keras.layers.Concatenate)
    assert len(_layers_of(dense, keras.layers.Concatenate)) == 3 and not _layers_of(dense, keras.layers.Add)
    # plain = the residual net minus its projection shortcut (1x1 conv 8->16 + BN of 16).
    assert residual.count_params() - plain.count_params() == 8 * 16 + 4 * 16
    # dense: channels grow by the block width per block (8 -> 16 -> 24), then a transition back to 8.
    assert dense.get_layer("stage1_block2_concat").output_shape[-1] == 24
    assert dense.get_layer("stage1_transition").output_shape[-1] == 8
    assert dense.get_layer("stage2_block1_concat").output_shape[1:] == (8, 8, 8 + 16)
    assert {m.name for m in (residual, plain, dense)} == {"resnet8", "resnet8_plain", "resnet8_dense"}


def test_resnet50_imagenet_matches_the_reference_count():
    # torchvision's resnet50 has 25,557,032 parameters (convs without bias, BN gamma/beta, fc).
    model = resnet((64, 64, 3), 1000, depth=50, stem="imagenet")
    assert _trainable_params(model) == 25_557_032
    assert model.get_layer("pool1").output_shape == (None, 16, 16, 64)


def test_lstm_stacks_and_embeds():
    model = lstm(vocab_size=50, seq_len=7, embed_dim=5, units=(6, 4), num_classes=3)
    assert model.get_layer("embedding").output_shape == (None, 7, 5)
    assert model.get_layer("lstm1").return_sequences and not model.get_layer("lstm2").return_sequences
    assert model.get_layer("embedding").mask_zero is False
    # Embedding 50*5; LSTM 4*(in+units+1)*units per layer; logits 4*3+3.
    assert model.count_params() == 50 * 5 + 4 * (5 + 6 + 1) * 6 + 4 * (6 + 4 + 1) * 4 + 4 * 3 + 3
    bi = lstm(input_shape=(7, 2), units=(4,), bidirectional=True, num_classes=3)
    assert bi.name == "bilstm" and bi.get_layer("bilstm1").output_shape == (None, 8)


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "name,kwargs,needles",
    [
        ("resnet", dict(input_shape=(32, 32, 3), num_classes=10, depth=19), ["depth=19", "18", "152"]),
        ("cnn", dict(input_shape=(8, 8, 1), num_classes=3, filters=(4, -4)), ["-4", ">= 1"]),
        ("cnn", dict(input_shape=(4, 4, 1), num_classes=3, filters=(2, 2, 2)), ["(4, 4, 1)", ">= 8"]),
        ("cnn", dict(input_shape=(8, 8, 1), num_classes=3, pool="median"), ["'median'", "'max'", "'avg'"]),
        ("cnn", dict(input_shape=(8, 8, 1), num_classes=3, activation="relux"), ["'relux'", "'relu'"]),
        ("cnn", dict(input_shape=(8, 8), num_classes=3), ["(8, 8)", "3 axes"]),
        ("cnn", dict(input_shape=(8, 8, 1), num_classes=3, l2=-1.0), ["l2=-1.0", "0 <="]),
        ("mlp", dict(input_shape=(4,), num_classes=0), ["num_classes=0", ">= 1"]),
        ("mlp", dict(input_shape=(4,), num_classes=3, dropout=1.0), ["dropout=1.0", "< 1"]),
        ("mlp", dict(input_shape=(4,), num_classes=3, dropout=-0.1), ["dropout=-0.1"]),
        ("lstm", dict(input_shape=(5, 3), vocab_size=10, seq_len=5), ["input_shape=(5, 3)", "vocab_size=10", "exactly one"]),
        ("lstm", dict(num_classes=3), ["input_shape=None", "exactly one"]),
        ("lstm", dict(vocab_size=10, num_classes=3), ["seq_len=None", "both"]),
        ("lstm", dict(input_shape=(5, 3), units=()), ["units=()", "non-empty"]),
        ("resnet", dict(input_shape=(16, 16, 3), num_classes=3, stem="imagenet"), ["(16, 16, 3)", ">= 32"]),
        ("resnet", dict(input_shape=(32, 32, 3), num_classes=3, width=0), ["width=0", "0 < width"]),
        ("resnet", dict(input_shape=(32, 32, 3), num_classes=3, block="wide"), ["'wide'", "'bottleneck'"]),
        ("resnet", dict(input_shape=(32, 32, 3), num_classes=3, connection="skip"), ["'skip'", "'dense'"]),
        ("resnet", dict(input_shape=(32, 32, 3), num_classes=3, blocks=(1, 1, 1, 1, 1)), ["(1, 1, 1, 1, 1)", "1 to 4"]),
        ("mobilenet_v2", dict(input_shape=(28, 28, 1), num_classes=10), ["(28, 28, 1)", ">= 32", "'vit'"]),
        ("mobilenet_v2", dict(input_shape=(32, 32, 3), num_classes=3, alpha=0), ["alpha=0", "0 < alpha"]),
        ("mobilenet_v3_small", dict(input_shape=(32, 32, 3), num_classes=3, alpha="wide"), ["alpha='wide'", "> 0"]),
        ("resnet50", dict(input_shape=(32, 32, 3), num_classes=3, alpha=0.5), ["'alpha'", "weights, dropout"]),
        ("densenet121", dict(input_shape=(32, 32, 3), num_classes=3, freeze_base="yes"), ["freeze_base='yes'"]),
        ("efficientnet_b0", dict(input_shape=(32, 32, 3), num_classes=3, weights="imagenet"),
         ["weights='imagenet'", "never downloads", "None", "path of a local weights file"]),
        ("efficientnet_b0", dict(input_shape=(32, 32, 3), num_classes=3, weights="/nonexistent/b0_notop.h5"),
         ["'/nonexistent/b0_notop.h5'", "no such file"]),
    ],
)
def test_impossible_arguments_raise_config_error_naming_the_value(name, kwargs, needles):
    with pytest.raises(ConfigError) as err:
        build(name, **kwargs)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))


# ------------------------------------------------------------------------------------------ applications
def test_application_reads_local_weights_without_its_top(tmp_path):
    from tfopt.models import application

    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                          pooling="avg")
    path = tmp_path / "mobilenet_v2_notop.h5"
    base.save_weights(path)
    model = build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=4, alpha=0.35, weights=str(path))
    for name in ("Conv1", "block_16_project", "Conv_1_bn"):
        for loaded, saved in zip(model.get_layer(name).get_weights(), base.get_layer(name).get_weights()):
            np.testing.assert_array_equal(loaded, saved)
    with pytest.raises(ConfigError) as err:  # a file of another width does not fit
        application("mobilenet_v2", (32, 32, 3), 4, weights=path, alpha=0.5)
    assert str(path) in str(err.value) and "alpha=0.5" in str(err.value) and "include_top=False" in str(err.value)


def test_application_freeze_base_trains_only_the_head():
    model = build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=4, alpha=0.35, freeze_base=True, dropout=0.2)
    assert [w.name for w in model.trainable_weights] == ["logits/kernel:0", "logits/bias:0"]
    assert [layer.name for layer in model.layers[-2:]] == ["top_dropout", "logits"]
    bn = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bn and not any(layer.trainable for layer in bn)  # frozen BatchNormalization runs in inference mode


def test_fine_tune_uses_an_application_as_its_base():
    # fine_tune cuts the head at the layer before "logits" (the pooled features), keeps every BatchNormalization
    # frozen and returns one flat model with a new "logits" for the new classes.
    from tfopt.compress import fine_tune

    base = build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=4, alpha=0.35)
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices((rng.normal(size=(8, 32, 32, 3)).astype("float32"), np.arange(8) % 2))
    data = data.batch(4)
    model = fine_tune(base, 2, data, epochs=(1, 1), verbose=0)
    assert model.output_shape == (None, 2) and model.layers[-1].name == "logits"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    assert not any(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert len(model.layers) == len(base.layers)  # the same base, a new head (avg pool -> logits)
