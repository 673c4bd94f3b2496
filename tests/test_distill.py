"""Knowledge distillation: the loss against NumPy, alpha=1 is plain training, a student that learns."""

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt.compress.distill import Distiller, distill, distillation_loss
from tfopt.errors import ConfigError
from tests.helpers import run_model_saving_test, run_serialization_test, shuffled_digits


@pytest.fixture(scope="module")
def digits():
    x, y = shuffled_digits(images=False)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _ds(x, y, batch=64):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _mlp(hidden, name, activation=None):
    return keras.Sequential(
        [keras.layers.Dense(hidden, activation="relu", input_shape=(64,)), keras.layers.Dense(10, activation=activation)],
        name=name,
    )


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_loss(y, t_logits, s_logits, temperature, alpha, w=None):
    w = np.ones(len(y)) if w is None else w
    hard = -np.mean(w * _np_log_softmax(s_logits)[np.arange(len(y)), y])
    lt, ls = _np_log_softmax(t_logits / temperature), _np_log_softmax(s_logits / temperature)
    soft = temperature**2 * np.mean(w * np.sum(np.exp(lt) * (lt - ls), axis=-1))
    return alpha * hard + (1 - alpha) * soft


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.1), (1.0, 0.5), (2.5, 0.0)])
def test_train_step_loss_matches_numpy(temperature, alpha):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, size=16).astype("int32")
    teacher = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))])
    student = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))])
    t_logits, s_logits = teacher(x).numpy(), student(x).numpy()
    distiller = Distiller(student, teacher, temperature=temperature, alpha=alpha)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = distiller.train_step((tf.constant(x), tf.constant(y)))
    expected = _np_loss(y, t_logits, s_logits, temperature, alpha)
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)
    total, _, _ = distillation_loss(y, t_logits, s_logits, temperature, alpha)
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert not np.allclose(student(x).numpy(), s_logits)  # the step updated the student
    np.testing.assert_array_equal(teacher(x).numpy(), t_logits)


