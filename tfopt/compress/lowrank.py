"""Low-rank factorization by truncated SVD: a Dense or convolution kernel becomes two thinner layers.

A Dense kernel ``W [in, out]`` is replaced by ``Dense(r, linear, no bias)`` then ``Dense(out)`` (the original's
bias and activation): ``W ~= (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)``. A Conv1D/Conv2D kernel ``[k.., in, out]`` is
read as the matrix ``[k..*in, out]``: the first factor is a ``k..`` convolution with ``r`` filters (the
original's strides, padding, dilation; no bias, linear), the second a 1x1 convolution with ``out`` filters (the
bias and activation). Both run at the output's resolution, so a layer costs ``r * (k..*in + out)`` multiply-adds
per position instead of ``k..*in * out``: a layer is factorized only at a rank where that is smaller. The
kernel's initializer and regularizer go to both factors; a layer with a kernel constraint is left alone.

Ranks come from ``rank``, from ``energy`` (each layer keeps the smallest rank holding that fraction of its squared
singular values) or from ``target_flops`` (the largest energy, one for all layers, whose ranks reach the budget).

The new model is a plain tf_keras functional model (``Dense``/``Conv`` layers only), so it saves as a ``.keras``
file, loads in safe mode and converts to TFLite like any other. The first factor is named ``{name}_lowrank``; the
second keeps the layer's name, so options that name layers (``layers=[...]`` of a later stage) still find it.

No maintained library does this on this stack: tfmot 0.8.1 has no low-rank API (its repository's experimental
``common/keras/compression`` SVD example is not in the wheel and is marked unsupported), so the SVD is NumPy's.
"""

from __future__ import annotations

import dataclasses
import numbers

import numpy as np

from tfopt._keras import check_model, keras
from tfopt._model import (
    _Flattener, _is_graph_model, compile_like, count_steps, flatten_model, is_qat, strategy_scope, weight_count,
)
from tfopt.compress._fit import TEACHER_OPTIONS, compression_fit, distillation_settings, stage_resume, stage_teacher
from tfopt.compress.inspect import match_layers
from tfopt.errors import CompressionError, ConfigError, UnsupportedLayerError, check_range
from tfopt.flops import flops, flops_by_layer
from tfopt.options import FLOAT, INT, LIST, MAP, NONE, at_least, in_unit, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["factorize", "rank_for_energy", "FACTORIZABLE"]

FACTORIZABLE = ("Dense", "Conv1D", "Conv2D")  # exact classes: a subclass may compute something else
_TOLERANCE = 1e-9  # relative: an energy reached up to rounding counts as reached


def rank_for_energy(singular_values, energy: float) -> int:
    """Integer, the smallest rank ``r`` whose ``sum(s[:r]**2)`` is at least ``energy`` of ``sum(s**2)``.

    Args:
        singular_values: 1-D array of singular values, in decreasing order.
        energy: Float, 0 < energy <= 1, the fraction of the squared singular values to keep.

    >>> rank_for_energy([4.0, 3.0, 2.0, 1.0], 0.8)  # 16 + 9 = 25 of 30 kept
    2
    """
    check_range("energy", energy, 0, 1, low_open=True)
    squares = np.asarray(singular_values, dtype=np.float64) ** 2
    total = float(squares.sum())
    if total == 0.0:
        return 1
    kept = np.cumsum(squares) / total
    return int(min(len(kept), np.searchsorted(kept, energy * (1 - _TOLERANCE)) + 1))


@dataclasses.dataclass
class _Candidate:
    """One layer that can be factorized: its kernel as a matrix, its SVD and its cost."""

    layer: object
    fan_in: int  # k..*in for convolutions
    out: int
    positions: int  # output positions per example (MACs = fan_in * out * positions)
    s: np.ndarray
    u: np.ndarray
    vt: np.ndarray

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def max_rank(self) -> int:
        return min(self.fan_in, self.out)

    @property
    def paying_rank(self) -> int:
        """The largest rank whose factors have fewer weights than the kernel (0: none does)."""
        return max(0, (self.fan_in * self.out - 1) // (self.fan_in + self.out))

    def kept(self, rank: int) -> float:
        squares = self.s.astype(np.float64) ** 2
        total = float(squares.sum())
        return 1.0 if total == 0 else float(squares[:rank].sum() / total)

    def macs(self, rank=None) -> int:
        return self.positions * (self.fan_in * self.out if rank is None else rank * (self.fan_in + self.out))

    def factors(self, rank: int):
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]


