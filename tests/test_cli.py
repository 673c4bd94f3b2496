"""The tfopt command: version, one-line errors with exit code 2, export and evaluate."""

import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

import tfopt
from tfopt._keras import keras
from tfopt.cli import main


def test_version_matches_package(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tfopt {tfopt.__version__}"


def test_console_script_prints_one_line_and_exits_2_on_bad_input(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfopt.cli", "export", str(tmp_path / "missing.keras")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"tfopt: error: ConfigError: model file '{tmp_path / 'missing.keras'}' does not exist"
    ]


def test_export_and_evaluate_commands(tmp_path, capsys):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")
    model = tfopt.models.build("cnn", input_shape=(8, 8, 1), num_classes=10, filters=(8,), dense=(16,))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    model.save(tmp_path / "m.keras")
    assert main(["export", str(tmp_path / "m.keras"), "--quantization", "int8", "--data", "digits"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "m.int8.tflite"
    assert f"wrote {path}" in out and "held-out accuracy" in out
    tfl = tfopt.export.TFLiteModel.load(path)
    assert {w.dtype for w in tfopt.export.tflite_weights(tfl.content).values()} == {np.dtype("int8")}
    assert main(["evaluate", str(path), "--data", "digits"]) == 0
    assert '"accuracy": 0.' in capsys.readouterr().out
    assert main(["export", str(tmp_path / "m.keras"), "--quantization", "int8", "--data", "no_such_set"]) == 2
    assert "no_such_set" in capsys.readouterr().err
