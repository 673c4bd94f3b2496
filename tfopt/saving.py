"""Loading saved models safely: the file's content decides its format, its configs are inspected before Keras
reads them, and anything that would run code from the file is refused unless ``safe_mode=False``."""

from __future__ import annotations

import builtins
import contextlib
import json
import re
import zipfile
from pathlib import Path

from tfopt._keras import keras, tf
from tfopt._private import private
from tfopt.errors import ConfigError

__all__ = ["load_model", "check_model_file"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_CONFIG_BYTES = 64 * 2**20
# Modules whose objects safe mode lets Keras look up by name; any other module named in a config would be imported.
_TRUSTED_MODULES = ("keras", "tf_keras", "tensorflow_model_optimization", "tfopt")
_TRUST_HINT = "pass safe_mode=False only for a file you trust"
# TensorFlow API names a TFOpLambda/ClassMethod layer may call that reach files, run Python or change global state
# (the layer calls any ``tf.<name>`` its config names); the math, nn, array and string ops stay allowed.
# ``compat.v1.<name>`` (how tf_keras records tf.shape, tf.gather, ...) is judged by ``<name>``.
_TF_API_SIDE_EFFECTS = ("io", "summary", "saved_model", "debugging", "raw_ops", "compat", "data", "lite", "train",
                        "experimental", "config", "sysconfig", "distribute", "autograph", "keras", "profiler", "tpu",
                        "queue", "print", "py_function", "numpy_function", "load_op_library", "load_library",
                        "function", "Module", "init_scope", "get_logger",
                        # TF1 names under compat.v1
                        "gfile", "Print", "py_func", "logging", "Session", "InteractiveSession", "write_file",
                        "read_file", "matching_files", "resource_loader", "app", "flags", "user_ops")


def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------- what the file is
def _saved_model_dir(path: Path, name: str, safe_mode: bool) -> str:
    if not any((path / f).is_file() for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise ConfigError(f"{name!r} is a directory, not a SavedModel (no saved_model.pb); "
                          "give a .keras or .h5 model file")
    if safe_mode:
        raise ConfigError(
            f"{name!r} is a TensorFlow SavedModel directory: its stored graphs and any Lambda layer's bytecode "
            "would run as saved, which safe mode cannot check; re-save the model as .keras, or "
            f"{_TRUST_HINT}"
        )
    return "saved_model"


def _zip_config(path: Path, name: str):
    """The parsed ``config.json`` of a ``.keras`` zip archive, after every entry's checksum was verified."""
    try:
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo("config.json")
            except KeyError:
                raise ConfigError(f"{name!r} is a zip archive with no config.json: not a Keras .keras model file") \
                    from None
            if info.file_size > _MAX_CONFIG_BYTES:
                raise ConfigError(f"{name!r}: its config.json holds {info.file_size:,} bytes; "
                                  f"at most {_MAX_CONFIG_BYTES:,} allowed")
            bad = zf.testzip()
            if bad is not None:
                raise ConfigError(f"{name!r} is a damaged zip archive: the checksum of its {bad!r} does not match; "
                                  "save the model again")
            data = zf.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
            ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{name!r} is a damaged zip archive ({type(err).__name__}: {_one_line(err)}); "
                          "save the model again") from err
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:
        raise ConfigError(f"{name!r}: its config.json is not valid JSON ({_one_line(err)})") from err


def _h5_configs(path: Path, name: str) -> list:
    """``[(attribute, parsed JSON)]`` of an HDF5 model file's ``model_config`` and ``training_config``."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = {key: f.attrs.get(key) for key in ("model_config", "training_config")}
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as err:
        raise ConfigError(f"{name!r} is a damaged HDF5 file (h5py: {_one_line(err)}); save the model again") from err
    if raw["model_config"] is None:
        raise ConfigError(f"{name!r} is an HDF5 file with no model config (weights only?): build the model "
                          "and call model.load_weights on it")
    configs = []
    for key, value in raw.items():
        if value is None:
            continue
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else value
            if not isinstance(text, str):
                raise ValueError(f"it is {type(value).__name__}, not text")
            configs.append((key, json.loads(text)))
        except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"{name!r}: its HDF5 attribute {key} is not valid JSON ({_one_line(err)})") from err
    return configs


# ---------------------------------------------------------------- what the configs would run
def _code_in(node: dict, custom_objects) -> str | None:
    """What in one config dict would make Keras run code from the file (or import a module), or None."""
    for key, value in node.items():
        # Lambda's function/output_shape/mask and the RNN cell wrappers' dropout/residual functions:
        # a "<x>_type" of "lambda" means Python bytecode that Keras un-marshals (generic_utils.func_load).
        if isinstance(key, str) and key.endswith("_type") and value == "lambda":
            return f"Python bytecode ({key}='lambda')"
    for key in ("function", "cls_symbol"):  # TFOpLambda / SlicingOpLambda / ClassMethod: a tf.<name> to call
        symbol = node.get(key)
        if isinstance(symbol, str) and re.sub(r"^compat\.v[12]\.", "", symbol).split(".")[0] in _TF_API_SIDE_EFFECTS:
            return f"a call of the TensorFlow API tf.{symbol} (it can reach files or run Python)"
    class_name = node.get("class_name")
    for text in (class_name, node.get("registered_name")):
        if isinstance(text, str):
            if text == "__lambda__":
                return "a serialized Python lambda (__lambda__)"
            if re.split(r"[.>]", text)[-1] == "Lambda":
                return "a Lambda layer"
    module = node.get("module")
    if not isinstance(class_name, str) or not isinstance(module, str):
        return None
    root = module.split(".")[0]
    if root in _TRUSTED_MODULES:
        return None
    registered = keras.saving.get_registered_object
    if class_name == "function":
        fn_name = node.get("config")
        if root == "builtins":
            # Keras looks a "builtins" function up among its own built-ins, then in Python's builtins module
            if isinstance(fn_name, str) and hasattr(builtins, fn_name) and registered(fn_name, custom_objects) is None:
                return f"the Python builtin {fn_name!r} as a function"
            return None
        if isinstance(fn_name, str) and registered(fn_name, custom_objects) is not None:
            return None
    elif registered(node.get("registered_name", class_name), custom_objects) is not None:
        return None
    return f"the module {module!r} (for {class_name!r}), which loading would import"


def _refuse_code(config, name: str, where: str, custom_objects) -> None:
    """ConfigError if any dict nested anywhere in ``config`` would run code (see :func:`_code_in`)."""
    stack = [(config, ())]
    while stack:
        node, trail = stack.pop()
        if isinstance(node, list):
            stack.extend((item, trail) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        inner = node.get("config")
        layer = inner.get("name") if isinstance(inner, dict) else None
        if isinstance(layer, str) and "class_name" in node:
            trail = (*trail, layer)
        found = _code_in(node, custom_objects)
        if found is not None:
            at = f"{where}: {'/'.join(trail)}" if trail else where
            if found == "a Lambda layer":
                raise ConfigError(f"{name!r} holds a Lambda layer ({at}): its Python code would run on loading, "
                                  f"so safe mode refuses it; re-create that layer in code, or {_TRUST_HINT}")
            raise ConfigError(f"{name!r} holds {found} ({at}): safe mode refuses it (only Keras, tfmot, tfopt "
                              f"and registered objects load); {_TRUST_HINT}")
        stack.extend((value, trail) for value in node.values())


def check_model_file(path, safe_mode: bool = True, custom_objects=None) -> str:
    """Tell what a saved model is from its content and, in safe mode, refuse one that would run code.

    The format is sniffed, never taken from the name: a zip archive is a Keras v3 ``.keras`` file, an HDF5 file is
    a legacy model (whatever its name: tf_keras reads any file that is not a ``.keras`` zip as HDF5), a directory
    holding ``saved_model.pb`` is a SavedModel; anything else, an empty, truncated or damaged file included, is a
    one-line ConfigError naming the path. In safe mode the configs Keras would read (``config.json``; HDF5
    ``model_config`` and ``training_config``) are parsed and every nested dict is inspected: Lambda layers,
    Python bytecode (``*_type: "lambda"``, ``__lambda__``), Python builtins and modules outside Keras, tfmot and
    tfopt that are not registered objects are refused, and so is every SavedModel (its graphs cannot be vouched
    for). Nothing in the file runs.

    Args:
        path: String or Path of a ``.keras``/``.h5`` file or a SavedModel directory.
        safe_mode: Bool, refuse what would run code (False: check the format only).
        custom_objects: Optional dict of extra custom classes or functions that count as known.

    Returns:
        String, ``"keras"``, ``"h5"`` or ``"saved_model"``.

    Raises:
        ConfigError: the path is missing or not a loadable model, or (safe mode) it would run code.

    >>> check_model_file("runs/demo/01_train/model.keras")  # doctest: +SKIP
    'keras'
    >>> check_model_file("/nonexistent/model.keras")
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: model file '/nonexistent/model.keras' does not exist
    """
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise ConfigError(f"model file {name!r} does not exist")
    if path.is_dir():
        return _saved_model_dir(path, name, safe_mode)
    if not path.is_file():
        raise ConfigError(f"{name!r} is not a regular file: give a .keras or .h5 model file")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        raise ConfigError(f"model file {name!r} cannot be read: {_one_line(err)}") from err
    if not head:
        raise ConfigError(f"{name!r} is empty (0 bytes): not a model file; save the model again")
    is_zip = zipfile.is_zipfile(path)
    is_h5 = head == _HDF5_SIGNATURE or _is_hdf5(path)
    if is_zip and is_h5:
        raise ConfigError(f"{name!r} is both a zip archive and an HDF5 file: refused as ambiguous; "
                          "save the model again")
    if is_zip:
        if not name.endswith(".keras"):
            raise ConfigError(f"{name!r} is a Keras .keras zip archive but its name does not end in .keras "
                              "(Keras would read it as HDF5); rename it to end in .keras")
        kind, configs = "keras", [("config.json", _zip_config(path, name))]
    elif is_h5:
        kind, configs = "h5", _h5_configs(path, name)
    elif head.startswith(b"PK"):
        raise ConfigError(f"{name!r} is a truncated or damaged zip archive (no end-of-archive record): "
                          "not a loadable .keras model; save the model again")
    else:
        raise ConfigError(f"{name!r} is not a Keras model file: neither a .keras zip archive nor HDF5 "
                          f"(it starts with {head!r})")
    if safe_mode:
        for where, config in configs:
            _refuse_code(config, name, where, custom_objects)
    return kind


def _is_hdf5(path: Path) -> bool:
    """HDF5 with a user block (its signature at byte 512, 1024, ...) counts too."""
    import h5py

    try:
        return bool(h5py.is_hdf5(str(path)))
    except (OSError, ValueError, RuntimeError):
        return False


@contextlib.contextmanager
def _keras_safe_mode(safe_mode: bool):
    """Keras's own safe-mode flag, set for the legacy HDF5/SavedModel loaders too (they do not set it themselves):
    a second line of defence, should anything pass :func:`check_model_file`."""
    try:
        SafeModeScope = private("tfk_safe_mode_scope")
    except ImportError:  # a tf_keras without it: check_model_file alone guards
        yield
        return
    with SafeModeScope(True) if safe_mode else contextlib.nullcontext():
        yield


_LOAD_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OSError, EOFError,
                zipfile.BadZipFile, tf.errors.OpError)


def _tfopt_objects_by_class_name() -> dict:
    """tfopt's registered objects under their bare class names too: tfmot's wrappers deserialize the layer they wrap
    by its ``class_name`` alone (``ExpandDims``, not ``tfopt>ExpandDims``)."""
    return {key.split(">", 1)[1]: obj for key, obj in keras.saving.get_custom_objects().items()
            if key.startswith("tfopt>")}


def load_model(path, safe_mode: bool = True, custom_objects=None, compile: bool = True):
    """Load a ``.keras`` or ``.h5`` model (or, with ``safe_mode=False``, a SavedModel) saved by tfopt or tf_keras.

    Quantization-aware (tfmot) layers and every registered tfopt object load without extra arguments. The file is
    first checked by :func:`check_model_file`: its format comes from its content, and ``safe_mode=True`` (the
    default) refuses any file that would run code on loading (a ``Lambda`` layer in any format and at any depth,
    Python bytecode, unregistered modules) and every SavedModel directory; pass ``safe_mode=False`` only for files
    you trust.

    Args:
        path: String or Path of the saved model.
        safe_mode: Bool, refuse files that would run code on loading.
        custom_objects: Optional dict of extra custom classes or functions.
        compile: Bool, restore the compile state (optimizer, loss) too.

    Raises:
        ConfigError: the path is missing, not a model file Keras can load, or (safe mode) would run code.

    >>> model = load_model("runs/demo/01_train/model.keras")  # doctest: +SKIP
    """
    import tensorflow_model_optimization as tfmot

    name = str(path)
    custom_objects = {**_tfopt_objects_by_class_name(), **(custom_objects or {})}
    with tfmot.quantization.keras.quantize_scope(), tfmot.clustering.keras.cluster_scope(), \
            tfmot.sparsity.keras.prune_scope():
        check_model_file(path, safe_mode=safe_mode, custom_objects=custom_objects)
        try:
            with _keras_safe_mode(safe_mode):
                return keras.models.load_model(path, custom_objects=custom_objects, compile=compile,
                                               safe_mode=safe_mode)
        except _LOAD_ERRORS as e:
            if isinstance(e, ConfigError):
                raise
            if safe_mode and ("safe_mode" in str(e) or "Lambda" in str(e)):
                raise ConfigError(
                    f"{name!r} holds a Lambda layer or Python lambda: its code would run on loading, so safe mode "
                    f"refuses it; {_TRUST_HINT}"
                ) from e
            # tf_keras reports an unknown custom layer as TypeError("'str' object is not callable").
            raise ConfigError(
                f"could not load a Keras model from {name!r}: {type(e).__name__}: {_one_line(e)} "
                "(a custom object that is not registered? pass custom_objects={...})"
            ) from e
