"""Bad input, as a table: each case names the call, the tfopt exception it must raise and the words the
message must contain (the bad value, and what is allowed where the case has a finite set)."""

import numpy as np
import pytest

import tfopt
from tfopt import compress, data, export, losses, models, optimizers, schedules, train
from tfopt._keras import keras, tf
from tfopt.errors import (
    CompressionError,
    ConfigError,
    DataError,
    KerasVersionError,
    UnsupportedLayerError,
)

X = np.random.default_rng(0).random((40, 8, 8, 1)).astype("float32")
Y = np.arange(40) % 10
DS = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)


def _nan_x():
    x = X.copy()
    x[3, 2, 2, 0] = np.nan
    return x


def _inf_x():
    x = X.copy()
    x[5, 0, 0, 0] = np.inf
    return x


def _cnn():
    return models.build("cnn", input_shape=(8, 8, 1), num_classes=10, filters=(4,), dense=(8,))


def _rows():
    """MNIST rows (28 x 28 sequences), batched: not what an 8x8x1 CNN takes."""
    return tf.data.Dataset.from_tensor_slices((np.zeros((8, 28, 28), np.float32), np.zeros(8, np.int32))).batch(4)


def _keras3_model():
    import keras as keras3  # Keras 3, as `tf.keras` is when TF_USE_LEGACY_KERAS is not set

    return keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Flatten(), keras3.layers.Dense(10)])


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(10)

    def call(self, x):
        return self.dense(tf.reshape(x, (-1, 64)))


def _subclassed():
    model = _Subclassed()
    model(X[:1])
    return model


def _no_prunable():
    inp = keras.Input((8, 8, 1))
    return keras.Model(inp, keras.layers.Flatten()(inp))


