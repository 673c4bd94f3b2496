"""Quantization-aware training: which layers get quantized, accuracy, preservation, TFLite int8, saving."""

import numpy as np
import pytest

import tfopt
from tests.helpers import shuffled_digits
from tfopt._keras import keras, serializable, tf, tfmot
from tfopt.compress.quantize import flatten_model, load_quantized, quantize_aware, save_quantized
from tfopt.errors import ConfigError, KerasVersionError, UnsupportedLayerError

QW = tfmot.quantization.keras.QuantizeWrapper


@pytest.fixture(scope="module")
def digits():
    x, y = shuffled_digits(images=True)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _ds(x, y, batch=64):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


@serializable(package="tfopt_tests")
class QatTestScale(keras.layers.Layer):
    """A custom layer tfmot's registry does not know."""

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return self.factor * x

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def _cnn():
    return keras.Sequential(
        [
            keras.layers.Conv2D(16, 3, activation="relu", input_shape=(8, 8, 1), name="conv"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


@pytest.fixture(scope="module")
def trained_weights(digits):
    x, y, xv, yv = digits
    keras.utils.set_random_seed(0)
    model = _cnn()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=10, verbose=0)
    return model.get_weights()


def _pretrained(weights):
    model = _cnn()
    model.set_weights(weights)
    return model


def _accuracy(predict, x, y):
    return float(np.mean(np.argmax(predict(x), axis=-1) == y))


def _kernel(qat, name):
    layer = next(lay for lay in qat.layers if isinstance(lay, QW) and lay.layer.name == name)
    (kernel,) = [w for w in layer.weights if w.name.split("/")[-1] == "kernel:0"]
    return kernel.numpy()


def test_qat_cnn_wraps_layers_keeps_accuracy_and_converts_to_int8(digits, trained_weights, tmp_path):
    x, y, xv, yv = digits
    model = _pretrained(trained_weights)
    float_acc = _accuracy(lambda a: model.predict(a, verbose=0), xv, yv)
    assert float_acc > 0.9
    qat, report = quantize_aware(model, _ds(x[:320], y[:320]), epochs=1, verbose=0, return_report=True)

    wrapped = {lay.layer.name: type(lay.layer).__name__ for lay in qat.layers if isinstance(lay, QW)}
    assert wrapped["conv"] == "Conv2D" and wrapped["logits"] == "Dense"
    assert all(type(lay).__name__ == "QuantizeWrapperV2" for lay in qat.layers if isinstance(lay, QW))
    assert report["scheme"] == "default_8bit" and report["float"] == {}
    assert {"conv", "logits"} <= set(report["quantized"])
    qat_acc = _accuracy(lambda a: qat.predict(a, verbose=0), xv, yv)
    assert qat_acc > 0.8
    # Fake quantization plus one short epoch changes the float model's answers on few examples (paired, not
    # two accuracies compared): 0.997-1.0 over seeds here.
    agree = np.mean(np.argmax(qat.predict(xv, verbose=0), -1) == np.argmax(model.predict(xv, verbose=0), -1))
    assert agree > 0.95, agree

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    int8_weights = [
        d for d in interpreter.get_tensor_details() if d["dtype"] == np.int8 and len(d["shape"]) >= 2
    ]
    assert len(int8_weights) >= 2  # the conv kernel and the dense kernel are int8
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    preds = []
    for row in xv:
        interpreter.set_tensor(inp["index"], row[None].astype(inp["dtype"]))
        interpreter.invoke()
        preds.append(np.argmax(interpreter.get_tensor(out["index"])[0]))
    tflite_acc = float(np.mean(np.array(preds) == yv))
    assert abs(tflite_acc - qat_acc) < 0.03

    path = save_quantized(qat, tmp_path / "qat.h5")
    loaded = load_quantized(path)
    np.testing.assert_allclose(loaded.predict(xv, verbose=0), qat.predict(xv, verbose=0), atol=1e-5)
    with pytest.raises(ConfigError, match=r"qat\.keras"):
        save_quantized(qat, tmp_path / "qat.keras")


def test_lstm_and_custom_layers_stay_float_and_dense_layers_are_quantized(digits):
    x, y, _, _ = digits
    inputs = keras.Input((8, 8))
    h = QatTestScale(0.5, name="scale")(keras.layers.LSTM(8, name="lstm")(inputs))
    h = keras.layers.Dense(16, activation="relu", name="hidden")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(h))
    qat, report = quantize_aware(model, _ds(x[:128, ..., 0], y[:128]), epochs=1, verbose=0, return_report=True)
    assert "lstm" in report["float"] and "LSTMCell" in report["float"]["lstm"]
    assert "custom" in report["float"]["scale"]
    assert set(report["quantized"]) == {"hidden", "out"}
    assert type(qat.get_layer("lstm")).__name__ == "LSTM"
    assert type(qat.get_layer("scale")).__name__ == "QatTestScale"
    assert {lay.layer.name for lay in qat.layers if isinstance(lay, QW)} == {"hidden", "out"}


def test_separable_conv1d_is_quantized_converts_to_int8_and_loads_back_in_safe_mode(digits, tmp_path):
    """tfmot rewrites a SeparableConv1D with two Python lambdas (expand, squeeze) and rebuilt the model through
    Keras's deserializer, safe by default: 8-bit QAT of any SeparableConv1D failed ("deserialization of a Lambda
    layer"). It quantizes now, its lambdas become ExpandDims / Squeeze layers, and the saved QAT model loads back
    in safe mode with the same outputs. A user's own Lambda layer quantizes too (left float), and loading it back
    stays refused by name."""
    x, y, _, _ = digits
    ds = _ds(x[:128, ..., 0], y[:128])
    inputs = keras.Input((8, 8))
    h = keras.layers.SeparableConv1D(8, 3, activation="relu", name="sep")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(keras.layers.Flatten(name="flat")(h)))
    qat, report = quantize_aware(model, ds, epochs=1, verbose=0, return_report=True)
    assert {"sep", "out"} <= set(report["quantized"])
    inner = {type(lay.layer).__name__ for lay in qat.layers if isinstance(lay, QW)}
    assert {"DepthwiseConv2D", "Conv2D", "ExpandDims", "Squeeze"} <= inner and "Lambda" not in inner
    tfl = tfopt.export.to_tflite(qat, "int8", representative_data=ds)
    assert {w.dtype for w in tfopt.export.tflite_weights(tfl.content).values() if w.size >= 24} == {np.dtype("int8")}
    save_quantized(qat, tmp_path / "sep.h5")
    loaded = load_quantized(tmp_path / "sep.h5")
    np.testing.assert_allclose(loaded.predict(x[:8, ..., 0], verbose=0), qat.predict(x[:8, ..., 0], verbose=0),
                               atol=1e-5)
    h = keras.layers.Lambda(lambda t: t * 0.5, name="half")(keras.layers.Dense(16, name="hidden")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="out")(keras.layers.Flatten(name="flat")(h)))
    qat, report = quantize_aware(model, ds, epochs=1, verbose=0, return_report=True)
    assert "half" in report["float"] and "hidden" in report["quantized"]
    save_quantized(qat, tmp_path / "half.h5")
    with pytest.raises(ConfigError, match="Lambda layer"):
        load_quantized(tmp_path / "half.h5")


