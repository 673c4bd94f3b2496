"""Cross-field recipe checks: known builders and their arguments, model against data, stage order, variants.

The stage order is checked from the techniques' declarations (:class:`tfopt.techniques.Technique`: what each
``needs``, ``sets``, ``clears``, ``refuses_after`` and ``preserves``), not from a list of stage types.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from tfopt.export import CALIBRATED
from tfopt.models import FROM_DATA
from tfopt.options import read_section
from tfopt.pipeline.config.sections import QUANTIZATION_NAMES, VARIANT
from tfopt.pipeline.config.specs import ModelSpec
from tfopt.techniques import TECHNIQUES, get_technique, list_techniques

__all__ = ["check_data", "check_model_section", "check_builder", "check_model_fits_data", "check_model_builds",
           "check_training", "check_order", "check_same_inputs", "embedded_shape", "FROM_DATA", "NEEDS"]

_TEXT_KEYS = ("vocab_size", "seq_len")


def embedded_shape(name: str):
    """``(input_shape, num_classes, kind)`` of an embedded dataset, or None for a tfds name.

    >>> embedded_shape("digits")
    ((8, 8, 1), 10, 'image')
    """
    from tfopt.data import EMBEDDED

    if name not in EMBEDDED:
        return None
    x, y, kind, _ = EMBEDDED[name]()
    shape = tuple(int(d) for d in x.shape[1:])
    return (shape + (1,) if kind == "image" and len(shape) == 2 else shape), 10, kind


def check_data(values: dict, path: tuple, problems) -> None:
    """Text options only for tfds sets; class subsets within the data's classes."""
    name = values.get("name")
    if not isinstance(name, str):
        return
    known = embedded_shape(name)
    if known is None:
        return
    for key in _TEXT_KEYS:
        if values.get(key) is not None:
            problems.add(path + (key,), f"{key} only applies to text datasets; {name!r} is {known[2]} data")
    classes = values.get("classes")
    if isinstance(classes, list) and all(isinstance(c, int) for c in classes):
        if max(classes, default=0) >= known[1]:
            problems.add(path + ("classes",), f"classes={classes} names a class >= {known[1]}; "
                                              f"{name!r} has classes 0..{known[1] - 1}")
        if len(set(classes)) != len(classes):
            problems.add(path + ("classes",), f"classes={classes} lists a class twice")


def check_same_inputs(values: dict, main: dict | None, path: tuple, problems) -> None:
    """A fine_tune stage's data must have the inputs of the recipe's data (the model is reused)."""
    names = (values.get("name"), (main or {}).get("name"))
    if not all(isinstance(n, str) for n in names):
        return
    new, old = embedded_shape(names[0]), embedded_shape(names[1])
    if new is not None and old is not None and new[0] != old[0]:
        problems.add(path + ("name",), f"data {names[0]!r} has inputs of shape {list(new[0])} but the model takes "
                                       f"{list(old[0])} (the inputs of {names[1]!r}); fine_tune keeps the model's inputs")


