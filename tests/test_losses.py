"""Tests of tfopt.losses against Keras and NumPy references."""

import numpy as np
import pytest

from tests.helpers import run_model_saving_test, run_serialization_test
from tfopt import losses
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 1.5, 0.0], [0.3, 0.3, 0.3]], "float32")
LABELS = np.array([0, 2, 1, 1])


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("from_logits", [True, False])
def test_label_smoothing_equals_keras_categorical_crossentropy(smoothing, from_logits):
    y_pred = LOGITS if from_logits else tf.nn.softmax(LOGITS).numpy()
    one_hot = np.eye(3, dtype="float32")[LABELS]
    ref = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=smoothing)(one_hot, y_pred)
    dense = losses.LabelSmoothingCrossEntropy(smoothing, sparse=False, from_logits=from_logits)(one_hot, y_pred)
    sparse = losses.LabelSmoothingCrossEntropy(smoothing, sparse=True, from_logits=from_logits)(LABELS, y_pred)
    sparse_col = losses.LabelSmoothingCrossEntropy(smoothing, from_logits=from_logits)(LABELS[:, None], y_pred)
    np.testing.assert_allclose(dense.numpy(), ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(sparse.numpy(), ref.numpy(), atol=1e-6)
    np.testing.assert_allclose(sparse_col.numpy(), ref.numpy(), atol=1e-6)


def test_label_smoothing_numpy_reference_and_validation():
    s = 0.2
    target = np.eye(3)[LABELS] * (1 - s) + s / 3
    ref = -(target * _np_log_softmax(LOGITS.astype("float64"))).sum(-1).mean()
    assert float(losses.LabelSmoothingCrossEntropy(s)(LABELS, LOGITS)) == pytest.approx(ref, abs=1e-6)
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match=f"smoothing={bad}"):
            losses.LabelSmoothingCrossEntropy(bad)


def _np_focal(logits, labels, gamma, alpha=None):
    log_p = _np_log_softmax(logits.astype("float64"))[np.arange(len(labels)), labels]
    loss = -((1 - np.exp(log_p)) ** gamma) * log_p
    if alpha is not None:
        loss = loss * (np.asarray(alpha)[labels] if np.ndim(alpha) else alpha)
    return loss.mean()


@pytest.mark.parametrize("gamma,alpha", [(2.0, None), (1.5, 0.25), (2.0, [0.2, 0.5, 1.0]), (0.5, [1.0, 2.0, 3.0])])
def test_focal_loss_matches_numpy(gamma, alpha):
    got = losses.SparseFocalLoss(gamma=gamma, alpha=alpha)(LABELS, LOGITS)
    assert float(got) == pytest.approx(_np_focal(LOGITS, LABELS, gamma, alpha), abs=1e-6)
    probs = tf.nn.softmax(LOGITS).numpy()
    got_probs = losses.SparseFocalLoss(gamma=gamma, alpha=alpha, from_logits=False)(LABELS, probs)
    assert float(got_probs) == pytest.approx(_np_focal(LOGITS, LABELS, gamma, alpha), abs=1e-5)


def test_focal_gamma_zero_is_cross_entropy_and_focal_downweights_easy():
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, LOGITS)
    assert float(losses.SparseFocalLoss(gamma=0.0)(LABELS, LOGITS)) == pytest.approx(float(ce), abs=1e-6)
    assert float(losses.SparseFocalLoss(gamma=2.0)(LABELS, LOGITS)) < float(ce)
    with pytest.raises(ConfigError, match="gamma=-1"):
        losses.SparseFocalLoss(gamma=-1)
    with pytest.raises(ConfigError, match=r"alpha=\[1.0, -2.0\]"):
        losses.SparseFocalLoss(alpha=[1.0, -2.0])


def test_adaptive_loss_value_follows_weights():
    loss = losses.AdaptiveClassWeightedLoss(3)
    ce = -_np_log_softmax(LOGITS.astype("float64"))[np.arange(4), LABELS]
    assert float(loss(LABELS, LOGITS)) == pytest.approx(ce.mean(), abs=1e-6)
    weights = np.array([0.5, 2.0, 0.5])
    loss.class_weights.assign(weights.astype("float32"))
    assert float(loss(LABELS, LOGITS)) == pytest.approx((ce * weights[LABELS]).mean(), abs=1e-6)
    assert loss.class_weights.trainable is False
    assert loss.get_config()["initial_weights"] == [0.5, 2.0, 0.5]
    with pytest.raises(ConfigError, match="initial_weights"):
        losses.AdaptiveClassWeightedLoss(3, initial_weights=[1.0, 0.0, 1.0])


class _ForceClass(keras.layers.Layer):
    """Frozen 'model' of 3 classes that predicts the true class for 0 and 1 but class 0 for class 2."""

    def call(self, x):
        return 5.0 * x


def _biased_model(loss):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, _ForceClass()(inputs))
    model.compile(optimizer="sgd", loss=loss)
    return model


def _biased_data():
    labels = np.array([0, 1, 2] * 8)
    predicted = np.where(labels == 2, 0, labels)  # class 2 always predicted as class 0
    return np.eye(3, dtype="float32")[predicted], labels


