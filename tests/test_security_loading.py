"""Security: no model file makes tfopt run its code in safe mode, whatever its name or format; broken model files
are one-line ConfigErrors.

Each hostile model below holds a ``Lambda`` layer whose function writes a marker file when it runs (Keras calls it
while rebuilding the model). Every way in is tried: the API (``tfopt.load_model``, ``tfopt.compress.load_quantized``),
the command line (``tfopt export``), a recipe's ``model.path`` and a resumed run whose stage model was replaced.
After each refusal the marker file must not exist.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import tfopt
from tfopt._keras import keras
from tfopt.errors import ConfigError
from tfopt.saving import check_model_file

LAMBDA = "Lambda layer.*safe_mode=False"
SAVED_MODEL = "SavedModel directory.*safe_mode=False"


# ---------------------------------------------------------------- hostile files
def _hostile_model(marker: Path, nested: bool = False):
    """An 8x8x1 -> 10 classifier (it fits `digits`) whose Lambda layer writes ``marker`` when it runs."""

    hostile = keras.layers.Lambda(lambda t, path=str(marker): (open(path, "w").write("code ran"), t)[1])
    inp = keras.Input((8, 8, 1))
    if nested:  # the Lambda inside a Sequential inside a TimeDistributed wrapper inside the Functional model
        x = keras.layers.TimeDistributed(keras.Sequential([keras.layers.Flatten(), hostile]))(inp)
    else:
        x = hostile(inp)
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x))


def _compact_json(path: Path) -> None:
    """Rewrite an HDF5 model's configs without spaces (``"class_name":"Lambda"``)."""
    with h5py.File(path, "r+") as f:
        for key in ("model_config", "training_config"):
            if key in f.attrs:
                text = f.attrs[key]
                text = text.decode() if isinstance(text, bytes) else text
                f.attrs[key] = json.dumps(json.loads(text), separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """Hostile model files by kind, and the marker file their code writes."""
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "marker.txt"
    model = _hostile_model(marker)
    model.compile("adam", "sparse_categorical_crossentropy")
    files = {}
    model.save(folder / "plain.h5")
    files["h5_named_keras"] = folder / "hdf5_inside.keras"  # an HDF5 file named .keras
    shutil.copy(folder / "plain.h5", files["h5_named_keras"])
    files["compact_h5"] = folder / "compact.h5"  # model_config JSON written without spaces
    shutil.copy(folder / "plain.h5", files["compact_h5"])
    _compact_json(files["compact_h5"])
    files["compact_h5_named_keras"] = folder / "compact_hdf5.keras"
    shutil.copy(files["compact_h5"], files["compact_h5_named_keras"])
    files["nested_compact_h5"] = folder / "nested.h5"
    _hostile_model(marker, nested=True).save(files["nested_compact_h5"])
    _compact_json(files["nested_compact_h5"])
    files["keras_zip"] = folder / "lambda.keras"
    model.save(files["keras_zip"])
    files["saved_model"] = folder / "saved_model_dir"
    model.save(files["saved_model"], save_format="tf")
    (folder / "plain.h5").unlink()
    marker.unlink()  # saving ran the Lambda; from here on, nothing may
    return files, marker


HOSTILE = {
    "h5_named_keras": LAMBDA,
    "compact_h5": LAMBDA,
    "compact_h5_named_keras": LAMBDA,
    "nested_compact_h5": LAMBDA,
    "keras_zip": LAMBDA,
    "saved_model": SAVED_MODEL,
}


@pytest.fixture
def no_marker(hostile):
    """The marker path; the test fails if the hostile code ran during it."""
    marker = hostile[1]
    marker.unlink(missing_ok=True)
    yield marker
    assert not marker.exists(), "a hostile model file's code ran"


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_load_model_refuses_hostile_file(hostile, no_marker, kind):
    path = hostile[0][kind]
    with pytest.raises(ConfigError, match=HOSTILE[kind]) as info:
        tfopt.load_model(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_load_quantized_refuses_hostile_file(hostile, no_marker, kind):
    path = hostile[0][kind]
    with pytest.raises(ConfigError, match=HOSTILE[kind]) as info:
        tfopt.compress.load_quantized(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_check_model_file_refuses_hostile_file(hostile, no_marker, kind):
    with pytest.raises(ConfigError, match=HOSTILE[kind]):
        check_model_file(hostile[0][kind])


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_cli_export_refuses_hostile_file(hostile, no_marker, capsys, tmp_path, kind):
    from tfopt.cli import main

    out = tmp_path / "out.tflite"
    assert main(["export", str(hostile[0][kind]), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfopt: error: ConfigError: ") and str(hostile[0][kind]) in err
    assert not out.exists() and not list(tmp_path.iterdir())


def _saved_model_recipe(path) -> dict:
    return {"name": "hostile", "seed": 0, "data": {"name": "digits"}, "model": {"path": str(path)},
            "stages": [{"export": {"variants": [{"name": "float32"}]}}, {"evaluate": {"runs": 2, "warmup": 1}}]}


@pytest.mark.parametrize("kind", ["h5_named_keras", "compact_h5", "nested_compact_h5", "keras_zip", "saved_model"])
def test_recipe_model_path_refuses_hostile_file(hostile, no_marker, tmp_path, kind):
    from tfopt.pipeline import run_recipe

    path = hostile[0][kind]
    # a SavedModel directory is already refused by the recipe's own check of model.path
    match = "must be a .keras or .h5 file" if kind == "saved_model" else HOSTILE[kind]
    with pytest.raises(ConfigError, match=match) as info:
        run_recipe(_saved_model_recipe(path), run_dir=tmp_path / "run", verbose=0)
    assert str(path) in str(info.value)
    assert not list(tmp_path.rglob("*.tflite"))


def _interrupted_run(run_dir: Path, monkeypatch) -> dict:
    """A tiny train -> export -> evaluate recipe, run until the export stage is interrupted."""
    from tfopt.pipeline import STAGES, run_recipe

    recipe = {"name": "swap", "seed": 0, "data": {"name": "digits"},
              "model": {"builder": "cnn", "args": {"filters": [4], "dense": [8]}},
              "training": {"epochs": 1, "batch_size": 64},
              "stages": ["train", {"export": {"variants": [{"name": "float32"}]}},
                         {"evaluate": {"runs": 2, "warmup": 1}}]}

    def interrupted(ctx, spec, stage_dir):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setitem(STAGES, "export", interrupted)
        with pytest.raises(KeyboardInterrupt):
            run_recipe(recipe, run_dir=run_dir, verbose=0)
    assert (run_dir / "01_train" / "model.keras").is_file()
    return recipe


def test_resumed_run_refuses_a_replaced_stage_model(hostile, no_marker, tmp_path, monkeypatch):
    """A run interrupted after training; its 01_train/model.keras is swapped for a hostile .keras; resuming refuses."""
    from tfopt.pipeline import run_recipe

    run_dir = tmp_path / "run"
    recipe = _interrupted_run(run_dir, monkeypatch)
    stage_model = run_dir / "01_train" / "model.keras"
    shutil.copy(hostile[0]["keras_zip"], stage_model)
    with pytest.raises(ConfigError, match=LAMBDA) as info:
        run_recipe(recipe, run_dir=run_dir, verbose=0)
    assert str(stage_model) in str(info.value)
    assert not list(run_dir.rglob("*.tflite"))


def test_resumed_run_with_an_hdf5_stage_model_named_keras_runs_no_code(hostile, no_marker, tmp_path, monkeypatch):
    """The same with an HDF5 file named model.keras: refused, or rebuilt as a damaged file; never loaded."""
    from tfopt.pipeline import run_recipe

    run_dir = tmp_path / "run"
    recipe = _interrupted_run(run_dir, monkeypatch)
    stage_model = run_dir / "01_train" / "model.keras"
    shutil.copy(hostile[0]["h5_named_keras"], stage_model)
    try:
        run_recipe(recipe, run_dir=run_dir, verbose=0)
    except ConfigError as err:
        assert str(stage_model) in str(err) and "Lambda layer" in str(err)
        assert not list(run_dir.rglob("*.tflite"))
    else:  # the runner took it for a damaged file and trained again
        assert zipfile.is_zipfile(stage_model) and check_model_file(stage_model) == "keras"


# ---------------------------------------------------------------- configs that carry code, however they are spelled
def _functional(*layers) -> dict:
    return {"class_name": "Functional", "config": {"name": "m", "layers": list(layers),
                                                   "input_layers": [], "output_layers": []}}


def _dense(**extra) -> dict:
    return {"class_name": "Dense", "config": {"name": "d", "units": 2, **extra}}


CODE_CONFIGS = [
    ("Lambda in a Bidirectional wrapper", _functional({"class_name": "Bidirectional", "config": {
        "layer": {"class_name": "Lambda", "config": {"name": "l", "function": "x", "function_type": "function"}}}}),
     "Lambda layer"),
    ("Lambda spelled by its module path", _functional({"class_name": "layers.Lambda", "module": "keras",
                                                        "config": {"name": "l"}}), "Lambda layer"),
    ("Lambda as the registered name", _functional({"class_name": "Dense", "registered_name": "Lambda",
                                                    "module": "keras.layers", "config": {"name": "l"}}),
     "Lambda layer"),
    ("bytecode in an RNN cell wrapper", _functional({"class_name": "ResidualWrapper", "config": {
        "name": "r", "residual_fn": ["4wEAAAAAAAAA", None, None], "residual_fn_type": "lambda"}}),
     "residual_fn_type"),
    ("a serialized lambda in the compile config", {**_functional(_dense()), "compile_config": {
        "loss": {"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA"}}}}, "__lambda__"),
    ("a lambda deep in lists and dicts", _functional(_dense(kernel_regularizer={"class_name": "L2", "config": {
        "extra": [[{"nested": {"fn": {"class_name": "__lambda__", "config": {}}}}]]}})), "__lambda__"),
    ("a function from os", _functional(_dense(activation={"class_name": "function", "module": "os",
                                                          "config": "system", "registered_name": "system"})),
     "module 'os'"),
    ("a Python builtin function", _functional(_dense(activation={"class_name": "function", "module": "builtins",
                                                                 "config": "eval", "registered_name": "function"})),
     "builtin 'eval'"),
    ("a class from an unknown module", _functional({"class_name": "Popen", "module": "subprocess",
                                                     "config": {"args": ["true"]}}), "module 'subprocess'"),
    ("a TF op layer calling tf.io", _functional({"class_name": "TFOpLambda", "config": {
        "name": "w", "function": "io.write_file"}}), "tf.io.write_file"),
    ("a TF op layer calling tf.print", _functional({"class_name": "TFOpLambda", "config": {
        "name": "p", "function": "print"}}), "tf.print"),
    ("a TF op layer calling tf.compat.v1.gfile", _functional({"class_name": "TFOpLambda", "config": {
        "name": "g", "function": "compat.v1.gfile.Remove"}}), "tf.compat.v1.gfile.Remove"),
    ("a TF class-method layer on tf.io.gfile", _functional({"class_name": "ClassMethod", "config": {
        "name": "c", "cls_symbol": "io.gfile.GFile", "method_name": "write"}}), "tf.io.gfile.GFile"),
]


def _write_h5_config(path: Path, config: dict) -> Path:
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config, separators=(",", ":")).encode()
        f.create_group("model_weights")
    return path


def _write_keras_zip(path: Path, config: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        zf.writestr("config.json", json.dumps(config))
    return path


@pytest.mark.parametrize("config,word", [c[1:] for c in CODE_CONFIGS], ids=[c[0] for c in CODE_CONFIGS])
@pytest.mark.parametrize("fmt", ["h5", "keras_zip", "h5_named_keras"])
def test_configs_that_carry_code_are_refused(tmp_path, config, word, fmt):
    if fmt == "keras_zip":
        path = _write_keras_zip(tmp_path / "m.keras", config)
    else:
        path = _write_h5_config(tmp_path / ("m.h5" if fmt == "h5" else "m.keras"), config)
    with pytest.raises(ConfigError, match="safe_mode=False") as info:
        tfopt.load_model(path)
    assert word in str(info.value) and str(path) in str(info.value)


def test_training_config_of_an_h5_is_inspected_too(tmp_path):
    path = _write_h5_config(tmp_path / "m.h5", _functional(_dense()))
    with h5py.File(path, "r+") as f:
        f.attrs["training_config"] = json.dumps({"loss": {"class_name": "__lambda__", "config": {}}})
    with pytest.raises(ConfigError, match="__lambda__.*safe_mode=False"):
        check_model_file(path)


# ---------------------------------------------------------------- the documented opt-in for trusted files
def _doubling_model():
    inp = keras.Input((4,))
    return keras.Model(inp, keras.layers.Lambda(lambda x: x * 2)(inp))


@pytest.mark.parametrize("fmt", ["keras", "h5", "h5_named_keras", "saved_model"])
def test_trusted_lambda_file_loads_with_safe_mode_false(tmp_path, fmt):
    model = _doubling_model()
    if fmt == "saved_model":
        path = tmp_path / "sm"
        model.save(path, save_format="tf")
    elif fmt == "h5_named_keras":
        model.save(tmp_path / "m.h5")
        path = (tmp_path / "m.h5").rename(tmp_path / "m.keras")
    else:
        path = tmp_path / f"m.{fmt}"
        model.save(path)
    with pytest.raises(ConfigError, match="safe_mode=False"):
        tfopt.load_model(path)
    loaded = tfopt.load_model(path, safe_mode=False)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 4)), verbose=0), 2 * np.ones((1, 4)))


