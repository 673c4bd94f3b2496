"""One trial's work: build, compile, fit (resuming Hyperband parents), compress, and measure a tf_keras model."""

from __future__ import annotations

import inspect

import numpy as np

from tfopt import schedules
from tfopt._keras import check_model, keras, tf
from tfopt._model import strategy_scope, weight_count
from tfopt.flops import flops
from tfopt.errors import ConfigError
from tfopt.techniques import TECHNIQUES

__all__ = ["SCHEDULES", "build_model", "compile_model", "fit", "compress", "measure", "infer_data"]


# the one schedule vocabulary (a name, or a dict with its arguments; see tfopt.schedules.from_settings)
SCHEDULES = schedules.SCHEDULES


def infer_data(train_ds, val_ds, input_shape=None, num_classes=None) -> tuple[tuple, int]:
    """``(input_shape, num_classes)``: the given ones, else read from the datasets' specs and labels."""
    spec = train_ds.element_spec
    if input_shape is None:
        input_shape = tuple(int(d) for d in spec[0].shape[1:])
    if num_classes is None:
        y_spec = spec[1]
        if y_spec.shape.rank == 2 and y_spec.shape[-1] and y_spec.shape[-1] > 1:
            num_classes = int(y_spec.shape[-1])
        else:
            top = max(int(ds.map(lambda x, y, *w: tf.reduce_max(tf.cast(y, tf.int64))).reduce(
                tf.constant(0, tf.int64), tf.maximum)) for ds in (train_ds, val_ds))
            num_classes = top + 1
    return tuple(input_shape), int(num_classes)


def build_model(build: dict, input_shape, num_classes: int):
    """A registry model from a trial's builder settings (arguments a chosen builder does not take are dropped)."""
    from tfopt.models import build_for, get_builder

    name = build["model"]
    params = inspect.signature(get_builder(name)).parameters
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in build.items() if k != "model" and k in params}
    return build_for(name, {"input_shape": input_shape, "num_classes": num_classes}, **kwargs)


def compile_model(model, training: dict, steps_per_epoch: int, epochs: int, force: bool = True):
    """Compile ``model`` from a trial's training settings (a user's compiled model is kept unless ``force``).

    Args:
        model: tf_keras model.
        training: Dict of training settings (optimizer, learning_rate, schedule, weight_decay, label_smoothing),
            read as :func:`tfopt.train.compile_from_settings` reads a recipe's.
        steps_per_epoch: Integer, batches per epoch (for schedules).
        epochs: Integer, the epochs the schedule spans.
        force: Bool, compile even when the model is already compiled.
    """
    from tfopt.train import compile_from_settings

    check_model(model, "tune")
    if model.optimizer is not None and not force:
        return model
    return compile_from_settings(model, training, steps_per_epoch, epochs)


def _augmented(train_ds, augment, input_shape):
    if not augment:
        return train_ds
    from tfopt.data import get_augmentation

    fn = get_augmentation(augment, input_shape)
    # a class-weighted train set yields (x, y, w): the weight passes through
    return train_ds.map(lambda x, y, *w: (*fn(x, y), *w), num_parallel_calls=tf.data.AUTOTUNE)


class _EpochCounter(keras.callbacks.Callback):
    """Counts the epochs ``fit`` really ran."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def on_epoch_end(self, epoch, logs=None):
        self.count += 1


def fit(model, train_ds, val_ds, training: dict, epochs: int, initial_epoch: int, input_shape, verbose=0) -> dict:
    """Train epochs ``initial_epoch .. epochs`` and return the last epoch's training logs plus ``epochs_trained``."""
    counter = _EpochCounter()
    history = model.fit(
        _augmented(train_ds, training.get("augment"), input_shape),
        epochs=epochs,
        initial_epoch=initial_epoch,
        callbacks=[counter],
        verbose=verbose,
    )
    logs = {k: float(v[-1]) for k, v in history.history.items() if v}
    for name in list(logs):
        if not np.isfinite(logs[name]):
            from tfopt.errors import TrainingError

            raise TrainingError(f"training diverged: {name}={logs[name]} after {counter.count} epoch(s)")
    return {**logs, "epochs_trained": counter.count}


