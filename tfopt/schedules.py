"""Learning-rate schedules (warm-up + cosine, step, exponential, one-cycle), ``get`` and an LR range test.

tf_keras's own schedules are reused wherever they exist (``CosineDecay`` with its ``warmup_target``,
``ExponentialDecay``); the two new ones, :class:`Warmup` and :class:`OneCycle`, are serializable, so an
optimizer using any of them inside a saved ``.keras`` model loads back without ``custom_objects``.

>>> lr = warmup_cosine(0.1, total_steps=100, warmup_steps=10)
>>> [round(float(lr(s)), 4) for s in (0, 5, 10, 100)]
[0.0, 0.05, 0.1, 0.0]
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from tfopt._keras import check_model, keras, serializable, tf
from tfopt._registry import from_registry
from tfopt.errors import ConfigError, DataError, check_range
from tfopt.options import Number

__all__ = [
    "warmup_cosine",
    "Warmup",
    "OneCycle",
    "step_decay",
    "exponential",
    "one_cycle",
    "constant",
    "cosine",
    "get",
    "from_settings",
    "SCHEDULES",
    "OPTIONS",
    "check_option",
    "find_lr",
    "LRFinderResult",
]

Schedule = keras.optimizers.schedules.LearningRateSchedule


_POSITIVE = Number(0, low_open=True)
# option -> its type and range: the schedules below check their arguments here, and so does recipe validation
OPTIONS = {
    "base_lr": _POSITIVE,
    "max_lr": _POSITIVE,
    "min_lr": Number(0),
    "initial_lr": Number(0),
    "total_steps": Number(1, integer=True),
    "warmup_steps": Number(0, integer=True),
    "step_size": Number(1, integer=True),
    "decay_steps": Number(1, integer=True),
    "gamma": Number(0, 1, low_open=True),
    "decay_rate": _POSITIVE,
    "pct_start": Number(0, 1, low_open=True, high_open=True),
    "div_factor": _POSITIVE,
    "final_div_factor": _POSITIVE,
    # recipes only: the warm-up as a fraction of the run's steps (the pipeline turns it into warmup_steps)
    "warmup_fraction": Number(0, 1, high_open=True),
}
# schedule -> its options whose range differs from OPTIONS
_RANGES = {
    "warmup": {"warmup_steps": Number(1, integer=True)},
    "one_cycle": {"total_steps": Number(2, integer=True)},
    "onecycle": {"total_steps": Number(2, integer=True)},
}


def check_option(schedule: str, option: str, value):
    """``value`` checked against the declaration of ``option`` (see :data:`OPTIONS`) for ``schedule``.

    Options without a declaration are returned unchanged.

    Args:
        schedule: String, a key of SCHEDULES (some ranges differ per schedule).
        option: String, the keyword argument, e.g. "warmup_steps".
        value: Its value.

    >>> check_option("warmup_cosine", "warmup_steps", 10)
    10
    >>> check_option("warmup_cosine", "warmup_fraction", "x")
    Traceback (most recent call last):
    ...
    tfopt.errors.ConfigError: warmup_fraction='x' has the wrong type (str); allowed: a number with 0 <= warmup_fraction < 1
    """
    declared = _RANGES.get(str(schedule).lower(), {}).get(option) or OPTIONS.get(option)
    return value if declared is None else declared(option, value)


def warmup_cosine(base_lr: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> Schedule:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at ``total_steps``.

    Built on ``keras.optimizers.schedules.CosineDecay`` (its ``warmup_target``/``warmup_steps``).

    Args:
        base_lr: Float > 0, the peak learning rate reached at the end of the warm-up.
        total_steps: Integer, the step at which the rate reaches ``min_lr`` (> warmup_steps).
        warmup_steps: Integer >= 0, the length of the linear warm-up.
        min_lr: Float in [0, base_lr], the final learning rate.

    >>> round(float(warmup_cosine(1.0, 10)(5)), 4)
    0.5
    """
    base_lr = check_option("warmup_cosine", "base_lr", base_lr)
    total_steps = check_option("warmup_cosine", "total_steps", total_steps)
    warmup_steps = check_option("warmup_cosine", "warmup_steps", warmup_steps)
    if total_steps <= warmup_steps:
        raise ConfigError(
            f"total_steps={total_steps} must be greater than warmup_steps={warmup_steps}"
        )
    check_option("warmup_cosine", "min_lr", min_lr)
    check_range("min_lr", min_lr, 0, base_lr)
    alpha = float(min_lr) / float(base_lr)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(float(base_lr), total_steps, alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha=alpha, warmup_target=float(base_lr), warmup_steps=warmup_steps
    )


