"""Tests of tfopt.schedules against closed forms, tf_keras's own schedules and hand-computed values."""

import math

import numpy as np
import pytest

from tests.helpers import run_model_saving_test
from tfopt import schedules
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError


def _values(schedule, steps):
    return np.array([float(schedule(s)) for s in steps])


def _closed_form_warmup_cosine(step, base, total, warm, min_lr):
    if step < warm:
        return base * step / warm
    t = min(step, total) - warm
    return min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * t / (total - warm)))


@pytest.mark.parametrize("warm,min_lr", [(0, 0.0), (10, 0.0), (25, 0.01)])
def test_warmup_cosine_matches_closed_form_and_keras(warm, min_lr):
    base, total = 0.1, 100
    steps = [0, 1, 5, 9, 10, 11, 25, 50, 73, 99, 100, 150]
    got = _values(schedules.warmup_cosine(base, total, warm, min_lr), steps)
    ref = [_closed_form_warmup_cosine(s, base, total, warm, min_lr) for s in steps]
    np.testing.assert_allclose(got, ref, atol=1e-7)
    keras_ref = keras.optimizers.schedules.CosineDecay(
        0.0, total - warm, alpha=min_lr / base, warmup_target=base, warmup_steps=warm
    )
    np.testing.assert_allclose(got, _values(keras_ref, steps), atol=1e-7)
    assert got[steps.index(warm)] == pytest.approx(base)


def test_warmup_cosine_errors_name_the_value():
    with pytest.raises(ConfigError, match="total_steps=10 must be greater than warmup_steps=10"):
        schedules.warmup_cosine(0.1, 10, 10)
    with pytest.raises(ConfigError, match="base_lr=-0.1"):
        schedules.warmup_cosine(-0.1, 10)
    with pytest.raises(ConfigError, match="min_lr=0.5"):
        schedules.warmup_cosine(0.1, 10, min_lr=0.5)
    with pytest.raises(ConfigError, match="warmup_steps=2.5"):
        schedules.warmup_cosine(0.1, 10, 2.5)


def test_warmup_wraps_any_schedule_with_offset():
    inner = keras.optimizers.schedules.ExponentialDecay(0.2, 10, 0.5)
    lr = schedules.Warmup(inner, warmup_steps=8, initial_lr=0.02)
    steps = [0, 2, 4, 7, 8, 9, 18, 28]
    ref = [0.02 + (0.2 - 0.02) * s / 8 if s < 8 else 0.2 * 0.5 ** ((s - 8) / 10) for s in steps]
    np.testing.assert_allclose(_values(lr, steps), ref, rtol=1e-6)
    const = schedules.Warmup(0.3, warmup_steps=3)
    np.testing.assert_allclose(_values(const, [0, 1, 3, 100]), [0.0, 0.1, 0.3, 0.3], rtol=1e-6)
    with pytest.raises(ConfigError, match="warmup_steps=0"):
        schedules.Warmup(inner, 0)
    with pytest.raises(ConfigError, match="initial_lr=-1"):
        schedules.Warmup(inner, 5, initial_lr=-1)


def test_one_cycle_matches_hand_computed_values():
    # max_lr=1, total=21, pct_start=0.5: initial 0.1, peak at step 9.5, final 0.1/100 = 0.001 at step 20.
    lr = schedules.one_cycle(1.0, 21, pct_start=0.5, div_factor=10, final_div_factor=100)

    def ref(step):
        if step <= 9.5:
            return 1.0 + (0.1 - 1.0) / 2 * (math.cos(math.pi * step / 9.5) + 1)
        pct = (min(step, 20) - 9.5) / (20 - 9.5)
        return 0.001 + (1.0 - 0.001) / 2 * (math.cos(math.pi * pct) + 1)

    steps = [0, 3, 9, 10, 15, 20, 30]
    np.testing.assert_allclose(_values(lr, steps), [ref(s) for s in steps], rtol=1e-5)
    assert float(lr(0)) == pytest.approx(0.1)
    assert float(lr(20)) == pytest.approx(0.001, rel=1e-4)
    # PyTorch defaults: max_lr/25 at step 0, max_lr at 0.3 * total - 1.
    default = schedules.OneCycle(0.5, 101)
    assert float(default(0)) == pytest.approx(0.02)
    assert float(default(0.3 * 101 - 1)) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="pct_start=1.0"):
        schedules.OneCycle(0.5, 100, pct_start=1.0)
    with pytest.raises(ConfigError, match="pct_start=0.01 with total_steps=10"):
        schedules.OneCycle(0.5, 10, pct_start=0.01)


