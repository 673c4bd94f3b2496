"""tfopt.train.fit and tfopt.distribute: run directories, resume after an interruption, NaN stop, strategies."""

import csv
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfopt import distribute
from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, DataError, DistributeError, KerasVersionError, TrainingError
from tfopt.train import fit


def _data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x[:1400], y[:1400])).batch(64)
    val = tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(64)
    return train, val


def _model():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    out = keras.layers.Dense(10)(keras.layers.Flatten()(h))
    return keras.Model(inp, out)


class _Interrupt(keras.callbacks.Callback):
    """Raises in the middle of an epoch, as a kill would stop the process."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch == 5:
            raise KeyboardInterrupt("simulated kill")


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_fit_writes_run_dir_and_best_checkpoint_is_the_best(tmp_path):
    train, val = _data()
    model = _model()
    history = fit(model, train, val, epochs=3, run_dir=tmp_path, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.5  # uncompiled: compiled here with Adam + sparse CE
    for rel in ("checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "history.csv"):
        assert (tmp_path / rel).is_file()
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))
    rows = _rows(tmp_path / "history.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    best = _model()
    best.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    best.load_weights(tmp_path / "checkpoints/best.weights.h5")
    assert best.evaluate(val, verbose=0) == pytest.approx(min(history.history["val_loss"]), rel=1e-4)
    # A second fit on the same model works (tf_keras's BackupAndRestore deletes _training_state).
    fit(model, train, epochs=1, verbose=0)


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    train, val = _data()
    model = _model()
    with pytest.raises(KeyboardInterrupt):
        fit(model, train, val, epochs=4, run_dir=tmp_path, callbacks=[_Interrupt(2)], verbose=0)
    assert [int(r["epoch"]) for r in _rows(tmp_path / "history.csv")] == [0, 1]
    resumed = _model()
    history = fit(resumed, train, val, epochs=4, run_dir=tmp_path, verbose=0)
    assert history.epoch == [2, 3]  # epochs 0 and 1 were not trained again
    assert [int(r["epoch"]) for r in _rows(tmp_path / "history.csv")] == [0, 1, 2, 3]
    assert history.history["val_accuracy"][-1] > 0.5


def test_divergence_names_epoch_and_step():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    x[130] = np.nan  # in the third batch of 64: the loss becomes NaN there and stays NaN
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with pytest.raises(TrainingError, match=r"loss=nan at epoch 1, step 3"):
        fit(model, train, epochs=3, verbose=0)


def test_fit_under_default_and_mirrored_strategy_names():
    train, _ = _data()
    model = _model()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    before = model.get_weights()[0].copy()
    fit(model, train, epochs=1, strategy="mirrored", verbose=0)  # model made outside the scope: copied in
    assert not np.allclose(before, model.get_weights()[0])  # trained weights come back to the caller's model


def test_bad_arguments():
    train, _ = _data()
    with pytest.raises(ConfigError, match="epochs=0"):
        fit(_model(), train, epochs=0)
    with pytest.raises(DataError, match="empty"):
        fit(_model(), train.take(0), epochs=1)
    with pytest.raises(KerasVersionError):
        fit("not a model", train)
    with pytest.raises(ConfigError, match="strategy='tpu_pod'"):
        fit(_model(), train, strategy="tpu_pod")


def test_get_strategy_and_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.get_strategy("auto").num_replicas_in_sync == 1
    assert distribute.replicas(None) == 1
    assert isinstance(distribute.get_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(DistributeError, match="needs TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    good = {"cluster": {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.parse_tf_config(json.dumps(good))["task"]["index"] == 1
    bad = [
        ("{not json", "not valid JSON"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "'cluster'"),
        (json.dumps({**good, "task": {"type": "worker", "index": 5}}), "index 5 is out of range"),
        (json.dumps({**good, "task": {"type": "chief", "index": 0}}), "'chief' has no host list"),
        (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}), "'localhost' is not host:port"),
    ]
    for raw, message in bad:
        with pytest.raises(DistributeError, match=message):
            distribute.parse_tf_config(raw)
    with pytest.raises(ConfigError, match="mixed_float8"):
        distribute.set_mixed_precision("mixed_float8")


# ------------------------------------------------------------------ accelerator settings (tested on CPU)
@pytest.fixture
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _sgd_model():
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_a_copy_with_float32_outputs(policy, float32_policy):
    train, _ = _data()
    model = _sgd_model()
    before = model.get_weights()[0].copy()
    history = fit(model, train.take(4 if policy == "mixed_float16" else 22), epochs=2, mixed_precision=policy, verbose=0)
    trained = history.model
    assert trained is not model
    hidden = [layer for layer in trained.layers[1:-1]]
    assert [layer.dtype_policy.name for layer in hidden] == [policy] * len(hidden)
    assert trained.layers[-1].dtype_policy.name == "float32"  # the output (logits) layer
    assert trained.output.dtype == tf.float32
    assert trained.layers[1].compute_dtype == policy.split("_")[1]
    assert (type(trained.optimizer).__name__.startswith("LossScaleOptimizer")) == (policy == "mixed_float16")
    assert history.history["loss"][1] < history.history["loss"][0]
    assert not np.allclose(before, model.get_weights()[0])  # weights came back to the float32 model
    assert keras.mixed_precision.global_policy().name == "float32"  # fit did not change the global policy


def test_builders_keep_logits_in_float32_under_a_mixed_policy(float32_policy):
    from tfopt import models

    distribute.set_mixed_precision("mixed_bfloat16")
    model = models.build("cnn", input_shape=(8, 8, 1), num_classes=10, filters=(4,), dense=(8,))
    assert model.get_layer("logits").dtype_policy.name == "float32"
    assert [l.dtype_policy.name for l in model.layers if "conv" in l.name] == ["mixed_bfloat16"]
    assert model(np.zeros((2, 8, 8, 1), "float32")).dtype == tf.float32


def test_jit_compile_and_steps_per_execution_are_applied(tmp_path):
    train, _ = _data()
    model = _sgd_model()
    optimizer = model.optimizer
    history = fit(model, train, epochs=2, jit_compile=True, steps_per_execution=4, verbose=0)
    assert history.model is model and model.optimizer is optimizer  # re-compiled in place, same optimizer
    assert model._jit_compile is True
    assert int(model._steps_per_execution.numpy()) == 4
    assert model.compiled_metrics._user_metrics == ["accuracy"]
    assert history.history["loss"][1] < history.history["loss"][0]
    # Copied into a strategy's scope: the flags go with the copy, and so does the optimizer's config.
    history = fit(_sgd_model(), train, epochs=1, strategy="mirrored", jit_compile=False, steps_per_execution=3, verbose=0)
    assert history.model._jit_compile is False and int(history.model._steps_per_execution.numpy()) == 3
    assert type(history.model.optimizer).__name__ == "SGD"
    assert history.model.optimizer.learning_rate.numpy() == pytest.approx(0.1)


def test_bad_accelerator_options():
    train, _ = _data()
    with pytest.raises(ConfigError, match="mixed_precision='float8'"):
        fit(_model(), train, mixed_precision="float8")
    with pytest.raises(ConfigError, match="steps_per_execution=0"):
        fit(_model(), train, steps_per_execution=0)
