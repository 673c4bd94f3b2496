"""to_tflite never takes the caller down: conversions the converter can crash on (CRASH_PRONE) run in a child process.

Measured on TF 2.21: full-int8 calibration of a GRU model kills the converting process with SIGSEGV.
"""

import os
import signal
import subprocess
import tempfile

import numpy as np
import pytest

from tfopt._keras import keras
from tfopt.errors import ExportError
from tfopt.export import _guard, to_tflite
from tfopt.export._guard import crash_prone_layers


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Temporary folders (the child's private one included) made in an empty folder this test can list."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _left_in(folder):
    """What is left in the temporary folder, but for TensorFlow's own autograph sources (any tf.function traced in
    this process writes them there, and keeps them for the life of the process)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("__autograph_generated_file"))


def _gru_model():
    inp = keras.Input((28, 28))
    hidden = keras.layers.GRU(8, name="gru")(inp)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(hidden))


def _dense_model():
    return keras.Sequential([keras.layers.Dense(8, activation="relu", input_shape=(6,)), keras.layers.Dense(3)])


def _rows(n=16, shape=(28, 28)):
    return np.random.default_rng(0).random((n, *shape), dtype=np.float32)


def test_gru_int8_is_an_export_error_naming_the_layer_and_the_alternatives(private_tmp):
    model = _gru_model()
    with pytest.raises(ExportError, match=r"died of SIGSEGV\) on the model's GRU layer 'gru'") as err:
        to_tflite(model, "int8", representative_data=_rows())
    message = str(err.value)
    assert "\n" not in message
    assert "quantization='dynamic', 'float16', 'int4', 'int4_weight_only' or None (float32) instead" in message
    assert model.predict(_rows(2), verbose=0).shape == (2, 10)  # this process is alive and well
    assert _left_in(private_tmp) == []


def test_dynamic_range_gru_converts_in_process_and_matches_keras(private_tmp):
    model = _gru_model()
    x = _rows(4)
    tfl = to_tflite(model, "dynamic")
    assert not any("child process" in note for note in tfl.notes)  # not crash-prone: no child
    assert np.abs(tfl.predict(x) - model.predict(x, verbose=0)).max() < 0.05
    isolated = to_tflite(model, "dynamic", isolate=True)  # the same conversion in a child gives the same model
    assert isolated.notes[-1] == "converted in a child process"
    np.testing.assert_allclose(isolated.predict(x), tfl.predict(x), atol=1e-6)
    assert _left_in(private_tmp) == []


def test_a_crash_in_the_child_is_reported_cleanly(private_tmp, monkeypatch):
    monkeypatch.setenv("TFOPT_FAULT", "calibrate:0")  # the child kills itself (SIGKILL) calibrating sample 0
    with pytest.raises(ExportError, match=r"^TFLite conversion with quantization='int8' crashed the converter "
                                          r"\(the child process converting it died of SIGKILL\); convert with "
                                          r"quantization='dynamic', 'float16', 'int16x8', 'int4', .* or None "
                                          r"\(float32\) instead"):
        to_tflite(_dense_model(), "int8", representative_data=_rows(8, (6,)), isolate=True)
    assert _left_in(private_tmp) == []


def test_ctrl_c_in_the_child_stops_the_caller_with_keyboard_interrupt(private_tmp, monkeypatch):
    monkeypatch.setenv("TFOPT_FAULT", "calibrate:1")
    monkeypatch.setenv("TFOPT_FAULT_SIGNAL", "INT")
    # the child gets Python's Ctrl-C handling, as under a terminal (not SIGINT ignored, as in a background shell)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            to_tflite(_dense_model(), "int8", representative_data=_rows(8, (6,)), isolate=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _left_in(private_tmp) == []


def test_ctrl_c_while_waiting_ends_the_child_and_removes_its_folder(private_tmp, monkeypatch):
    children = []

    class Interrupted(subprocess.Popen):
        def wait(self, timeout=None):
            if timeout is None and not children:
                children.append(self.pid)
                raise KeyboardInterrupt
            return super().wait(timeout)

    monkeypatch.setattr(_guard.subprocess, "Popen", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        to_tflite(_dense_model(), isolate=True)
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(children[0], 0)
    assert _left_in(private_tmp) == []


def test_a_model_that_cannot_be_saved_for_the_child_is_an_export_error(private_tmp):
    class Unsavable(keras.layers.Layer):
        def get_config(self):
            return {**super().get_config(), "fn": object()}  # not JSON: saving fails

        def call(self, x):
            return x

    inp = keras.Input((28, 28))
    model = keras.Model(inp, keras.layers.GRU(4, name="gru")(Unsavable()(inp)))
    with pytest.raises(ExportError, match=r"runs in a child process, which needs the model saved, and saving it "
                                          r"failed \(TypeError: .*quantization='dynamic', 'float16', 'int4', 'int4_weight_only' or None"):
        to_tflite(model, "int8", representative_data=_rows())
    assert _left_in(private_tmp) == []


def test_a_model_the_child_cannot_load_back_is_an_export_error_saying_what_to_do(private_tmp):
    class Local(keras.layers.Layer):  # not importable by the child: defined in a function, not registered
        def call(self, x):
            return x

    inp = keras.Input((28, 28))
    model = keras.Model(inp, keras.layers.GRU(4, name="gru")(Local()(inp)))
    with pytest.raises(ExportError, match=r"which could not load the model saved for it \(TypeError: .*"
                                          r"register_keras_serializable.*'dynamic'"):
        to_tflite(model, "int8", representative_data=_rows())
    assert _left_in(private_tmp) == []


def test_the_rule_finds_recurrent_layers_in_nested_models_and_wrappers():
    inp = keras.Input((5, 3))
    inner_in = keras.Input((5, 3))
    inner = keras.Model(inner_in, keras.layers.Bidirectional(keras.layers.GRU(2), name="bi")(inner_in), name="enc")
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([inner(inp), keras.layers.LSTM(2, name="lstm")(inp)]))
    model = keras.Model(inp, out)
    assert [label for label, _ in crash_prone_layers(model, "int8")] == ["Bidirectional(GRU) layer 'bi'",
                                                                         "LSTM layer 'lstm'"]
    assert len(crash_prone_layers(model, "int16x8")) == 2
    assert crash_prone_layers(model, "dynamic") == crash_prone_layers(model, None) == []
    assert crash_prone_layers(_dense_model(), "int8") == []