def chain() -> list:
    """The techniques a trial can apply after training, in their ``tune_order``: those with ``tune_keys`` and
    an ``apply`` (prune, then cluster, and any registered later)."""
    return sorted((t for t in TECHNIQUES.values() if t.apply is not None and t.tune_keys), key=lambda t: t.tune_order)


def _turned_on(compression: dict) -> list:
    """The techniques of :func:`chain` a trial's ``compression`` turns on: their first tune key set to a value that
    is not None or 0 (a per-layer dict: one layer's value that is not), in order."""
    def on(value):
        return any(value.values()) if isinstance(value, dict) else bool(value)

    return [t for t in chain() if on(compression.get(next(iter(t.tune_keys))))]


def compression_epochs(compression: dict) -> int:
    """The fine-tuning epochs of the first technique of :func:`chain` a trial's ``compression`` turns on (its
    epochs key, else its option's default; 1 when none is on): what a trained model's schedule spans.

    >>> compression_epochs({"target_sparsity": 0.5, "prune_epochs": 4, "n_clusters": 8})
    4
    """
    import tfopt.compress  # noqa: F401  (its techniques register on import)

    for technique in _turned_on(compression)[:1]:
        for key, target in technique.tune_keys.items():
            if target == "epochs":
                epochs = compression.get(key, technique.options["epochs"].default)
                return int(epochs) if isinstance(epochs, int) and epochs >= 1 else 1
    return 1


def compress(model, train_ds, compression: dict, strategy=None, verbose=0):
    """Apply each technique of :func:`chain` a trial's ``compression`` settings turn on (the first of its
    ``tune_keys`` set and not 0), in order; returns the stripped, compiled model.

    An option that preserves a state (cluster's ``preserve_sparsity``) is true when a technique earlier in the
    chain left it (the trial was pruned first).
    """
    import tfopt.compress  # noqa: F401  (its techniques register on import)

    states: set = set()
    for technique in _turned_on(compression):
        keys = technique.tune_keys
        # a key declared by an option's name passes that option; a key declared with a Field of its own, itself
        options = {target if isinstance(target, str) else key: compression[key] for key, target in keys.items()
                   if key in compression}
        options.update({option: state in states for option, state in technique.preserves.items()})
        model = technique.apply(model, train_ds, strategy=strategy, verbose=verbose, **options)
        states |= set(technique.sets)
    return model


def measure(model, train_ds, val_ds, compression: dict, needs: set, latency_runs: int = 50) -> dict:
    """The metrics of the final model: val_loss/val_accuracy (+ other compiled metrics), params, and the
    TFLite ones when ``needs`` holds "export" or "tflite_eval"."""
    results = model.evaluate(val_ds, verbose=0, return_dict=True)
    metrics = {f"val_{k}": float(v) for k, v in results.items()}
    metrics["params"], metrics["nonzero_params"] = weight_count(model)
    metrics["flops"] = flops(model)
    if needs & {"export", "tflite_eval"}:
        from tfopt.export import CALIBRATED, INT4_QUANTIZATIONS, evaluate, to_tflite

        quantization = compression.get("quantization")
        rep = train_ds if quantization in CALIBRATED else None
        tfl = to_tflite(model, quantization=quantization, representative_data=rep,
                        layer_bits=compression.get("layer_bits") if quantization in INT4_QUANTIZATIONS else None)
        metrics["tflite_bytes"] = int(tfl.bytes)
        metrics["tflite_gzip_bytes"] = int(tfl.gzip_bytes)
        if "tflite_eval" in needs:
            report = evaluate(tfl, val_ds, runs=latency_runs, warmup=5)
            metrics["tflite_accuracy"] = float(report["accuracy"])
            metrics["latency_us_p50"] = float(report["latency_us_p50"])
    return metrics


def check_user_model(model, where: str = "tune space function"):
    """The model a user's ``hp -> model`` function returned, checked to be a tf_keras model."""
    if model is None:
        raise ConfigError(f"{where} returned None; it must return a tf_keras model")
    return check_model(model, where)


def scope(strategy):
    """The strategy scope to build and compile in (a no-op without a strategy)."""
    return strategy_scope(strategy)