def check_builder(builder: str, args: dict, path: tuple, problems) -> None:
    """The builder is registered and takes every argument given; missing ones come from the data."""
    from tfopt import models

    if builder not in models.list_models():
        problems.add(path + ("builder",), f"unknown model builder {builder!r}; allowed: "
                                          f"{', '.join(models.list_models())}")
        return
    params = inspect.signature(models.get_builder(builder)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in args:
        if key not in params:
            problems.add(path + ("args", key), f"model {builder!r} has no argument {key!r}; its arguments: "
                                               f"{', '.join(params)}")
    for key, p in params.items():
        if p.default is inspect.Parameter.empty and key not in args and key not in FROM_DATA:
            problems.add(path + ("args",), f"model {builder!r} needs the argument {key!r}")


def check_model_section(values: dict, base_dir: Path, problems):
    """Exactly one of builder / path; returns the ModelSpec (path made absolute)."""
    builder, path, args = values.get("builder"), values.get("path"), values.get("args") or {}
    if (builder is None) == (path is None):
        problems.add(("model",), f"model needs exactly one of 'builder' (a registered model) or 'path' (a saved "
                                 f".keras model), got builder={builder!r}, path={path!r}")
        return ModelSpec(builder, dict(args), path)
    if builder is not None:
        check_builder(builder, args, ("model",), problems)
        return ModelSpec(builder, dict(args), None)
    if args:
        problems.add(("model", "args"), "model.args only applies to a builder; a saved model has its own shape")
    full = Path(path) if Path(path).is_absolute() else (base_dir / path)
    if not str(path).endswith((".keras", ".h5")):
        problems.add(("model", "path"), f"model.path={path!r} must be a .keras or .h5 file")
    elif not full.is_file():
        problems.add(("model", "path"), f"model.path={path!r} does not exist (looked at {str(full)!r})")
    return ModelSpec(None, {}, str(full.resolve()))


def check_model_fits_data(spec, data_v, path: tuple, problems) -> None:
    """A fixed input_shape / num_classes must match what the (embedded) data gives."""
    if spec is None or data_v is None or not spec.builder or not isinstance(data_v.get("name"), str):
        return
    known = embedded_shape(data_v["name"])
    if known is None:
        return  # a tfds set: checked after loading, before the first stage runs
    shape, num_classes, _ = known
    if data_v.get("classes"):
        num_classes = len(data_v["classes"])
    args = spec.args or {}
    fixed = args.get("input_shape")
    if fixed is not None and (not isinstance(fixed, (list, tuple)) or tuple(fixed) != shape):
        problems.add(path + ("args", "input_shape"), f"input_shape={fixed!r} does not match the data "
                     f"{data_v['name']!r}, whose inputs have shape {list(shape)}; remove it to follow the data")
    n = args.get("num_classes")
    if n is not None and n != num_classes:
        problems.add(path + ("args", "num_classes"), f"num_classes={n!r} does not match the data "
                     f"{data_v['name']!r}, which has {num_classes} classes; remove it to follow the data")


def check_model_builds(spec, data_v, path: tuple, problems) -> None:
    """Build the model once when the data is embedded (its shape is known), so that builder arguments that
    cannot work (a kernel larger than its input, a model too large for this machine, l2: .inf, ...) are
    refused with the recipe's other problems, before a run starts. A tfds set, and every multi-worker run (whose
    strategy must exist before TensorFlow's runtime starts), is checked by the runner before it writes anything."""
    from tfopt import distribute, models
    from tfopt.errors import ConfigError

    if spec is None or not spec.builder or data_v is None or not isinstance(data_v.get("name"), str):
        return
    if distribute.parse_tf_config() is not None:
        # a multi-worker run: building a model would start TensorFlow's runtime before the strategy exists
        # ("Collective ops must be configured at program startup"); the runner builds it, before writing anything
        return
    known = embedded_shape(data_v["name"])
    if known is None or spec.builder not in models.list_models():
        return
    shape, num_classes, _ = known
    if data_v.get("classes"):
        num_classes = len(data_v["classes"])
    try:
        models.build_for(spec.builder, {"input_shape": shape, "num_classes": num_classes}, **dict(spec.args or {}))
    except (ConfigError, ValueError, TypeError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        key = message.split("=", 1)[0] if "=" in message else None
        where = path + ("args", key) if key in (spec.args or {}) else path + ("args",)
        problems.add(where, message if isinstance(err, ConfigError) else
                     f"model {spec.builder!r} cannot be built with these arguments: {message}")


def _named_args(value, path: tuple, registry: dict, what: str, problems, skip=(), check=None) -> None:
    """A ``name`` or ``{name: ..., **args}`` value whose name is in ``registry``, whose args the target takes,
    and (with ``check(name, key, value)``, which raises ConfigError) whose values have the declared type and range.
    """
    from tfopt.errors import ConfigError

    name, args = (value, {}) if isinstance(value, str) else (value.get("name"), {k: v for k, v in value.items()
                                                                              if k != "name"})
    if not isinstance(name, str) or name.lower() not in registry:
        where = path if isinstance(value, str) else path + ("name",)
        problems.add(where, f"{what}={name!r} is unknown; allowed: {', '.join(sorted(registry))}")
        return
    target = registry[name.lower()]
    target = target[0] if isinstance(target, tuple) else target
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = None
    takes_any = params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, arg in args.items():
        if not takes_any and key not in params and key not in skip:
            problems.add(path + (key,), f"{what} {name!r} has no argument {key!r}; allowed: "
                                        f"{', '.join(k for k in params if k != 'self')}")
            continue
        if check is not None:
            try:
                check(name, key, arg)
            except ConfigError as err:
                problems.add(path + (key,), str(err))


def _loss_builds(value, path: tuple, problems) -> None:
    """The loss can be made with its arguments (its own checks: types and ranges)."""
    from tfopt import losses
    from tfopt.errors import ConfigError

    name, args = (value, {}) if isinstance(value, str) else (value.get("name"), {k: v for k, v in value.items()
                                                                              if k != "name"})
    try:
        losses.get(name, **args)
    except (ConfigError, TypeError, ValueError) as err:
        problems.add(path, f"loss {name!r}: {err}")


def check_training(values: dict, problems) -> None:
    """Optimizer, schedule and loss names exist, take the arguments given, and those have the right type and range."""
    from tfopt import losses, optimizers, schedules

    path = ("training",)
    optimizer = values.get("optimizer")
    if isinstance(optimizer, (str, dict)):
        before = len(problems.items)
        _named_args(optimizer, path + ("optimizer",), optimizers.OPTIMIZERS, "optimizer", problems,
                    skip=("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"), check=optimizers.check_option)
        if isinstance(optimizer, dict) and "learning_rate" in optimizer and len(problems.items) == before:
            problems.add(path + ("optimizer", "learning_rate"), "the learning rate is set by training.learning_rate "
                                                                "(or training.schedule); remove it here")
    if isinstance(values.get("schedule"), (str, dict)):
        _named_args(values["schedule"], path + ("schedule",), schedules.SCHEDULES, "schedule", problems,
                    skip=("warmup_fraction",), check=schedules.check_option)
    if isinstance(values.get("loss"), (str, dict)):
        before = len(problems.items)
        _named_args(values["loss"], path + ("loss",), losses.LOSSES, "loss", problems)
        if len(problems.items) == before:
            _loss_builds(values["loss"], path + ("loss",), problems)


# what a stage whose technique needs a state is told when no earlier stage left it
NEEDS = {
    "trained": "'{t}' needs a trained model: put a 'train' (or 'tune') stage before it, or load one with model.path",
    "exported": "'{t}' measures exported TFLite files: put an 'export' stage before it",
}
_AFTER_EXPORT = "'{t}' after 'export': export (and evaluate) must come after every stage that changes the model"
_AFTER_QAT = ("'{t}' after 'quantize_aware' is not supported (tfmot cannot wrap a quantization-aware model); "
              "quantize_aware must be the last training stage")


def _producer(state: str) -> str:
    """The first technique that leaves ``state`` (what a ``preserve_*: true`` needs earlier)."""
    return next((name for name in list_techniques() if state in TECHNIQUES[name].sets), state)


def check_order(stages: list, model_spec, problems) -> None:
    """Each stage gets what it needs from the earlier ones; export variants name earlier models.

    Read from each stage's technique: what it ``needs`` (a trained model, exported files), the states it
    ``refuses_after``, whether it ``trains`` (nothing trains after quantization-aware training) or makes a
    model (nothing does after an export), and its ``preserves`` options (true needs the state; unset becomes
    whether the state is there).
    """
    states = {"trained"} if model_spec is not None and model_spec.path is not None else set()
    models_so_far: list[str] = []
    variant_names: set = set()
    for spec, path in stages:
        t, opts, technique = spec.type, spec.options, get_technique(spec.type)

        def bad(message, where=path):
            problems.add(where, f"{t}: {message}")

        if technique.makes_model and "exported" in states:
            bad(_AFTER_EXPORT.format(t=t))
        for state in technique.needs:
            if state not in states:
                bad(NEEDS.get(state, "'{t}' needs an earlier stage that leaves '" + state + "'").format(t=t))
        if technique.trains and "qat" in states and "qat" not in technique.sets:
            bad(_AFTER_QAT.format(t=t))
        for message in dict.fromkeys(m for state, m in technique.refuses_after.items() if state in states):
            bad(message)
        for option, state in technique.preserves.items():
            if opts.get(option) and state not in states:
                bad(f"{option}: true needs an earlier '{_producer(state)}' stage", path + (option,))
        for option, state in technique.preserves.items():
            if opts.get(option) is None:
                opts[option] = state in states
        for key, field in technique.options.items():
            if field.section == "variants":
                _check_variants(spec, key, path, models_so_far, variant_names, problems)
            elif field.section == "stage" and opts.get(key) is not None:
                earlier = models_so_far + (["model"] if model_spec is not None and model_spec.path else [])
                if opts[key] not in earlier:
                    problems.add(path + (key,), f"{t}: {key}={opts[key]!r} is not an earlier stage that makes a "
                                                f"model; allowed: {', '.join(earlier) or 'none (no earlier stage)'}")
        states = (states - set(technique.clears)) | set(technique.sets)
        if technique.makes_model:
            models_so_far.append(spec.name)


def _check_variants(spec, key: str, path: tuple, models_so_far: list, variant_names: set, problems) -> None:
    """Validate each export variant; fill in its model (default: the latest model) and TFLite quantization."""
    variants = spec.options.get(key)
    if not isinstance(variants, list):
        return
    current = models_so_far[-1] if models_so_far else "model"
    allowed_models = models_so_far or ["model"]
    cleaned = []
    for j, item in enumerate(variants):
        vpath = path + (key, j)
        v = read_section(item, VARIANT, vpath, problems, "export variant")
        if v is None:
            continue
        if v["name"] in variant_names:
            problems.add(vpath + ("name",), f"variant name {v['name']!r} is used twice; names become file names")
        variant_names.add(v["name"])
        v["model"] = v["model"] or current
        if v["model"] not in allowed_models:
            problems.add(vpath + ("model",), f"model={v['model']!r} is not an earlier stage that makes a model; "
                                             f"allowed: {', '.join(allowed_models)}")
        v["tflite_quantization"] = QUANTIZATION_NAMES.get(v["quantization"] or "float32")
        if v["io_dtype"] != "float32" and v["tflite_quantization"] not in CALIBRATED:
            problems.add(vpath + ("io_dtype",), f"io_dtype={v['io_dtype']!r} needs quantization int8 or int16x8")
        cleaned.append(v)
    spec.options[key] = cleaned
    baseline = spec.options.get("baseline")
    names = [v["name"] for v in cleaned]
    if baseline is not None and cleaned and baseline not in names:
        problems.add(path + ("baseline",), f"baseline={baseline!r} is not a variant; allowed: {', '.join(names)}")
    elif baseline is None and names:
        spec.options["baseline"] = names[0]
