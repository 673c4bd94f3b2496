"""The keys of every recipe section (see ``recipes/*.yaml`` for examples); a stage's keys are its technique's options.

The stage types, their options and which of them make a model are read from the technique registry
(:mod:`tfopt.techniques`) each time: a technique registered by a user is a stage type like the built-in ones.
Allowed values come from the library's own registries (augmentations, strategies, precisions, quantizations).
"""

from __future__ import annotations

import tfopt.compress  # noqa: F401  (the modules declaring the built-in techniques: they register on import)
import tfopt.export  # noqa: F401
import tfopt.train  # noqa: F401
import tfopt.tune  # noqa: F401
from tfopt import distribute
from tfopt.data import AUGMENTATIONS, BALANCE
from tfopt.export import QUANTIZATION_NAMES, VARIANT
from tfopt.options import (
    BOOL, FLOAT, INT, LIST, MAP, NONE, STR, Field, at_least, in_unit, int_list, positive, safe_name, seed_range,
)
from tfopt.techniques import TECHNIQUES, get_technique, list_techniques

__all__ = ["TOP", "DATA", "MODEL", "TRAINING", "VARIANT", "STUDENT", "QUANTIZATION_NAMES", "NAME", "stage_options",
           "stage_types", "model_stages", "STAGE_OPTIONS", "STAGE_TYPES", "MODEL_STAGES"]

TOP = {
    "name": Field((STR,), required=True, check=safe_name),
    "description": Field((STR, NONE)),
    "seed": Field((INT,), 0, check=seed_range),
    "data": Field((MAP,), required=True),
    "model": Field((MAP,), required=True),
    "training": Field((MAP, NONE), None),
    "stages": Field((LIST, NONE), None),
}

DATA = {
    "name": Field((STR,), required=True),
    "val_fraction": Field((FLOAT,), 0.2, check=in_unit(low_open=True)),
    "data_dir": Field((STR, NONE)),
    "cache": Field((BOOL,), True),
    "classes": Field((LIST, NONE), None, check=int_list(2, 0)),
    "vocab_size": Field((INT, NONE), None, check=at_least(3)),
    "seq_len": Field((INT, NONE), None, check=at_least(1)),
    "balance": Field((STR, NONE), None, choices=BALANCE),  # class balancing of train only (tfopt.data.load)
}

MODEL = {
    "builder": Field((STR, NONE)),
    "args": Field((MAP, NONE), None),
    "path": Field((STR, NONE)),
}

STUDENT = {
    "builder": Field((STR,), required=True),
    "args": Field((MAP, NONE), None),
}

TRAINING = {
    "epochs": Field((INT,), 5, check=at_least(1)),
    "batch_size": Field((INT,), 64, check=at_least(1)),
    "optimizer": Field((STR, MAP), "adam"),
    "learning_rate": Field((FLOAT,), 1e-3, check=positive),
    "schedule": Field((STR, MAP, NONE), None),
    "loss": Field((STR, MAP), "sparse_categorical_crossentropy"),
    "label_smoothing": Field((FLOAT, NONE), None, check=in_unit()),
    "l1": Field((FLOAT,), 0.0, check=at_least(0)),
    "l2": Field((FLOAT,), 0.0, check=at_least(0)),
    "augment": Field((STR, NONE), None, choices=tuple(AUGMENTATIONS)),
    "strategy": Field((STR, NONE), None, choices=tuple(distribute.STRATEGIES)),
    "mixed_precision": Field((STR, NONE), None, choices=tuple(distribute.PRECISIONS)),
    "jit_compile": Field((BOOL, NONE), None),
    "steps_per_execution": Field((INT, NONE), None, check=at_least(1)),
    # tf.config.experimental.enable_op_determinism(): a resumed run ends with the same numbers as an
    # uninterrupted one (see tfopt.pipeline.run.context.apply_determinism)
    "deterministic": Field((BOOL,), False),
}

# every stage's own key: its name (the folder NN_name; default the type, numbered when repeated)
NAME = Field((STR, NONE), None, check=safe_name)


def stage_options() -> dict:
    """Stage type -> ``{key: Field}``: ``name`` and the technique's options, for every registered technique."""
    return {name: {"name": NAME, **get_technique(name).options} for name in list_techniques()}


def stage_types() -> tuple:
    """The stage types a recipe may use: every registered technique."""
    return tuple(list_techniques())


def model_stages() -> tuple:
    """The stage types whose output is a Keras model (what an export variant's ``model:`` may name)."""
    return tuple(name for name in list_techniques() if TECHNIQUES[name].makes_model)


def __getattr__(name: str):
    derived = {"STAGE_OPTIONS": stage_options, "STAGE_TYPES": stage_types, "MODEL_STAGES": model_stages}
    if name in derived:  # read from the registry each time: a technique registered later counts
        return derived[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
