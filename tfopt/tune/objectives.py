"""What a search can optimise and bound: metric names, their directions, and where each one is measured.

Every trial measures the metrics its objectives and constraints need, from one of four sources:

======================  =========  ================================================================
metric                  direction  measured by
======================  =========  ================================================================
``val_accuracy``        max        ``model.evaluate(val_ds)`` of the final (compressed) model
``val_loss``            min        same
``accuracy``, ``loss``  max, min   the last training epoch (``fit`` history)
``params``              min        ``model.count_params()``
``nonzero_params``      min        the number of non-zero weights (what pruning removes)
``flops``               min        multiply-adds per example (``tfopt.flops``: what channel pruning removes)
``tflite_bytes``        min        the exported TFLite flatbuffer (quantization from the space)
``tflite_gzip_bytes``   min        the flatbuffer after gzip -9 (what zeros and clusters buy)
``tflite_accuracy``     max        the TFLite model run by LiteRT over ``val_ds``
``latency_us_p50``      min        median batch-1 LiteRT latency in microseconds
======================  =========  ================================================================

With a space given as a function ``hp -> model`` compiled with other metrics, any Keras metric name
whose direction keras-tuner can infer (``"val_auc"``, ``"val_precision"``...) is allowed too.

>>> parse_objectives("val_loss", None)
{'val_loss': 'min'}
>>> parse_constraints({"tflite_gzip_bytes": 50_000, "val_accuracy": {"min": 0.9}})
{'tflite_gzip_bytes': (None, 50000), 'val_accuracy': (0.9, None)}
"""

from __future__ import annotations

import math
import numbers

from tfopt.errors import ConfigError

__all__ = [
    "METRICS",
    "FEASIBLE",
    "direction",
    "parse_objectives",
    "parse_constraints",
    "violations",
    "sources",
    "better",
]

# name -> (direction, source); sources: "keras" (evaluate/fit), "model" (weights), "export" (TFLite bytes),
# "tflite_eval" (running the TFLite model).
METRICS: dict[str, tuple[str, str]] = {
    "val_accuracy": ("max", "keras"),
    "val_loss": ("min", "keras"),
    "accuracy": ("max", "keras"),
    "loss": ("min", "keras"),
    "params": ("min", "model"),
    "nonzero_params": ("min", "model"),
    "flops": ("min", "model"),
    "tflite_bytes": ("min", "export"),
    "tflite_gzip_bytes": ("min", "export"),
    "tflite_accuracy": ("max", "tflite_eval"),
    "latency_us_p50": ("min", "tflite_eval"),
}

# The metric every trial reports to the oracle: 1.0 when all constraints hold, else 0.0.
FEASIBLE = "tfopt_feasible"


def _custom_direction(name: str) -> str | None:
    """keras-tuner's inference for other Keras metric names ("val_auc" -> "max"), or None."""
    if not isinstance(name, str) or not name.replace("_", "").isalnum():
        return None
    from keras_tuner.engine import metrics_tracking

    try:
        return metrics_tracking.infer_metric_direction(name)
    except Exception:  # keras-tuner raises various errors for names it cannot deserialize
        return None


def direction(name: str, custom: bool = False) -> str:
    """String, "min" or "max": the direction of metric ``name``.

    Args:
        name: String, a metric name (a key of :data:`METRICS`, or with ``custom`` any Keras metric name).
        custom: Bool, also accept Keras metric names outside :data:`METRICS` (spaces given as functions).

    >>> direction("tflite_gzip_bytes")
    'min'
    """
    if name in METRICS:
        return METRICS[name][0]
    found = _custom_direction(name) if custom else None
    if found is None:
        extra = " or (with a space given as a function) a Keras metric name such as 'val_auc'" if custom else ""
        raise ConfigError(f"objective/metric {name!r} is unknown; allowed: {', '.join(METRICS)}{extra}")
    return found