CASES = [
    # data
    ("unknown dataset", lambda: data.load("mnist_6k"), DataError, ["mnist_6k", "mnist_5k"]),
    ("val_fraction 1.5", lambda: data.load("digits", val_fraction=1.5), ConfigError, ["1.5"]),
    ("batch_size 0", lambda: data.load("digits", batch_size=0), ConfigError, ["batch_size", "0"]),
    ("unknown augment", lambda: data.load("digits", augment="heavy"), ConfigError, ["heavy", "light", "standard"]),
    ("augment sequences", lambda: data.load("mnist_rows", augment="light"), ConfigError, ["sequence"]),
    ("unknown load kwarg", lambda: data.load("digits", shuffle_buffer=3), ConfigError, ["shuffle_buffer"]),
    ("NaN in x", lambda: data.from_arrays(_nan_x(), Y), DataError, ["NaN", "3"]),
    ("Inf in x", lambda: data.from_arrays(_inf_x(), Y), DataError, ["5"]),
    ("label out of range", lambda: data.from_arrays(X, np.where(Y == 9, 12, Y), num_classes=10), DataError, ["12"]),
    ("negative label", lambda: data.from_arrays(X, np.where(Y == 0, -1, Y)), DataError, ["-1"]),
    ("fractional label", lambda: data.from_arrays(X, Y + 0.5), DataError, ["0.5"]),
    ("mismatched lengths", lambda: data.from_arrays(X, Y[:39]), DataError, ["40", "39"]),
    ("empty arrays", lambda: data.from_arrays(X[:0], Y[:0]), DataError, ["empty"]),
    ("one class", lambda: data.from_arrays(X, np.zeros(40, int)), DataError, ["class"]),
    # models
    ("unknown model", lambda: models.build("vgg"), ConfigError, ["vgg", "cnn", "resnet"]),
    ("resnet depth 19", lambda: models.build("resnet", input_shape=(32, 32, 3), num_classes=10, depth=19), ConfigError, ["19", "18"]),
    ("negative filters", lambda: models.build("cnn", input_shape=(8, 8, 1), num_classes=10, filters=(-4,)), ConfigError, ["-4"]),
    ("input too small", lambda: models.build("cnn", input_shape=(4, 4, 1), num_classes=10, filters=(4, 4, 4)), ConfigError, ["4"]),
    ("dropout 1.0", lambda: models.build("cnn", input_shape=(8, 8, 1), num_classes=10, dropout=1.0), ConfigError, ["dropout", "1.0"]),
    ("unknown builder kwarg", lambda: models.build("cnn", input_shape=(8, 8, 1), num_classes=10, filterz=(4,)), ConfigError, ["filterz"]),
    ("lstm both inputs", lambda: models.build("lstm", input_shape=(28, 28), vocab_size=100, seq_len=20, num_classes=2), ConfigError, ["input_shape"]),
    ("Keras 3 model to fit", lambda: train.fit(_keras3_model(), DS), KerasVersionError, ["Keras 3", "tf_keras"]),
    ("Keras 3 model to prune", lambda: compress.prune(_keras3_model(), DS, 0.5), KerasVersionError, ["Keras 3"]),
    ("Keras 3 model to export", lambda: export.to_tflite(_keras3_model()), KerasVersionError, ["Keras 3"]),
    ("subclassed model to prune", lambda: compress.prune(_subclassed(), DS, 0.5), UnsupportedLayerError, ["subclass"]),
    ("subclassed model to QAT", lambda: compress.quantize_aware(_subclassed(), DS), UnsupportedLayerError, ["subclass"]),
    # training recipe parts
    ("unknown optimizer", lambda: optimizers.get("adamax2"), ConfigError, ["adamax2", "adam"]),
    ("negative learning rate", lambda: optimizers.get("sgd", learning_rate=-0.1), ConfigError, ["-0.1"]),
    ("unknown loss", lambda: losses.get("hinge2"), ConfigError, ["hinge2"]),
    ("label smoothing 1.0", lambda: losses.LabelSmoothingCrossEntropy(1.0), ConfigError, ["1.0"]),
    ("warmup longer than run", lambda: schedules.warmup_cosine(1e-3, total_steps=10, warmup_steps=20), ConfigError, ["20", "10"]),
    ("epochs 0", lambda: train.fit(_cnn(), DS, epochs=0), ConfigError, ["epochs=0"]),
    ("empty dataset", lambda: train.fit(_cnn(), DS.take(0)), DataError, ["empty"]),
    ("unknown strategy", lambda: tfopt.distribute.get_strategy("tpu"), ConfigError, ["tpu", "mirrored"]),
    # compression
    ("sparsity 1.0", lambda: compress.prune(_cnn(), DS, 1.0), ConfigError, ["1.0"]),
    ("sparsity -0.1", lambda: compress.prune(_cnn(), DS, -0.1), ConfigError, ["-0.1"]),
    ("m_by_n (4, 2)", lambda: compress.prune(_cnn(), DS, 0.5, m_by_n=(4, 2)), ConfigError, ["(4, 2)"]),
    ("unknown schedule", lambda: compress.prune(_cnn(), DS, 0.5, schedule="cubic"), ConfigError, ["cubic", "polynomial"]),
    ("unknown layer", lambda: compress.prune(_cnn(), DS, 0.5, layers=["conv9"]), ConfigError, ["conv9"]),
    ("no prunable layer", lambda: compress.prune(_no_prunable(), DS, 0.5), UnsupportedLayerError, ["no layer to prune", "flatten (Flatten)"]),
    ("unreachable sparsity", lambda: compress.prune(_cnn(), DS, 0.8, frequency=100, verbose=0), CompressionError, ["frequency"]),
    ("n_clusters 1", lambda: compress.cluster(_cnn(), DS, n_clusters=1), ConfigError, ["n_clusters", "1"]),
    ("unknown cluster init", lambda: compress.cluster(_cnn(), DS, init="median"), ConfigError, ["median", "kmeans++"]),
    ("temperature 0", lambda: compress.distill(_cnn(), _cnn(), DS, temperature=0), ConfigError, ["temperature", "0"]),
    ("alpha 1.5", lambda: compress.distill(_cnn(), _cnn(), DS, alpha=1.5), ConfigError, ["1.5"]),
    ("fine_tune 1 class", lambda: compress.fine_tune(_cnn(), 1, DS), ConfigError, ["num_classes", "1"]),
    # export
    ("int8 without data", lambda: export.to_tflite(_cnn(), "int8"), ConfigError, ["representative_data"]),
    ("unknown quantization", lambda: export.to_tflite(_cnn(), "int3"), ConfigError, ["int3", "dynamic"]),
    ("int8 io without int8", lambda: export.to_tflite(_cnn(), "float16", io_dtype="int8"), ConfigError, ["io_dtype"]),
    ("missing model file", lambda: tfopt.load_model("/nonexistent/model.keras"), ConfigError, ["/nonexistent/model.keras"]),
    ("fit on data of another shape", lambda: train.fit(_cnn(), _rows()), DataError, ["train_ds: examples of shape (28, 28)", "but the model takes (8, 8, 1)"]),
    ("prune on data of another shape", lambda: compress.prune(_cnn(), _rows(), 0.5), DataError, ["train_ds: examples of shape (28, 28)"]),
    ("distill on data of another shape", lambda: compress.distill(_cnn(), _cnn(), _rows()), DataError, ["train_ds: examples of shape (28, 28)"]),
    ("teacher of another input shape", lambda: compress.distill(models.build("mlp", input_shape=(64,), num_classes=10), _cnn(), DS),
     DataError, ["train_ds (for the teacher): examples of shape (8, 8, 1)", "but the model takes (64,)"]),
    ("scan on data of another shape", lambda: compress.sensitivity(_cnn(), _rows()), DataError, ["val_ds: examples of shape (28, 28)"]),
    ("label above the classes", lambda: train.fit(_cnn(), DS.map(lambda x, y: (x, y + 3)), verbose=0), DataError,
     ["a label 1", "outside the model's 10 classes", "0 to 9"]),
    ("label above the classes in prune", lambda: compress.prune(_cnn(), DS.map(lambda x, y: (x, y + 3)), 0.5, verbose=0),
     DataError, ["outside the model's 10 classes"]),
    ("fit on unbatched data", lambda: train.fit(_cnn(), DS.unbatch()), DataError, ["single examples", "batch it"]),
    ("int8 data of another shape", lambda: export.to_tflite(_cnn(), "int8", representative_data=np.zeros((4, 28, 28, 1), "float32")),
     DataError, ["representative_data: examples of shape (28, 28, 1)", "but the model takes (8, 8, 1)"]),
    ("predict data of another shape", lambda: export.to_tflite(_cnn()).predict(np.zeros((2, 28, 28, 1), "float32")),
     DataError, ["examples of shape (28, 28, 1)", "but the TFLite model takes (8, 8, 1)"]),
]


