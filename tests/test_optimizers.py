"""Tests of tfopt.optimizers: classes and configs, a real step against the closed form, clipping."""

import numpy as np
import pytest

from tfopt import optimizers, schedules
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError

EXPECTED = {
    "sgd": ("SGD", {"momentum": 0.0, "nesterov": False}),
    "momentum": ("SGD", {"momentum": 0.9, "nesterov": False}),
    "nesterov": ("SGD", {"momentum": 0.9, "nesterov": True}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "rmsprop": ("RMSprop", {}),
    "lion": ("Lion", {}),
    "adagrad": ("Adagrad", {}),
    "nadam": ("Nadam", {}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_get_returns_class_with_config(name):
    cls_name, extra = EXPECTED[name]
    opt = optimizers.get(name, learning_rate=0.05, weight_decay=1e-3, clipnorm=2.0)
    assert type(opt).__name__ == cls_name
    assert isinstance(opt, keras.optimizers.Optimizer)
    config = opt.get_config()
    assert config["learning_rate"] == pytest.approx(0.05)
    assert config["weight_decay"] == pytest.approx(1e-3)
    assert config["clipnorm"] == 2.0
    for key, value in extra.items():
        assert config[key] == pytest.approx(value)


def test_weight_decay_defaults_and_kwargs():
    assert optimizers.get("adam").get_config()["weight_decay"] is None
    assert optimizers.get("adamw").get_config()["weight_decay"] == pytest.approx(0.004)
    assert optimizers.get("adam", beta_1=0.8).get_config()["beta_1"] == pytest.approx(0.8)
    assert optimizers.get("momentum", momentum=0.5).get_config()["momentum"] == pytest.approx(0.5)


def test_instance_dict_and_schedule():
    opt = keras.optimizers.Adam(0.1)
    assert optimizers.get(opt) is opt
    from_keras = optimizers.get(keras.optimizers.serialize(keras.optimizers.RMSprop(0.02, rho=0.8)))
    assert type(from_keras).__name__ == "RMSprop"
    assert from_keras.get_config()["rho"] == pytest.approx(0.8)
    flat = optimizers.get({"name": "nesterov", "learning_rate": 0.3})
    assert flat.get_config()["nesterov"] is True and flat.get_config()["learning_rate"] == pytest.approx(0.3)
    schedule = schedules.OneCycle(0.1, 100)
    with_schedule = optimizers.get("sgd", learning_rate=schedule)
    assert with_schedule._learning_rate is schedule


def test_errors_name_the_bad_value():
    with pytest.raises(ConfigError, match="'adamax_xyz'.*sgd.*lion"):
        optimizers.get("adamax_xyz")
    with pytest.raises(ConfigError, match="learning_rate=-0.1"):
        optimizers.get("adam", learning_rate=-0.1)
    with pytest.raises(ConfigError, match="weight_decay=-0.01"):
        optimizers.get("sgd", weight_decay=-0.01)
    with pytest.raises(ConfigError, match="clipnorm=0"):
        optimizers.get("sgd", clipnorm=0)
    with pytest.raises(ConfigError, match="learning_rate='fast'"):
        optimizers.get("sgd", learning_rate="fast")
    with pytest.raises(ConfigError, match="at most one"):
        optimizers.get("sgd", clipnorm=1.0, clipvalue=1.0)


def _one_step(opt, w0, grad_fn):
    w = tf.Variable(np.asarray(w0, "float32"))
    with tf.GradientTape() as tape:
        loss = grad_fn(w)
    opt.apply_gradients([(tape.gradient(loss, w), w)])
    return w.numpy()


def test_sgd_step_on_quadratic_matches_closed_form():
    # f(w) = 0.5 * sum(a * w**2): grad = a * w, so one SGD step gives w - lr * a * w.
    a = np.array([1.0, 2.0, 4.0], "float32")
    w0 = np.array([1.0, -1.0, 0.5], "float32")
    quad = lambda w: 0.5 * tf.reduce_sum(a * w**2)  # noqa: E731
    np.testing.assert_allclose(_one_step(optimizers.get("sgd", 0.1), w0, quad), w0 - 0.1 * a * w0, rtol=1e-6)
    # Decoupled weight decay first shrinks w by lr * wd, the gradient is taken at the old w.
    decayed = _one_step(optimizers.get("sgd", 0.1, weight_decay=0.5), w0, quad)
    np.testing.assert_allclose(decayed, w0 * (1 - 0.1 * 0.5) - 0.1 * a * w0, rtol=1e-6)
    # Momentum: the first step of SGD with momentum equals plain SGD; the second adds 0.9 * the first.
    opt = optimizers.get("momentum", 0.1)
    w = tf.Variable(w0)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = quad(w)
        opt.apply_gradients([(tape.gradient(loss, w), w)])
    w1 = w0 - 0.1 * a * w0
    w2 = w1 - 0.1 * (0.9 * a * w0 + a * w1)
    np.testing.assert_allclose(w.numpy(), w2, rtol=1e-5)


def test_clipnorm_clips_the_gradient():
    g = np.array([3.0, 4.0], "float32")  # norm 5
    w0 = np.zeros(2, "float32")
    linear = lambda w: tf.reduce_sum(g * w)  # noqa: E731  (gradient is g)
    moved = w0 - _one_step(optimizers.get("sgd", 1.0, clipnorm=1.0), w0, linear)
    assert np.linalg.norm(moved) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(moved, g / 5.0, rtol=1e-6)
    moved_value = w0 - _one_step(optimizers.get("sgd", 1.0, clipvalue=3.5), w0, linear)
    np.testing.assert_allclose(moved_value, [3.0, 3.5], rtol=1e-6)
    moved_global = w0 - _one_step(optimizers.get("sgd", 1.0, global_clipnorm=2.5), w0, linear)
    np.testing.assert_allclose(moved_global, g / 2.0, rtol=1e-6)
    unclipped = w0 - _one_step(optimizers.get("sgd", 1.0), w0, linear)
    np.testing.assert_allclose(unclipped, g, rtol=1e-6)
