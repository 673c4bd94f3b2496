"""Loading runs no foreign code: Lambda layers and unknown custom objects are refused; no pickle; safe YAML."""

import pathlib

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras
from tfopt.errors import ConfigError

ROOT = pathlib.Path(tfopt.__file__).parent


def _lambda_model():
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_is_refused_unless_opted_in(tmp_path, suffix):
    model = _lambda_model()
    path = tmp_path / f"lambda{suffix}"
    model.save(path)
    with pytest.raises(ConfigError, match="Lambda layer.*safe_mode=False"):
        tfopt.load_model(path)
    loaded = tfopt.load_model(path, safe_mode=False)  # the documented opt-in
    np.testing.assert_allclose(loaded.predict(np.ones((1, 4)), verbose=0), 2 * np.ones((1, 4)))


def test_qat_h5_with_lambda_is_refused(tmp_path):
    path = tmp_path / "qat.h5"
    _lambda_model().save(path)
    with pytest.raises(ConfigError, match="Lambda"):
        tfopt.compress.load_quantized(path)


def test_unknown_custom_object_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="Elsewhere")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inp = keras.Input((4,))
    path = tmp_path / "custom.keras"
    keras.Model(inp, Twice()(inp)).save(path)
    del keras.saving.get_custom_objects()["Elsewhere>Twice"]
    with pytest.raises(ConfigError, match="could not load.*custom.keras"):
        tfopt.load_model(path)


def test_no_pickle_and_only_safe_yaml_in_the_package():
    for source in ROOT.rglob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "cloudpickle" not in text, source
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, source
