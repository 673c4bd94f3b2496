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


def check_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, finite=True) -> None:
    """Raise ConfigError unless ``value`` is a number with ``low <= value <= high`` (bounds optional, open when
    asked); NaN, and infinity unless ``finite=False``, are refused too.

    Args:
        name: String, the argument's name, for the message.
        value: The number given.
        low, high: Numbers or None, the bounds.
        low_open, high_open: Booleans, exclude the bound itself.
        finite: Boolean, refuse ``inf`` and ``-inf``.

    >>> check_range("dropout", 0.5, 0, 1, high_open=True)
    >>> check_range("l2", float("inf"), 0)
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: l2=inf is out of range; allowed: 0 <= l2, a finite number
    """
    import math
    import numbers

    lo = "" if low is None else f"{low} {'<' if low_open else '<='} "
    hi = "" if high is None else f" {'<' if high_open else '<='} {high}"
    allowed = f"{lo}{name}{hi}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} has the wrong type ({type(value).__name__}); allowed: a number with "
                          f"{allowed}")
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {allowed}, a finite number")
    ok = True
    if low is not None:
        ok = value > low if low_open else value >= low
    if high is not None:
        ok = ok and (value < high if high_open else value <= high)
    if not ok:
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {allowed}")


SEED_LIMIT = 2**32  # seeds are in [0, 2**32): what NumPy, TensorFlow and scikit-learn all accept


def check_seed(value, name: str = "seed") -> int:
    """``value`` as an int when it is an integer in [0, 2**32) (every seed tfopt hands on), else ConfigError.

    Args:
        value: The seed given (an int or a NumPy integer).
        name: String, the argument's name, for the message.

    >>> check_seed(42)
    42
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: seed=-1 is out of range; allowed: an integer with 0 <= seed < 2**32 (4294967296)
    """
    import numbers

    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
        what = "is out of range" if isinstance(value, numbers.Integral) and not isinstance(value, bool) else \
            f"has the wrong type ({type(value).__name__})"
        raise ConfigError(f"{name}={value!r} {what}; allowed: an integer with 0 <= {name} < 2**32 ({SEED_LIMIT})")
    return int(value)


class TrainingError(TfoptError):
    """Training could not go on (e.g. the loss became NaN or infinite)."""


class WriteError(TfoptError, OSError):
    """A file could not be written: no space left on the device, a disk quota reached, a read-only file system
    or no permission. An OSError too, with the original ``errno``, ``strerror`` and ``filename``; the message
    names the file. Nothing half-written is left behind: run again once space or permission is back."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
