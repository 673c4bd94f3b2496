"""Measure what was shipped: accuracy of the TFLite model itself (LiteRT), bytes, gzip bytes, latency."""

from __future__ import annotations

import time

import numpy as np

from tfopt._keras import check_model, tf
from tfopt.errors import ConfigError, DataError
from tfopt.export.tflite import TFLiteModel, _Runner, interpreter
from tfopt.options import Number, options_from
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["evaluate", "evaluate_splits", "compare", "latency", "baseline_row", "compare_with_baseline",
           "write_predictions", "read_predictions", "PREDICTIONS", "OPTIONS", "MAX_THREADS"]

PREDICTIONS = "predictions.json"  # an evaluate stage's per-example test predictions, for paired comparisons
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


def evaluate_splits(model, val_data, test_data, threads: int = 1, warmup: int = 10, runs: int = 200,
                    limit: int | None = None) -> dict:
    """Measure a TFLite model on validation (to select on) and on test (to report): select on validation,
    report on test.

    Args:
        model: TFLiteModel, flatbuffer bytes, or a path to a ``.tflite`` file.
        val_data: The validation split, as :func:`evaluate` takes it: its accuracy is for choosing.
        test_data: The test split: every reported figure (accuracy and interval, recall, confusion, latency).
        threads, warmup, runs, limit: As for :func:`evaluate` (latency is timed once, on the test split).

    Returns:
        :func:`evaluate`'s dict for the test split with its predictions, where ``accuracy`` and ``n`` are the
        test split's, plus ``test_accuracy``, ``test_n``, ``test_accuracy_ci95``, ``test_per_class_recall``,
        ``test_confusion`` (instead of ``per_class_recall`` and ``confusion``), ``val_accuracy``, ``val_n`` and
        ``val_accuracy_ci95``; ``predictions`` and ``labels`` are the test split's, for
        :func:`compare_with_baseline`.

    >>> row = evaluate_splits("m.tflite", val_ds, test_ds)  # doctest: +SKIP
    >>> row["val_accuracy"], row["test_accuracy"], row["test_accuracy_ci95"]  # doctest: +SKIP
    (0.981, 0.976, [0.9650, 0.9837])
    """
    tfl = _as_tflite(model)
    val = evaluate(tfl, val_data, threads=threads, runs=0, limit=limit)
    test = evaluate(tfl, test_data, threads=threads, warmup=warmup, runs=runs, limit=limit, return_predictions=True)
    recall, confusion = test.pop("per_class_recall"), test.pop("confusion")
    return {**test, "test_accuracy": test["accuracy"], "test_n": test["n"],
            "test_accuracy_ci95": test["accuracy_ci95"], "test_per_class_recall": recall, "test_confusion": confusion,
            "val_accuracy": val["accuracy"], "val_n": val["n"], "val_accuracy_ci95": val["accuracy_ci95"]}


def baseline_row(rows: list, baseline: str | None):
    """The row (a dict with ``"variant"``) of ``baseline`` among ``rows``, or the first row when none is named or
    it is not there (None for no rows). Differences, ratios and choices are made against it, among the rows of its
    ``"data"`` section: a variant of another data section (another task) was measured on other examples.

    >>> baseline_row([{"variant": "a"}, {"variant": "b"}], "b"), baseline_row([{"variant": "a"}], None)
    ({'variant': 'b'}, {'variant': 'a'})
    """
    return next((r for r in rows if r["variant"] == baseline), rows[0] if rows else None)


def compare_with_baseline(outcomes: dict, baseline: str | None) -> dict:
    """Each variant against the baseline on the same test examples (:func:`tfopt.stats.paired_comparison`).

    Args:
        outcomes: ``{variant: {"labels": [...], "predictions": [...], "data": {...}}}`` on the test split (as
            :func:`evaluate_splits` returns them, or :func:`read_predictions` reads them back); ``data``
            (optional) names the data section the test split came from.
        baseline: String or None, the variant compared against.

    Returns:
        ``{variant: {"test_delta", "test_delta_ci95", "mcnemar_p", "significant_drop", "test_discordant"}}``
        where ``test_delta`` is the variant's test accuracy minus the baseline's, ``test_delta_ci95`` its
        95% interval (paired bootstrap, seed 0), ``mcnemar_p`` the exact McNemar p-value,
        ``significant_drop`` whether it is a drop with p < 0.05 (the test decides, not the interval),
        ``test_discordant`` ``[baseline right only, variant right only]``. A variant measured on other examples
        than the baseline (another data section, or other labels) is left out: two tasks of as many classes
        and test examples can have the same labels; so is everything when the baseline was not measured.

    >>> out = {"a": {"labels": [0, 1, 1], "predictions": [0, 1, 1]}, "b": {"labels": [0, 1, 1], "predictions": [0, 0, 1]}}
    >>> compare_with_baseline(out, "a")["b"]["test_discordant"], compare_with_baseline(out, "a")["a"]["mcnemar_p"]
    ([1, 0], 1.0)
    """
    from tfopt.stats import paired_comparison

    if baseline not in outcomes:
        return {}
    base_labels = np.asarray(outcomes[baseline]["labels"])
    base_right = np.asarray(outcomes[baseline]["predictions"]) == base_labels
    base_data = outcomes[baseline].get("data")
    out = {}
    for variant, outcome in outcomes.items():
        labels = np.asarray(outcome["labels"])
        if (outcome.get("data") != base_data or labels.shape != base_labels.shape
                or not np.array_equal(labels, base_labels)):
            continue
        r = paired_comparison(base_right, np.asarray(outcome["predictions"]) == labels)
        out[variant] = {"test_delta": r["delta"], "test_delta_ci95": r["delta_ci"], "mcnemar_p": r["p_value"],
                        "significant_drop": bool(r["significant"] and r["delta"] < 0),
                        "test_discordant": [r["a_only"], r["b_only"]]}
    return out


