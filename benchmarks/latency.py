"""Figure 2, latency: float32 TFLite p50 over each variant's p50, batch 1, at one thread and at all threads.

Variants of the documents' CNN: float16, dynamic-range, full int8 (post-training), and the pruned +
clustered + PCQAT int8 model exported with ``sparse=True`` (the same model the compression figure
ships). Rounds are interleaved (every variant once per round, the order rotating) and each round's
p50 is divided by the same round's float32 p50, so machine drift cancels; the table gives the median
ratio with its min and max over rounds.

>>> python -m benchmarks.latency [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import common, compression
from tfopt import export

NAME = "latency"


def variants(settings: common.Settings) -> dict:
    """Name -> TFLiteModel of the CNN, float32 first."""
    train_ds = common.load_data(settings).train
    base = common.baseline("cnn", settings)
    sparse_qat = compression.compressed("cnn", 0.90, 16, settings)
    return {
        "float32": export.to_tflite(base),
        "float16": export.to_tflite(base, "float16"),
        "dynamic": export.to_tflite(base, "dynamic"),
        "int8": export.to_tflite(base, "int8", representative_data=train_ds),
        "sparse int8 (90% + 16 clusters, PCQAT)": export.to_tflite(sparse_qat, "int8", representative_data=train_ds,
                                                                    sparse=True),
    }


def measure(models: dict, sample, threads: int, rounds: int, runs: int) -> dict:
    """``{name: {"p50": [per round], "ratio": [float32 p50 / p50, per round], "note": str or None}}``."""
    names = list(models)
    p50 = {n: [] for n in names}
    notes = {}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            value, notes[n] = common.latency_p50(models[n], sample, threads=threads, runs=runs)
            p50[n].append(value)
    base = p50[names[0]]
    return {n: {"p50": p50[n], "ratio": [b / v for b, v in zip(base, p50[n])], "note": notes[n]} for n in names}


def run(settings: common.Settings) -> dict:
    """Measure every variant at 1 thread and at all threads; the headline is the fastest's 1-thread ratio."""
    test_ds = common.load_data(settings).test
    sample = next(iter(test_ds.as_numpy_iterator()))[0][0].astype(np.float32)
    models = variants(settings)
    rounds, runs = settings.pick(7, 2), settings.pick(400, 50)
    all_threads = os.cpu_count() or 1
    rows, summary, details, headline = [], [], {}, None
    for threads in sorted({1, all_threads}):
        result = measure(models, sample, threads, rounds, runs)
        ratios = {n: common.spread(v["ratio"]) for n, v in result.items()}
        fastest = max(ratios, key=lambda n: ratios[n]["median"])
        details[f"threads_{threads}"] = {n: {"p50_us": common.spread(v["p50"]), "ratio": ratios[n]}
                                         for n, v in result.items()}
        for n, v in result.items():
            p, q = common.spread(v["p50"]), ratios[n]
            mark = (" **fastest**" if n == fastest else "") + (" (no XNNPACK)" if v["note"] else "")
            rows.append([threads, n + mark, models[n].bytes,
                         round(p["median"], 1), f"{p['min']:.0f}-{p['max']:.0f}", round(q["median"], 2),
                         f"{q['min']:.2f}-{q['max']:.2f}"])
        summary.append({"label": f"latency, {threads} thread(s): float32 p50 / fastest ({fastest}) p50",
                        "value": ratios[fastest]["median"], "unit": "x", "goal": "> 1x (a variant beats float32)",
                        "met": ratios[fastest]["median"] > 1.0})
        if headline is None:
            headline = ratios[fastest]
    notes = [
        f"batch 1, LiteRT interpreter, {rounds} interleaved rounds x {runs} timed invocations after 20 warm-up "
        "invocations; p50 in microseconds (median over rounds, min-max over rounds).",
        "speed-up = float32 p50 / variant p50 of the same round; > 1 is faster than float32.",
        "sparse=True adds Optimize.EXPERIMENTAL_SPARSITY (sparse-encoded weight tensors). XNNPACK's sparse "
        "kernels cover float 1x1 convolutions only; for this int8 file LiteRT's default XNNPACK delegate fails "
        "to prepare the sparse FULLY_CONNECTED node, so it runs on the builtin kernels without default "
        "delegates (marked 'no XNNPACK').",
    ]
    return common.figure(
        NAME, "float32 TFLite p50 latency / fastest variant's p50 (batch 1)", headline["median"], "x",
        "> 1x, fastest marked", summary[0]["met"], headline,
        ["threads", "variant", "bytes", "p50 µs", "p50 range", "speed-up", "speed-up range"], rows,
        summary=summary, notes=notes, details=details,
    )


if __name__ == "__main__":
    common.main(NAME, run)
