"""Magnitude pruning with tfmot: wrap, fine-tune, strip, and check the sparsity really reached the target.

The pruning schedule is derived from the data so that the target is reached inside the run: tfmot's
wrappers see steps 1..T (T = batches per epoch x epochs) and update their masks only at steps that are
multiples of ``frequency`` and ``<= end_step``; ``end_step`` is put on such a multiple at ~75% of T, so the
final update (at the full target) happens and the last quarter of the run fine-tunes at that sparsity.

``budgets`` says how a float ``target_sparsity`` is spread over the layers: "uniform" gives every pruned kernel
that sparsity; "sensitivity" reads it as the overall (size-weighted) sparsity and first runs a per-layer
sensitivity scan on ``val_ds`` (``tfopt.compress.sensitivity``), then prunes to the per-layer budgets
``tfopt.compress.layer_budgets`` plans from it: the big, insensitive layers take most of the zeros, a small first
convolution or logits layer few.
"""

from __future__ import annotations

from tfopt._keras import check_model, tfmot
from tfopt._model import compile_like, count_steps, holds_kernel, private_copy, strategy_scope, wrap_layers
from tfopt.compress._fit import TEACHER_OPTIONS, compression_fit, distillation_settings, stage_resume, stage_teacher
from tfopt.compress.inspect import layer_values, m_by_n_ok, match_layers, prunable_weights, sparsity, walk_layers
from tfopt.compress.sensitivity import PLAN_SPARSITIES, layer_budgets, sensitivity
from tfopt.errors import CompressionError, ConfigError, DataError, UnsupportedLayerError, check_choice, check_range
from tfopt.options import FLOAT, LIST, NONE, STR, Field, at_least, in_unit, int_list, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["prune", "pruning_schedule", "BUDGETS"]

END_FRACTION = 0.75  # end_step ~ this fraction of the run; the rest fine-tunes at the target sparsity
UPDATES = 10  # default number of mask updates before end_step
BUDGETS = ("uniform", "sensitivity")  # how a float target_sparsity is spread over the layers (see the module doc)


def _xnnpack_policy():
    return tfmot.sparsity.keras.PruneForLatencyOnXNNPack()


POLICIES = {"xnnpack": _xnnpack_policy}


def pruning_schedule(kind: str, target: float, total_steps: int, initial: float = 0.0, frequency=None):
    """Tuple ``(schedule, begin_step, end_step, frequency)`` reaching ``target`` within ``total_steps`` steps.

    Args:
        kind: String, "polynomial" (PolynomialDecay from ``initial`` to ``target``) or "constant".
        target: Float, the final sparsity, 0 <= target < 1.
        total_steps: Integer, the number of training steps that will run.
        initial: Float, the starting sparsity of the polynomial schedule.
        frequency: Integer or None, steps between mask updates (None: about 10 updates before end_step).

    >>> pruning_schedule("polynomial", 0.5, 40)[1:]
    (0, 30, 3)
    """
    check_choice("schedule", kind, tuple(_SCHEDULES))
    return _SCHEDULES[kind](target, int(total_steps), initial, frequency)


