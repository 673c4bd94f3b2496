"""Figure 9, 4-bit weight QAT: the int4 file of a pruned model after ``quantize_aware_int4`` against post-training int4.

The compression figure's pruned models (per-layer budgets, fine-tuned on augmented digits; ``compression.planned``),
per model and seed, each exported with int4 weights (8 bits only for the layers under 1% of the weights, which cost
no bytes) after one of:

- nothing more ("post-training int4": the LiteRT quantizer rounds each channel onto its 15 levels);
- the same extra epochs of fine-tuning without the levels, zeros kept (prune again at the same per-layer budgets,
  constant schedule): the control, so that what QAT gains is not the extra training;
- ``quantize_aware_int4`` for those epochs (tfmot's 4-bit per-channel fake quantization, zeros kept): the file then
  stores every trained weight exactly, which each run checks by reading the codes back;
- the compression figure's 8 clusters (3 epochs), for size.

Test accuracy per seed with its 95% Wilson interval, the paired test difference QAT - control (95% interval, exact
McNemar p), and the gzip bytes. The epochs and rate were chosen on the VALIDATION digits of seed 10, which no figure
reports (:data:`TUNING`). The headline: mean test accuracy of the QAT file minus the control's, in points.

>>> python -m benchmarks.int4_qat [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np

from benchmarks import common, compression
from tfopt import compress, export

NAME = "int4_qat"
MODELS = {"lenet-300-100": 0.97, "cnn": 0.985}  # the overall sparsity of each model's figure's chosen variant
EPOCHS, LEARNING_RATE = (10, 1), 1e-3  # (full, quick); Adam, chosen on seed 10's validation digits (TUNING)
TUNING = [
    "LeNet-300-100 pruned 97%, seed 10, val accuracy of the int4 file (800 digits): post-training 0.9650; "
    "quantize_aware_int4 3 epochs at 1e-4 0.9625, 3 at 1e-3 0.9663, 10 at 1e-3 0.9688; 8 clusters 0.9600",
    "the documents' CNN pruned 98.5%, seed 10, the same: post-training 0.9775; quantize_aware_int4 3 epochs at 1e-4 "
    "0.9763, 3 at 1e-3 0.9825, 10 at 1e-3 0.9838; 8 clusters 0.9800 (the control was not run: it takes the settings "
    "QAT was given)",
]


def _small_layers_at_8_bits(arch: str, settings) -> dict:
    """Layer -> 8 for the layers holding under compression.INT8_SHARE of the weights (they cost no bytes)."""
    scan = compression.scan(arch, settings)
    total = sum(entry["size"] for entry in scan["layers"].values())
    return {name: 8 for name, entry in scan["layers"].items() if entry["size"] < compression.INT8_SHARE * total}


def _exact(model, content: bytes) -> bool:
    """Whether the file stores the Keras kernels exactly: for every kernel stored in 4 bits, its codes times the
    channel's scale (``max|w| / 7``, the quantizer's) give back each weight (post-training int4 rounds them)."""
    stored, bits = export.tflite_weights(content), export.tflite_weight_bits(content)
    checked = 0
    for layer in model.layers:
        name = next((n for n in stored if f"/{layer.name}/" in n and bits[n] == 4), None)
        if name is None or not hasattr(layer, "kernel"):
            continue
        kernel = layer.kernel.numpy()
        channels = np.moveaxis(kernel, -1, 0).reshape(kernel.shape[-1], -1)
        scale = np.abs(channels).max(axis=1, keepdims=True) / 7
        codes = stored[name].reshape(channels.shape[0], -1).astype(np.float64)
        if not np.allclose(codes * scale, channels, rtol=1e-6, atol=1e-9):
            return False
        checked += 1
    return checked > 0


def _one_seed(arch: str, target: float, settings) -> list[dict]:
    train_aug = compression._augmented_train(settings).train
    _, val_ds, test_ds, _ = common.load_data(settings)
    float_tfl = export.to_tflite(common.baseline(arch, settings))
    base = common.val_test(float_tfl, val_ds, test_ds)
    base_correct = base.pop("correct")
    bits = _small_layers_at_8_bits(arch, settings) or None
    pruned, budgets = compression.planned(arch, target, None, settings)
    clustered, _ = compression.planned(arch, target, compression.CLUSTERS, settings)
    epochs = settings.pick(*EPOCHS)
    common.set_seed(settings.seed)
    control = compress.prune(pruned, train_aug, budgets["sparsity"], epochs=epochs, schedule="constant",
                             learning_rate=LEARNING_RATE, verbose=0)
    common.set_seed(settings.seed)
    four = compress.quantize_aware_int4(pruned, train_aug, epochs=epochs, preserve_sparsity=True,
                                        learning_rate=LEARNING_RATE, verbose=0)
    rows = []
    for variant, model in (("post-training int4", pruned), (f"+ {epochs} epochs, zeros kept (control)", control),
                           (f"+ quantize_aware_int4 {epochs} epochs", four),
                           (f"+ {compression.CLUSTERS} clusters (the compression figure's)", clustered)):
        tfl = export.to_tflite(model, "int4", layer_bits=bits)
        measured = common.val_test(tfl, val_ds, test_ds)
        correct = measured.pop("correct")
        stats = export.weight_stats(tfl.content)
        rows.append({"model": arch, "seed": settings.seed, "variant": variant, "gzip_bytes": tfl.gzip_bytes,
                     "ratio": float_tfl.gzip_bytes / tfl.gzip_bytes, **measured, "correct": correct,
                     "float_test_accuracy": base["test_accuracy"], **common.compare(base_correct, correct),
                     "sparsity": stats["sparsity"], "values_per_channel": stats["max_values_per_channel"],
                     "exact": _exact(model, tfl.content)})
    return rows


def _headline_row(deltas: list, spread: dict) -> dict:
    """The summary row of the headline: QAT's test accuracy - the control's, mean over models and seeds."""
    return {"label": f"int4 QAT: test accuracy of the quantize_aware_int4 file - the control's (the same extra "
                     f"epochs without the levels), points, mean over {len(deltas)} model-seeds",
            "value": statistics.mean(deltas), "unit": " points",
            "interval": f"per model-seed [{spread['min']:+.1f}, {spread['max']:+.1f}]", "goal": "report", "met": None}


def run(settings: common.Settings) -> dict:
    """Headline: mean test accuracy of the quantize_aware_int4 file minus the control's (same extra epochs without
    the levels), in points, over models and seeds."""
    seeds = settings.pick([settings.seed, settings.seed + 1, settings.seed + 2], [settings.seed])
    rows, deltas, summary = [], [], []
    for arch, target in MODELS.items():
        per_seed = []
        for seed in seeds:
            per_seed += _one_seed(arch, target, dataclasses.replace(settings, seed=seed))
        for seed in seeds:
            mine = [r for r in per_seed if r["seed"] == seed]
            control, four = mine[1], mine[2]
            paired = common.compare(control.pop("correct"), four["correct"])
            four["vs_control"] = paired
            deltas.append(paired["test_delta_points"])
            for r in mine:
                r.pop("correct", None)
        for r in per_seed:
            rows.append([arch, r["seed"], r["variant"], f"{r['val_accuracy']:.4f}",
                         common.fmt_acc(r["test_accuracy"], r["test_accuracy_ci95"]), common.fmt_delta(r),
                         common.fmt_delta(r["vs_control"]) + f", p {common.fmt_p(r['vs_control']['mcnemar_p'])}"
                         if "vs_control" in r else "", f"{r['gzip_bytes']:,}", round(r["ratio"], 1),
                         f"{100 * r['sparsity']:.1f}%", r["values_per_channel"], "yes" if r["exact"] else "no"])
        by_variant = {}
        for r in per_seed:
            by_variant.setdefault(r["variant"], []).append(r)
        for variant, rs in by_variant.items():
            summary.append({
                "label": f"{arch} pruned {100 * target:g}%, {variant}: test accuracy of the int4 file (mean of "
                         f"{len(rs)} seed(s); gzip {statistics.mean(r['gzip_bytes'] for r in rs):,.0f} bytes, "
                         f"{statistics.mean(r['ratio'] for r in rs):.1f}x smaller than float32)",
                "value": statistics.mean(r["test_accuracy"] for r in rs), "unit": "",
                "interval": "per seed " + ", ".join(f"{r['test_accuracy']:.3f}" for r in rs),
                "goal": "report", "met": None})
    spread = common.spread(deltas)
    summary.insert(0, _headline_row(deltas, spread))
    notes = [
        "models: the compression figure's planned variants (per-layer budgets, fine-tuned on augmented digits), "
        + ", ".join(f"{arch} at {100 * t:g}% overall" for arch, t in MODELS.items()) + "; int4 weights per channel "
        "(8 bits for the layers under 1% of the weights); float activations.",
        f"control and QAT: {settings.pick(*EPOCHS)} epochs of Adam at {LEARNING_RATE:g} on the augmented digits from "
        "the same pruned model; the control prunes again at the same per-layer budgets with a constant schedule "
        "(zeros kept, no levels); quantize_aware_int4 keeps the zeros.",
        "test Δ vs float32 = the file's test accuracy - the float32 file's on the same digits; QAT - control likewise "
        "[95% paired bootstrap interval], exact McNemar p; 'exact' = the file's int4 codes are the Keras kernels' "
        "own, read back.",
        "chosen on validation before this run: " + "; ".join(TUNING) + ".",
    ]
    return common.figure(
        NAME, "test accuracy of the quantize_aware_int4 file - the control's (same epochs, no levels), points",
        statistics.mean(deltas), " points", "report", None, spread,
        ["model", "seed", "variant", "val accuracy", "test accuracy [95% CI]", "test Δ vs float32 (points)",
         "test Δ QAT - control", "gzip bytes", "x smaller", "sparsity", "values per channel", "exact"],
        rows, summary=summary, notes=notes,
        details={"deltas_points": deltas, "seeds": seeds, "models": MODELS, "epochs": settings.pick(*EPOCHS),
                 "learning_rate": LEARNING_RATE, "tuning": TUNING})


if __name__ == "__main__":
    common.main(NAME, run)
