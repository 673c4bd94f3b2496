"""Recipes: a YAML file validated, all at once and before anything runs, into frozen dataclasses.

Every problem (unknown key, wrong type, value out of range, stages in an order that cannot work, a model
the data cannot feed) is reported in one :class:`~tfopt.errors.ConfigError`, one line per problem, each
with its key path and line number: ``recipe.yaml:14: stages[2].quantize_aware: ...``.

Implicit stages: when ``stages`` lists neither ``train`` nor ``tune`` and the model comes from a builder,
a ``train`` stage runs first; when it lists an ``export`` and no ``evaluate`` after it, an ``evaluate``
stage runs last (every exported variant is measured on the validation split, to choose on, and on the test split, to report).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from tfopt.errors import ConfigError
from tfopt.options import read_section
from tfopt.techniques import get_technique
from tfopt.pipeline.config import checks
from tfopt.pipeline.config._yaml import Problems, parse_yaml, read_text
from tfopt.pipeline.config.sections import DATA, MODEL, STUDENT, TOP, TRAINING, stage_options, stage_types
from tfopt.pipeline.config.specs import DataSpec, ModelSpec, Recipe, StageSpec

__all__ = ["Recipe", "StageSpec", "DataSpec", "ModelSpec", "load_recipe", "merge", "parse_set"]


def merge(base, override):
    """Deep-merge ``override`` into a copy of ``base``.

    A mapping given for ``stages`` merges into the stages by name or type (``{"prune": {"epochs": 1}}``).

    >>> merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}})
    {'a': {'b': 3, 'c': 2}}
    """
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if key == "stages" and isinstance(value, dict) and isinstance(out.get("stages"), list):
            out["stages"] = [_merge_stage(item, value) for item in out["stages"]]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_stage(item, by_name: dict):
    if not isinstance(item, (str, dict)) or (isinstance(item, dict) and len(item) != 1):
        return item  # malformed: left for validation to report
    stage_type, options = (item, {}) if isinstance(item, str) else next(iter(item.items()))
    if not isinstance(options, (dict, type(None))):
        return item
    options = options or {}
    for key in (options.get("name"), stage_type):
        if key in by_name:
            return {stage_type: merge(options, by_name[key])}
    return item


def _resolve_data_override(raw: dict, data: str | None) -> dict:
    """Replace the data name; text-only options and data_dir are dropped for an embedded set."""
    if not data:
        return raw
    from tfopt.data import EMBEDDED

    raw = copy.deepcopy(raw)
    section = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    old = section.get("name")

    def replaced(section: dict) -> dict:
        section = dict(section, name=data)
        if data in EMBEDDED:
            for key in ("vocab_size", "seq_len", "data_dir"):
                section.pop(key, None)
        return section

    raw["data"] = replaced(section)
    # the same dataset elsewhere (a fine_tune stage's data) is replaced too
    for item in raw.get("stages") or []:
        options = next(iter(item.values()), None) if isinstance(item, dict) and len(item) == 1 else None
        if isinstance(options, dict) and isinstance(options.get("data"), dict) and options["data"].get("name") == old:
            options["data"] = replaced(options["data"])
    return raw


def load_recipe(path_or_dict, overrides: dict | None = None, data: str | None = None) -> Recipe:
    """Read and validate a recipe; every problem is reported at once in one ConfigError.

    Args:
        path_or_dict: String or Path of a YAML recipe, or the recipe as a dict.
        overrides: Dict or None, deep-merged into the recipe before validation (e.g.
            ``{"training": {"epochs": 1}, "stages": {"prune": {"epochs": 1}}}``).
        data: String or None, a dataset name replacing ``data.name`` (the model's input shape and class
            count follow the data unless the recipe fixes them).

    Returns:
        A :class:`Recipe`.

    >>> recipe = load_recipe("recipes/mnist_cnn.yaml")  # doctest: +SKIP
    >>> [s.name for s in recipe.stages]  # doctest: +SKIP
    ['train', 'prune', 'quantize_aware', 'export', 'evaluate']
    """
    if isinstance(path_or_dict, dict):
        raw, lines, source, base_dir = copy.deepcopy(path_or_dict), {}, "<dict>", Path.cwd()
    else:
        path = Path(path_or_dict)
        raw, lines = parse_yaml(read_text(path), str(path))
        source, base_dir = str(path), path.parent
    problems = Problems(source, lines)
    if not isinstance(raw, dict):
        problems.add((), f"a recipe must be a mapping with keys {', '.join(TOP)}, got {type(raw).__name__}")
        raise problems.error()
    _unmatched_overrides(raw, overrides, problems)
    raw = _resolve_data_override(merge(raw, overrides), data)

    top = read_section(raw, TOP, (), problems, "the recipe")
    data_v = read_section(raw.get("data"), DATA, ("data",), problems, "data") if "data" in raw else None
    model_v = read_section(raw.get("model"), MODEL, ("model",), problems, "model") if "model" in raw else None
    training_v = read_section(raw.get("training"), TRAINING, ("training",), problems, "training")
    stages = _read_stages(raw.get("stages"), model_v, problems)

    data_spec = _data_spec(data_v)
    if data_v is not None:
        checks.check_data(data_v, ("data",), problems)
    model_spec = None
    if model_v is not None:
        before = len(problems.items)
        model_spec = checks.check_model_section(model_v, base_dir, problems)
        checks.check_model_fits_data(model_spec, data_v, ("model",), problems)
        if len(problems.items) == before:
            checks.check_model_builds(model_spec, data_v, ("model",), problems)
    if training_v is not None:
        checks.check_training(training_v, problems)
    checks.check_order(stages, model_spec, problems)
    for spec, path in stages:
        _check_stage_details(spec, path, data_v, problems)
    problems.raise_if_any()

    stage_specs = tuple(spec for spec, _ in stages)
    # `deterministic: false` (the default) is left out of the resolved recipe: older recipes keep their hash
    hashed_training = {k: v for k, v in training_v.items() if k != "deterministic" or v}
    resolved = {
        "name": top["name"], "seed": top["seed"], "description": top.get("description"),
        "data": dataclasses.asdict(data_spec), "model": dataclasses.asdict(model_spec), "training": hashed_training,
        "stages": [{"type": s.type, "name": s.name, "implicit": s.implicit, "options": s.options}
                   for s in stage_specs],
    }
    return Recipe(name=top["name"], seed=top["seed"], data=data_spec, model=model_spec, training=training_v,
                  stages=stage_specs, source=source, raw=json.loads(json.dumps(resolved, default=list)))


def _data_spec(values) -> DataSpec | None:
    return None if values is None else DataSpec.from_dict(values)


def _unmatched_overrides(raw: dict, overrides: dict | None, problems) -> None:
    """Options set for a stage the recipe does not have (``tfopt run --set nosuch.epochs=1``) are refused."""
    wanted = (overrides or {}).get("stages")
    if not isinstance(wanted, dict) or not isinstance(raw.get("stages"), list):
        return
    names = []
    for item in raw["stages"]:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and len(item) == 1:
            stage_type, options = next(iter(item.items()))
            names += [stage_type] + ([options["name"]] if isinstance(options, dict) and options.get("name") else [])
    for key in wanted:
        if key not in names:
            problems.add(("stages",), f"options are set for a stage {key!r} the recipe does not have; its stages "
                                      f"(by name or type): {', '.join(dict.fromkeys(map(str, names)))}")


def parse_set(items) -> dict:
    """The overrides of ``stage.option=VALUE`` items (``tfopt run --set``): ``{"stages": {stage: {option: value}}}``.

    ``stage`` is a stage's name or type; ``VALUE`` is read as a YAML scalar or flow collection (``1``, ``0.5``,
    ``true``, ``null``, ``[2, 4]``, ``kmeans++``). The recipe's own validation then checks each option.

    Args:
        items: Iterable of strings.

    >>> parse_set(["prune.epochs=3", "prune.m_by_n=[2, 4]", "export.baseline=float32"])
    {'stages': {'prune': {'epochs': 3, 'm_by_n': [2, 4]}, 'export': {'baseline': 'float32'}}}
    """
    stages: dict = {}
    for item in items or ():
        target, sep, text = str(item).partition("=")
        stage, dot, option = target.strip().partition(".")
        if not sep or not dot or not stage or not option or "." in option:
            raise ConfigError(f"--set {item!r} is not allowed; allowed: STAGE.OPTION=VALUE, e.g. prune.epochs=3 "
                              "(STAGE: a stage's name or type)")
        value, _ = parse_yaml(text if text.strip() else "null", f"--set {target}")
        if isinstance(value, dict):
            raise ConfigError(f"--set {item!r}: the value is a mapping; set one option at a time (STAGE.OPTION=VALUE)")
        stages.setdefault(stage, {})[option] = value
    return {"stages": stages} if stages else {}


def _read_stages(raw_stages, model_v, problems) -> list:
    """Parse the ``stages`` list into ``[(StageSpec, key path)]``, adding the implicit train / evaluate."""
    all_options = stage_options()
    items = []
    for i, item in enumerate(raw_stages or []):
        if isinstance(item, str):
            stage_type, options, path = item, {}, ("stages", i)
        elif isinstance(item, dict) and len(item) == 1:
            stage_type, options = next(iter(item.items()))
            path = ("stages", i, stage_type)
        else:
            problems.add(("stages", i), f"each stage is a stage type ({', '.join(stage_types())}) or a mapping "
                                        f"of one stage type to its options, got {item!r}")
            continue
        if stage_type not in all_options:
            problems.add(("stages", i), f"unknown stage {stage_type!r}; allowed: {', '.join(stage_types())}")
            continue
        values = read_section(options, all_options[stage_type], path, problems, f"stage {stage_type!r}")
        problem = get_technique(stage_type).check(values) if values is not None and get_technique(
            stage_type).check else None
        if problem:
            problems.add(path, problem)
        elif values is not None:
            items.append((stage_type, values, path))
    types = [t for t, _, _ in items]
    from_builder = model_v is not None and model_v.get("path") is None
    if from_builder and "train" not in types and "tune" not in types:
        items.insert(0, ("train", read_section({}, all_options["train"], (), problems, "train"), None))
    if "export" in types and "evaluate" not in types[types.index("export"):]:
        items.append(("evaluate", read_section({}, all_options["evaluate"], (), problems, "evaluate"), None))
    stages, seen, counts = [], set(), {}
    for index, (stage_type, values, path) in enumerate(items, start=1):
        name = values.pop("name", None)
        if name is None:
            counts[stage_type] = counts.get(stage_type, 0) + 1
            name = stage_type if counts[stage_type] == 1 else f"{stage_type}_{counts[stage_type]}"
        if name in seen:
            problems.add(path or ("stages",), f"stage name {name!r} is used twice; give each stage a unique name")
        seen.add(name)
        spec = StageSpec(type=stage_type, name=name, index=index, options=values, implicit=path is None)
        stages.append((spec, path or ("stages",)))
    return stages


def _check_stage_details(spec: StageSpec, path: tuple, data_v, problems) -> None:
    """Options that are nested sections (their Field's ``section``): a model (a distill student) is checked like
    the recipe's model, data (a fine_tune's new task) like the recipe's data (and must feed the same inputs)."""
    opts = spec.options
    for key, field in stage_options()[spec.type].items():
        where = path + (key,)
        if field.section == "model" and isinstance(opts.get(key), dict):
            student = read_section(opts[key], STUDENT, where, problems, key)
            if student is not None and student.get("builder"):
                before = len(problems.items)
                student_spec = ModelSpec(student["builder"], student.get("args") or {})
                checks.check_builder(student["builder"], student.get("args") or {}, where, problems)
                checks.check_model_fits_data(student_spec, data_v, where, problems)
                if len(problems.items) == before:
                    checks.check_model_builds(student_spec, data_v, where, problems)
        elif field.section == "data" and isinstance(opts.get(key), dict):
            sub = read_section(opts[key], DATA, where, problems, f"{spec.type} {key}")
            if sub is not None:
                checks.check_data(sub, where, problems)
                checks.check_same_inputs(sub, data_v, where, problems)
                opts[key] = dataclasses.asdict(_data_spec(sub))
