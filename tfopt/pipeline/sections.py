"""The keys of every recipe section and of every stage's options (see ``recipes/*.yaml`` for examples)."""

from __future__ import annotations

from tfopt.pipeline.schema import (
    ANY, BOOL, FLOAT, INT, LIST, MAP, NONE, STR, Field, at_least, declared, in_unit, int_list, positive, safe_name,
    seed_range,
)
from tfopt.data import BALANCE
from tfopt.export.evaluate import OPTIONS as EVALUATE

__all__ = ["TOP", "DATA", "MODEL", "TRAINING", "STAGE_OPTIONS", "VARIANT", "STUDENT", "STAGE_TYPES",
           "MODEL_STAGES", "QUANTIZATION_NAMES"]

AUGMENT = ("light", "standard")
STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "one_device")
# "float32" is the recipe's word for no quantization (tfopt.export.to_tflite's None)
QUANTIZATION_NAMES = {"float32": None, "dynamic": "dynamic", "float16": "float16", "int8": "int8",
                      "int16x8": "int16x8"}

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
    "augment": Field((STR, NONE), None, choices=AUGMENT),
    "strategy": Field((STR, NONE), None, choices=STRATEGIES),
    "mixed_precision": Field((STR, NONE), None, choices=("float32", "mixed_float16", "mixed_bfloat16")),
    "jit_compile": Field((BOOL, NONE), None),
    "steps_per_execution": Field((INT, NONE), None, check=at_least(1)),
    # tf.config.experimental.enable_op_determinism(): a resumed run ends with the same numbers as an
    # uninterrupted one (see tfopt.pipeline.context.apply_determinism)
    "deterministic": Field((BOOL,), False),
}

_NAME = Field((STR, NONE), None, check=safe_name)

VARIANT = {
    "name": Field((STR,), required=True, check=safe_name),
    "quantization": Field((STR, NONE), "float32", choices=tuple(QUANTIZATION_NAMES)),
    "model": Field((STR, NONE), None),
    "io_dtype": Field((STR,), "float32", choices=("float32", "int8", "uint8")),
    "sparse": Field((BOOL,), False),
}

STAGE_OPTIONS = {
    "tune": {
        "name": _NAME,
        "space": Field((ANY,), required=True),
        "algorithm": Field((STR,), "hyperband", choices=("hyperband", "random", "bayesian", "grid")),
        "objective": Field((STR,), "val_accuracy"),
        "max_trials": Field((INT,), 10, check=at_least(1)),
        "max_epochs": Field((INT,), 3, check=at_least(1)),
        "constraints": Field((MAP, NONE), None),
        "objectives": Field((LIST, NONE), None),
    },
    "train": {
        "name": _NAME,
        "epochs": Field((INT, NONE), None, check=at_least(1)),
    },
    "prune": {
        "name": _NAME,
        "target_sparsity": Field((FLOAT,), required=True, check=in_unit()),
        "epochs": Field((INT,), 2, check=at_least(1)),
        "schedule": Field((STR,), "polynomial", choices=("polynomial", "constant")),
        "initial_sparsity": Field((FLOAT,), 0.0, check=in_unit()),
        "frequency": Field((INT, NONE), None, check=at_least(1)),
        "m_by_n": Field((LIST, NONE), None, check=int_list(2, 1, 2)),
        "policy": Field((STR, NONE), None, choices=("xnnpack",)),
        "learning_rate": Field((FLOAT,), 1e-3, check=positive),
    },
    "cluster": {
        "name": _NAME,
        "n_clusters": Field((INT,), 16, check=at_least(2)),
        "init": Field((STR,), "kmeans++", choices=("kmeans++", "linear", "density", "random")),
        "per_channel": Field((BOOL,), False),
        "preserve_sparsity": Field((BOOL, NONE), None),
        "epochs": Field((INT,), 1, check=at_least(1)),
        "learning_rate": Field((FLOAT,), 1e-5, check=positive),
    },
    "quantize_aware": {
        "name": _NAME,
        "epochs": Field((INT,), 1, check=at_least(0)),
        "preserve_sparsity": Field((BOOL, NONE), None),
        "preserve_clusters": Field((BOOL, NONE), None),
        "learning_rate": Field((FLOAT,), 1e-4, check=positive),
    },
    "distill": {
        "name": _NAME,
        "student": Field((MAP,), required=True),
        "temperature": Field((FLOAT,), 4.0, check=positive),
        "alpha": Field((FLOAT,), 0.1, check=in_unit(high_open=False)),
        "epochs": Field((INT, NONE), None, check=at_least(1)),
        "learning_rate": Field((FLOAT,), 1e-3, check=positive),
    },
    "fine_tune": {
        "name": _NAME,
        "data": Field((MAP,), required=True),
        "num_classes": Field((INT, NONE), None, check=at_least(2)),
        "freeze": Field((STR, INT), "all", check=lambda v: None if v == "all" or (isinstance(v, int) and v >= 0)
                        else "'all' or an integer >= 0"),
        "epochs": Field((LIST,), [1, 1], check=int_list(2, 0, 2)),
        "lr_scale": Field((FLOAT,), 0.1, check=positive),
        "learning_rate": Field((FLOAT,), 1e-3, check=positive),
        "head_dropout": Field((FLOAT,), 0.0, check=in_unit()),
    },
    "export": {
        "name": _NAME,
        "variants": Field((LIST,), required=True, check=lambda v: None if v else "a non-empty list of variants"),
        "baseline": Field((STR, NONE), None),
        "num_samples": Field((INT,), 200, check=at_least(1)),
    },
    "evaluate": {
        "name": _NAME,
        **{key: Field((INT,) if default is not None else (INT, NONE), default, check=declared(key, EVALUATE[key]))
           for key, default in (("threads", 1), ("runs", 100), ("warmup", 10), ("limit", None))},
    },
}

STAGE_TYPES = tuple(STAGE_OPTIONS)
# stages whose output is a Keras model (what an export variant's `model:` may name)
MODEL_STAGES = ("tune", "train", "prune", "cluster", "quantize_aware", "distill", "fine_tune")
