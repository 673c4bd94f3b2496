"""Figure 2, latency: float32 TFLite p50 over each variant's p50, batch 1, at one thread and at all threads.

Variants of the documents' CNN: float16, dynamic-range, full int8 (post-training), and the pruned +
clustered + PCQAT int8 model exported with ``sparse=True`` (the same model the compression figure
ships). Rounds are interleaved (every variant once per round, the order rotating) and each round's
p50 is divided by the same round's float32 p50, so machine drift cancels; the table gives the median
ratio with its min and max over rounds. Beside each variant: its TEST accuracy (LiteRT, 1,000 fixed test
digits, 95% Wilson interval) and its paired test difference from the float32 file (95% interval, exact
McNemar p). Nothing here is chosen on accuracy; "fastest" is chosen on the timings it reports.

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
    accuracy = {n: common.tflite_eval(tfl, test_ds) for n, tfl in models.items()}
    base_correct = accuracy["float32"]["correct"]
    paired = {n: common.compare(base_correct, a["correct"]) for n, a in accuracy.items()}
    rounds, runs = settings.pick(7, 2), settings.pick(400, 50)
    all_threads = os.cpu_count() or 1
    rows, summary, details, headline = [], [], {}, None
    for threads in sorted({1, all_threads}):
        result = measure(models, sample, threads, rounds, runs)
        ratios = {n: common.spread(v["ratio"]) for n, v in result.items()}
        fastest = max(ratios, key=lambda n: ratios[n]["median"])
        details[f"threads_{threads}"] = {n: {"p50_us": common.spread(v["p50"]), "ratio": ratios[n]}
                                         for n, v in result.items()}
        details["test"] = {n: {"test_accuracy": a["accuracy"], "test_n": a["n"], "test_accuracy_ci95": a["ci95"],
                               **paired[n]} for n, a in accuracy.items()}
        for n, v in result.items():
            p, q = common.spread(v["p50"]), ratios[n]
            mark = (" **fastest**" if n == fastest else "") + (" (no XNNPACK)" if v["note"] else "")
            rows.append([threads, n + mark, models[n].bytes,
                         round(p["median"], 1), f"{p['min']:.0f}-{p['max']:.0f}", round(q["median"], 2),
                         f"{q['min']:.2f}-{q['max']:.2f}", common.fmt_acc(accuracy[n]["accuracy"], accuracy[n]["ci95"]),
                         "" if n == "float32" else common.fmt_delta(paired[n]),
                         "" if n == "float32" else common.fmt_p(paired[n]["mcnemar_p"])])
        f = paired[fastest]
        summary.append({"label": f"latency, {threads} thread(s): float32 p50 / fastest ({fastest}) p50; its test Δ "
                                 f"{common.fmt_delta(f)} pt, {common.significance(f)}",
                        "value": ratios[fastest]["median"], "unit": "x",
                        "interval": f"[{ratios[fastest]['min']:.2f}, {ratios[fastest]['max']:.2f}] over {rounds} rounds",
                        "goal": "> 1x (a variant beats float32)",
                        "met": ratios[fastest]["median"] > 1.0})
        if headline is None:
            headline = ratios[fastest]
    notes = [
        f"batch 1, LiteRT interpreter, {rounds} interleaved rounds x {runs} timed invocations after 20 warm-up "
        "invocations; p50 in microseconds (median over rounds, min-max over rounds).",
        "speed-up = float32 p50 / variant p50 of the same round; > 1 is faster than float32.",
        f"test accuracy: LiteRT on the {accuracy['float32']['n']:,} fixed test digits [95% Wilson interval]; test Δ = "
        "variant - float32 on the same digits, in points [95% paired bootstrap interval], p = exact McNemar; "
        "▼ a significant drop (p < 0.05), ▲ a significant gain. No choice here is made on accuracy.",
        "sparse=True adds Optimize.EXPERIMENTAL_SPARSITY (sparse-encoded weight tensors). XNNPACK's sparse "
        "kernels cover float 1x1 convolutions only; for this int8 file LiteRT's default XNNPACK delegate fails "
        "to prepare the sparse FULLY_CONNECTED node, so it runs on the builtin kernels without default "
        "delegates (marked 'no XNNPACK').",
    ]
    return common.figure(
        NAME, "float32 TFLite p50 latency / fastest variant's p50 (batch 1)", headline["median"], "x",
        "> 1x, fastest marked", summary[0]["met"], headline,
        ["threads", "variant", "bytes", "p50 µs", "p50 range", "speed-up", "speed-up range",
         "test accuracy [95% CI]", "test Δ (points) [95% CI]", "McNemar p"], rows,
        summary=summary, notes=notes, details=details,
    )


if __name__ == "__main__":
    common.main(NAME, run)