@serializable
class Warmup(Schedule):
    """Linear warm-up in front of any schedule (or constant rate), which then runs offset by ``warmup_steps``.

    ``lr(step) = initial_lr + (schedule(0) - initial_lr) * step / warmup_steps`` for ``step < warmup_steps``,
    else ``schedule(step - warmup_steps)``.

    Args:
        schedule: LearningRateSchedule or float, what runs after the warm-up.
        warmup_steps: Integer >= 1, the length of the warm-up.
        initial_lr: Float >= 0, the rate at step 0.

    >>> lr = Warmup(keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5), warmup_steps=4)
    >>> [round(float(lr(s)), 4) for s in (0, 2, 4, 14)]
    [0.0, 0.05, 0.1, 0.05]
    """

    def __init__(self, schedule, warmup_steps: int, initial_lr: float = 0.0):
        super().__init__()
        if isinstance(schedule, dict):
            schedule = keras.optimizers.schedules.deserialize(schedule)
        if not isinstance(schedule, Schedule):
            check_range("schedule", schedule, 0)
            schedule = float(schedule)
        self.schedule = schedule
        self.warmup_steps = check_option("warmup", "warmup_steps", warmup_steps)
        self.initial_lr = check_option("warmup", "initial_lr", initial_lr)

    def _after(self, step):
        if isinstance(self.schedule, Schedule):
            return tf.cast(self.schedule(step), tf.float32)
        return tf.constant(self.schedule, tf.float32)

    def __call__(self, step):
        with tf.name_scope("Warmup"):
            step = tf.cast(step, tf.float32)
            warm = float(self.warmup_steps)
            target = self._after(tf.constant(0.0))
            ramp = self.initial_lr + (target - self.initial_lr) * step / warm
            return tf.where(step < warm, ramp, self._after(tf.maximum(step - warm, 0.0)))

    def get_config(self) -> dict:
        schedule = self.schedule
        if isinstance(schedule, Schedule):
            schedule = keras.optimizers.schedules.serialize(schedule)
        return {"schedule": schedule, "warmup_steps": self.warmup_steps, "initial_lr": self.initial_lr}


@serializable
class OneCycle(Schedule):
    """One-cycle policy (Smith 2018), as PyTorch's ``OneCycleLR`` with cosine annealing and two phases.

    From ``max_lr / div_factor`` the rate rises along a cosine to ``max_lr`` at step
    ``pct_start * total_steps - 1``, then falls along a cosine to
    ``max_lr / div_factor / final_div_factor`` at step ``total_steps - 1`` (and stays there).

    Args:
        max_lr: Float > 0, the peak learning rate.
        total_steps: Integer, the number of training steps of the cycle.
        pct_start: Float in (0, 1), the share of the steps spent rising.
        div_factor: Float > 0, ``max_lr / initial rate``.
        final_div_factor: Float > 0, ``initial rate / final rate``.

    >>> [round(float(OneCycle(1.0, 11, pct_start=0.5, div_factor=10)(s)), 4) for s in (0, 4.5)]
    [0.1, 1.0]
    """

    def __init__(self, max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4):
        super().__init__()
        self.max_lr = check_option("one_cycle", "max_lr", max_lr)
        self.pct_start = check_option("one_cycle", "pct_start", pct_start)
        self.div_factor = check_option("one_cycle", "div_factor", div_factor)
        self.final_div_factor = check_option("one_cycle", "final_div_factor", final_div_factor)
        self.total_steps = check_option("one_cycle", "total_steps", total_steps)
        peak = self.pct_start * self.total_steps - 1
        if not 0 < peak < self.total_steps - 1:
            raise ConfigError(
                f"pct_start={pct_start} with total_steps={total_steps} puts the peak at step {peak:g}; "
                f"allowed: 0 < pct_start * total_steps - 1 < total_steps - 1"
            )

    @staticmethod
    def _anneal(start, end, pct):
        return end + (start - end) / 2.0 * (tf.cos(math.pi * pct) + 1.0)

    def __call__(self, step):
        with tf.name_scope("OneCycle"):
            initial = self.max_lr / self.div_factor
            final = initial / self.final_div_factor
            peak = self.pct_start * self.total_steps - 1
            last = float(self.total_steps - 1)
            step = tf.clip_by_value(tf.cast(step, tf.float32), 0.0, last)
            up = self._anneal(initial, self.max_lr, step / peak)
            down = self._anneal(self.max_lr, final, (step - peak) / (last - peak))
            return tf.where(step <= peak, up, down)

    def get_config(self) -> dict:
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }


def step_decay(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``base_lr * gamma ** (step // step_size)`` (a staircase ``ExponentialDecay``).

    Args:
        base_lr: Float > 0, the initial learning rate.
        step_size: Integer >= 1, the number of steps between drops.
        gamma: Float in (0, 1], the factor applied at each drop.

    >>> round(float(step_decay(1.0, 10, 0.5)(25)), 4)
    0.25
    """
    base_lr = check_option("step", "base_lr", base_lr)
    gamma = check_option("step", "gamma", gamma)
    step_size = check_option("step", "step_size", step_size)
    return keras.optimizers.schedules.ExponentialDecay(base_lr, step_size, gamma, staircase=True)


def exponential(base_lr: float, decay_steps: int, decay_rate: float) -> Schedule:
    """``base_lr * decay_rate ** (step / decay_steps)`` (``keras.optimizers.schedules.ExponentialDecay``).

    Args:
        base_lr: Float > 0, the initial learning rate.
        decay_steps: Integer >= 1, the steps over which the rate is multiplied by ``decay_rate``.
        decay_rate: Float > 0, the multiplier per ``decay_steps``.

    >>> round(float(exponential(1.0, 10, 0.5)(5)), 4)
    0.7071
    """
    base_lr = check_option("exponential", "base_lr", base_lr)
    decay_rate = check_option("exponential", "decay_rate", decay_rate)
    decay_steps = check_option("exponential", "decay_steps", decay_steps)
    return keras.optimizers.schedules.ExponentialDecay(base_lr, decay_steps, decay_rate)


def one_cycle(max_lr: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4) -> OneCycle:
    """A :class:`OneCycle` schedule (same arguments)."""
    return OneCycle(max_lr, total_steps, pct_start, div_factor, final_div_factor)


def constant(base_lr: float) -> float:
    """A constant rate (a float, which every optimizer accepts)."""
    check_range("base_lr", base_lr, 0)
    return float(base_lr)


def cosine(base_lr: float, total_steps: int, min_lr: float = 0.0) -> Schedule:
    """Cosine decay from ``base_lr`` to ``min_lr`` at ``total_steps``, without warm-up (``warmup_cosine`` with
    ``warmup_steps=0``).

    >>> round(float(cosine(1.0, 10)(5)), 4)
    0.5
    """
    return warmup_cosine(base_lr, total_steps, 0, min_lr)


SCHEDULES = {
    "warmup_cosine": warmup_cosine,
    "cosine": cosine,
    "step": step_decay,
    "step_decay": step_decay,
    "exponential": exponential,
    "one_cycle": one_cycle,
    "onecycle": one_cycle,
    "warmup": Warmup,
    "constant": constant,
}


# what a schedule named in training settings gets from the run when the settings leave it out (see from_settings)
WARMUP_FRACTION = 0.1  # a schedule with a warm-up warms up over this fraction of the run's steps
DECAY_RATE = 0.1  # "exponential" falls to this fraction of the rate over the run


def from_settings(schedule, learning_rate: float, total_steps: int):
    """The learning rate of training settings, as recipes and search spaces write them (one vocabulary).

    ``schedule`` is None (a constant ``learning_rate``), a name of :data:`SCHEDULES`, or a dict with ``name`` and
    any of its arguments. What it leaves out comes from the run: the first rate argument (``base_lr`` or
    ``max_lr``) is ``learning_rate``; ``total_steps`` and ``decay_steps`` are the run's steps; ``warmup_steps``
    is ``warmup_fraction`` of them (default :data:`WARMUP_FRACTION`, 10%); ``decay_rate`` is
    :data:`DECAY_RATE`. So ``"warmup_cosine"`` warms up over the first 10% of the run (``{"name":
    "warmup_cosine", "warmup_fraction": 0}`` does not), ``"cosine"`` never does.

    Args:
        schedule: None, string or dict.
        learning_rate: Float, the peak (or constant) rate.
        total_steps: Integer, the steps the run trains (batches per epoch x epochs).

    Returns:
        A float or a LearningRateSchedule.

    >>> lr = from_settings("warmup_cosine", 0.1, 100)
    >>> [round(float(lr(s)), 4) for s in (0, 10, 100)]
    [0.0, 0.1, 0.0]
    >>> from_settings(None, 0.01, 100)
    0.01
    """
    import inspect

    if schedule is None:
        return learning_rate
    spec = {"name": schedule} if isinstance(schedule, str) else dict(schedule)
    name = spec.pop("name", None)
    if not isinstance(name, str) or name.lower() not in SCHEDULES:
        raise ConfigError(f"schedule={name!r} is unknown; allowed: {', '.join(sorted(SCHEDULES))}")
    params = list(inspect.signature(SCHEDULES[name.lower()]).parameters)
    if params and params[0] in ("base_lr", "max_lr") and params[0] not in spec:
        spec[params[0]] = learning_rate
    for key, value in (("total_steps", total_steps), ("decay_steps", max(1, total_steps)), ("decay_rate", DECAY_RATE)):
        if key in params and key not in spec:
            spec[key] = value
    fraction = spec.pop("warmup_fraction", None)
    if "warmup_steps" in params and "warmup_steps" not in spec:
        fraction = WARMUP_FRACTION if fraction is None else check_option(name, "warmup_fraction", fraction)
        spec["warmup_steps"] = int(fraction * spec.get("total_steps", total_steps))
    return get(name, **spec)


def get(name, **kw):
    """Return a schedule from a name in :data:`SCHEDULES` (with its arguments), a config dict, or a schedule.

    Args:
        name: String (a key of SCHEDULES), a serialized schedule dict, a LearningRateSchedule or a float
            (returned as is).
        **kw: Keyword arguments of the named schedule.

    >>> type(get("one_cycle", max_lr=0.1, total_steps=100)).__name__
    'OneCycle'
    """
    if isinstance(name, Schedule):
        return name
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        return constant(name)
    return from_registry("schedule", name, SCHEDULES, keras.optimizers.schedules.deserialize, **kw)


@dataclasses.dataclass
class LRFinderResult:
    """What :func:`find_lr` measured: the rates tried, the smoothed losses, and a suggested rate."""

    suggested_lr: float
    lrs: np.ndarray
    losses: np.ndarray
    min_loss_lr: float
    exploded_lr: float | None

    def __getitem__(self, key: str):
        return getattr(self, key)


def _copy_model(model):
    try:
        copy = keras.models.clone_model(model)
    except (ValueError, TypeError, NotImplementedError):  # subclassed models
        copy = type(model).from_config(model.get_config())
        if not copy.built:
            copy.build(model.input_shape)
    copy.set_weights(model.get_weights())
    return copy


def _suggest(lrs: np.ndarray, losses: np.ndarray) -> float:
    """Steepest descent of the smoothed loss vs log(lr) before its minimum, else min-loss lr / 10."""
    best = int(np.argmin(losses))
    skip = max(1, len(losses) // 10)
    if best - skip >= 3:
        slopes = np.gradient(losses[: best + 1], np.log(lrs[: best + 1]))
        return float(lrs[skip + int(np.argmin(slopes[skip:best + 1]))])
    return float(max(lrs[best] / 10.0, lrs[0]))


def find_lr(model, train_ds, min_lr: float = 1e-7, max_lr: float = 1.0, steps: int = 100, optimizer="adam",
            loss=None, smooth: float = 0.98) -> LRFinderResult:
    """LR range test (Smith 2017): train a COPY of ``model`` while the rate grows exponentially each step.

    Records the bias-corrected exponentially smoothed loss at each rate and stops early when it exceeds
    4x the best seen (or is not finite). The user's model and weights are not touched.

    Args:
        model: tf_keras model (compiled or not).
        train_ds: tf.data.Dataset of (x, y) batches; repeated as needed.
        min_lr: Float > 0, the first rate tried.
        max_lr: Float > min_lr, the last rate tried.
        steps: Integer >= 5, the number of steps (rates) tried.
        optimizer: String or Optimizer, given to ``tfopt.optimizers.get`` (a fresh copy is used).
        loss: Loss, name or None (None: the model's compiled loss, else sparse cross-entropy,
            from logits when the last layer has no softmax).
        smooth: Float in [0, 1), the smoothing factor of the loss.

    Returns:
        LRFinderResult with ``suggested_lr``, ``lrs``, ``losses``, ``min_loss_lr`` and ``exploded_lr``.

    >>> result = find_lr(model, train_ds, steps=50)  # doctest: +SKIP
    >>> model.compile(optimizer=keras.optimizers.Adam(result.suggested_lr), loss=...)  # doctest: +SKIP
    """
    from tfopt import optimizers
    from tfopt._model import outputs_logits

    check_model(model, "find_lr")
    if not isinstance(train_ds, tf.data.Dataset):
        raise DataError(f"train_ds must be a tf.data.Dataset of (x, y) batches, got {type(train_ds).__name__}")
    check_range("min_lr", min_lr, 0, low_open=True)
    check_range("max_lr", max_lr, min_lr, low_open=True)
    steps = Number(5, integer=True)("steps", steps)
    check_range("smooth", smooth, 0, 1, high_open=True)
    if loss is None:
        loss = getattr(model, "loss", None) or keras.losses.SparseCategoricalCrossentropy(
            from_logits=outputs_logits(model)
        )
    if isinstance(loss, keras.losses.Loss):  # a fresh copy: stateful losses must not see the test's batches
        loss = type(loss).from_config(loss.get_config())
    if isinstance(optimizer, keras.optimizers.Optimizer):
        config = dict(optimizer.get_config(), learning_rate=float(min_lr))
        opt = type(optimizer).from_config(config)
    else:
        opt = optimizers.get(optimizer, learning_rate=float(min_lr))
    copy = _copy_model(model)
    copy.compile(optimizer=opt, loss=loss)
    lrs = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    avg, best, tried, smoothed, exploded = 0.0, math.inf, [], [], None
    batches = iter(train_ds.repeat())
    for i, lr in enumerate(lrs):
        try:
            batch = next(batches)
        except StopIteration as err:
            raise DataError("train_ds is empty: it yields no batch") from err
        opt.learning_rate = float(lr)
        value = float(copy.train_on_batch(*batch, return_dict=True)["loss"])
        avg = smooth * avg + (1.0 - smooth) * value
        debiased = avg / (1.0 - smooth ** (i + 1))
        if not math.isfinite(debiased) or (i > 0 and debiased > 4.0 * best):
            exploded = float(lr)
            break
        best = min(best, debiased)
        tried.append(float(lr))
        smoothed.append(debiased)
    lrs_arr, loss_arr = np.asarray(tried), np.asarray(smoothed)
    if len(loss_arr) == 0:
        raise DataError(f"find_lr: the loss was not finite even at min_lr={min_lr}")
    return LRFinderResult(
        suggested_lr=_suggest(lrs_arr, loss_arr),
        lrs=lrs_arr,
        losses=loss_arr,
        min_loss_lr=float(lrs_arr[int(np.argmin(loss_arr))]),
        exploded_lr=exploded,
    )