def parse_objectives(objective, objectives, custom: bool = False) -> dict[str, str]:
    """The objectives as an ordered ``{name: direction}`` dict (``objectives`` wins over ``objective``).

    Args:
        objective: String or ``(name, direction)`` pair, the single objective.
        objectives: None or a non-empty sequence of names or pairs, several objectives (Pareto search).
        custom: Bool, accept Keras metric names outside :data:`METRICS`.

    >>> parse_objectives(None, ["val_accuracy", ("tflite_bytes", "min")])
    {'val_accuracy': 'max', 'tflite_bytes': 'min'}
    """
    if objectives is not None:
        if isinstance(objectives, str) or not hasattr(objectives, "__iter__") or not list(objectives):
            raise ConfigError(f"objectives={objectives!r} is not allowed; allowed: a non-empty list of metric names")
        items = list(objectives)
    else:
        items = [objective]
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            name, way = item
            if way not in ("min", "max"):
                raise ConfigError(f"objective {item!r} has direction {way!r}; allowed: 'min', 'max'")
            direction(name, custom=True)  # the name must still make sense
        else:
            name, way = item, direction(item, custom)
        if name in out:
            raise ConfigError(f"objective {name!r} is listed twice in objectives={objectives!r}")
        out[name] = way
    return out


def _bound(name: str, key: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        raise ConfigError(f"constraint {name!r}: {key}={value!r} is not allowed; allowed: a number")
    return value


def parse_constraints(constraints, custom: bool = False) -> dict[str, tuple]:
    """Constraints as ``{name: (low, high)}``; a plain number is an upper bound.

    Args:
        constraints: None or a dict ``{metric: number | {"max": number} | {"min": number} | both}``.
        custom: Bool, accept Keras metric names outside :data:`METRICS`.

    >>> parse_constraints({"params": {"min": 10, "max": 20}})
    {'params': (10, 20)}
    """
    if constraints is None:
        return {}
    if not isinstance(constraints, dict):
        raise ConfigError(f"constraints={constraints!r} is not allowed; allowed: a dict {{metric: upper bound}}")
    out = {}
    for name, spec in constraints.items():
        if name not in METRICS and (not custom or _custom_direction(name) is None):
            raise ConfigError(
                f"constraint on {name!r}: no trial measures {name!r}; allowed metrics: {', '.join(METRICS)}"
            )
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - {"min", "max"})
            if unknown or not spec:
                raise ConfigError(f"constraint {name!r}: {spec!r} is not allowed; allowed keys: 'min', 'max'")
            low, high = _bound(name, "min", spec.get("min")), _bound(name, "max", spec.get("max"))
        else:
            low, high = None, _bound(name, "max", spec)
        if low is not None and high is not None and low > high:
            raise ConfigError(f"constraint {name!r}: min={low!r} > max={high!r}; allowed: min <= max")
        out[name] = (low, high)
    return out


def violations(metrics: dict, constraints: dict) -> list[str]:
    """The broken constraints as readable strings (empty when the trial is feasible).

    >>> violations({"params": 120}, {"params": (None, 100)})
    ['params=120 > 100']
    """
    broken = []
    for name, (low, high) in constraints.items():
        value = metrics.get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            broken.append(f"{name} was not measured")
        elif high is not None and value > high:
            broken.append(f"{name}={value:g} > {high:g}")
        elif low is not None and value < low:
            broken.append(f"{name}={value:g} < {low:g}")
    return broken


def sources(names) -> set[str]:
    """The measuring sources (see :data:`METRICS`) the metric ``names`` need; unknown names need "keras".

    >>> sorted(sources(["val_accuracy", "tflite_bytes"]))
    ['export', 'keras']
    """
    return {METRICS.get(name, ("", "keras"))[1] for name in names}


def better(a: float, b: float, way: str) -> bool:
    """True when ``a`` is strictly better than ``b`` in direction ``way`` ("min" or "max")."""
    return a > b if way == "max" else a < b
