"""Measure what was shipped: accuracy of the TFLite model itself (LiteRT), bytes, gzip bytes, latency."""

from __future__ import annotations

import time

import numpy as np

from tfopt._keras import check_model, tf
from tfopt.errors import ConfigError, DataError, Number
from tfopt.export.tflite import TFLiteModel, _Runner, interpreter

__all__ = ["evaluate", "compare", "latency", "OPTIONS", "MAX_THREADS"]

MAX_THREADS = 256  # LiteRT aborts the whole process (in LLVM's thread pool) when asked for far more
# option -> its type and range (recipe validation checks the evaluate stage's options here too)
OPTIONS = {
    "threads": Number(1, MAX_THREADS, integer=True),
    "warmup": Number(0, 1_000_000, integer=True),
    "runs": Number(0, 1_000_000, integer=True),
    "limit": Number(1, integer=True),
}


def _checked(threads, warmup=0, runs=0, limit=None) -> None:
    for name, value in (("threads", threads), ("warmup", warmup), ("runs", runs), ("limit", limit)):
        if value is not None:
            OPTIONS[name](name, value)


def _as_tflite(model) -> TFLiteModel:
    if isinstance(model, TFLiteModel):
        return model
    if isinstance(model, (bytes, bytearray)):
        return TFLiteModel(content=bytes(model))
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return TFLiteModel.load(model)
    raise ConfigError(f"expected a TFLiteModel, flatbuffer bytes or a .tflite path, got {type(model).__name__}")


def _batches(dataset, limit=None):
    """Yield (x, y) NumPy batches from a dataset of (x, y) or a pair of arrays."""
    if isinstance(dataset, tf.data.Dataset):
        it = dataset.as_numpy_iterator()
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        it = iter([(np.asarray(dataset[0]), np.asarray(dataset[1]))])
    else:
        raise DataError(f"dataset must be a tf.data.Dataset of (x, y) or an (x, y) pair of arrays, got {type(dataset).__name__}")
    seen = 0
    for batch in it:
        if not isinstance(batch, tuple) or len(batch) < 2:
            raise DataError("dataset must yield (x, y) pairs with labels, to measure accuracy")
        x, y = np.asarray(batch[0]), np.asarray(batch[1])
        if limit is not None:
            x, y = x[: limit - seen], y[: limit - seen]
        yield x, y
        seen += len(x)
        if limit is not None and seen >= limit:
            return


def _labels(y):
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 and y.shape[-1] > 1 else y.reshape(-1).astype(np.int64)


def _predictions(out):
    out = np.asarray(out)
    return out.argmax(-1) if out.ndim > 1 and out.shape[-1] > 1 else (out.reshape(-1) > 0).astype(np.int64)


