"""Hyperparameter search for tf_keras models with keras-tuner's oracles: architecture, training and
compression settings in one space, objectives measured on the Keras or the exported TFLite model,
constraints, Pareto fronts, resumable and distributed (chief/worker) searches.

>>> from tfopt import data, tune
>>> train_ds, val_ds, test_ds, info = data.load("digits", batch_size=64)  # doctest: +SKIP
>>> result = tune.search({"model": "cnn", "filters": [[4], [8]], "dense": [[16]],
...                       "quantization": [None, "dynamic"]}, train_ds, val_ds,
...                      algorithm="random", objectives=["val_accuracy", "tflite_gzip_bytes"],
...                      max_trials=4, max_epochs=1, directory="runs")  # doctest: +SKIP
>>> result.table()  # doctest: +SKIP
"""

from tfopt.tune.distributed import distributed_env, role_from_env, serve
from tfopt.tune.objectives import METRICS, parse_constraints, parse_objectives
from tfopt.tune.oracles import ORACLES
from tfopt.tune.pareto import dominates, pareto_front, plot_pareto
from tfopt.tune.per_layer import search_compression
from tfopt.tune.results import SearchResult, Trials
from tfopt.tune.spaces import DEFAULT_SPACES, TRAINING_KEYS, Space, compression_keys
from tfopt.tune.training import SCHEDULES
from tfopt.tune.tuner import TfoptTuner, run_role, search, search_stage


def __getattr__(name: str):
    if name == "COMPRESSION_KEYS":  # derived from the technique registry each time it is read
        return compression_keys()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "search",
    "search_compression",
    "run_role",
    "search_stage",
    "SearchResult",
    "Trials",
    "Space",
    "DEFAULT_SPACES",
    "TRAINING_KEYS",
    "COMPRESSION_KEYS",
    "compression_keys",
    "SCHEDULES",
    "METRICS",
    "ORACLES",
    "TfoptTuner",
    "pareto_front",
    "plot_pareto",
    "dominates",
    "parse_objectives",
    "parse_constraints",
    "distributed_env",
    "role_from_env",
    "serve",
]