def _candidate(layer, positions: int) -> _Candidate:
    kernel = np.asarray(layer.kernel.numpy(), dtype=np.float64)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    return _Candidate(layer, matrix.shape[0], matrix.shape[1], positions, s, u, vt)


def _unusable(layer) -> str | None:
    """Why ``layer`` cannot be factorized at all (None: it can)."""
    if type(layer).__name__ not in FACTORIZABLE or type(layer) is not getattr(keras.layers, type(layer).__name__):
        return f"{type(layer).__name__} is not one of {', '.join(FACTORIZABLE)}"
    if getattr(layer, "groups", 1) != 1:
        return f"a grouped convolution (groups={layer.groups})"
    if layer.get_config().get("kernel_constraint"):
        return "it has a kernel_constraint, which the factors would not keep"
    return None


# ---------------------------------------------------------------- choosing the ranks


def _check_options(rank, energy, target_flops, layers, epochs, min_size, train_ds):
    check_range("energy", energy, 0, 1, low_open=True)
    if target_flops is not None:
        check_range("target_flops", target_flops, 0, low_open=True)
        if target_flops >= 1 and not float(target_flops).is_integer():
            raise ConfigError(f"target_flops={target_flops!r} is out of range; allowed: a fraction 0 < target_flops < "
                              "1 of the model's multiply-adds, or a whole count of them (>= 1)")
    if rank is not None and target_flops is not None:
        raise ConfigError(f"factorize: give rank={rank!r} or target_flops={target_flops!r}, not both")
    if isinstance(rank, dict) and layers is not None:
        raise ConfigError("factorize: a rank dict already names the layers; give layers=None with it")
    ranks = rank.values() if isinstance(rank, dict) else [] if rank is None else [rank]
    for value in ranks:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"rank={value!r} is out of range; allowed: an integer >= 1 (or a dict layer name -> "
                              "such an integer, or None to choose by energy or target_flops)")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigError(f"epochs={epochs!r} is out of range; allowed: an integer >= 0 (0: no fine-tuning)")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ConfigError(f"min_size={min_size!r} is out of range; allowed: an integer >= 0")
    if epochs > 0 and train_ds is None:
        raise ConfigError(f"factorize: epochs={epochs} fine-tunes on train_ds, which is None; give train_ds or "
                          "epochs=0")
    if epochs > 0:
        count_steps(train_ds)  # a DataError now for something that is not a finite, non-empty dataset


