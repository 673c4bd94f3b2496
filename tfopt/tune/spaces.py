"""Search spaces: a builder name, a dict of ranges over builder, training and compression settings, or ``hp -> model``.

The dict format (one entry per setting):

* ``{"choice": [v1, v2, ...]}`` or a plain list ``[v1, v2, ...]``: one of the values. Values may be
  anything JSON-like (``None``, tuples/lists such as ``filters`` ``[16, 32]``, mixed types): they are
  handed to keras-tuner as their JSON text and decoded back for the trial.
* ``{"min": a, "max": b, "step": s, "sampling": "linear" | "log" | "reverse_log"}``: a number in
  [a, b] (an integer when a, b and the step are integers; ``step`` and ``sampling`` are optional).
* ``{"fixed": value}``, a scalar (number, string, bool, None) or a tuple: always that value.

Keys:

* ``"model"``: a registered builder name (see :func:`tfopt.models.list_models`), or a choice of names
  (each trial passes a builder only the arguments it takes), or a TRAINED tf_keras model: every trial starts
  from a copy of it and its weights (a search over compression settings; ``max_epochs=0`` skips training).
* builder arguments, e.g. ``filters``, ``dense``, ``dropout``, ``units``, ``width``, ``blocks``.
* training settings (:data:`TRAINING_KEYS`): ``optimizer`` (a name of :mod:`tfopt.optimizers`),
  ``learning_rate``, ``schedule`` (a name of :data:`tfopt.schedules.SCHEDULES` or a dict with its
  arguments, read as a recipe's: see :func:`tfopt.schedules.from_settings`), ``weight_decay``,
  ``label_smoothing``, ``augment`` (None or a name of :data:`tfopt.data.AUGMENTATIONS`).
* compression settings (:data:`COMPRESSION_KEYS`), the ``tune_keys`` every registered technique declares
  (see :mod:`tfopt.techniques`), each checked by that technique's option: ``target_sparsity`` (prune after
  training), ``prune_epochs``, ``n_clusters`` (cluster after that), ``cluster_epochs``, ``quantization``
  (of the exported TFLite model: None or a name of :data:`tfopt.export.QUANTIZATIONS`), ``layer_bits``.
* per-layer compression settings (:func:`per_layer_keys`, each technique's ``per_layer``):
  ``"target_sparsity/<layer>"``, ``"n_clusters/<layer>"`` (0: leave it unclustered), ``"layer_bits/<layer>"``
  (4, 8 or None with an int4 ``quantization``) tune one layer's value; a trial passes the technique the dict
  ``{layer: value}`` of them (see :func:`split`).

>>> space = Space.parse({"model": "cnn", "filters": [[8], [8, 16]], "dropout": {"min": 0.0, "max": 0.5}})
>>> sorted(space.params), space.fixed
(['dropout', 'filters'], {'model': 'cnn'})
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import numbers
from typing import Any, Callable

from tfopt.errors import ConfigError, check_choice, check_range

__all__ = ["Space", "Param", "DEFAULT_SPACES", "TRAINING_KEYS", "COMPRESSION_KEYS", "SAMPLINGS", "per_layer_keys"]

SAMPLINGS = ("linear", "log", "reverse_log")

# Small default ranges (CPU-sized) for each registered builder.
DEFAULT_SPACES: dict[str, dict] = {
    "cnn": {
        "filters": [[8], [8, 16], [16, 32]],
        "dense": [[16], [32]],
        "dropout": {"min": 0.0, "max": 0.3, "step": 0.1},
        "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
    },
    "mlp": {
        "units": [[32], [64], [64, 32]],
        "dropout": {"min": 0.0, "max": 0.3, "step": 0.1},
        "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
    },
    "lstm": {
        "units": [[16], [32]],
        "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
    },
    "resnet": {
        "blocks": [[1], [1, 1]],
        "width": [0.125, 0.25],
        "learning_rate": {"min": 1e-3, "max": 1e-2, "sampling": "log"},
    },
}


def _check_optimizer(value):
    from tfopt.optimizers import OPTIMIZERS

    check_choice("optimizer", value, tuple(OPTIMIZERS))


def _check_schedule(value):
    """A schedule a trial can build from its learning rate and steps alone (a name or a dict with arguments)."""
    from tfopt.schedules import SCHEDULES, from_settings

    name = value.get("name") if isinstance(value, dict) else value
    check_choice("schedule", name, tuple(SCHEDULES))
    try:
        from_settings(value, 1e-3, 1000)
    except ConfigError as err:
        raise ConfigError(f"schedule={value!r} cannot be made from a trial's learning rate and steps: {err}") from None


def _check_augment(value):
    from tfopt.data import AUGMENTATIONS

    check_choice("augment", value, (None, *AUGMENTATIONS))


# setting -> validator of one value (raises ConfigError naming the value)
TRAINING_KEYS: dict[str, Callable] = {
    "optimizer": _check_optimizer,
    "learning_rate": lambda v: check_range("learning_rate", v, 0, low_open=True),
    "schedule": _check_schedule,
    "weight_decay": lambda v: check_range("weight_decay", v, 0),
    "label_smoothing": lambda v: check_range("label_smoothing", v, 0, 1, high_open=True),
    "augment": _check_augment,
}


def compression_keys() -> dict[str, Callable]:
    """Search-space key -> validator, for the ``tune_keys`` of every registered technique (checked by the
    technique's own option; the first key of a technique, which turns it on, may also be None)."""
    import tfopt.compress  # noqa: F401  (their techniques register on import)
    import tfopt.export  # noqa: F401
    from tfopt.options import check_value
    from tfopt.techniques import TECHNIQUES

    def validator(key, field, switch):
        return lambda v: None if switch and v is None else check_value(key, field, v)

    out = {}
    for technique in TECHNIQUES.values():
        for i, (key, target) in enumerate(technique.tune_keys.items()):
            field = target if not isinstance(target, str) else technique.options[target]
            out[key] = validator(key, field, i == 0)
    return out


def per_layer_keys() -> dict[str, Callable]:
    """Tune key -> validator of ONE layer's value, for the ``per_layer`` keys every registered technique declares:
    ``"<key>/<layer>"`` space keys tune one layer each.

    >>> sorted(per_layer_keys())
    ['layer_bits', 'n_clusters', 'target_sparsity']
    """
    import tfopt.compress  # noqa: F401  (their techniques register on import)
    import tfopt.export  # noqa: F401
    from tfopt.options import check_value
    from tfopt.techniques import TECHNIQUES

    def validator(field):
        return lambda name, v: check_value(name, field, v)

    return {key: validator(field) for technique in TECHNIQUES.values() for key, field in technique.per_layer.items()}


def _per_layer_name(name: str, keys) -> tuple[str, str] | None:
    """``(key, layer)`` when ``name`` is ``"<key>/<layer>"`` for a per-layer key, else None."""
    key, sep, layer = name.partition("/")
    return (key, layer) if sep and key in keys and layer else None


def __getattr__(name: str):
    if name == "COMPRESSION_KEYS":  # derived from the registry each time: a technique registered later counts
        return compression_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _validators() -> dict:
    return {**TRAINING_KEYS, **compression_keys()}


def _label(value) -> str:
    """The JSON text keras-tuner sees for a non-scalar choice value."""
    try:
        return json.dumps(value)
    except TypeError:
        return repr(value)


@dataclasses.dataclass
class Param:
    """One tuned setting: a choice (``values``) or a numeric range (``low``..``high``)."""

    name: str
    values: list | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    sampling: str = "linear"
    encoded: bool = False

    @classmethod
    def parse(cls, name: str, spec) -> "Param | None":
        """A Param from one space entry, or None when the entry is a fixed value."""
        if isinstance(spec, list):
            spec = {"choice": spec}
        if not isinstance(spec, dict) or "fixed" in spec:
            return None
        if "choice" in spec:
            extra = sorted(set(spec) - {"choice"})
            values = spec["choice"]
            if extra or not isinstance(values, (list, tuple)):
                raise ConfigError(f"space[{name!r}]={spec!r} is not allowed; allowed: {{'choice': [values...]}}")
            if not values:
                raise ConfigError(f"space[{name!r}] has a choice with no values; allowed: a non-empty list")
            values = list(values)
            plain = len({type(v) for v in values}) == 1 and isinstance(values[0], (str, int, float, bool))
            labels = values if plain else [_label(v) for v in values]
            if len(set(labels)) != len(labels):
                raise ConfigError(f"space[{name!r}] has a choice with repeated values: {values!r}")
            return cls(name, values=values, encoded=not plain)
        extra = sorted(set(spec) - {"min", "max", "step", "sampling"})
        if extra or "min" not in spec or "max" not in spec:
            raise ConfigError(
                f"space[{name!r}]={spec!r} is not allowed; allowed: a list (choice), {{'choice': [...]}}, "
                "{'min': a, 'max': b, 'step': s, 'sampling': 'linear'|'log'|'reverse_log'}, "
                "{'fixed': value} or a scalar"
            )
        low, high, step = spec["min"], spec["max"], spec.get("step")
        for key, value in (("min", low), ("max", high), ("step", step)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise ConfigError(f"space[{name!r}]: {key}={value!r} is not allowed; allowed: a number")
        if low > high:
            raise ConfigError(f"space[{name!r}]: min={low!r} > max={high!r}; allowed: min <= max")
        sampling = spec.get("sampling") or "linear"
        check_choice(f"space[{name!r}] sampling", sampling, SAMPLINGS)
        if sampling != "linear" and low <= 0:
            raise ConfigError(f"space[{name!r}]: sampling={sampling!r} needs min > 0, got min={low!r}")
        if step is not None and step <= 0:
            raise ConfigError(f"space[{name!r}]: step={step!r} is not allowed; allowed: step > 0")
        return cls(name, low=low, high=high, step=step, sampling=sampling)

    @property
    def is_int(self) -> bool:
        nums = [v for v in (self.low, self.high, self.step) if v is not None]
        return self.values is None and all(isinstance(v, numbers.Integral) for v in nums)

    def candidates(self) -> list:
        """The values to validate: every choice, or the two ends of the range."""
        return list(self.values) if self.values is not None else [self.low, self.high]

    def declare(self, hp) -> None:
        """Register this setting on a keras-tuner ``HyperParameters``."""
        if self.values is not None:
            labels = [_label(v) for v in self.values] if self.encoded else self.values
            hp.Choice(self.name, labels)
        elif self.low == self.high:
            hp.Fixed(self.name, self.low)
        elif self.is_int:
            hp.Int(self.name, int(self.low), int(self.high), step=self.step, sampling=self.sampling)
        else:
            hp.Float(self.name, float(self.low), float(self.high), step=self.step, sampling=self.sampling)

    def decode(self, raw):
        """The setting's value from what keras-tuner sampled."""
        if self.values is not None and self.encoded:
            return self.values[[_label(v) for v in self.values].index(raw)]
        return raw

    def contains(self, value) -> bool:
        """True when ``value`` is one this setting can take."""
        if self.values is not None:
            return value in self.values
        return self.low - 1e-12 <= value <= self.high + 1e-12


@dataclasses.dataclass
class Space:
    """A parsed search space: tuned ``params``, ``fixed`` settings, or a user function ``fn(hp) -> model``."""

    params: dict[str, Param] = dataclasses.field(default_factory=dict)
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    fn: Callable | None = None
    trained: Any = None  # a trained tf_keras model every trial starts from ("model": <model>), or None

    @classmethod
    def parse(cls, space) -> "Space":
        """Parse a builder name, a dict (see the module docstring) or a callable ``hp -> model``.

        Args:
            space: String, dict or callable.

        >>> Space.parse("mlp").fixed
        {'model': 'mlp'}
        """
        if callable(space) and not isinstance(space, (str, dict)):
            return cls(fn=space)
        if isinstance(space, str):
            from tfopt.models import get_builder

            get_builder(space)  # ConfigError naming the unknown builder
            space = {"model": space, **DEFAULT_SPACES.get(space, {})}
        if not isinstance(space, dict):
            raise ConfigError(
                f"space={space!r} is not allowed; allowed: a builder name, a dict of ranges or a function hp -> model"
            )
        if not space:
            raise ConfigError("space={} is empty; allowed: a builder name, a dict with at least 'model', or hp -> model")
        if "model" not in space:
            raise ConfigError(f"space has no 'model' entry (keys: {sorted(space)}); allowed: 'model': 'cnn' etc.")
        out = cls()
        if not isinstance(space["model"], (str, list, dict)):
            from tfopt._keras import check_model

            out.trained = check_model(space["model"], "space['model']")
            space = {**space, "model": f"trained:{out.trained.name}"}  # what trial records show
        for name, spec in space.items():
            if not isinstance(name, str) or not name or name.startswith("tuner/"):
                raise ConfigError(f"space key {name!r} is not allowed; allowed: non-empty names not starting 'tuner/'")
            param = Param.parse(name, spec)
            if param is None:
                out.fixed[name] = spec["fixed"] if isinstance(spec, dict) else spec
            else:
                out.params[name] = param
        out._validate()
        return out

    def models(self) -> list[str]:
        """The builder names the space can pick (none for a trained model)."""
        if self.trained is not None:
            return []
        param = self.params.get("model")
        names = param.candidates() if param is not None else [self.fixed["model"]]
        return names

    def _validate(self) -> None:
        from tfopt.models import get_builder

        builders = {name: get_builder(name) for name in self.models()}
        validators = _validators()
        per_layer = per_layer_keys()
        accepted = set()
        for builder in builders.values():
            accepted |= set(inspect.signature(builder).parameters)
        for name in [*self.params, *self.fixed]:
            if name == "model":
                continue
            values = self.params[name].candidates() if name in self.params else [self.fixed[name]]
            layered = _per_layer_name(name, per_layer)
            if layered is not None:
                if layered[0] in self.params or layered[0] in self.fixed:
                    raise ConfigError(f"space keys {layered[0]!r} and {name!r} both set {layered[0]}; allowed: "
                                      f"one value for every layer ({layered[0]!r}) or per-layer keys "
                                      f"('{layered[0]}/<layer>')")
                for value in values:
                    per_layer[layered[0]](name, value)
            elif name in validators:
                for value in values:
                    validators[name](value)
            elif name not in accepted:
                what = f"model(s) {sorted(builders)}" if builders else "a trained model (it takes no builder arguments)"
                raise ConfigError(
                    f"space key {name!r} is not an argument of {what} nor a setting; allowed: "
                    f"{', '.join(sorted(accepted | set(validators) | {k + '/<layer>' for k in per_layer}))}"
                )
        bits = [name for name in [*self.params, *self.fixed] if name.split("/")[0] == "layer_bits"]
        quantizations = self.params["quantization"].candidates() if "quantization" in self.params else \
            [self.fixed.get("quantization")]
        from tfopt.export import INT4_QUANTIZATIONS

        if bits and any(q not in INT4_QUANTIZATIONS for q in quantizations):
            raise ConfigError(f"space keys {bits} need an int4 quantization; got quantization {quantizations}; "
                              f"allowed: {', '.join(INT4_QUANTIZATIONS)}")

    def declare(self, hp) -> None:
        """Register every tuned setting on a keras-tuner ``HyperParameters``."""
        for param in self.params.values():
            param.declare(hp)

    def values(self, hp) -> dict:
        """All settings of one trial (tuned ones decoded, fixed ones added), without keras-tuner's ``tuner/`` keys."""
        raw = dict(hp.values)
        if self.fn is not None:
            return {k: v for k, v in raw.items() if not k.startswith("tuner/")}
        out = dict(self.fixed)
        for name, param in self.params.items():
            if name in raw:
                out[name] = param.decode(raw[name])
        return out

    def contains(self, values: dict) -> bool:
        """True when every tuned setting of ``values`` lies within its range and fixed ones match."""
        for name, param in self.params.items():
            if name in values and not param.contains(values[name]):
                return False
        return all(values.get(k) == v for k, v in self.fixed.items())


def split(values: dict) -> tuple[dict, dict, dict]:
    """Split one trial's settings into (builder arguments, training settings, compression settings).

    Per-layer keys (``"target_sparsity/dense1"``) become one dict per key in the compression settings.

    >>> split({"model": "cnn", "filters": [8], "learning_rate": 0.01, "target_sparsity": 0.5})
    ({'model': 'cnn', 'filters': [8]}, {'learning_rate': 0.01}, {'target_sparsity': 0.5})
    >>> split({"model": "mlp", "target_sparsity/dense1": 0.9, "target_sparsity/logits": 0.5})[2]
    {'target_sparsity': {'dense1': 0.9, 'logits': 0.5}}
    """
    compression_keys_ = compression_keys()
    per_layer = per_layer_keys()
    build, training, compression = {}, {}, {}
    for key, value in values.items():
        layered = _per_layer_name(key, per_layer)
        if layered is not None:
            compression.setdefault(layered[0], {})[layered[1]] = value
        elif key in TRAINING_KEYS:
            training[key] = value
        elif key in compression_keys_:
            compression[key] = value
        else:
            build[key] = value
    return build, training, compression