def write_predictions(path, outcomes: dict):
    """Save ``{variant: {"labels", "predictions", "data"}}`` (test split; ``data`` optional: the data section it
    came from) as JSON, atomically; returns the path."""
    import json

    from tfopt._io import atomic_write_text

    content = {"split": "test", "variants": {name: {"labels": [int(v) for v in o["labels"]],
                                                    "predictions": [int(v) for v in o["predictions"]],
                                                    **({"data": o["data"]} if o.get("data") is not None else {})}
                                             for name, o in outcomes.items()}}
    return atomic_write_text(path, json.dumps(content, separators=(",", ":")) + "\n")


def read_predictions(path) -> dict:
    """Read a file :func:`write_predictions` wrote, checked: ``{variant: {"labels", "predictions"}}`` (and
    ``"data"`` where the file records it).

    A damaged file (not JSON, or not that shape) is one ConfigError naming the file and what is wrong.
    """
    import json
    from pathlib import Path

    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        variants = content["variants"]
        if not isinstance(variants, dict):
            raise TypeError("'variants' is not an object")
        out = {}
        for name, outcome in variants.items():
            labels, predictions = outcome["labels"], outcome["predictions"]
            for key, ids in (("labels", labels), ("predictions", predictions)):
                if not isinstance(ids, list) or not all(type(v) is int and v >= 0 for v in ids):
                    raise TypeError(f"{name}.{key} is not a list of class ids")
            if len(labels) != len(predictions) or not labels:
                raise TypeError(f"{name} has {len(labels)} labels and {len(predictions)} predictions")
            out[name] = {"labels": labels, "predictions": predictions}
            if "data" in outcome:
                if not isinstance(outcome["data"], dict):
                    raise TypeError(f"{name}.data is not an object")
                out[name]["data"] = outcome["data"]
        return out
    except json.JSONDecodeError as err:
        why = f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    except (KeyError, TypeError, AttributeError) as err:
        why = f"not the shape tfopt writes ({err if not isinstance(err, KeyError) else f'no {err}'})"
    except (UnicodeDecodeError, RecursionError, OSError) as err:
        why = f"unreadable ({type(err).__name__})"
    raise ConfigError(f"{path} is damaged: {why}")


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


# ---------------------------------------------------------------- the "evaluate" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The evaluate stage: every exported variant measured with LiteRT on the validation split (to choose on)
    and the fixed test split (to report) of its model's data, and compared with the baseline on the same test
    examples; the per-example test predictions are kept in the stage's ``predictions.json``."""
    rows, outcomes = [], {}
    for row in inputs.exported:
        _, val_ds, _ = inputs.load(row["data"])
        measured = evaluate_splits(inputs.run_dir / row["path"], val_ds, inputs.test(row["data"]), threads=o["threads"],
                                   warmup=o["warmup"], runs=o["runs"], limit=o["limit"])
        outcomes[row["variant"]] = {"labels": measured.pop("labels"), "predictions": measured.pop("predictions"),
                                    "data": row["data"]}
        rows.append({**row, **measured})
    write_predictions(inputs.stage_dir / PREDICTIONS, outcomes)
    compared = compare_with_baseline(outcomes, inputs.baseline)
    rows = [{**r, **compared.get(r["variant"], {})} for r in rows]
    if not rows:
        return StageResult(None, {"variants": rows}, "nothing exported")
    base_data = baseline_row(rows, inputs.baseline)["data"]
    # chosen on validation among the files of the baseline's task, reported on test
    best = max((r for r in rows if r["data"] == base_data), key=lambda r: r["val_accuracy"])
    low, high = best["test_accuracy_ci95"]
    return StageResult(None, {"variants": rows}, f"best on validation {best['variant']} ({best['val_accuracy']:.4f}): "
                       f"test accuracy {best['test_accuracy']:.4f} [95% CI {low:.4f}, {high:.4f}], n={best['test_n']:,}")


TECHNIQUE = register_technique(Technique(
    "evaluate",
    options_from(evaluate, ["threads", "runs", "warmup", "limit"],
                 **{key: {"check": OPTIONS[key]} for key in ("threads", "warmup", "limit")},
                 runs={"default": 100, "check": OPTIONS["runs"], "help": "timed batch-1 runs per file (100 in a recipe, which measures every variant)"}),
    _run_stage, summary="measure each exported TFLite file with LiteRT: validation and test accuracy (with a 95% "
    "interval, per-class recall, confusion, the paired difference to the baseline), bytes, gzip bytes, latency",
    function=evaluate, own_defaults=("runs",), makes_model=False, trains=False, needs=("exported",)))
