"""The technique registry: each way tfopt trains, compresses or ships a model is declared once, next to its function.

A :class:`Technique` says what a recipe stage of its type takes (its options: the recipe's keys, the
``tfopt run --set stage.option=VALUE`` keys and, through ``tune_keys``, the keys of a search space), how a
pipeline stage runs it (``run``), where it may stand among a recipe's stages (what it ``needs``, which
states it ``sets`` or ``clears``, what it ``refuses_after``, which options ``preserve`` an earlier state) and
how a search applies it to a trial's model (``apply``, in ``tune_order``). Recipe validation, the
pipeline's runner, its stage-order checks, the tune space and the command line read this registry; none
keeps a list of techniques of its own.

The built-in techniques are declared in ``tfopt.train`` (train), ``tfopt.compress`` (prune, cluster,
quantize_aware, distill, fine_tune), ``tfopt.export`` (export, evaluate) and ``tfopt.tune`` (tune). A
user's own technique is registered the same way and is then a recipe stage like the others:

>>> from tfopt.options import Field, FLOAT
>>> def run_noop(inputs, options):
...     return StageResult(inputs.model(), note="unchanged")
>>> t = register_technique(Technique("noop", {"level": Field((FLOAT,), 0.5)}, run_noop, summary="does nothing"))
>>> "noop" in list_techniques()
True
>>> unregister_technique("noop").summary
'does nothing'
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Callable

from tfopt.errors import ConfigError

__all__ = ["Technique", "StageInputs", "StageResult", "register_technique", "unregister_technique",
           "get_technique", "list_techniques", "TECHNIQUES", "STATES"]

# the states a recipe's stages leave behind (what ``needs``, ``sets``, ``clears``, ``refuses_after`` and
# ``preserves`` name): a trained model, its pruning, its clusters, quantization-aware layers, TFLite files
STATES = ("trained", "pruned", "clustered", "qat", "exported")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class Technique:
    """One technique: how recipes, the pipeline, searches and the command line use it.

    Attributes:
        name: String, the recipe's stage type and the command line's word (lower case, digits, ``_``).
        options: Dict of option name -> :class:`tfopt.options.Field` (build them from the function's
            signature with :func:`tfopt.options.options_from`): the stage's keys, checked at file:line.
        run: Callable ``(StageInputs, options dict) -> StageResult``: how a pipeline stage applies it.
        summary: String, one line for ``tfopt techniques``.
        function: The library function the options come from (its signature gives their defaults), or None.
        own_defaults: Tuple of option names whose recipe default differs from ``function``'s, on purpose
            (each option's ``help`` says why).
        makes_model: Boolean, the stage's output is a model (a later export variant may name it).
        trains: Boolean, it trains the model (so it cannot follow quantization-aware training, which tfmot
            cannot wrap again; a technique that itself sets "qat" is exempt).
        needs: Tuple of states an earlier stage must have left ("trained", "exported").
        sets: Tuple of states it leaves.
        clears: Tuple of states it removes (a new model: distill, fine_tune clear "pruned" and "clustered").
        refuses_after: Dict state -> message: it cannot follow a stage that left that state.
        preserves: Dict option -> state: a boolean option keeping an earlier state (true needs that state;
            unset means "whether it is there").
        tune_keys: Dict search-space key -> option name (validated by that option's Field) or a Field of
            its own; the first key turns the technique on in a trial (a value that is not None or 0).
        per_layer: Dict tune key -> Field of ONE layer's value: the search-space keys ``"<key>/<layer name>"`` tune
            that layer's value, and a trial passes the technique ``{layer name: value, ...}`` as ``<key>``
            (``target_sparsity/dense1``, ``n_clusters/conv2``, ``layer_bits/logits``). Each key is a tune key.
        tune_order: Integer, its place in a trial's compression chain (lower first).
        apply: Callable ``(model, train_ds, strategy=None, verbose=0, **options) -> model`` for a search's
            trials (options named as in ``tune_keys``' values), or None when searches do not apply it.
        check: Callable ``(options dict) -> str or None``: a problem between options (e.g. "give exactly one
            of a and b"), reported at the stage's file:line before anything runs; None when each option's own
            check is enough.
    """

    name: str
    options: dict
    run: Callable
    summary: str = ""
    function: Callable | None = None
    own_defaults: tuple = ()
    makes_model: bool = True
    trains: bool = True
    needs: tuple = ("trained",)
    sets: tuple = ()
    clears: tuple = ()
    refuses_after: dict = dataclasses.field(default_factory=dict)
    preserves: dict = dataclasses.field(default_factory=dict)
    tune_keys: dict = dataclasses.field(default_factory=dict)
    tune_order: int = 0
    per_layer: dict = dataclasses.field(default_factory=dict)
    apply: Callable | None = None
    check: Callable | None = None


@dataclasses.dataclass
class StageResult:
    """What a stage made: ``model`` (or None), ``metrics`` (JSON-able, for the manifest), ``note`` (the progress
    line) and ``data`` (a data section dict when the model is now for other data, as after fine_tune)."""

    model: object = None
    metrics: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    data: dict | None = None


@dataclasses.dataclass
class StageInputs:
    """What a stage is given by the pipeline that runs it (techniques never import the pipeline).

    Attributes:
        model: Callable ``model(name=None)``: the model the stage ``name`` made (None: the current model).
        model_data: Callable ``model_data(name)``: the data section (dict) the model of stage ``name`` is for.
        load: Callable ``load(data=None)``: ``(train_ds, val_ds, info)`` of a data section dict (None: the
            current model's data).
        test: Callable ``test(data=None)``: the fixed test split of that data (what reported figures are
            measured on, never what anything is chosen on).
        fresh_data: Callable ``fresh_data()``: forget the loaded datasets (load makes them afresh).
        build: Callable ``build(model_section, info)``: a new model from ``{"builder": ..., "args": ...}``
            (None: the recipe's model), its inputs and classes following ``info``.
        compile: Callable ``compile(model, train_ds, epochs)``: the recipe's optimizer, schedule and loss.
        regularize: Callable ``regularize(model)``: the model with the recipe's L1/L2 penalties.
        stage_dir: Path, the stage's folder.
        run_dir: Path, the run directory (paths in metrics are relative to it).
        backup_dir: Path, where a training stage keeps its resumable state (shared by every worker).
        training: Dict, the recipe's training settings.
        seed: Integer, the recipe's seed.
        project: String, the recipe's name.
        current: String or None, the stage whose model is the current one.
        exported: List of the rows of the TFLite files exported so far.
        baseline: String or None, the exported variant the others are compared with.
        verbose: Keras verbosity.
        strategy: tf.distribute strategy or None.
        name: String, the stage's own name (what a later stage or export variant calls its model).
    """

    model: Callable
    model_data: Callable
    load: Callable
    test: Callable
    fresh_data: Callable
    build: Callable
    compile: Callable
    regularize: Callable
    stage_dir: Path
    run_dir: Path
    backup_dir: Path
    training: dict
    seed: int = 0
    project: str = "run"
    current: str | None = None
    exported: list = dataclasses.field(default_factory=list)
    baseline: str | None = None
    verbose: object = "auto"
    strategy: object = None
    name: str = ""

    def history(self, fresh: bool = True) -> list:
        """Callbacks writing the stage's ``history.csv`` (removed first when ``fresh``: compression restarts)."""
        from tfopt._keras import keras

        path = Path(self.stage_dir) / "history.csv"
        if fresh and path.exists():
            path.unlink()
        return [keras.callbacks.CSVLogger(str(path), append=True)]

    @staticmethod
    def held_out(model, val_ds) -> dict:
        """``val_loss``, ``val_accuracy``, ``params``, ``nonzero_params`` and ``flops`` (multiply-adds per
        example) of ``model`` on ``val_ds``."""
        from tfopt._model import weight_count
        from tfopt.flops import flops

        values = model.evaluate(val_ds, verbose=0, return_dict=True)
        params, nonzero = weight_count(model)
        return {"val_loss": float(values.get("loss", float("nan"))),
                "val_accuracy": float(values.get("accuracy", values.get("sparse_categorical_accuracy",
                                                                         float("nan")))),
                "params": params, "nonzero_params": nonzero, "flops": flops(model)}


TECHNIQUES: dict[str, Technique] = {}


def register_technique(technique: Technique, overwrite: bool = False) -> Technique:
    """Register ``technique`` under its name; returns it.

    Args:
        technique: A :class:`Technique`.
        overwrite: Boolean, replace a different technique of the same name (the same declaration again,
            e.g. a reloaded module, always replaces it).

    Raises:
        ConfigError: a bad name, options that are not Fields, states outside :data:`STATES`, or a name taken.
    """
    from tfopt.options import Field

    t = technique
    if not isinstance(t, Technique):
        raise ConfigError(f"register_technique needs a Technique, got {type(t).__name__}")
    if not isinstance(t.name, str) or not _NAME.match(t.name):
        raise ConfigError(f"technique name {t.name!r} is not allowed; allowed: lower-case letters, digits and _, "
                          "starting with a letter")
    bad = [k for k, f in t.options.items() if not isinstance(f, Field)] + \
        [k for k, f in t.tune_keys.items() if not (isinstance(f, Field) or f in t.options)] + \
        [k for k, f in t.per_layer.items() if not (isinstance(f, Field) and k in t.tune_keys)]
    if bad or "name" in t.options or not callable(t.run):
        raise ConfigError(f"technique {t.name!r}: options must be Fields (not 'name', which every stage has), "
                          f"tune_keys must name options or be Fields, per_layer must map tune keys to Fields, run "
                          f"must be callable; check {bad or ['run']}")
    states = set(t.needs) | set(t.sets) | set(t.clears) | set(t.refuses_after) | set(t.preserves.values())
    if states - set(STATES):
        raise ConfigError(f"technique {t.name!r} names unknown states {sorted(states - set(STATES))}; "
                          f"allowed: {', '.join(STATES)}")
    old = TECHNIQUES.get(t.name)
    same = old is not None and (old.run.__module__, old.run.__qualname__) == (t.run.__module__, t.run.__qualname__)
    if old is not None and not same and not overwrite:
        raise ConfigError(f"a technique named {t.name!r} is already registered ({old.run.__module__}); pick "
                          "another name or pass overwrite=True")
    TECHNIQUES[t.name] = t
    return t


def unregister_technique(name: str) -> Technique:
    """Remove the technique ``name`` and return it (ConfigError when none is registered under that name)."""
    get_technique(name)
    return TECHNIQUES.pop(name)


def get_technique(name: str) -> Technique:
    """The technique registered as ``name``; ConfigError listing the registered ones otherwise."""
    try:
        return TECHNIQUES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown technique {name!r}; allowed: {', '.join(list_techniques())}") from None


def list_techniques() -> list[str]:
    """The registered techniques' names in the order a recipe uses them: those that make the first model
    (tune, train), those that change it, then those that ship and measure it (registration order within each).
    """
    order = sorted(TECHNIQUES.values(), key=lambda t: (not t.makes_model, bool(t.needs), "exported" in t.needs))
    return [t.name for t in order]
