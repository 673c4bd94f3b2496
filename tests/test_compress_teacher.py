"""``teacher=``: prune, cluster and quantize_aware fine-tune distilled from the uncompressed model and still reach
their targets (tfmot's callbacks reach the wrapped layers inside the Distiller); a recipe names the teacher by
its stage; the Distiller under a mirrored strategy trains like one device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfopt._keras import keras, tf
from tfopt._model import is_qat
from tfopt.compress import cluster, cluster_counts, prune, quantize_aware, sparsity
from tfopt.compress._fit import _student_logits
from tfopt.errors import ConfigError
from tests.helpers import shuffled_digits

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def data():
    x, y = shuffled_digits(images=False)
    return tf.data.Dataset.from_tensor_slices((x[:768], y[:768])).batch(64)


@pytest.fixture(scope="module")
def teacher(data):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(48, activation="relu", input_shape=(64,), name="hidden"),
                              keras.layers.Dense(10, activation="softmax", name="probs")], name="teacher")
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(data, epochs=3, verbose=0)
    return model


class _Keys(keras.callbacks.Callback):
    """The log keys of the fit it is given to, and whether tfmot's pruning step advanced in it."""

    def __init__(self):
        super().__init__()
        self.keys = set()

    def on_epoch_end(self, epoch, logs=None):
        self.keys |= set(logs or {})


def test_prune_cluster_and_qat_distilled_from_the_teacher_reach_their_targets(data, teacher):
    seen = _Keys()
    pruned = prune(teacher, data, 0.6, epochs=2, teacher=teacher, temperature=2.0, alpha=0.3, callbacks=[seen],
                   verbose=0)
    assert {"soft_loss", "hard_loss"} <= seen.keys  # the Distiller trained it
    assert sparsity(pruned)["layers"]["hidden"] >= 0.59  # UpdatePruningStep reached the wrapped layers

    seen = _Keys()
    clustered = cluster(pruned, data, n_clusters=8, preserve_sparsity=True, teacher=teacher, callbacks=[seen],
                        verbose=0)
    assert "soft_loss" in seen.keys
    assert max(cluster_counts(clustered)["layers"].values()) <= 8
    assert sparsity(clustered)["layers"]["hidden"] >= 0.59

    seen = _Keys()
    qat, report = quantize_aware(clustered, data, epochs=1, preserve_sparsity=True, teacher=teacher,
                                 callbacks=[seen], verbose=0, return_report=True)
    assert "soft_loss" in seen.keys and is_qat(qat) and set(report["quantized"]) >= {"hidden", "probs"}
    assert qat.evaluate(data, verbose=0, return_dict=True)["accuracy"] > 0.5


def test_a_wrapped_softmax_student_is_read_as_probabilities(teacher):
    """tfmot's wrappers hide the softmax of the layer they wrap; distillation must still read probabilities."""
    from tfopt._keras import tfmot

    probs = tf.constant([[0.25, 0.75]])
    for wrapped in (tfmot.sparsity.keras.prune_low_magnitude(keras.models.clone_model(teacher)),
                    tfmot.quantization.keras.quantize_model(keras.models.clone_model(teacher))):
        np.testing.assert_allclose(_student_logits(wrapped)(probs).numpy(), np.log(probs.numpy()), rtol=1e-6)
    logits = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
    assert _student_logits(tfmot.sparsity.keras.prune_low_magnitude(logits))(probs) is not None
    np.testing.assert_array_equal(_student_logits(logits)(probs).numpy(), probs.numpy())
    sigmoid = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(3,))], name="sig")
    with pytest.raises(ConfigError, match="'sig' ends in a sigmoid"):
        _student_logits(sigmoid)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, r"temperature=0\.0"),
    ({"alpha": 1.5}, r"alpha=1\.5"),
])
def test_bad_distillation_settings_are_refused_before_anything_runs(data, teacher, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        prune(teacher, data, 0.5, teacher=teacher, verbose=0, **kwargs)


def test_a_teacher_with_other_classes_is_refused(data, teacher):
    other = keras.Sequential([keras.layers.Dense(3, input_shape=(64,))], name="three")
    with pytest.raises(ConfigError, match=r"teacher output shape \(None, 3\) and student output shape \(None, 10\)"):
        quantize_aware(teacher, data, teacher=other, verbose=0)


def _mirrored_worker(out: str) -> None:
    """Two logical CPUs, op determinism: distill, prune with a teacher, and cluster, each on one device and mirrored
    over two, from the same seeds, on 1,001 rows in batches of 64 (the last, 41 rows, does not split evenly);
    writes the largest weight difference per method to ``out``."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.config.experimental.enable_op_determinism()
    from tfopt import distribute
    from tfopt._model import strategy_scope
    from tfopt.compress import distill

    x, y = shuffled_digits(images=False)
    ds = tf.data.Dataset.from_tensor_slices((x[:1001], y[:1001])).batch(64)
    runs = {}
    for name, strategy in (("one", None), ("two", distribute.get_strategy("mirrored"))):
        keras.utils.set_random_seed(0)
        with strategy_scope(strategy):
            teacher = keras.Sequential([keras.layers.Dense(32, activation="relu", input_shape=(64,)),
                                        keras.layers.Dense(10)], name="teacher")
            student = keras.Sequential([keras.layers.Dense(16, activation="relu", input_shape=(64,)),
                                        keras.layers.Dense(10)], name="student")
            teacher.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        distill(teacher, student, ds, epochs=1, optimizer=keras.optimizers.SGD(0.1), strategy=strategy, verbose=0)
        pruned = prune(teacher, ds, 0.5, epochs=1, learning_rate=0.1, teacher=teacher, strategy=strategy, verbose=0,
                       check=False)
        clustered = cluster(teacher, ds, n_clusters=8, learning_rate=0.05, strategy=strategy, verbose=0)
        runs[name] = {"distill": student.get_weights(), "prune": pruned.get_weights(),
                      "cluster": clustered.get_weights()}
    Path(out).write_text(json.dumps({
        method: max(float(np.abs(a - b).max()) for a, b in zip(runs["one"][method], runs["two"][method]))
        for method in runs["one"]}))


def test_compression_under_mirrored_trains_like_one_device(tmp_path):
    """The Distiller divides its loss by the replicas (it trained at twice the rate over two), and the compression
    fits pad and weigh the partial last batch (``even_batches``)."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    out = tmp_path / "diff.json"
    code = f"from tests.test_compress_teacher import _mirrored_worker; _mirrored_worker({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diffs = json.loads(out.read_text())
    assert set(diffs) == {"distill", "prune", "cluster"}
    for method, diff in diffs.items():
        assert diff < 1e-5, (method, diffs)