def _polynomial(target, total, initial, frequency):
    end_goal = max(1, int(total * END_FRACTION))
    freq = int(frequency) if frequency else max(1, end_goal // UPDATES)
    end = max(freq, (end_goal // freq) * freq)  # a multiple of freq, so the final update lands on end_step
    schedule = tfmot.sparsity.keras.PolynomialDecay(initial, target, begin_step=0, end_step=end, frequency=freq)
    return schedule, 0, end, freq


def _constant(target, total, initial, frequency):
    freq = int(frequency) if frequency else max(1, total // UPDATES)
    schedule = tfmot.sparsity.keras.ConstantSparsity(target, begin_step=0, end_step=-1, frequency=freq)
    return schedule, 0, -1, freq


_SCHEDULES = {"polynomial": _polynomial, "constant": _constant}


def _check_m_by_n(m_by_n):
    ok = isinstance(m_by_n, (tuple, list)) and len(m_by_n) == 2 and all(isinstance(v, int) for v in m_by_n)
    if not ok or not 0 < m_by_n[0] < m_by_n[1]:
        raise ConfigError(
            f"m_by_n={m_by_n!r} is not allowed; allowed: a (2, 4)-like pair (m, n) of integers with 0 < m < n "
            "(m zeros in every n consecutive weights)"
        )
    return tuple(m_by_n)


def _validate(target_sparsity, initial_sparsity, epochs, schedule, frequency):
    """Checks the options; ``target_sparsity`` is a float (a dict's values were checked by :func:`_layer_targets`)."""
    check_range("target_sparsity", target_sparsity, 0, 1, high_open=True)
    check_range("initial_sparsity", initial_sparsity, 0, target_sparsity, high_open=target_sparsity > 0)
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} is out of range; allowed: an integer >= 1")
    check_choice("schedule", schedule, tuple(_SCHEDULES))
    if frequency is not None and (not isinstance(frequency, int) or frequency < 1):
        raise ConfigError(f"frequency={frequency!r} is out of range; allowed: None or an integer >= 1")


def _layer_targets(work, target_sparsity: dict, layers) -> dict:
    """``{layer name: sparsity}`` from a per-layer ``target_sparsity`` (keys: layer names, classes or class names,
    as ``layers`` takes them); a layer at 0 is left unwrapped."""
    if layers is not None:
        raise ConfigError("target_sparsity is a dict of layer -> sparsity: its keys choose the layers; leave "
                          f"layers=None (got layers={layers!r})")
    targets = layer_values(work, target_sparsity, "prune", "target_sparsity",
                           lambda name, value: check_range(name, value, 0, 1, high_open=True))
    targets = {name: float(value) for name, value in targets.items() if value > 0}
    if not targets:
        raise ConfigError(f"target_sparsity={target_sparsity!r} prunes no layer (every value is 0); allowed: a dict "
                          "with at least one sparsity above 0")
    return targets


def _left_dense(work, names, policy, m_by_n) -> dict:
    """Layer name -> why it holds a kernel but is not pruned, for a prune that chose its own layers (``layers`` and
    per-layer budgets name theirs): tfmot has no prune config for it, ``m_by_n`` takes rank-2 and rank-4 kernels
    only (a Conv1D's is rank 3), or the policy excludes it."""
    left = {}
    for layer in walk_layers(work):
        if layer.name in names or not holds_kernel(layer):
            continue
        weights = prunable_weights(layer)
        if not weights:
            left[layer.name] = f"tfmot has no pruning for {type(layer).__name__} layers"
        elif m_by_n and any(len(w.shape) not in (2, 4) for w in weights):
            ranks = sorted({len(w.shape) for w in weights})
            left[layer.name] = (f"m_by_n={m_by_n} takes Dense and Conv2D kernels (rank 2 or 4); its "
                                f"{type(layer).__name__} kernel has rank {', '.join(map(str, ranks))}")
        elif policy is not None:
            left[layer.name] = f"outside the {type(policy).__name__} policy"
    return left


def _targets(work, layers, policy, m_by_n) -> list[str]:
    """Names of the layers to wrap, after the policy and layer selection; raises when there are none."""
    def usable(layer):
        weights = prunable_weights(layer)
        if m_by_n:
            return bool(weights) and all(len(w.shape) in (2, 4) for w in weights)
        return bool(weights)

    names = match_layers(work, layers, "prune", usable)
    by_name = {layer.name: layer for layer in walk_layers(work)}
    if layers is not None:
        bad = [n for n in names if n in by_name and not usable(by_name[n])]
        if bad:
            what = "Dense/Conv2D kernels (rank 2 or 4)" if m_by_n else "prunable weights (Dense, Conv, Embedding...)"
            raise UnsupportedLayerError(f"prune: layers {bad} have no {what}; choose other layers")
    if policy is not None:
        try:
            policy.ensure_model_supports_pruning(work)
        except ValueError as err:
            raise UnsupportedLayerError(
                f"prune: the model does not fit the pruning policy {type(policy).__name__}: {err}. "
                "PruneForLatencyOnXNNPack needs: ZeroPadding2D(1) -> Conv2D 3x3 stride 2 'valid' on 3-channel "
                "input, then only XNNPACK-supported layers (1x1 Conv2D, DepthwiseConv2D, BatchNorm, ReLU, Add...) "
                "up to a GlobalAveragePooling2D(keepdims=True) in every branch"
            ) from err
        names = [n for n in names if n in by_name and policy.allow_pruning(by_name[n])]
    if not names:
        raise UnsupportedLayerError(
            "prune: the model has no layer to prune (needs Dense/Conv/Embedding kernels"
            f"{', 1x1 Conv2D for the policy' if policy is not None else ''}); layers: "
            + ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in work.layers)
        )
    return names


def _budgets_problem(budgets, target_sparsity, m_by_n, policy) -> str | None:
    """What contradicts ``budgets="sensitivity"`` among the other options (None when nothing): it plans each layer's
    sparsity from one overall float target, which a per-layer dict, an m-by-n pattern (its sparsity is m/n) or a
    policy (it chooses the layers) would override. ``prune`` raises it; the prune stage reports it at file:line.

    >>> _budgets_problem("sensitivity", 0.9, None, None) is None
    True
    """
    if budgets != "sensitivity":
        return None
    if isinstance(target_sparsity, dict):
        return (f"budgets='sensitivity' plans each layer's sparsity from one overall target_sparsity (a float); got "
                f"target_sparsity={target_sparsity!r}: give one float, or budgets='uniform' with the per-layer dict (a "
                "Python call of tfopt.compress.prune)")
    if m_by_n is not None:
        return (f"budgets='sensitivity' cannot be combined with m_by_n={m_by_n!r} (the m-by-n pattern fixes every "
                "layer's sparsity at m/n); unset one of them")
    if policy is not None:
        return (f"budgets='sensitivity' cannot be combined with policy={policy!r} (the policy chooses the layers, the "
                "scan plans all of them); unset one of them")
    return None


def _sensitivity_budgets(model, val_ds, target: float, layers, initial_sparsity: float) -> dict:
    """The per-layer sparsities reaching ``target`` overall, planned from a scan of ``model`` on ``val_ds``.

    Returns:
        ``{"sparsity": {layer: s}, "overall_sparsity": planned, "predicted_drop": points (one-shot, before
        fine-tuning), "val_accuracy": the scan's baseline, "val_examples": how many it was measured on}``.
    """
    check_range("target_sparsity", target, 0, 1, low_open=True, high_open=True)
    if val_ds is None:
        raise DataError("prune: budgets='sensitivity' needs val_ds, the labelled validation batches the per-layer "
                        "sensitivity scan is measured on (never the test split); got val_ds=None")
    scan = sensitivity(model, val_ds, sparsities=PLAN_SPARSITIES, clusters=(), bits=(), layers=layers)
    plan = layer_budgets(scan, target_sparsity=target)
    pruned = {name: value for name, value in plan["sparsity"].items() if value > 0}
    lowest = min(pruned, key=pruned.get)
    if initial_sparsity >= pruned[lowest]:
        raise ConfigError(f"initial_sparsity={initial_sparsity} is not below every layer's budget: the sensitivity "
                          f"scan gave {lowest!r} {pruned[lowest]}; with budgets='sensitivity' use initial_sparsity=0")
    return {"sparsity": plan["sparsity"], "overall_sparsity": round(plan["overall_sparsity"], 4),
            "predicted_drop": round(plan["predicted_drop"], 3), "val_accuracy": scan["baseline"],
            "val_examples": scan["n"]}


def _resolve_policy(policy):
    if policy is None or hasattr(policy, "allow_pruning"):
        return policy
    check_choice("policy", policy, tuple(POLICIES))
    return POLICIES[policy]()


def _check_result(reached, sizes, pruned, target, m_by_n, stripped, info, targets=None):
    if m_by_n:
        by_name = {}
        for layer in walk_layers(stripped):
            for w in prunable_weights(layer):
                by_name.setdefault(layer.name, []).append(w)
        bad = [n for n in pruned if not all(m_by_n_ok(w.numpy(), *m_by_n) for w in by_name.get(n, []))]
        if bad:
            raise CompressionError(
                f"prune: layers {bad} do not have the {m_by_n[0]}:{m_by_n[1]} pattern ({m_by_n[0]} zeros in "
                f"every {m_by_n[1]} input-channel weights); the structured mask is set at step 1 only"
            )
        return
    wanted = {name: (targets or {}).get(name.split("/")[0], target) for name in reached}
    low = {
        name: value for name, value in reached.items()
        if name.split("/")[0] in pruned and value < wanted[name] - max(0.01, 1.0 / max(1, sizes[name]))
    }
    if low:
        detail = ", ".join(f"{name}={value:.3f}" + (f" (target {wanted[name]})" if targets else "")
                           for name, value in low.items())
        what = "the per-layer target_sparsity" if targets else f"target_sparsity={target}"
        raise CompressionError(
            f"prune: sparsity below {what} in layers {detail}. Likely cause: too few "
            f"training steps for the schedule ({info['steps']} steps run, frequency={info['frequency']}, "
            f"end_step={info['end_step']}: masks update only at multiples of frequency up to end_step); "
            "use more epochs/data or a smaller frequency"
        )


def prune(
    model,
    train_ds,
    target_sparsity: float,
    epochs: int = 1,
    schedule: str = "polynomial",
    initial_sparsity: float = 0.0,
    frequency: int | None = None,
    m_by_n=None,
    policy=None,
    layers=None,
    val_ds=None,
    callbacks=(),
    optimizer=None,
    loss=None,
    learning_rate: float = 1e-3,
    strategy=None,
    verbose="auto",
    check: bool = True,
    return_report: bool = False,
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
    budgets: str = "uniform",
):
    """Fine-tune a copy of ``model`` with magnitude pruning and return it stripped (plain layers, zeros in kernels).

    Args:
        model: tf_keras functional or Sequential model, trained; it is not modified.
        train_ds: tf.data.Dataset of (x, y) batches (finite).
        target_sparsity: Float, the fraction of zeros wanted in each pruned kernel, 0 <= value < 1 (with
            ``budgets="sensitivity"``: overall, over the weights of ``layers``, 0 < value < 1); or a dict of layer
            (name, class or class name, as in ``layers``) -> sparsity: a budget per layer, e.g. from
            ``tfopt.compress.layer_budgets`` (the layers not named, and those at 0, are not pruned).
        epochs: Integer, the number of fine-tuning epochs (>= 1).
        schedule: String, "polynomial" (gradual, tfmot PolynomialDecay) or "constant" (ConstantSparsity).
        initial_sparsity: Float, the starting sparsity of the polynomial schedule (< target_sparsity).
        frequency: Integer or None, steps between mask updates; None picks ~10 updates within the run.
        m_by_n: Pair of integers (m, n) or None: structured sparsity, m zeros in every n consecutive
            input-channel weights (tfmot ``sparsity_m_by_n``, e.g. (2, 4)); the mask is set at the first step.
        policy: None, "xnnpack" (tfmot PruneForLatencyOnXNNPack: only 1x1 convs of a fitting model) or a
            tfmot PruningPolicy instance.
        layers: Iterable of layer names, classes or class names to prune, or None for every prunable layer.
        val_ds: tf.data.Dataset or None, validation data for ``fit`` (and for ``budgets="sensitivity"``'s scan).
        callbacks: Sequence of extra Keras callbacks.
        optimizer: Optimizer or None (None: a fresh copy of the model's optimizer at ``learning_rate``, else
            Adam(learning_rate)).
        loss: Loss or None (None: the model's compiled loss, else sparse categorical cross-entropy).
        learning_rate: Float, the fine-tuning rate (1e-3, as tfmot's guide; measured on the demo CNN at 80%:
            1e-3 over 6 epochs kept the baseline's accuracy, 1e-4 lost a point).
        strategy: tf.distribute strategy or None; the wrapped model is built in its scope.
        verbose: "auto", 0, 1 or 2, as in ``tfopt.train.fit``.
        check: Boolean, raise CompressionError when a pruned layer ends more than a point below target
            (or breaks the m-by-n pattern).
        return_report: Boolean, return ``(model, report)`` with the schedule, the sparsity reached and, when prune
            chose the layers, the layers with a kernel it left dense and why (``left_dense``: a Bidirectional, a
            Conv1D under ``m_by_n``...).
        teacher: tf_keras model or None: distil the fine-tuning from it (e.g. ``model`` itself, the
            uncompressed model): ``alpha * task loss + (1 - alpha) * T**2 * KL(teacher_T || student_T)``.
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there; a call killed mid-way and made again
            with the same ``backup_dir`` resumes at the epoch it was in (see ``compression_fit``).
        keep_backup: Boolean, keep that state when fine-tuning ends (a later call restores it, training nothing).
        budgets: String, "uniform" (a float ``target_sparsity`` in every pruned kernel) or "sensitivity" (a float
            ``target_sparsity`` overall: a per-layer sensitivity scan on ``val_ds`` plans each layer's sparsity
            with ``tfopt.compress.layer_budgets``; not with a dict target, ``m_by_n`` or ``policy``).

    Returns:
        The stripped, compiled tf_keras model (or ``(model, report)``, the report's ``sensitivity_plan`` holding
        the per-layer budgets when ``budgets="sensitivity"``); inspect it with ``sparsity(model)``.

    >>> pruned = prune(model, train_ds, 0.5, epochs=2)  # doctest: +SKIP
    >>> sparsity(pruned)["overall"]  # doctest: +SKIP
    0.5
    >>> pruned, report = prune(model, train_ds, 0.8, val_ds=val_ds, budgets="sensitivity",
    ...                        return_report=True)  # doctest: +SKIP
    >>> report["sensitivity_plan"]["sparsity"]  # doctest: +SKIP
    {'conv1': 0.0, 'dense1': 0.8766, 'logits': 0.0}
    """
    check_model(model, "prune")
    check_choice("budgets", budgets, BUDGETS)
    problem = _budgets_problem(budgets, target_sparsity, m_by_n, policy)
    if problem:
        raise ConfigError(problem)
    plan = None
    if budgets == "sensitivity":
        _validate(target_sparsity, initial_sparsity, epochs, schedule, frequency)  # before the scan's cost
        plan = _sensitivity_budgets(model, val_ds, target_sparsity, layers, initial_sparsity)
        per_layer, layers = plan["sparsity"], None
    else:
        per_layer = target_sparsity
    targets = _layer_targets(model, per_layer, layers) if isinstance(per_layer, dict) else None
    lowest = min(targets.values()) if targets else target_sparsity  # initial_sparsity stays below each target
    _validate(lowest, initial_sparsity, epochs, schedule, frequency)
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    m_by_n = _check_m_by_n(m_by_n) if m_by_n is not None else None
    policy = _resolve_policy(policy)
    steps_per_epoch = count_steps(train_ds)
    total = steps_per_epoch * epochs
    sched, begin, end, freq = pruning_schedule(schedule, lowest, total, initial_sparsity, frequency)
    params = {"pruning_schedule": sched}
    if m_by_n:
        params["sparsity_m_by_n"] = m_by_n

    def wrap(layer):
        if targets:  # the same steps (begin, end, frequency) for every layer; its own final sparsity
            sched_ = pruning_schedule(schedule, targets[layer.name], total, initial_sparsity, frequency)[0]
            return tfmot.sparsity.keras.prune_low_magnitude(layer, **{**params, "pruning_schedule": sched_})
        return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)

    with strategy_scope(strategy):
        work = private_copy(model, "prune")
        names = _targets(work, list(targets) if targets is not None else layers, policy, m_by_n)
        try:
            wrapped = wrap_layers(work, wrap, names)
        except ValueError as err:
            raise UnsupportedLayerError(f"prune: tfmot cannot wrap the model's layers {names}: {err}") from err
        compile_like(wrapped, model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
    compression_fit(wrapped, train_ds, epochs, val_ds=val_ds,
                    callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), *callbacks], verbose=verbose,
                    strategy=strategy, backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher,
                    temperature=temperature, alpha=alpha, what="prune")
    with strategy_scope(strategy):
        # built in the scope: a model made outside a strategy but compiled in it cannot evaluate ("SyncOnReadVariable
        # does not support assign_add in cross-replica context")
        stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
        compile_like(stripped, model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)

    measured = sparsity(stripped)
    reached = {k: v for k, v in measured["layers"].items() if k.split("/")[0] in names}
    left_dense = _left_dense(work, names, policy, m_by_n) if layers is None and targets is None else {}
    info = {
        "target": target_sparsity,
        "budgets": budgets,
        "sensitivity_plan": plan,
        "schedule": schedule,
        "m_by_n": m_by_n,
        "pruned_layers": names,
        "left_dense": left_dense,
        "reached": reached,
        "overall": measured["overall"],
        "steps": total,
        "steps_per_epoch": steps_per_epoch,
        "begin_step": begin,
        "end_step": end,
        "frequency": freq,
    }
    if check:
        _check_result(reached, measured["sizes"], names, target_sparsity, m_by_n, stripped, info, targets)
    return (stripped, info) if return_report else stripped


