"""One trial's work: build, compile, fit (resuming Hyperband parents), compress, and measure a tf_keras model."""

from __future__ import annotations

import inspect

import numpy as np

from tfopt._keras import check_model, keras, tf
from tfopt._model import outputs_logits, strategy_scope
from tfopt.errors import ConfigError

__all__ = ["SCHEDULES", "build_model", "compile_model", "fit", "compress", "measure", "infer_data"]


def _cosine(lr, total):
    from tfopt.schedules import warmup_cosine

    return warmup_cosine(lr, total)


def _warmup_cosine(lr, total):
    from tfopt.schedules import warmup_cosine

    return warmup_cosine(lr, total, warmup_steps=max(1, total // 10))


def _one_cycle(lr, total):
    from tfopt.schedules import one_cycle

    return one_cycle(lr, total)


def _exponential(lr, total):
    from tfopt.schedules import exponential

    return exponential(lr, decay_steps=max(1, total), decay_rate=0.1)


# schedule name -> (peak learning rate, total steps) -> rate or LearningRateSchedule
SCHEDULES = {
    "constant": lambda lr, total: lr,
    "cosine": _cosine,
    "warmup_cosine": _warmup_cosine,
    "one_cycle": _one_cycle,
    "exponential": _exponential,
}


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
            top = max(int(ds.map(lambda x, y: tf.reduce_max(tf.cast(y, tf.int64))).reduce(
                tf.constant(0, tf.int64), tf.maximum)) for ds in (train_ds, val_ds))
            num_classes = top + 1
    return tuple(input_shape), int(num_classes)


def build_model(build: dict, input_shape, num_classes: int):
    """A registry model from a trial's builder settings (arguments a chosen builder does not take are dropped)."""
    from tfopt.models import build as build_registered
    from tfopt.models import get_builder

    name = build["model"]
    params = inspect.signature(get_builder(name)).parameters
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in build.items() if k != "model" and k in params}
    if "vocab_size" not in kwargs and "input_shape" in params:
        kwargs.setdefault("input_shape", input_shape)
    if "num_classes" in params:
        kwargs.setdefault("num_classes", num_classes)
    return build_registered(name, **kwargs)


def compile_model(model, training: dict, steps_per_epoch: int, epochs: int, force: bool = True):
    """Compile ``model`` from a trial's training settings (a user's compiled model is kept unless ``force``).

    Args:
        model: tf_keras model.
        training: Dict of training settings (optimizer, learning_rate, schedule, weight_decay, label_smoothing).
        steps_per_epoch: Integer, batches per epoch (for schedules).
        epochs: Integer, the epochs the schedule spans.
        force: Bool, compile even when the model is already compiled.
    """
    from tfopt import optimizers
    from tfopt.losses import LabelSmoothingCrossEntropy

    check_model(model, "tune")
    if model.optimizer is not None and not force:
        return model
    lr = training.get("learning_rate", 1e-3)
    lr = SCHEDULES[training.get("schedule") or "constant"](lr, steps_per_epoch * max(1, epochs))
    optimizer = optimizers.get(training.get("optimizer") or "adam", learning_rate=lr,
                               weight_decay=training.get("weight_decay"))
    logits = outputs_logits(model)
    smoothing = training.get("label_smoothing") or 0.0
    if smoothing:
        loss = LabelSmoothingCrossEntropy(smoothing, from_logits=logits)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def _augmented(train_ds, augment, input_shape):
    if not augment:
        return train_ds
    from tfopt.data import get_augmentation

    fn = get_augmentation(augment, input_shape)
    return train_ds.map(lambda x, y: fn(x, y), num_parallel_calls=tf.data.AUTOTUNE)


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


def compress(model, train_ds, compression: dict, strategy=None, verbose=0):
    """Prune (``target_sparsity``) then cluster (``n_clusters``) ``model``; returns the stripped, compiled model."""
    sparsity = compression.get("target_sparsity") or 0.0
    if sparsity > 0:
        from tfopt.compress.prune import prune

        model = prune(model, train_ds, sparsity, epochs=compression.get("prune_epochs", 1),
                      strategy=strategy, verbose=verbose, learning_rate=None)
    n_clusters = compression.get("n_clusters")
    if n_clusters:
        from tfopt.compress.cluster import cluster

        model = cluster(model, train_ds, n_clusters, epochs=compression.get("cluster_epochs", 1),
                        preserve_sparsity=sparsity > 0, strategy=strategy, verbose=verbose)
    return model


def _nonzero(model) -> int:
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def measure(model, train_ds, val_ds, compression: dict, needs: set, latency_runs: int = 50) -> dict:
    """The metrics of the final model: val_loss/val_accuracy (+ other compiled metrics), params, and the
    TFLite ones when ``needs`` holds "export" or "tflite_eval"."""
    results = model.evaluate(val_ds, verbose=0, return_dict=True)
    metrics = {f"val_{k}": float(v) for k, v in results.items()}
    metrics["params"] = int(model.count_params())
    metrics["nonzero_params"] = _nonzero(model)
    if needs & {"export", "tflite_eval"}:
        from tfopt.export import evaluate, to_tflite

        quantization = compression.get("quantization")
        rep = train_ds if quantization == "int8" else None
        tfl = to_tflite(model, quantization=quantization, representative_data=rep)
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
