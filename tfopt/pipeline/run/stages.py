"""How the runner runs a stage: ``STAGES[type](ctx, spec, stage_dir)`` calls the ``run`` of the stage type's
technique (:mod:`tfopt.techniques`) with the run's context as :class:`~tfopt.techniques.StageInputs`.

Each returns a :class:`StageOutput` (:class:`~tfopt.techniques.StageResult`): the model it made (None for
export/evaluate), metrics for the manifest, a short note for the progress line, and the data its model is
now for (a fine_tune's). The runner saves the model and writes the files. Every stage first clears what a
killed or crashed earlier attempt left in its folder, and a full disk, a read-only folder or a missing
permission met anywhere in it becomes one :class:`tfopt.errors.WriteError` naming the file.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import errno
from pathlib import Path
from typing import Callable

from tfopt import tune
from tfopt._io import as_write_error, remove_partial_files
from tfopt.pipeline.run.context import Context, apply_determinism
from tfopt.pipeline.config.specs import DataSpec, ModelSpec, StageSpec
from tfopt.techniques import StageInputs, StageResult, Technique, get_technique, list_techniques, register_technique

__all__ = ["STAGES", "StageOutput", "register_stage", "stage_inputs", "tune_search"]

StageOutput = StageResult  # the name the pipeline has always used


def stage_inputs(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageInputs:
    """What a stage's technique is given: the run's models, data, training settings and folders."""
    return StageInputs(
        model=lambda name=None: ctx.model(name or ctx.current),
        model_data=lambda name: dataclasses.asdict(ctx.model_data[name]),
        load=lambda data=None: ctx.load(None if data is None else DataSpec.from_dict(data)),
        test=lambda data=None: ctx.test(None if data is None else DataSpec.from_dict(data)),
        fresh_data=ctx.fresh_data,
        build=lambda section, info: ctx.build(ctx.recipe.model if section is None else ModelSpec.from_dict(section),
                                              info),
        compile=ctx.compile, regularize=ctx.regularize, stage_dir=Path(stage_dir), run_dir=ctx.run_dir,
        backup_dir=ctx.shared_dir / spec.dirname / "backup", training=ctx.recipe.training, seed=ctx.recipe.seed,
        project=ctx.recipe.name, current=ctx.current, exported=list(ctx.exported), baseline=ctx.baseline,
        verbose=ctx.verbose,
        strategy=ctx.strategy, name=spec.name)


def _write_fault(err: Exception, ctx: Context, stage_dir: Path):
    """The WriteError for ``err`` (None when it is no full disk, read-only folder or missing permission)."""
    fault = as_write_error(err, near=stage_dir)
    if fault is not None and fault.errno in (errno.EACCES, errno.EPERM) and fault.filename:
        inside = Path(fault.filename).resolve().is_relative_to(Path(ctx.run_dir).resolve())
        fault = fault if inside else as_write_error(err, near=stage_dir, writing=False)  # reading, e.g. data
    return fault


def _runner(name: str) -> Callable:
    """The runner of technique ``name``'s stages: ``(ctx, spec, stage_dir) -> StageOutput``."""

    def run(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
        # under the run lock (no other process writes here): what a killed writer left in the stage's folder goes
        # first, and what a failed one left goes before the error is raised (the runner clears the run
        # directory's top once, before its first write)
        remove_partial_files(stage_dir)
        try:
            return get_technique(name).run(stage_inputs(ctx, spec, stage_dir), spec.options)
        except BaseException as err:
            remove_partial_files(stage_dir)
            fault = _write_fault(err, ctx, stage_dir) if isinstance(err, Exception) else None
            if fault is None:
                raise
            raise fault from err

    run.technique = name
    run.__name__ = run.__qualname__ = f"run_{name}"
    return run


class _Stages(collections.abc.MutableMapping):
    """Stage type -> runner, for every registered technique (read from the registry each time); a runner set
    here (e.g. a test wrapping one) is used instead until it is deleted."""

    def __init__(self):
        self._replaced: dict[str, Callable] = {}

    def __getitem__(self, name: str) -> Callable:
        if name in self._replaced:
            return self._replaced[name]
        if name not in list_techniques():
            raise KeyError(name)
        return _runner(name)

    def __setitem__(self, name: str, fn: Callable) -> None:
        if getattr(fn, "technique", None) == name:  # the registry's own runner back: nothing replaced
            self._replaced.pop(name, None)
        else:
            self._replaced[name] = fn

    def __delitem__(self, name: str) -> None:
        del self._replaced[name]

    def __iter__(self):
        return iter(dict.fromkeys([*list_techniques(), *self._replaced]))

    def __len__(self) -> int:
        return len(dict.fromkeys([*list_techniques(), *self._replaced]))


STAGES = _Stages()


def register_stage(name: str, options: dict | None = None, **declaration):
    """Register a stage function ``fn(inputs, options) -> StageOutput`` as the technique ``name``: recipes may then
    use it as a stage type, its options validated like the built-in ones.

    A thin wrapper over :func:`tfopt.techniques.register_technique`.

    Args:
        name: String, the stage type.
        options: Dict of option name -> :class:`tfopt.options.Field`.
        **declaration: More fields of :class:`tfopt.techniques.Technique` (``summary``, ``needs``, ``sets``,
            ``makes_model``, ``trains``, ...).

    >>> @register_stage("noop", summary="keep the model")  # doctest: +SKIP
    ... def noop(inputs, options):
    ...     return StageOutput(inputs.model(), note="unchanged")
    """

    def decorator(fn: Callable) -> Callable:
        register_technique(Technique(name, dict(options or {}), fn, **declaration))
        return fn

    return decorator


def tune_search(ctx: Context, spec: StageSpec, directory: Path, **extra):
    """Run the search a ``tune`` stage describes on the recipe's data; ``extra`` goes to ``tfopt.tune.search``
    (e.g. ``role``, ``address``, ``tuner_id``, ``overwrite`` for ``tfopt tune``)."""
    apply_determinism(ctx.recipe)
    return tune.search_stage(stage_inputs(ctx, spec, directory), spec.options, directory, **extra)
