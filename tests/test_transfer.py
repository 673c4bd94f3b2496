"""Transfer learning on digits: base trained on classes 0-4, fine-tuned to classes 5-9."""

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt.compress.transfer import build_transfer_model, fine_tune
from tfopt.errors import ConfigError
from tests.helpers import run_model_saving_test, shuffled_digits


@pytest.fixture(scope="module")
def tasks():
    x, y = shuffled_digits()
    a, b = y < 5, y >= 5
    xb, yb = x[b], y[b] - 5
    return {"a": (x[a], y[a]), "b_train": (xb[:600], yb[:600]), "b_val": (xb[600:], yb[600:])}


def _ds(xy, batch=32):
    return tf.data.Dataset.from_tensor_slices(xy).batch(batch)


def _base():
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="old_head")(h), name="base")


@pytest.fixture(scope="module")
def base_weights(tasks):
    keras.utils.set_random_seed(0)
    base = _base()
    base.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    base.fit(*tasks["a"], batch_size=64, epochs=4, verbose=0)
    return base.get_weights()


def _trained_base(weights):
    base = _base()
    base.set_weights(weights)
    return base


def _accuracy(model, xy):
    x, y = xy
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _weights(model, name):
    return [w.copy() for w in model.get_layer(name).get_weights()]


def test_head_only_phase_leaves_base_unchanged_and_learns_new_task(tasks, base_weights, tmp_path):
    base = _trained_base(base_weights)
    model = fine_tune(base, 5, _ds(tasks["b_train"]), epochs=(8, 0), learning_rate=3e-2, verbose=0)
    assert model.get_layer("logits").units == 5 and model.output_shape == (None, 5)
    assert "old_head" not in [layer.name for layer in model.layers]
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat, QAT-ready
    for name in ("c1", "bn", "c2"):
        for got, want in zip(_weights(model, name), _weights(base, name)):
            np.testing.assert_array_equal(got, want)
    assert _accuracy(model, tasks["b_val"]) > 0.4  # chance is 0.2; ~0.7 here
    run_model_saving_test(model, tasks["b_val"][0][:16], tmp_path)


def test_fine_tuning_phase_changes_top_layers_keeps_frozen_ones_and_bn_stats(tasks, base_weights):
    base = _trained_base(base_weights)
    bn_before = _weights(base, "bn")
    model = fine_tune(base, 5, _ds(tasks["b_train"]), freeze=2, epochs=(4, 3), learning_rate=3e-2, verbose=0)
    # freeze=2 keeps [image, c1] frozen; bn stays frozen (inference mode); c2 is fine-tuned.
    for got, want in zip(_weights(model, "c1"), _weights(base, "c1")):
        np.testing.assert_array_equal(got, want)
    bn = model.get_layer("bn")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), bn_before[2])
    np.testing.assert_array_equal(bn.moving_variance.numpy(), bn_before[3])
    assert not bn.trainable
    assert not np.allclose(model.get_layer("c2").get_weights()[0], base.get_layer("c2").get_weights()[0])
    assert _accuracy(model, tasks["b_val"]) > 0.4


def test_headless_nested_base_gets_pooling_and_is_flattened():
    inner = keras.Sequential([keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1), name="conv")], name="features")
    inputs = keras.Input((8, 8, 1))
    base = keras.Model(inputs, inner(inputs))
    model, base_layers = build_transfer_model(base, 3, head_dropout=0.2)
    assert [layer.name for layer in model.layers[-3:]] == ["head_pool", "head_dropout", "logits"]
    assert isinstance(model.get_layer("head_pool"), keras.layers.GlobalAveragePooling2D)
    assert model.output_shape == (None, 3) and len(base_layers) == 2
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    features = base.predict(x, verbose=0).mean(axis=(1, 2))
    kernel, bias = model.get_layer("logits").get_weights()
    np.testing.assert_allclose(model.predict(x, verbose=0), features @ kernel + bias, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"freeze": -1}, "freeze=-1"),
        ({"freeze": 99}, r"freeze=99.*<= 6"),
        ({"freeze": "some"}, "freeze='some'"),
        ({"num_classes": 1}, "num_classes=1"),
        ({"epochs": (1,)}, r"epochs=\(1,\)"),
        ({"epochs": (1, -1)}, r"epochs=\(1, -1\)"),
        ({"epochs": (1.5, 1)}, r"epochs=\(1.5, 1\)"),
        ({"lr_scale": 0}, "lr_scale=0"),
    ],
)
def test_errors_name_the_bad_value(tasks, kwargs, message):
    args = {"num_classes": 5, "epochs": (0, 0)}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        fine_tune(_base(), train_ds=_ds(tasks["b_val"]), verbose=0, **args)


def test_a_fine_tuning_killed_in_its_second_phase_restores_the_first_and_resumes_the_second(tasks, base_weights,
                                                                                            tmp_path):
    import csv

    backup, history = tmp_path / "backup", tmp_path / "history.csv"

    class Crash(keras.callbacks.Callback):
        """Counts the epochs begun; raises (a crash) as the second phase's epoch 1 begins."""

        begun = 0

        def on_epoch_begin(self, epoch, logs=None):
            Crash.begun += 1
            if Crash.begun == 4:  # head epochs 0, 1; fine-tuning epoch 0; now its epoch 1
                raise KeyboardInterrupt

    def run(callbacks):
        logger = keras.callbacks.CSVLogger(str(history), append=True)
        return fine_tune(_trained_base(base_weights), 5, _ds(tasks["b_train"]), epochs=(2, 3), learning_rate=3e-2,
                         verbose=0, callbacks=[logger, *callbacks], backup_dir=backup)

    with pytest.raises(KeyboardInterrupt):
        run([Crash()])
    assert (backup / "head" / "chief").is_dir() and (backup / "fine_tune" / "chief").is_dir()

    class Count(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            Count.epochs.append(epoch)

    model = run([Count()])
    assert Count.epochs == [1, 2]  # the head is restored, not trained again; the fine-tuning resumes at epoch 1
    with open(history) as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["0", "1", "0", "1", "2"]
    assert not backup.exists() or not any(backup.rglob("chief"))  # removed once both phases are done
    assert _accuracy(model, tasks["b_val"]) > 0.5  # five classes: chance is 0.2