@pytest.mark.parametrize("call,error,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_named_error(call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert isinstance(info.value, tfopt.TfoptError)


def test_the_matrix_has_at_least_40_cases():
    assert len(CASES) >= 40


# ---------------------------------------------------------------- recipes and tuning
def _recipe(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "name: r\ndata: {name: digits}\nmodel: {builder: cnn}\n"

RECIPE_CASES = [
    ("malformed YAML", "name: r\ndata: {name: digits\nmodel: x\n", ["r.yaml:3:", "malformed YAML"]),
    ("empty file", "", ["empty"]),
    ("wrong type", GOOD + "training: {epochs: ten}\n", ["r.yaml:4:", "training.epochs", "ten"]),
    ("unknown key", GOOD + "trainng: {epochs: 2}\n", ["r.yaml:4:", "trainng"]),
    ("out of range", GOOD + "stages:\n  - prune: {target_sparsity: 1.5}\n", ["r.yaml:5:", "target_sparsity", "1.5"]),
    ("unknown stage", GOOD + "stages: [compress_hard]\n", ["compress_hard"]),
    ("evaluate before export", GOOD + "stages: [train, evaluate]\n", ["evaluate", "export"]),
    ("escaping name", "name: ../../etc\ndata: {name: digits}\nmodel: {builder: cnn}\n", ["../../etc"]),
    ("missing model file", "name: r\ndata: {name: digits}\nmodel: {path: /nonexistent/m.keras}\n", ["/nonexistent/m.keras"]),
    ("class mismatch", "name: r\ndata: {name: digits}\nmodel: {builder: cnn, args: {num_classes: 3}}\n", ["3", "10"]),
]


@pytest.mark.parametrize("text,words", [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_is_refused_before_anything_runs(tmp_path, text, words):
    from tfopt.pipeline import load_recipe, run_recipe

    path = _recipe(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        run_recipe(path, run_dir=tmp_path / "run")
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"
    assert not (tmp_path / "run" / "manifest.json").exists()  # the run did not start
    with pytest.raises(ConfigError):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    from tfopt.pipeline import load_recipe

    with pytest.raises(ConfigError, match="nope.yaml"):
        load_recipe(tmp_path / "nope.yaml")


TUNE_CASES = [
    ("min > max", {"dropout": {"min": 0.5, "max": 0.1}}, {}, ["0.5", "0.1"]),
    ("empty choice", {"filters": {"choice": []}}, {}, ["filters"]),
    ("unknown algorithm", "cnn", {"algorithm": "annealing"}, ["annealing", "hyperband"]),
    ("unknown objective", "cnn", {"objective": "val_f7"}, ["val_f7"]),
    ("max_trials 0", "cnn", {"max_trials": 0}, ["max_trials", "0"]),
    ("unmeasured constraint", "cnn", {"constraints": {"gflops": 1000}}, ["gflops"]),
    ("unknown builder", "vgg", {}, ["vgg"]),
]


@pytest.mark.parametrize("space,kwargs,words", [c[1:] for c in TUNE_CASES], ids=[c[0] for c in TUNE_CASES])
def test_bad_search_is_refused(tmp_path, space, kwargs, words):
    if isinstance(space, dict):
        space = {"model": "cnn", **space}
    with pytest.raises(ConfigError) as info:
        tfopt.tune.search(space, DS, DS, directory=tmp_path / "s", **{"max_trials": 2, **kwargs})
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


# ---------------------------------------------------------------- the command line: one line, exit code 2
CLI_CASES = [
    ("run: unknown key", lambda p: ["run", str(_recipe(p, GOOD + "trainng: {}\n"))], "trainng"),
    ("run: empty recipe", lambda p: ["run", str(_recipe(p, ""))], "empty"),
    ("run: missing recipe", lambda p: ["run", str(p / "missing.yaml")], "missing.yaml"),
    ("run: workers without index", lambda p: ["run", str(_recipe(p, GOOD)), "--workers", "127.0.0.1:1"], "--worker-index"),
    ("run: bad worker list", lambda p: ["run", str(_recipe(p, GOOD)), "--workers", "nohostport", "--worker-index", "0"], "nohostport"),
    ("export: missing model", lambda p: ["export", str(p / "m.keras")], "m.keras"),
    ("evaluate: unknown data", lambda p: ["evaluate", str(p / "m.tflite"), "--data", "mnist_9k"], "mnist_9k"),
    ("report: not a run", lambda p: ["report", str(p)], "not a tfopt run directory"),
    ("tune: no tune stage", lambda p: ["tune", str(_recipe(p, GOOD))], "tune"),
]


@pytest.mark.parametrize("argv,word", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, argv, word):
    from tfopt.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfopt: error: ") and word in err and "Traceback" not in err


def test_cli_export_with_data_of_another_shape_writes_nothing(tmp_path, capsys):
    from tfopt.cli import main

    _cnn().save(tmp_path / "m.keras")  # takes 8x8x1 digits
    assert main(["export", str(tmp_path / "m.keras"), "--quantization", "int4", "--data", "mnist_rows"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("tfopt: error: DataError: --data mnist_rows: examples of shape (28, 28), but the model "
                           "takes (8, 8, 1): give data of the model's input shape")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_cli_debug_shows_the_traceback(tmp_path):
    from tfopt.cli import main

    with pytest.raises(ConfigError):
        main(["--debug", "export", str(tmp_path / "m.keras")])
