"""prune -> cluster (keeping the zeros) -> QAT (keeping both) -> int8 TFLite: the shipped file itself still
shows the sparsity and the cluster count."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tfopt import compress, export
from tfopt._keras import keras, tf


def test_prune_cluster_qat_int8_keeps_sparsity_and_clusters_in_the_file():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x[:1400], y[:1400])).shuffle(1400, seed=0).batch(32)
    val = tf.data.Dataset.from_tensor_slices((x[1400:], y[1400:])).batch(100)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu", name="dense")(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(train, epochs=6, verbose=0)
    float_acc = model.evaluate(val, verbose=0)[1]

    pruned = compress.prune(model, train, 0.75, epochs=3, verbose=0)
    clustered = compress.cluster(pruned, train, n_clusters=8, preserve_sparsity=True, init="linear", epochs=1,
                                 learning_rate=1e-4, verbose=0)
    qat = compress.quantize_aware(clustered, train, epochs=1, preserve_sparsity=True, preserve_clusters=True,
                                  verbose=0)
    tfl = export.to_tflite(qat, "int8", representative_data=train)

    stats = export.weight_stats(tfl.content)
    assert stats["kernels"] >= 1  # the 9216-weight dense kernel (and the conv's)
    dense = next(w for w in export.tflite_weights(tfl.content).values() if w.shape == (64, 6 * 6 * 16))
    assert np.mean(dense == 0) == pytest.approx(0.75, abs=0.02)  # the zeros survived into the file
    per_row = max(np.unique(row[row != 0]).size for row in dense)
    assert per_row <= 8  # 8 clusters: at most 8 non-zero int8 values per output channel
    measured = export.evaluate(tfl, val, runs=5)
    assert float_acc > 0.8 and measured["accuracy"] > 0.8  # chance is 0.1; both ~0.91 here
    assert measured["gzip_bytes"] < export.to_tflite(model).gzip_bytes / 6