def test_step_decay_and_exponential():
    np.testing.assert_allclose(
        _values(schedules.step_decay(0.1, 10), [0, 9, 10, 25]), [0.1, 0.1, 0.01, 0.001], rtol=1e-5
    )
    np.testing.assert_allclose(
        _values(schedules.exponential(0.1, 10, 0.5), [0, 5, 20]), [0.1, 0.1 * 0.5**0.5, 0.025], rtol=1e-6
    )
    with pytest.raises(ConfigError, match="decay_rate=-0.5"):
        schedules.exponential(0.1, 10, -0.5)
    with pytest.raises(ConfigError, match="gamma=2"):
        schedules.step_decay(0.1, 10, gamma=2)


def test_get_registry():
    assert isinstance(schedules.get("one_cycle", max_lr=0.1, total_steps=50), schedules.OneCycle)
    assert isinstance(schedules.get("warmup_cosine", base_lr=0.1, total_steps=50),
                      keras.optimizers.schedules.CosineDecay)
    step = schedules.get("step", base_lr=0.1, step_size=5)
    assert step.get_config()["staircase"] is True
    assert schedules.get(0.01) == 0.01
    assert schedules.get(step) is step
    again = schedules.get(keras.optimizers.schedules.serialize(schedules.OneCycle(0.2, 40)))
    assert again.get_config() == schedules.OneCycle(0.2, 40).get_config()
    with pytest.raises(ConfigError, match="'linear_xyz'.*one_cycle"):
        schedules.get("linear_xyz")


@pytest.mark.parametrize(
    "make",
    [
        lambda: schedules.warmup_cosine(0.01, 100, 10, 1e-4),
        lambda: schedules.Warmup(schedules.OneCycle(0.01, 100), warmup_steps=5, initial_lr=1e-4),
        lambda: schedules.Warmup(0.01, warmup_steps=5),
        lambda: schedules.one_cycle(0.01, 100),
        lambda: schedules.step_decay(0.01, 10),
        lambda: schedules.exponential(0.01, 10, 0.9),
    ],
    ids=["warmup_cosine", "warmup_onecycle", "warmup_float", "one_cycle", "step", "exponential"],
)
def test_schedules_save_and_load_inside_model(make, tmp_path):
    schedule = make()
    model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    model.fit(x, np.zeros((16, 2), "float32"), batch_size=8, epochs=1, verbose=0)
    loaded = run_model_saving_test(model, x, tmp_path)
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(schedule)
    np.testing.assert_allclose(_values(restored, [0, 3, 7, 50]), _values(schedule, [0, 3, 7, 50]), rtol=1e-6)


def _regression_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(4,))])
    return model, ds


def test_find_lr_suggests_a_sane_rate_and_leaves_model_untouched():
    model, ds = _regression_problem()
    before = [w.copy() for w in model.get_weights()]
    result = schedules.find_lr(model, ds, min_lr=1e-4, max_lr=100.0, steps=80, optimizer="sgd", loss="mse",
                                 smooth=0.8)
    # SGD on this quadratic diverges for lr > ~1 (Hessian ~ 2 I): the test must stop early there.
    assert result.exploded_lr is not None and 0.3 < result.exploded_lr < 100.0
    assert len(result.lrs) == len(result.losses) < 80
    assert np.all(np.diff(result.lrs) > 0)
    assert 1e-4 <= result.suggested_lr <= 100.0
    assert result.suggested_lr < result.exploded_lr / 3
    assert result["suggested_lr"] == result.suggested_lr
    assert result.losses.min() < result.losses[0] / 10  # the loss did go down before exploding
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert model.optimizer is None


def test_find_lr_errors():
    model, ds = _regression_problem()
    with pytest.raises(ConfigError, match="max_lr=1e-08"):
        schedules.find_lr(model, ds, min_lr=1e-7, max_lr=1e-8)
    with pytest.raises(ConfigError, match="'nope'"):
        schedules.find_lr(model, ds, optimizer="nope", loss="mse")
