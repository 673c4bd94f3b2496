"""Optimizers by name: ``get("adamw", learning_rate=schedule, weight_decay=1e-4, clipnorm=1.0)``.

All are tf_keras's (Keras 2) new-style optimizers, which all take ``weight_decay`` (decoupled:
``w -= lr * weight_decay * w`` each step) and ``clipnorm`` / ``clipvalue`` / ``global_clipnorm``.

>>> opt = get("momentum", learning_rate=0.1)
>>> type(opt).__name__, float(opt.momentum)
('SGD', 0.9)
"""

from __future__ import annotations

from tfopt._keras import keras
from tfopt.errors import ConfigError, check_range
from tfopt.options import Flag, Number

__all__ = ["get", "check_option", "OPTIMIZERS", "OPTIONS"]

_opt = keras.optimizers

# name -> (class, default keyword arguments)
OPTIMIZERS = {
    "sgd": (_opt.SGD, {}),
    "momentum": (_opt.SGD, {"momentum": 0.9}),
    "nesterov": (_opt.SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (_opt.Adam, {}),
    "adamw": (_opt.AdamW, {}),
    "rmsprop": (_opt.RMSprop, {}),
    "lion": (_opt.Lion, {}),
    "adagrad": (_opt.Adagrad, {}),
    "nadam": (_opt.Nadam, {}),
}

_UNIT = Number(0, 1, high_open=True)  # a decay rate: 1 would stop the average from ever moving
# option -> its type and range (learning_rate, which may be a schedule, is checked apart)
OPTIONS = {
    "weight_decay": Number(0),
    "clipnorm": Number(0, low_open=True),
    "clipvalue": Number(0, low_open=True),
    "global_clipnorm": Number(0, low_open=True),
    "beta_1": _UNIT,
    "beta_2": _UNIT,
    "epsilon": Number(0, low_open=True),
    "momentum": Number(0, 1),
    "rho": _UNIT,
    "initial_accumulator_value": Number(0),
    "ema_momentum": Number(0, 1),
    "ema_overwrite_frequency": Number(1, integer=True),
    "nesterov": Flag(),
    "amsgrad": Flag(),
    "adaptive_epsilon": Flag(),
    "centered": Flag(),
    "use_ema": Flag(),
    "jit_compile": Flag(),
}
# optimizer -> its options whose range differs from OPTIONS
_RANGES = {"lion": {"beta_1": Number(0, 1, low_open=True), "beta_2": Number(0, 1)}}


def check_option(optimizer: str, option: str, value):
    """``value`` checked against the declaration of ``option`` (see :data:`OPTIONS`) for ``optimizer``.

    Options without a declaration (or None) are returned unchanged: the optimizer class judges them.

    Args:
        optimizer: String, a key of OPTIMIZERS (some ranges differ per optimizer).
        option: String, the keyword argument, e.g. "beta_1".
        value: Its value.

    >>> check_option("adam", "beta_1", 0.95)
    0.95
    >>> check_option("adam", "beta_1", "x")
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: beta_1='x' has the wrong type (str); allowed: a number with 0 <= beta_1 < 1
    """
    declared = _RANGES.get(str(optimizer).lower(), {}).get(option) or OPTIONS.get(option)
    return value if declared is None or value is None else declared(option, value)


def _check_learning_rate(learning_rate):
    if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
        return learning_rate
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)):
        raise ConfigError(
            f"learning_rate={learning_rate!r} is not allowed; allowed: a float >= 0 or a "
            "keras.optimizers.schedules.LearningRateSchedule (see tfopt.schedules)"
        )
    check_range("learning_rate", learning_rate, 0)
    return float(learning_rate)


def get(
    name="adam",
    learning_rate=1e-3,
    weight_decay: float | None = None,
    clipnorm: float | None = None,
    clipvalue: float | None = None,
    global_clipnorm: float | None = None,
    **kw,
) -> keras.optimizers.Optimizer:
    """Return a tf_keras optimizer from a name in :data:`OPTIMIZERS`, a config dict, or an instance (as is).

    Args:
        name: String (a key of OPTIMIZERS), dict (``keras.optimizers.serialize`` output, or flat
            ``{"name": "adam", "learning_rate": ...}``) or a keras.optimizers.Optimizer.
        learning_rate: Float >= 0 or a LearningRateSchedule.
        weight_decay: Float >= 0 or None, decoupled weight decay (None: the optimizer's default,
            i.e. none except AdamW's 0.004).
        clipnorm: Float > 0 or None, clip each gradient to this L2 norm.
        clipvalue: Float > 0 or None, clip each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: Float > 0 or None, clip all gradients together to this global norm.
        **kw: Other keyword arguments of the optimizer class (e.g. ``beta_1``, ``momentum``); those in
            :data:`OPTIONS` are checked for type and range (None means the class's default).

    >>> get("adamw", weight_decay=1e-4).weight_decay
    0.0001
    """
    if isinstance(name, keras.optimizers.Optimizer):
        return name
    if isinstance(name, dict):
        if "class_name" in name:
            try:
                return keras.optimizers.deserialize(name)
            except (ValueError, TypeError, KeyError) as err:
                raise ConfigError(f"optimizer config {name!r} could not be deserialized: {err}") from err
        flat = dict(name)
        if "name" not in flat:
            raise ConfigError(f"optimizer config {name!r} has no 'name'; allowed: {', '.join(OPTIMIZERS)}")
        return get(**flat)
    if not isinstance(name, str) or name.lower() not in OPTIMIZERS:
        raise ConfigError(f"optimizer={name!r} is unknown; allowed: {', '.join(OPTIMIZERS)}")
    cls, defaults = OPTIMIZERS[name.lower()]
    given = dict(kw, weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue, global_clipnorm=global_clipnorm)
    kwargs = dict(defaults, learning_rate=_check_learning_rate(learning_rate))
    kwargs.update({key: check_option(name, key, value) for key, value in given.items() if value is not None})
    if sum(kwargs.get(k) is not None for k in ("clipnorm", "clipvalue", "global_clipnorm")) > 1:
        raise ConfigError(
            f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}: "
            "allowed: at most one of them"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"optimizer={name!r} got bad arguments {sorted(kw)}: {err}") from err
