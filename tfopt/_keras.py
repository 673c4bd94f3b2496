"""The one place that decides which Keras tfopt uses: Keras 2 (``tf_keras``), as tfmot requires.

Every tfopt module imports ``tf``, ``keras`` and ``tfmot`` from here. Importing this module sets
``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported, so that ``tf.keras`` (used inside
tfmot and by users' own code) is Keras 2 as well.
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _import_quietly():
    """Import TensorFlow and tf_keras with their C++ start-up chatter (oneDNN, CUDA stub, absl lines that
    TF_CPP_MIN_LOG_LEVEL does not silence) kept off stderr; replayed if the import fails.
    ``TFOPT_TF_LOGS=1`` shows it."""
    if os.environ.get("TFOPT_TF_LOGS") == "1" or "tensorflow" in sys.modules:
        import tensorflow
        import tf_keras

        return tensorflow, tf_keras
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. some notebook front ends)
        import tensorflow
        import tf_keras

        return tensorflow, tf_keras
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
            import tf_keras

            # Finding the devices loads the CUDA platform, which logs "failed call to cuInit" on machines
            # without a GPU. It does not start the runtime (logical devices and collectives can still be
            # configured afterwards).
            tensorflow.config.list_physical_devices()
        except BaseException as err:
            os.dup2(saved, 2)
            if not isinstance(err, KeyboardInterrupt):  # after Ctrl-C the chatter explains nothing
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tensorflow, tf_keras


tf, keras = _import_quietly()

from tfopt.errors import SEED_LIMIT, KerasVersionError, check_seed  # noqa: E402

__all__ = ["tf", "keras", "tfmot", "check_model", "serializable", "set_seed", "derive_seed"]


def __getattr__(name):
    # tfmot is imported lazily: it costs a second and most modules do not need it.
    if name == "tfmot":
        import tensorflow_model_optimization as tfmot

        return tfmot
    raise AttributeError(name)


def check_model(model, where: str = "tfopt"):
    """Return ``model`` if it is a tf_keras (Keras 2) model, else raise a clear tfopt error.

    Args:
        model: The object handed to a tfopt function.
        where: String, the name of that function, for the message.

    >>> check_model(keras.Sequential([keras.layers.Dense(1, input_shape=(2,))]))  # doctest: +ELLIPSIS
    <tf_keras...Sequential object at ...>
    """
    if isinstance(model, keras.Model):
        return model
    module = type(model).__module__
    if module.startswith("keras") or module.startswith("tensorflow.python.keras"):
        raise KerasVersionError(
            f"{where} got a Keras 3 model ({type(model).__module__}.{type(model).__name__}); "
            "tfopt (and tfmot) need Keras 2 models: build it with `import tf_keras as keras` "
            "(or set TF_USE_LEGACY_KERAS=1 before importing TensorFlow and use tf.keras), "
            "or use tfopt.models.build(...)"
        )
    raise KerasVersionError(
        f"{where} expected a tf_keras.Model, got {type(model).__module__}.{type(model).__name__}"
    )


def serializable(cls=None, *, package: str = "tfopt"):
    """Class decorator registering a custom Keras object so saved models load back by name.

    >>> @serializable
    ... class Twice(keras.layers.Layer):
    ...     def call(self, x):
    ...         return 2 * x
    """
    register = keras.saving.register_keras_serializable(package=package)
    return register(cls) if cls is not None else register


def set_seed(seed: int) -> int:
    """Seed Python, NumPy and TensorFlow (``keras.utils.set_random_seed``); returns the seed.

    Args:
        seed: Integer in [0, 2**32); anything else raises ConfigError.

    >>> set_seed(7)
    7
    """
    seed = check_seed(seed)
    keras.utils.set_random_seed(seed)
    return seed


def derive_seed(seed: int, offset: int) -> int:
    """The seed of a part of a run (a stage, a trial): ``seed + offset``, wrapped into [0, 2**32).

    >>> derive_seed(3, 2), derive_seed(2**32 - 1, 2)
    (5, 1)
    """
    return (check_seed(seed) + int(offset)) % SEED_LIMIT