def test_trusted_lambda_h5_loads_in_load_quantized_with_safe_mode_false(tmp_path):
    path = tmp_path / "qat.h5"
    _doubling_model().save(path)
    with pytest.raises(ConfigError, match=LAMBDA):
        tfopt.compress.load_quantized(path)
    loaded = tfopt.compress.load_quantized(path, safe_mode=False)
    np.testing.assert_allclose(loaded.predict(np.ones((1, 4)), verbose=0), 2 * np.ones((1, 4)))


def test_unknown_custom_object_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="Elsewhere")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inp = keras.Input((4,))
    path = tmp_path / "custom.keras"
    keras.Model(inp, Twice()(inp)).save(path)
    del keras.saving.get_custom_objects()["Elsewhere>Twice"]
    with pytest.raises(ConfigError, match="custom.keras"):
        tfopt.load_model(path)
    # passed explicitly, the same class loads
    loaded = tfopt.load_model(path, custom_objects={"Elsewhere>Twice": Twice})
    np.testing.assert_allclose(loaded.predict(np.ones((1, 4)), verbose=0), 2 * np.ones((1, 4)))


def test_clean_files_in_every_format_still_load(tmp_path):
    from tfopt._keras import tf

    inp = keras.Input((8, 8, 1))
    x = keras.layers.TimeDistributed(keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(3)]))(inp)
    x = tf.math.multiply(tf.nn.relu(x), 2.0)  # TF op layers (TFOpLambda) of plain math load
    x = tf.transpose(tf.transpose(x))  # recorded as compat.v1.transpose
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(x)))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    _compact_json(tmp_path / "m.h5")
    shutil.copy(tmp_path / "m.h5", tmp_path / "hdf5.keras")  # content decides: an HDF5 file named .keras is HDF5
    x = np.random.default_rng(0).random((2, 8, 8, 1)).astype("float32")
    want = model.predict(x, verbose=0)
    for name, kind in [("m.keras", "keras"), ("m.h5", "h5"), ("hdf5.keras", "h5")]:
        assert check_model_file(tmp_path / name) == kind
        np.testing.assert_allclose(tfopt.load_model(tmp_path / name).predict(x, verbose=0), want, rtol=1e-6)
    np.testing.assert_allclose(tfopt.compress.load_quantized(tmp_path / "m.h5").predict(x, verbose=0), want,
                               rtol=1e-6)


