"""Loading saved models safely: Keras safe mode on, tfopt's and tfmot's custom objects known."""

from __future__ import annotations

from pathlib import Path

from tfopt._keras import keras
from tfopt.errors import ConfigError

__all__ = ["load_model", "refuse_unsafe_h5"]

_H5 = (".h5", ".hdf5")


def refuse_unsafe_h5(path) -> None:
    """Raise ConfigError when an HDF5 model file holds a ``Lambda`` layer.

    Keras's safe mode covers only ``.keras`` files; a legacy HDF5 file's Lambda layer is Python bytecode that
    loading would run. Its JSON config is read (no code runs) and such files are refused.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config")
    except OSError as e:
        raise ConfigError(f"{str(path)!r} is not a readable HDF5 model file: {e}") from e
    if config is None:
        raise ConfigError(f"{str(path)!r} holds no model config (weights only?); load weights with model.load_weights")
    text = config.decode() if isinstance(config, bytes) else str(config)
    if '"class_name": "Lambda"' in text:
        raise ConfigError(
            f"{str(path)!r} holds a Lambda layer (arbitrary code); refused in safe mode. "
            "Load it with safe_mode=False only if you trust the file"
        )


def load_model(path, safe_mode: bool = True, custom_objects=None, compile: bool = True):
    """Load a ``.keras`` (or ``.h5``/SavedModel) model saved by tfopt or tf_keras.

    Quantization-aware (tfmot) layers and every registered tfopt object load without extra arguments.
    ``safe_mode=True`` (the default) refuses files whose ``Lambda`` layers would run arbitrary code;
    pass ``safe_mode=False`` only for files you trust.

    Args:
        path: String or Path of the saved model.
        safe_mode: Bool, Keras's safe mode for ``.keras`` files.
        custom_objects: Optional dict of extra custom classes or functions.
        compile: Bool, restore the compile state (optimizer, loss) too.

    >>> model = load_model("runs/demo/baseline.keras")  # doctest: +SKIP
    """
    import tensorflow_model_optimization as tfmot

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    if safe_mode and path.suffix.lower() in _H5:
        refuse_unsafe_h5(path)
    with tfmot.quantization.keras.quantize_scope(), tfmot.clustering.keras.cluster_scope(), \
            tfmot.sparsity.keras.prune_scope():
        try:
            return keras.models.load_model(path, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
        except (ValueError, TypeError, KeyError) as e:
            # tf_keras reports an unknown custom layer as TypeError("'str' object is not callable").
            if "safe_mode" in str(e) or "Lambda" in str(e):
                raise ConfigError(
                    f"{str(path)!r} holds a Lambda layer (arbitrary code); refused in safe mode. "
                    "Load it with safe_mode=False only if you trust the file"
                ) from e
            raise ConfigError(
                f"could not load a Keras model from {str(path)!r}: {str(e).splitlines()[0]} "
                "(a custom object that is not registered? pass custom_objects={...})"
            ) from e