def _select(flat, rank, layers, min_size):
    """``(candidates, skipped, explicit)``: the layers to consider, ``{name: reason}`` for those left alone, and
    whether the caller named the layers (``layers`` or a rank dict)."""
    by_name = {layer.name: layer for layer in flat.layers}
    if isinstance(rank, dict):
        unknown = [name for name in rank if name not in by_name]
        if unknown:
            raise ConfigError(f"factorize: rank names layers {unknown} the model does not have; allowed: "
                              + ", ".join(n for n, layer in by_name.items() if _unusable(layer) is None))
        names, explicit = list(rank), True
    else:
        names, explicit = match_layers(flat, layers, "factorize", lambda layer: _unusable(layer) is None), \
            layers is not None
    skipped = {}
    if explicit:
        bad = {n: _unusable(by_name[n]) for n in names if _unusable(by_name[n])}
        if bad:
            raise UnsupportedLayerError(
                "factorize cannot factorize " + "; ".join(f"layer {n!r}: {why}" for n, why in bad.items())
                + f". Allowed: {', '.join(FACTORIZABLE)} layers (groups=1, no kernel_constraint); factorizable "
                "layers of this model: " + (", ".join(n for n, layer in by_name.items() if not _unusable(layer))
                                            or "none"))
    else:
        skipped.update({layer.name: _unusable(layer) for layer in flat.layers
                        if type(layer).__name__ in FACTORIZABLE and _unusable(layer)})
    macs = flops_by_layer(flat)
    candidates = []
    for name in names:
        layer = by_name[name]
        size = int(np.prod(layer.kernel.shape))
        if not explicit and size < min_size:
            skipped[name] = f"its kernel has {size} weights, fewer than min_size={min_size}"
            continue
        fan_in, out = size // int(layer.kernel.shape[-1]), int(layer.kernel.shape[-1])
        c = _candidate(layer, macs.get(name, 0) // (fan_in * out))
        if c.paying_rank < 1:
            skipped[name] = f"no rank pays for its {fan_in} x {out} kernel (r * ({fan_in} + {out}) >= {fan_in * out})"
            continue
        candidates.append(c)
    return candidates, skipped, explicit


def _fixed_ranks(candidates, rank, explicit, skipped) -> dict:
    chosen = {}
    for c in candidates:
        r = rank[c.name] if isinstance(rank, dict) else rank
        if r > c.max_rank:
            if explicit:
                raise ConfigError(f"factorize: rank={r} is larger than layer {c.name!r} allows; allowed: 1 <= rank "
                                  f"<= {c.max_rank} (min of its {c.fan_in} x {c.out} kernel), factorizing pays up "
                                  f"to rank {c.paying_rank}")
            skipped[c.name] = f"rank={r} is larger than its max rank {c.max_rank}"
        elif r > c.paying_rank:
            skipped[c.name] = f"rank={r} does not pay: its {c.fan_in} x {c.out} kernel pays up to rank {c.paying_rank}"
        else:
            chosen[c.name] = r
    if not chosen and candidates and not explicit:
        raise ConfigError(f"factorize: rank={rank} fits no layer; allowed per layer: "
                          + ", ".join(f"{c.name} <= {c.paying_rank}" for c in candidates))
    return chosen


def _energy_plan(candidates, energy) -> tuple[dict, dict]:
    """``(ranks, reasons)``: each layer's rank for ``energy``, or why it stays whole (that rank does not pay)."""
    ranks, reasons = {}, {}
    for c in candidates:
        r = rank_for_energy(c.s, energy)
        if r > c.paying_rank:
            reasons[c.name] = (f"energy={energy:.6g} needs rank {r}, which does not pay (its {c.fan_in} x {c.out} "
                               f"kernel pays up to rank {c.paying_rank})")
        else:
            ranks[c.name] = r
    return ranks, reasons


def _budget(target_flops, total: int) -> float:
    """Multiply-adds allowed: ``target_flops`` of ``total`` when it is below 1, else the count itself."""
    return target_flops * total if target_flops < 1 else float(target_flops)


def _budget_plan(candidates, target_flops, total) -> tuple[float, dict, dict]:
    """``(energy, ranks, reasons)``: the largest energy, common to every layer, whose ranks meet the budget.

    The multiply-adds of an energy's ranks only fall as the energy falls, so the energies at which some layer's
    rank changes are searched by bisection. One energy for all layers, rather than a greedy of the least
    relative energy lost per multiply-add saved: on digits' LeNet-300-100 at 25% of the multiply-adds that
    greedy took one layer to rank 1 (test accuracy 0.21 after a fine-tuning epoch), one energy kept 0.96.
    """
    budget = _budget(target_flops, total)

    def macs(ranks):
        return total - sum(c.macs() - c.macs(ranks[c.name]) for c in candidates if c.name in ranks)

    levels = sorted({c.kept(r) for c in candidates for r in range(1, c.paying_rank + 1)}, reverse=True)
    lo, hi = 0, len(levels)  # the first level (highest energy) that meets the budget is in levels[lo:hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if macs(_energy_plan(candidates, levels[mid])[0]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(levels):
        low = total - sum(c.macs() - c.macs(1) for c in candidates)
        raise CompressionError(f"factorize: target_flops={target_flops} ({budget:,.0f} multiply-adds) is out of "
                               f"reach: every factorizable layer at rank 1 leaves {low:,} ({low / total:.3f}) of "
                               f"the model's {total:,}")
    return (levels[lo], *_energy_plan(candidates, levels[lo]))


# ---------------------------------------------------------------- rebuilding the model


class _Rebuilder(_Flattener):
    """Replays the (flat) graph with fresh copies of every layer, and two factor layers for each planned one."""

    def __init__(self, pairs: dict):
        super().__init__()
        self.pairs = pairs  # id(original layer) -> (first, second)

    def copy_layer(self, layer, prefix: str):
        pair = self.pairs.get(id(layer))
        if pair is None:
            return super().copy_layer(layer, prefix)
        first, second = pair
        return lambda *args, **kwargs: second(first(*args, **kwargs))


def _factor_layers(c: _Candidate, rank: int, first_name: str):
    config = c.layer.get_config()
    first = dict(config, name=first_name, use_bias=False, activation="linear", activity_regularizer=None,
                 bias_regularizer=None, bias_constraint=None)
    second = dict(config)
    if isinstance(c.layer, keras.layers.Dense):
        first["units"] = rank
    else:
        ones = (1,) * (len(c.layer.kernel.shape) - 2)
        first["filters"] = rank
        second.update(kernel_size=ones, strides=ones, padding="valid", dilation_rate=ones)
    return type(c.layer).from_config(first), type(c.layer).from_config(second)


def _rebuild(flat, candidates, ranks: dict):
    """``(model, {name: first factor's name})``: ``flat`` with each layer of ``ranks`` replaced by its two factors."""
    taken = {layer.name for layer in flat.layers}
    pairs, factors = {}, []
    for c in candidates:
        if c.name not in ranks:
            continue
        first_name = f"{c.name}_lowrank"
        while first_name in taken:
            first_name += "_"
        taken.add(first_name)
        first, second = _factor_layers(c, ranks[c.name], first_name)
        pairs[id(c.layer)] = (first, second)
        factors.append((c, first, second))
    rebuilder = _Rebuilder(pairs)
    rebuilder.names |= {name for _, first, second in factors for name in (first.name, second.name)}
    new_inputs = []
    for ref in flat.inputs:
        new_inputs.append(keras.Input(batch_shape=ref.shape, dtype=ref.dtype, name=ref.node.layer.name))
    outputs = rebuilder.replay(flat, new_inputs)
    rebuilt = keras.Model(new_inputs if len(new_inputs) > 1 else new_inputs[0],
                          outputs if len(outputs) > 1 else outputs[0], name=flat.name)
    for copy, original in rebuilder.copies.values():
        copy.set_weights(original.get_weights())
        copy.trainable = original.trainable
    for c, first, second in factors:
        a, b = c.factors(ranks[c.name])
        dtype = c.layer.kernel.dtype.as_numpy_dtype
        first.set_weights([a.reshape(first.kernel.shape).astype(dtype)])
        second.set_weights([b.reshape(second.kernel.shape).astype(dtype)] + [w for w in c.layer.get_weights()[1:]])
        first.trainable = second.trainable = c.layer.trainable
    return rebuilt, {c.name: first.name for c, first, _ in factors}


def _report(candidates, ranks, skipped, method, model, rebuilt, flops_before, names) -> dict:
    layers = {}
    for c in candidates:
        if c.name not in ranks:
            continue
        r, bias = ranks[c.name], len(c.layer.get_weights()) > 1
        layers[c.name] = {
            "kind": type(c.layer).__name__, "kernel": [c.fan_in, c.out], "rank": r, "max_rank": c.max_rank,
            "kept_energy": round(c.kept(r), 6), "params_before": c.fan_in * c.out + bias * c.out,
            "params_after": r * (c.fan_in + c.out) + bias * c.out, "macs_before": c.macs(), "macs_after": c.macs(r),
            "layers": [names[c.name], c.name],
        }
    flops_after = flops(rebuilt)
    return {"method": method, "layers": layers, "skipped": skipped,
            "params_before": weight_count(model)[0], "params_after": weight_count(rebuilt)[0],
            "flops_before": flops_before, "flops_after": flops_after,
            "flops_ratio": round(flops_before / flops_after, 3) if flops_after else None}  # x fewer, as prune_channels


def factorize(
    model,
    train_ds=None,
    rank: int | dict | None = None,
    energy: float = 0.9,
    target_flops: float | None = None,
    layers=None,
    min_size: int = 1024,
    epochs: int = 1,
    val_ds=None,
    callbacks=(),
    optimizer=None,
    loss=None,
    learning_rate: float = 1e-3,
    strategy=None,
    verbose="auto",
    return_report: bool = False,
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """A copy of ``model`` with Dense/Conv1D/Conv2D kernels replaced by truncated-SVD factors, then fine-tuned.

    The rank of each layer comes from ``rank`` if given, else ``target_flops`` if given, else ``energy``. A layer
    is factorized only where it pays (fewer weights and multiply-adds than its kernel); the others are left
    alone and listed in the report with the reason.

    Args:
        model: tf_keras functional or Sequential model (nested ones are inlined), trained; it is not modified.
        train_ds: tf.data.Dataset of (x, y) batches for fine-tuning, or None with ``epochs=0``.
        rank: Integer applied to every chosen layer (a layer it does not fit is left alone, unless named in
            ``layers``: then ConfigError), a dict layer name -> integer (those layers only), or None.
        energy: Float, 0 < energy <= 1: each layer keeps the smallest rank whose squared singular values sum to
            at least this fraction of the total (used when neither ``rank`` nor ``target_flops`` is given).
        target_flops: Float or None: the multiply-adds (:func:`tfopt.flops.flops`) to reach, as a fraction
            0 < value < 1 of the model's or a whole count (as in ``prune_channels``): the ranks are those of the
            largest energy, common to every layer, that reaches it (the report gives that energy).
        layers: Iterable of layer names, classes or class names to consider, or None for every Dense, Conv1D and
            Conv2D layer with at least ``min_size`` kernel weights.
        min_size: Integer, with ``layers=None`` skip kernels with fewer weights (little to gain there).
        epochs: Integer >= 0, fine-tuning epochs (0: none).
        val_ds: tf.data.Dataset or None, validation data for ``fit``.
        callbacks: Sequence of extra Keras callbacks.
        optimizer: Optimizer or None (a fresh copy of the model's optimizer at ``learning_rate``, else Adam).
        loss: Loss or None (the model's compiled loss, else sparse categorical cross-entropy).
        learning_rate: Float, the fine-tuning rate; None keeps the model's own.
        strategy: tf.distribute strategy or None; the new model is built in its scope.
        verbose: "auto", 0, 1 or 2, as in ``tfopt.train.fit``.
        return_report: Boolean, return ``(model, report)``: per layer the rank, kept energy, params and
            multiply-adds before and after; totals; ``skipped`` layers with reasons.
        teacher: tf_keras model or None: distil the fine-tuning from it (e.g. ``model`` itself).
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there (see ``tfopt.compress.prune``).
        keep_backup: Boolean, keep that state when fine-tuning ends.

    Returns:
        The compiled functional tf_keras model (or ``(model, report)``).

    >>> from tfopt._keras import keras
    >>> m = keras.Sequential([keras.layers.Dense(64, input_shape=(64,), name="d"), keras.layers.Dense(10)])
    >>> small, report = factorize(m, rank=8, layers=["d"], epochs=0, return_report=True)
    >>> report["layers"]["d"]["rank"], report["layers"]["d"]["layers"], report["flops_after"]
    (8, ['d_lowrank', 'd'], 1664)
    """
    check_model(model, "factorize")
    _check_options(rank, energy, target_flops, layers, epochs, min_size, train_ds)
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    if is_qat(model):
        raise UnsupportedLayerError("factorize got a quantization-aware model; factorize the float model, then "
                                    "run quantize_aware")
    if not (_is_graph_model(model) and model.built and getattr(model, "inputs", None)):
        raise UnsupportedLayerError(f"factorize needs a built functional or Sequential model with known inputs; "
                                    f"{model.name!r} ({type(model).__name__}) is not one")
    flat = flatten_model(model)
    candidates, skipped, explicit = _select(flat, rank, layers, min_size)
    flops_before = flops(flat)
    if rank is not None:
        method, ranks, energy = "rank", _fixed_ranks(candidates, rank, explicit, skipped), None
    elif target_flops is not None:
        method = "target_flops"
        energy, ranks, reasons = _budget_plan(candidates, target_flops, flops_before)
        skipped.update(reasons)
    else:
        method = "energy"
        ranks, reasons = _energy_plan(candidates, energy)
        skipped.update(reasons)
    if not ranks:
        why = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or \
            f"it has no {', '.join(FACTORIZABLE)} layer"
        raise CompressionError(f"factorize: nothing to factorize in {model.name!r} ({why})")
    with strategy_scope(strategy):
        rebuilt, first_names = _rebuild(flat, candidates, ranks)
        compile_like(rebuilt, model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
    report = _report(candidates, ranks, skipped, method, model, rebuilt, flops_before, first_names)
    report["energy"] = None if energy is None else float(energy)
    if target_flops is not None and report["flops_after"] > _budget(target_flops, flops_before):
        raise CompressionError(f"factorize: the rebuilt model has {report['flops_after']:,} multiply-adds, above "
                               f"target_flops={target_flops} of {flops_before:,}")
    if epochs:
        compression_fit(rebuilt, train_ds, epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose,
                        strategy=strategy, backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher,
                        temperature=temperature, alpha=alpha, what="factorize")
    report["epochs"] = epochs
    return (rebuilt, report) if return_report else rebuilt



# ---------------------------------------------------------------- the "factorize" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The factorize stage: truncated-SVD factors of the current model's kernels, then fine-tuning."""
    train_ds, val_ds, _ = inputs.load()
    small, report = factorize(inputs.model(), train_ds, rank=o["rank"], energy=o["energy"],
                              target_flops=o["target_flops"], layers=o["layers"], min_size=o["min_size"],
                              epochs=o["epochs"], val_ds=val_ds, learning_rate=o["learning_rate"],
                              verbose=inputs.verbose, return_report=True, **stage_teacher(inputs, o),
                              strategy=inputs.strategy, **stage_resume(inputs, inputs.strategy))
    metrics = {"flops_before": report["flops_before"], "flops_after": report["flops_after"],
               "flops_ratio": report["flops_ratio"], "ranks": {n: v["rank"] for n, v in report["layers"].items()},
               "report": report, **inputs.held_out(small, val_ds)}
    return StageResult(small, metrics, f"{len(report['layers'])} layers factorized, multiply-adds "
                                       f"{report['flops_before']:,} -> {report['flops_after']:,}, val accuracy "
                                       f"{metrics['val_accuracy']:.4f}")


def _apply(model, train_ds, energy, epochs=1, strategy=None, verbose=0):
    """A search trial's factorization at ``energy`` (the trial's own learning rate goes on); a model where no
    rank pays at that energy is returned as it is."""
    try:
        return factorize(model, train_ds, energy=energy, epochs=epochs, strategy=strategy, verbose=verbose,
                         learning_rate=None)
    except CompressionError:
        return model


def _ranks_ok(value) -> str | None:
    values = value.values() if isinstance(value, dict) else [value]
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    return None if ok else "an integer >= 1, or a mapping layer name -> integer >= 1"


_ranks_ok.allowed = "an integer >= 1, or a mapping layer name -> integer >= 1"


def _names_ok(value) -> str | None:
    return None if value and all(isinstance(v, str) for v in value) else "a non-empty list of layer or class names"


def _flops_ok(value) -> str | None:
    return None if 0 < value < 1 or (value >= 1 and float(value).is_integer()) else _flops_ok.allowed


_flops_ok.allowed = "a fraction 0 < value < 1 of the model's multiply-adds, or a whole count (>= 1)"
_names_ok.allowed = "a non-empty list of layer or class names"
_DESTROYS = ("'factorize' after '{}' loses it: the SVD factors are dense, new weights; factorize first, then "
             "prune or cluster")

TECHNIQUE = register_technique(Technique(
    "factorize",
    options_from(factorize, ["rank", "energy", "target_flops", "layers", "min_size", "epochs", "learning_rate",
                             *TEACHER_OPTIONS], **TEACHER_OPTIONS,
                 rank={"kinds": (INT, MAP, NONE), "check": _ranks_ok,
                       "help": "the rank of every chosen layer, or {layer: rank} (unset: target_flops or energy)"},
                 energy={"check": in_unit(low_open=True, high_open=False),
                         "help": "keep the smallest rank holding this fraction of the squared singular values"},
                 target_flops={"kinds": (FLOAT, INT, NONE), "check": _flops_ok,
                               "help": "multiply-adds to reach: a fraction (0, 1) of the model's, or a count"},
                 layers={"kinds": (LIST, NONE), "check": _names_ok,
                         "help": "layer or class names to consider (unset: every Dense/Conv1D/Conv2D)"},
                 min_size={"check": at_least(0), "help": "with layers unset, skip kernels with fewer weights"},
                 epochs={"check": at_least(0), "help": "fine-tuning epochs (0: none)"},
                 learning_rate={"check": positive}),
    _run_stage, summary="low-rank factorization (truncated SVD) of Dense/Conv kernels into two thinner layers, "
                        "then fine-tuning",
    function=factorize, refuses_after={"pruned": _DESTROYS.format("prune"), "clustered": _DESTROYS.format("cluster")},
    tune_keys={"factorize_energy": "energy", "factorize_epochs": "epochs"}, tune_order=5, apply=_apply,
    check=lambda o: "give rank or target_flops, not both" if o.get("rank") is not None and o.get("target_flops") is not None else None))