def test_class_weighted_batches_weigh_both_losses_as_keras_does():
    """(x, y, w) batches (balance="class_weight") weigh the hard and the soft loss per example."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 3, size=16).astype("int32")
    w = rng.uniform(0.2, 3.0, size=16).astype("float32")
    teacher = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))])
    student = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))])
    t_logits, s_logits = teacher(x).numpy(), student(x).numpy()
    distiller = Distiller(student, teacher, temperature=2.0, alpha=0.3)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    logs = distiller.train_step((tf.constant(x), tf.constant(y), tf.constant(w)))
    expected = _np_loss(y, t_logits, s_logits, 2.0, 0.3, w)
    np.testing.assert_allclose(float(logs["loss"]), expected, rtol=1e-5)
    assert abs(expected - _np_loss(y, t_logits, s_logits, 2.0, 0.3)) > 1e-3  # the weights changed the loss


def test_alpha_one_equals_plain_sparse_ce_training(digits):
    x, y, _, _ = digits
    teacher = _mlp(8, "teacher")
    student = _mlp(16, "student")
    twin = _mlp(16, "twin")
    twin.set_weights(student.get_weights())
    ds = _ds(x[:256], y[:256])
    distill(teacher, student, ds, alpha=1.0, epochs=2, optimizer=keras.optimizers.SGD(0.1), verbose=0)
    twin.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    twin.fit(ds, epochs=2, verbose=0)
    for got, want in zip(student.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_distilled_student_learns_saves_and_leaves_teacher_alone(digits, tmp_path):
    x, y, xv, yv = digits
    teacher = _mlp(64, "teacher", activation="softmax")  # softmax output: read as probabilities
    teacher.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    teacher.fit(x, y, batch_size=64, epochs=5, verbose=0)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    student = _mlp(8, "student")
    trained = distill(teacher, student, _ds(x, y), temperature=4.0, alpha=0.1, epochs=4,
                      val_ds=_ds(xv, yv), learning_rate=1e-2, verbose=0)
    assert trained is student
    accuracy = np.mean(np.argmax(student.predict(xv, verbose=0), axis=-1) == yv)
    assert accuracy > 0.6  # chance is 0.1
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    loaded = run_model_saving_test(student, xv[:32], tmp_path)
    assert type(loaded).__name__ == "Sequential"


def test_distiller_config_round_trip():
    teacher = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))], name="t")
    student = keras.Sequential([keras.layers.Dense(3, input_shape=(5,))], name="s")
    clone = run_serialization_test(Distiller(student, teacher, temperature=3.0, alpha=0.25))
    assert clone.temperature == 3.0 and clone.alpha == 0.25


def test_distill_errors_name_the_bad_value(digits):
    x, y, _, _ = digits
    ds = _ds(x[:64], y[:64])
    teacher, student = _mlp(8, "teacher"), _mlp(8, "student")
    with pytest.raises(ConfigError, match="temperature=0"):
        distill(teacher, student, ds, temperature=0)
    with pytest.raises(ConfigError, match="alpha=1.5"):
        distill(teacher, student, ds, alpha=1.5)
    small = keras.Sequential([keras.layers.Dense(5, input_shape=(64,))])
    with pytest.raises(ConfigError, match=r"\(None, 10\).*\(None, 5\)"):
        distill(teacher, small, ds)
    sigmoid = _mlp(8, "sig", activation="sigmoid")
    with pytest.raises(ConfigError, match="sigmoid"):
        distill(teacher, sigmoid, ds)


# ---------------------------------------------------------------- augment=: one augmented batch for both models


def test_augment_is_seen_by_teacher_and_student_alike(digits):
    """augment= replaces every batch by zeros: a student that matches the teacher ON ZEROS (its bias learns the
    teacher's output there) shows that both saw the augmented batch, not the digits."""
    x, y, _, _ = digits
    teacher = keras.Sequential([keras.layers.Dense(10, input_shape=(64,), name="t")], name="teacher")
    teacher.layers[0].set_weights([np.random.default_rng(0).normal(size=(64, 10)).astype("float32"),
                                   np.array([3.0, 1.0] + [0.0] * 8, "float32")])
    student = keras.Sequential([keras.layers.Dense(10, input_shape=(64,))], name="student")
    zeros = lambda xb, yb: (tf.zeros_like(xb), yb)  # noqa: E731
    distill(teacher, student, _ds(x[:256], y[:256]), alpha=0.0, temperature=1.0, epochs=30, augment=zeros,
            optimizer=keras.optimizers.Adam(0.05), verbose=0)
    zero = np.zeros((1, 64), "float32")
    p_teacher = tf.nn.softmax(teacher(zero)).numpy()[0]
    p_student = tf.nn.softmax(student(zero)).numpy()[0]
    np.testing.assert_allclose(p_student, p_teacher, atol=0.02)
    on_digits = tf.nn.softmax(teacher(x[:256])).numpy().mean(axis=0)  # what the student would learn otherwise
    assert np.abs(on_digits - p_teacher).max() > 0.2


def test_consistent_batches_keep_weights_and_refuse_bad_names():
    from tfopt.compress.distill import consistent_batches

    ds = tf.data.Dataset.from_tensor_slices((np.ones((4, 8, 8, 1), "float32"), np.arange(4), np.full(4, 2.0))).batch(2)
    batches = list(consistent_batches(ds, "standard", (8, 8, 1)))
    assert len(batches) == 2 and all(len(b) == 3 for b in batches)
    np.testing.assert_array_equal(batches[0][2].numpy(), [2.0, 2.0])  # sample weights pass through
    assert batches[1][1].numpy().tolist() == [2, 3]
    with pytest.raises(ConfigError, match="augment='heavy' is not allowed"):
        consistent_batches(ds, "heavy", (8, 8, 1))
    flat = tf.data.Dataset.from_tensor_slices((np.ones((4, 64), "float32"), np.arange(4))).batch(2)
    with pytest.raises(ConfigError, match=r"needs images of shape \(H, W, C\)"):
        distill(_mlp(8, "teacher"), _mlp(8, "student"), flat, augment="light")
