"""Tests of tfopt.regularizers.apply against NumPy penalties."""

import numpy as np
import pytest

from tfopt import regularizers
from tfopt._keras import keras
from tfopt.errors import ConfigError, UnsupportedLayerError

X_IMG = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")


def _functional_cnn():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _penalty(weights, l1, l2):
    return sum(l1 * np.abs(w).sum() + l2 * (w.astype("float64") ** 2).sum() for w in weights)


def _kernels(model, names=None):
    return [
        w.numpy() for w in model.weights
        if "kernel" in w.name and (names is None or w.name.split("/")[0] in names)
    ]


@pytest.mark.parametrize("l1,l2", [(0.0, 1e-2), (1e-3, 0.0), (1e-3, 5e-3)])
def test_functional_penalty_matches_numpy_and_outputs_unchanged(l1, l2):
    model = _functional_cnn()
    new = regularizers.apply(model, l1=l1, l2=l2)
    assert new is not model
    assert len(new.losses) == 4  # conv, depthwise, hidden, logits kernels
    expected = _penalty(_kernels(model), l1, l2)  # kernel, depthwise_kernel of the 4 layers
    assert float(sum(new.losses)) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(new.predict(X_IMG, verbose=0), model.predict(X_IMG, verbose=0), atol=1e-6)
    assert model.losses == []  # the original is untouched


def test_sequential_nested_and_layer_selection():
    inner = keras.Sequential([keras.layers.Dense(6, name="inner_dense")], name="block")
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.Dense(2, name="head")])
    x = np.random.default_rng(1).normal(size=(5, 4)).astype("float32")
    new = regularizers.apply(model, l2=0.1)
    assert float(sum(new.losses)) == pytest.approx(_penalty(_kernels(model), 0, 0.1), rel=1e-5)
    np.testing.assert_allclose(new.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    only_head = regularizers.apply(model, l2=0.1, layers=["head"])
    assert len(only_head.losses) == 1
    assert float(only_head.losses[0]) == pytest.approx(_penalty(_kernels(model, {"head"}), 0, 0.1), rel=1e-5)


def test_zero_factors_give_no_losses_and_remove_existing_ones():
    model = keras.Sequential([
        keras.layers.Dense(3, input_shape=(2,), kernel_regularizer=keras.regularizers.L2(1.0)),
        keras.layers.Dense(1),
    ])
    assert len(model.losses) == 1
    assert regularizers.apply(model).losses == []
    assert regularizers.apply(model, l1=0.0, l2=0.0).losses == []


def test_all_includes_other_kernel_layers():
    inputs = keras.Input((4,))
    x = keras.layers.EinsumDense("ab,bc->ac", output_shape=3, name="einsum")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="out")(x))
    assert len(regularizers.apply(model, l2=0.1).losses) == 1
    everything = regularizers.apply(model, l2=0.1, layers="all")
    assert float(sum(everything.losses)) == pytest.approx(_penalty(_kernels(model), 0, 0.1), rel=1e-5)


def test_compile_state_kept_when_trivial():
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", metrics=["mae"])
    new = regularizers.apply(model, l2=0.01)
    assert isinstance(new.optimizer, keras.optimizers.SGD) and new.optimizer is not model.optimizer
    assert float(new.optimizer.learning_rate) == pytest.approx(0.05)
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    logs = new.evaluate(x, y, verbose=0, return_dict=True)
    mse = float(np.mean(model.predict(x, verbose=0) ** 2))
    assert logs["loss"] == pytest.approx(mse + float(new.losses[0]), rel=1e-5)  # loss includes the penalty
    assert "mae" in logs


def test_errors_name_the_bad_value():
    model = _functional_cnn()
    with pytest.raises(ConfigError, match="l2=-0.1"):
        regularizers.apply(model, l2=-0.1)
    with pytest.raises(ConfigError, match="l1=-1"):
        regularizers.apply(model, l1=-1)
    with pytest.raises(ConfigError, match="'nope'"):
        regularizers.apply(model, l2=0.1, layers=["nope"])
    with pytest.raises(UnsupportedLayerError, match="'bn'"):
        regularizers.apply(model, l2=0.1, layers=["bn"])
    with pytest.raises(ConfigError, match="layers='hidden'"):
        regularizers.apply(model, l2=0.1, layers="hidden")