def latency(model, sample, threads: int = 1, warmup: int = 10, runs: int = 200) -> dict:
    """Latency of one batch-1 invocation in microseconds: p50, p90, mean (after ``warmup`` runs).

    Args:
        model: TFLiteModel, flatbuffer bytes, or a path to a ``.tflite`` file.
        sample: One input sample (without the batch axis).
        threads: Integer in [1, MAX_THREADS], interpreter threads.
        warmup: Integer >= 0, untimed invocations before timing.
        runs: Integer >= 1, timed invocations.

    >>> latency(tfl, x_test[0])["latency_us_p50"]  # doctest: +SKIP
    111.2
    """
    _checked(threads, warmup, runs)
    if runs < 1:
        raise ConfigError(f"runs={runs!r} is out of range; allowed: 1 <= runs <= 1000000")
    runner = _Runner(interpreter(_as_tflite(model).content, threads=threads))
    x = np.asarray(sample)[None]
    if runner.resizable and runner.inp["shape"][0] != 1:
        runner.predict(x)  # resizes to batch 1
    for _ in range(warmup):
        runner.invoke(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        runner.invoke(x)
        times[i] = (time.perf_counter() - start) * 1e6
    return {
        "latency_us_p50": float(np.percentile(times, 50)),
        "latency_us_p90": float(np.percentile(times, 90)),
        "latency_us_mean": float(times.mean()),
        "threads": threads,
        "runs": runs,
    }


def evaluate(model, dataset, threads: int = 1, warmup: int = 10, runs: int = 200, limit: int | None = None,
             return_predictions: bool = False) -> dict:
    """Run a TFLite model with the LiteRT interpreter over ``dataset`` and measure it.

    Pass the test split to report what was shipped (select on validation, report on test). The accuracy
    comes with its 95% Wilson interval over the ``n`` examples, the recall of each class and the confusion
    matrix, so a model that ignores a rare class is visible.

    Args:
        model: TFLiteModel, flatbuffer bytes, or a path to a ``.tflite`` file.
        dataset: tf.data.Dataset of (x, y) batches (integer or one-hot labels), or an (x, y) pair of arrays.
        threads: Integer in [1, MAX_THREADS], interpreter threads for accuracy and latency.
        warmup: Integer >= 0, untimed invocations before timing.
        runs: Integer >= 0, timed batch-1 invocations (0 skips latency).
        limit: Integer >= 1 or None, evaluate at most this many samples.
        return_predictions: Boolean, also return ``predictions`` and ``labels`` (lists of class ids in the
            dataset's order), e.g. to compare two models on the same examples with
            :func:`tfopt.stats.paired_comparison`.

    Returns:
        Dict with ``accuracy``, ``n``, ``accuracy_ci95`` ([low, high]), ``per_class_recall`` (a list, None for
        a class without examples), ``confusion`` (rows = true class, columns = predicted class), ``bytes``,
        ``gzip_bytes``, ``latency_us_p50``, ``latency_us_p90``, ``latency_us_mean``, ``threads``,
        ``input_dtype``; ``predictions`` and ``labels`` when asked.

    >>> evaluate(tfl, test_ds)["accuracy"], evaluate(tfl, test_ds)["accuracy_ci95"]  # doctest: +SKIP
    (0.978, [0.9679, 0.9848])
    """
    from tfopt.stats import confusion_matrix, per_class_recall, wilson_interval

    _checked(threads, warmup, runs, limit)
    tfl = _as_tflite(model)
    runner = _Runner(interpreter(tfl.content, threads=threads))
    predictions, labels = [], []
    first = None
    for x, y in _batches(dataset, limit):
        if first is None and len(x):
            first = x[0]
        predictions.append(_predictions(runner.predict(x.astype(np.float32))).astype(np.int64))
        labels.append(_labels(y).astype(np.int64))
    total = sum(len(p) for p in predictions)
    if total == 0:
        raise DataError("dataset is empty: nothing to evaluate the TFLite model on")
    predictions, labels = np.concatenate(predictions), np.concatenate(labels)
    if labels.min() < 0:
        raise DataError(f"labels must be class ids >= 0 (or one-hot), got {int(labels.min())}")
    correct = int((predictions == labels).sum())
    outputs = int(runner.out["shape"][-1]) if len(runner.out["shape"]) > 1 else 1
    num_classes = max(outputs if outputs > 1 else 2, int(labels.max()) + 1, int(predictions.max()) + 1)
    confusion = confusion_matrix(labels, predictions, num_classes)
    result = {
        "accuracy": correct / total,
        "n": total,
        "accuracy_ci95": list(wilson_interval(correct, total)),
        "per_class_recall": per_class_recall(confusion),
        "confusion": confusion,
        "bytes": tfl.bytes,
        "gzip_bytes": tfl.gzip_bytes,
        "input_dtype": np.dtype(runner.inp["dtype"]).name,
    }
    if return_predictions:
        result.update(predictions=predictions.tolist(), labels=labels.tolist())
    if runs:
        result.update(latency(tfl, first, threads=threads, warmup=warmup, runs=runs))
    return result


def compare(keras_model, tflite_model, dataset, limit: int | None = None) -> dict:
    """Agreement between a Keras model and its TFLite conversion on ``dataset``.

    Returns:
        Dict with ``agreement`` (fraction of equal top-1 predictions), ``max_abs_diff`` of the outputs,
        ``keras_accuracy``, ``tflite_accuracy`` and ``n``.
    """
    check_model(keras_model, "compare")
    _checked(1, limit=limit)
    runner = _Runner(interpreter(_as_tflite(tflite_model).content))
    agree = k_ok = t_ok = total = 0
    max_diff = 0.0
    for x, y in _batches(dataset, limit):
        k = keras_model.predict(x, verbose=0)
        t = runner.predict(x.astype(np.float32))
        max_diff = max(max_diff, float(np.abs(k - t).max()))
        kp, tp, labels = _predictions(k), _predictions(t), _labels(y)
        agree += int((kp == tp).sum())
        k_ok += int((kp == labels).sum())
        t_ok += int((tp == labels).sum())
        total += len(x)
    if total == 0:
        raise DataError("dataset is empty: nothing to compare on")
    return {
        "agreement": agree / total,
        "max_abs_diff": max_diff,
        "keras_accuracy": k_ok / total,
        "tflite_accuracy": t_ok / total,
        "n": total,
    }