@pytest.mark.parametrize("use_dataset", [True, False])
def test_adaptive_callback_raises_weight_of_wrong_class(use_dataset):
    x, y = _biased_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    loss = losses.AdaptiveClassWeightedLoss(3)
    model = _biased_model(loss)
    cb = losses.AdaptiveClassWeights(data=ds if use_dataset else None, power=1.0, momentum=0.0, eps=0.05)
    ce = -_np_log_softmax(5.0 * x.astype("float64"))[np.arange(len(y)), y]
    before = model.evaluate(ds, verbose=0)
    model.fit(ds, epochs=1, verbose=0, callbacks=[cb], validation_data=ds)
    weights = loss.class_weights.numpy()
    assert np.argmax(weights) == 2
    # errors (0, 0, 1) + eps, normalised to mean 1:
    expected = np.array([0.05, 0.05, 1.05]) / np.mean([0.05, 0.05, 1.05])
    np.testing.assert_allclose(weights, expected, rtol=1e-5)
    assert before == pytest.approx(ce.mean(), abs=1e-5)
    after = model.evaluate(ds, verbose=0)
    assert after == pytest.approx((ce * expected[y]).mean(), abs=1e-5)


def test_adaptive_callback_momentum_blends_and_needs_adaptive_loss():
    x, y = _biased_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    loss = losses.AdaptiveClassWeightedLoss(3)
    model = _biased_model(loss)
    cb = losses.AdaptiveClassWeights(data=ds, momentum=0.5)
    model.fit(ds, epochs=1, verbose=0, callbacks=[cb])
    target = np.array([0.05, 0.05, 1.05]) / np.mean([0.05, 0.05, 1.05])
    blended = 0.5 + 0.5 * target
    np.testing.assert_allclose(loss.class_weights.numpy(), blended / blended.mean(), rtol=1e-5)
    plain = _biased_model("sparse_categorical_crossentropy")
    with pytest.raises(ConfigError, match="AdaptiveClassWeightedLoss"):
        plain.fit(ds, epochs=1, verbose=0, callbacks=[losses.AdaptiveClassWeights()])
    with pytest.raises(ConfigError, match="momentum=1.0"):
        losses.AdaptiveClassWeights(momentum=1.0)


def test_get_registry_and_errors():
    assert isinstance(losses.get("label_smoothing"), losses.LabelSmoothingCrossEntropy)
    assert losses.get("label_smoothing_ce", smoothing=0.2).smoothing == 0.2
    assert losses.get("focal", gamma=1.0).gamma == 1.0
    assert losses.get("adaptive", num_classes=4).num_classes == 4
    assert isinstance(losses.get("sparse_categorical_crossentropy"), keras.losses.SparseCategoricalCrossentropy)
    assert losses.get("categorical_crossentropy").get_config()["from_logits"] is True
    obj = losses.SparseFocalLoss(gamma=3.0)
    assert losses.get(obj) is obj
    from_dict = losses.get(keras.losses.serialize(obj))
    assert isinstance(from_dict, losses.SparseFocalLoss) and from_dict.gamma == 3.0
    with pytest.raises(ConfigError, match="'hinge_xyz'.*focal.*label_smoothing"):
        losses.get("hinge_xyz")


@pytest.mark.parametrize(
    "loss",
    [
        losses.LabelSmoothingCrossEntropy(0.2),
        losses.SparseFocalLoss(gamma=1.0, alpha=[0.5, 1.0, 2.0]),
        losses.AdaptiveClassWeightedLoss(3, initial_weights=[1.0, 2.0, 0.5]),
    ],
    ids=["label_smoothing", "focal", "adaptive"],
)
def test_losses_serialize_and_models_load_back(loss, tmp_path):
    clone = run_serialization_test(loss)
    assert float(clone(LABELS, LOGITS)) == pytest.approx(float(loss(LABELS, LOGITS)), abs=1e-6)
    model = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    model.compile(optimizer="adam", loss=loss)
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    loaded = run_model_saving_test(model, x, tmp_path)
    assert type(loaded.loss) is type(loss)
    assert loaded.loss.get_config() == loss.get_config()


def test_uncertainty_weighting_value_and_learnt_weights():
    layer = losses.UncertaintyWeighting(2)
    values = [tf.constant(4.0), tf.constant(0.25)]
    assert float(layer(values)) == pytest.approx(4.25)
    layer.log_vars.assign([0.5, -1.0])
    assert float(layer(values)) == pytest.approx(np.exp(-0.5) * 4 + 0.5 + np.exp(1.0) * 0.25 - 1.0, rel=1e-6)
    # d total / d s_i = 1 - exp(-s_i) * L_i: at the optimum s_i = log(L_i), so the larger loss gets less weight.
    opt = keras.optimizers.SGD(0.1)
    for _ in range(300):
        with tf.GradientTape() as tape:
            total = layer(values)
        opt.apply_gradients(zip(tape.gradient(total, layer.trainable_weights), layer.trainable_weights))
    np.testing.assert_allclose(layer.log_vars.numpy(), np.log([4.0, 0.25]), atol=1e-2)
    assert losses.UncertaintyWeighting.from_config(layer.get_config()).num_losses == 2
    with pytest.raises(ConfigError, match="num_losses=1"):
        losses.UncertaintyWeighting(1)