def test_flatten_nested_sequential_then_quantize(digits):
    _, _, xv, _ = digits
    inner = keras.Sequential(
        [keras.layers.Conv2D(4, 3, input_shape=(8, 8, 1), name="c1"), keras.layers.BatchNormalization(name="bn")],
        name="block",
    )
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.ReLU(name="relu")(inner(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(10, name="d")(keras.layers.Flatten(name="f")(h)))
    inner.get_layer("bn").set_weights([np.full(4, v, "float32") for v in (1.5, 0.2, 0.3, 2.0)])

    flat = flatten_model(model)
    assert not any(isinstance(lay, keras.Model) for lay in flat.layers)
    assert [lay.name for lay in flat.layers[1:]] == ["c1", "bn", "relu", "f", "d"]
    np.testing.assert_allclose(flat.predict(xv, verbose=0), model.predict(xv, verbose=0), atol=1e-6)
    assert flat.get_layer("c1") is not inner.get_layer("c1")  # the original is left untouched

    qat, report = quantize_aware(model, _ds(xv, np.zeros(len(xv), "int32")), epochs=0, return_report=True)
    assert {"c1", "bn", "d"} <= set(report["quantized"])
    assert {lay.layer.name for lay in qat.layers if isinstance(lay, QW)} >= {"c1", "d"}


def test_preserve_sparsity_keeps_zeros(digits, trained_weights):
    x, y, _, _ = digits
    model = _pretrained(trained_weights)
    kernel = model.get_layer("logits").kernel.numpy()
    mask = np.abs(kernel) > np.median(np.abs(kernel))
    model.get_layer("logits").kernel.assign(kernel * mask)
    assert np.mean(model.get_layer("logits").kernel.numpy() == 0) >= 0.5

    train = _ds(x[:256], y[:256])
    pqat, report = quantize_aware(model, train, epochs=1, preserve_sparsity=True, learning_rate=1e-2,
                                  verbose=0, return_report=True)
    assert report["scheme"] == "prune_preserve"
    after = _kernel(pqat, "logits")
    assert np.all(after[~mask] == 0)
    assert np.mean(after == 0) >= 0.5
    plain = quantize_aware(model, train, epochs=1, learning_rate=1e-2, verbose=0)
    assert np.mean(_kernel(plain, "logits") == 0) < 0.1  # without preservation the zeros are lost


def test_preserve_clusters_keeps_at_most_n_values(digits, trained_weights):
    x, y, _, _ = digits
    clustering = tfmot.clustering.keras
    clustered = clustering.cluster_weights(
        _pretrained(trained_weights),
        number_of_clusters=8,
        cluster_centroids_init=clustering.CentroidInitialization.KMEANS_PLUS_PLUS,
    )
    model = clustering.strip_clustering(clustered)
    assert len(np.unique(model.get_layer("logits").kernel.numpy())) <= 8

    cqat, report = quantize_aware(model, _ds(x[:256], y[:256]), epochs=1, preserve_clusters=True,
                                  learning_rate=1e-2, verbose=0, return_report=True)
    assert report["scheme"] == "cluster_preserve"
    assert len(np.unique(_kernel(cqat, "logits"))) <= 8
    assert len(np.unique(_kernel(cqat, "conv"))) <= 8


def test_errors_for_subclassed_and_keras3_models(digits):
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Sub()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(UnsupportedLayerError, match="subclassed model"):
        quantize_aware(sub, None, epochs=0)
    with pytest.raises(KerasVersionError):
        quantize_aware(object(), None, epochs=0)
    with pytest.raises(ConfigError, match="epochs=-1"):
        quantize_aware(_cnn(), None, epochs=-1)