# ---------------------------------------------------------------- the "prune" technique (a recipe stage)


def _stage_problem(o: dict) -> str | None:
    """A stage's options that contradict ``budgets`` (reported at the stage's file:line before anything runs)."""
    return _budgets_problem(o.get("budgets"), o.get("target_sparsity"), o.get("m_by_n"), o.get("policy"))


def _run_stage(inputs, o: dict):
    """The prune stage: magnitude pruning of the current model to ``target_sparsity`` (with ``budgets: sensitivity``
    overall, per-layer budgets planned on the stage's validation split; the metrics record them)."""
    train_ds, val_ds, _ = inputs.load()
    pruned, report = prune(
        inputs.model(), train_ds, o["target_sparsity"], epochs=o["epochs"], schedule=o["schedule"],
        initial_sparsity=o["initial_sparsity"], frequency=o["frequency"],
        m_by_n=tuple(o["m_by_n"]) if o["m_by_n"] else None, policy=o["policy"], val_ds=val_ds,
        learning_rate=o["learning_rate"], verbose=inputs.verbose, budgets=o["budgets"], return_report=True,
        **stage_teacher(inputs, o), strategy=inputs.strategy, **stage_resume(inputs, inputs.strategy))
    reached = sparsity(pruned)
    metrics = {"target_sparsity": o["target_sparsity"], "budgets": o["budgets"], "sparsity": reached["overall"],
               "layer_sparsity": reached["layers"], **inputs.held_out(pruned, val_ds)}
    note = f"sparsity {reached['overall']:.3f}"
    if report["sensitivity_plan"] is not None:
        metrics["sensitivity_plan"] = report["sensitivity_plan"]
        budgets = report["sensitivity_plan"]["sparsity"]
        note += f" (per-layer budgets {min(budgets.values()):.3f} to {max(budgets.values()):.3f})"
    if report["left_dense"]:
        metrics["left_dense"] = report["left_dense"]
        note += f", left dense: {', '.join(report['left_dense'])}"
    return StageResult(pruned, metrics, f"{note}, val accuracy {metrics['val_accuracy']:.4f}")