@pytest.mark.parametrize("application", ["MobileNetV3Small", "EfficientNetB0"])
def test_models_nobody_here_wrote_are_not_refused(tmp_path, application):
    """Keras applications (TF op layers, hard-swish, Rescaling/Normalization) and a user's nested functional
    model with attention and a GRU pass safe mode in both formats and load back with the same outputs."""
    app = getattr(keras.applications, application)(weights=None, input_shape=(32, 32, 3), classes=4)
    inp = keras.Input((6, 4))
    inner = keras.Model(inp, keras.layers.GRU(4)(keras.layers.MultiHeadAttention(2, 2)(inp, inp)))
    outer = keras.Input((6, 4))
    user = keras.Model(outer, keras.layers.Dense(3)(inner(outer)))
    rng = np.random.default_rng(0)
    for model, x in ((app, rng.random((1, 32, 32, 3), dtype="float32")), (user, rng.random((1, 6, 4), dtype="float32"))):
        want = model.predict(x, verbose=0)
        for suffix, kind in ((".keras", "keras"), (".h5", "h5")):
            path = tmp_path / f"{model.name}{suffix}"
            model.save(path)
            assert check_model_file(path) == kind
            np.testing.assert_allclose(tfopt.load_model(path).predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- broken model files: one line naming path and kind
def _real_model_bytes(tmp_path, suffix: str) -> bytes:
    """The bytes of a small, clean model saved as ``suffix`` (".keras" or ".h5")."""
    inp = keras.Input((4,))
    path = tmp_path / f"real{suffix}"
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(path)
    data = path.read_bytes()
    path.unlink()
    return data


def _zip_without_config(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{}")


def _zip_bad_json(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{not json")


def _weights_only_h5(path):
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save_weights(path)


BROKEN = [
    ("empty .keras", "m.keras", lambda p, t: p.write_bytes(b""), "is empty"),
    ("garbage .keras", "m.keras", lambda p, t: p.write_bytes(b"this is not a model\x00\x01" * 10),
     "not a Keras model file"),
    ("truncated .keras", "m.keras", lambda p, t: p.write_bytes(_real_model_bytes(t, ".keras")[:600]), "truncated or damaged zip"),
    ("zip without config.json", "m.keras", lambda p, t: _zip_without_config(p), "no config.json"),
    ("zip with bad config.json", "m.keras", lambda p, t: _zip_bad_json(p), "config.json is not valid JSON"),
    (".keras zip named .h5", "m.h5", lambda p, t: p.write_bytes(_real_model_bytes(t, ".keras")), "name does not end in .keras"),
    ("empty .h5", "m.h5", lambda p, t: p.write_bytes(b""), "is empty"),
    ("garbage .h5", "m.h5", lambda p, t: p.write_bytes(b"\x00" * 100), "not a Keras model file"),
    ("truncated .h5", "m.h5", lambda p, t: p.write_bytes(_real_model_bytes(t, ".h5")[:3000]), "damaged HDF5"),
    ("weights-only .h5", "m.weights.h5", lambda p, t: _weights_only_h5(p), "no model config"),
    ("directory without saved_model.pb", "folder", lambda p, t: p.mkdir(), "not a SavedModel"),
]


@pytest.mark.parametrize("name,make,word", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_model_file_is_one_line_config_error(tmp_path, name, make, word):
    path = tmp_path / name
    make(path, tmp_path)
    for load in (tfopt.load_model, tfopt.compress.load_quantized):
        with pytest.raises(ConfigError, match=word) as info:
            load(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=word):  # the file's kind is checked with safe mode off too
        tfopt.load_model(path, safe_mode=False)


@pytest.mark.parametrize("name,make,word", [c[1:] for c in BROKEN[:4]], ids=[c[0] for c in BROKEN[:4]])
def test_cli_export_of_broken_model_file_is_one_line(tmp_path, capsys, name, make, word):
    from tfopt.cli import main

    path = tmp_path / name
    make(path, tmp_path)
    assert main(["export", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfopt: error: ConfigError: ") and str(path) in err and word in err
    assert not list(tmp_path.glob("*.tflite"))


def test_keras_zip_with_a_corrupted_weights_entry_is_a_config_error(tmp_path):
    path = tmp_path / "m.keras"
    inp = keras.Input((4,))
    keras.Model(inp, keras.layers.Dense(2)(inp)).save(path)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("model.weights.h5")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 10, start + info.compress_size - 10, 7):  # flip bytes inside the weights entry
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="m.keras"):
        tfopt.load_model(path)
