"""tfopt: train Keras models well, compress them, ship them as TFLite, and measure what was shipped.

Importing tfopt makes Keras 2 (tf_keras) the Keras of the process before TensorFlow is imported.

>>> import tfopt
>>> train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=64)
>>> model = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=info.num_classes)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from tfopt import _launch

_launch.install()  # the tfopt command: Ctrl-C while TensorFlow loads is one line too (not an import)

from tfopt import _keras  # noqa: F401,I001  (must come first: sets TF_USE_LEGACY_KERAS)
from tfopt import (
    compress,
    data,
    distribute,
    errors,
    export,
    losses,
    models,
    optimizers,
    pipeline,
    regularizers,
    schedules,
    train,
    tune,
)
from tfopt._keras import set_seed
from tfopt.errors import TfoptError
from tfopt.saving import load_model

try:
    __version__ = _metadata.version("tfopt")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "compress",
    "data",
    "distribute",
    "errors",
    "export",
    "load_model",
    "losses",
    "models",
    "optimizers",
    "pipeline",
    "regularizers",
    "schedules",
    "set_seed",
    "train",
    "tune",
    "TfoptError",
]
