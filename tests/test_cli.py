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


def test_python_dash_m_tfopt_is_the_command():
    proc = subprocess.run([sys.executable, "-m", "tfopt", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"tfopt {tfopt.__version__}"
    proc = subprocess.run([sys.executable, "-m", "tfopt", "export", "--quantization", "int3", "m.keras"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "int3" in proc.stderr


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
    assert f"wrote {path}" in out and "test accuracy" in out and "(n=360)" in out  # digits' fixed test split
    tfl = tfopt.export.TFLiteModel.load(path)
    assert {w.dtype for w in tfopt.export.tflite_weights(tfl.content).values()} == {np.dtype("int8")}
    assert main(["evaluate", str(path), "--data", "digits"]) == 0
    assert '"accuracy": 0.' in (out := capsys.readouterr().out) and '"n": 360' in out
    assert main(["export", str(tmp_path / "m.keras"), "--quantization", "int8", "--data", "no_such_set"]) == 2
    assert "no_such_set" in capsys.readouterr().err


TUNE_RECIPE = """
name: tt
seed: 0
data: {name: digits}
model: {builder: cnn}
training: {epochs: 1, batch_size: 64}
stages:
  - tune:
      algorithm: random
      max_trials: MAX
      max_epochs: 1
      space: {model: cnn, filters: {choice: [[4], [8]]}, dense: {choice: [[16], [32]]}}
"""


def test_tune_command_writes_the_search_and_resumes(tmp_path, capsys):
    import json

    recipe = tmp_path / "tune.yaml"
    recipe.write_text(TUNE_RECIPE.replace("MAX", "2"))
    assert main(["tune", str(recipe), "--directory", str(tmp_path / "s")]) == 0
    out = capsys.readouterr()
    assert "best hyperparameters: {" in out.out
    trials = json.loads((tmp_path / "s" / "tt" / "trials.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED", "COMPLETED"]
    assert (tmp_path / "s" / "tt" / "best_hyperparameters.json").is_file()
    recipe.write_text(TUNE_RECIPE.replace("MAX", "3"))  # same search, one more trial: only that one runs
    assert main(["tune", str(recipe), "--directory", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().err.count("] trial #") == 1
    assert len(json.loads((tmp_path / "s" / "tt" / "trials.json").read_text())["trials"]) == 3


def test_tune_command_needs_a_tune_stage(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\ndata: {name: digits}\nmodel: {builder: cnn}\nstages: [train]\n")
    assert main(["tune", str(recipe)]) == 2
    assert "needs a `tune` stage" in capsys.readouterr().err


def test_report_command_rejects_a_directory_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a tfopt run directory" in capsys.readouterr().err
