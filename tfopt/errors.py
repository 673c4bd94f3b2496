"""The exceptions tfopt raises. Every one derives from :class:`TfoptError`.

Messages name the bad value and what is allowed, e.g.
``ConfigError: target_sparsity=1.2 is out of range; allowed: 0 <= target_sparsity < 1``.
"""

from __future__ import annotations


class TfoptError(Exception):
    """Base class of every error tfopt raises on purpose."""


class ConfigError(TfoptError, ValueError):
    """An argument or recipe value is out of range, of the wrong type, or unknown."""


class DataError(TfoptError, ValueError):
    """A dataset is unknown, unavailable offline, empty, or of the wrong shape or content."""


class KerasVersionError(TfoptError, TypeError):
    """A Keras 3 model (or something not a Keras model) was given where a tf_keras model is needed."""


class UnsupportedLayerError(TfoptError, ValueError):
    """A model has no layer the requested technique can handle, or one it cannot wrap."""


class CompressionError(TfoptError):
    """A compression step did not reach what was asked (e.g. sparsity below the target)."""


class ExportError(TfoptError):
    """Conversion to TFLite, or running the converted model, failed."""


class DistributeError(TfoptError):
    """A distribution strategy or cluster setting (TF_CONFIG, workers) is invalid or unreachable."""


def check_choice(name: str, value, allowed) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``.

    >>> check_choice("pool", "max", ("max", "avg"))
    """
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False) -> None:
    """Raise ConfigError unless ``low <= value <= high`` (bounds optional, open when asked).

    >>> check_range("dropout", 0.5, 0, 1, high_open=True)
    """
    try:
        ok = True
        if low is not None:
            ok &= value > low if low_open else value >= low
        if high is not None:
            ok &= value < high if high_open else value <= high
    except TypeError:
        ok = False
    if not ok or (isinstance(value, float) and value != value):
        lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
        hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {lo}{name}{hi}")


class TrainingError(TfoptError):
    """Training could not go on (e.g. the loss became NaN or infinite)."""