def _apply(model, train_ds, target_sparsity, epochs=1, strategy=None, verbose=0):
    """A search trial's pruning: the trial's own learning rate (or schedule) goes on (``learning_rate=None``)."""
    return prune(model, train_ds, target_sparsity, epochs=epochs, strategy=strategy, verbose=verbose,
                 learning_rate=None)


TECHNIQUE = register_technique(Technique(
    "prune",
    options_from(prune, ["target_sparsity", "budgets", "epochs", "schedule", "initial_sparsity", "frequency", "m_by_n",
                         "policy", "learning_rate", *TEACHER_OPTIONS], **TEACHER_OPTIONS,
                 target_sparsity={"check": in_unit(), "help": "the fraction of zeros wanted in each pruned kernel "
                                                              "(budgets: sensitivity: overall, over all of them)"},
                 budgets={"choices": BUDGETS,
                          "help": "uniform: target_sparsity in every kernel; sensitivity: per-layer budgets planned "
                                  "from a one-shot scan on validation, target_sparsity overall"},
                 epochs={"default": 2, "check": at_least(1),
                         "help": "fine-tuning epochs (2 in a recipe: the schedule needs steps to reach its target)"},
                 schedule={"choices": tuple(_SCHEDULES)},
                 initial_sparsity={"check": in_unit()},
                 frequency={"check": at_least(1), "help": "steps between mask updates (unset: ~10 updates)"},
                 m_by_n={"kinds": (LIST, NONE), "check": int_list(2, 1, 2),
                         "help": "[m, n]: m zeros in every n consecutive weights"},
                 policy={"kinds": (STR, NONE), "choices": tuple(POLICIES)},
                 learning_rate={"check": positive}),
    _run_stage, summary="magnitude pruning (tfmot) to a target sparsity, then stripped",
    function=prune, own_defaults=("epochs",), sets=("pruned",),
    refuses_after={"clustered": "'prune' after 'cluster' loses the clusters; prune first, then cluster with "
                                "preserve_sparsity"},
    tune_keys={"target_sparsity": "target_sparsity", "prune_epochs": "epochs"}, tune_order=10, apply=_apply,
    per_layer={"target_sparsity": Field((FLOAT,), check=in_unit(), help="one layer's fraction of zeros (0: unpruned)")},
    check=_stage_problem))
