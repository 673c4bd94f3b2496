"""Figure 7, constrained search: a size-budgeted search reaches the documents' CNN's accuracy at a tenth of its size.

The documents' CNN (filters (32, 64), dense (128,), dropout 0.25, trained with the demo recipe) is
exported to float32 TFLite; its gzip size sets the budget: a tenth of it. ``tfopt.tune.search``
(Hyperband) then searches CNN widths, dropout, learning rate and the export's quantization (int8 or
dynamic) under ``constraints={"tflite_gzip_bytes": budget}``, the size being measured on each trial's
quantized export. Everything else follows the demo recipe (AdamW, warm-up cosine, label smoothing 0.1).

The test digits are never seen by the search: it trains on mnist_5k's 3,200 training digits and scores
trials on its 800 validation digits. The best feasible hyperparameters are then retrained on the training
digits for the baseline's epochs, exported, and both TFLite files are run by LiteRT on the 1,000 fixed
test digits (their validation accuracies are shown beside, for reference).

Headline: baseline TFLite test accuracy - best feasible model's TFLite test accuracy, in points, paired on
the same test digits with its 95% interval and exact McNemar p (goal <= 1 point, with its gzip bytes under
a tenth of the baseline's).

>>> python -m benchmarks.constrained_search [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

from benchmarks import common
from tfopt import export, train
from tfopt._keras import set_seed

NAME = "constrained_search"
BUDGET_FRACTION = 10  # the tuned model's gzip bytes must be under 1/BUDGET_FRACTION of the baseline's
TOLERANCE = 1.0  # points of test accuracy
# the demo recipe (see common.compile_demo); only the peak learning rate is searched
RECIPE = {"optimizer": {"fixed": "adamw"}, "weight_decay": {"fixed": 1e-4},
          "schedule": {"fixed": "warmup_cosine"}, "label_smoothing": {"fixed": 0.1}}


def space(quick: bool = False) -> dict:
    """The search space (``tfopt.tune`` dict format); the quick one holds only small, feasible CNNs.

    Args:
        quick: Boolean, the tiny space of a quick run.

    >>> space(quick=True)["quantization"]
    {'fixed': 'int8'}
    """
    if quick:
        return {"model": "cnn", "filters": [[8, 16]], "dense": [[32]], "dropout": {"fixed": 0.1},
                "learning_rate": {"fixed": 2e-3}, "quantization": {"fixed": "int8"}, **RECIPE}
    return {
        "model": "cnn",
        "filters": [[16, 32], [32, 64]],
        "dense": [[32], [64], [128]],
        "dropout": {"min": 0.0, "max": 0.4, "step": 0.1},
        "learning_rate": {"min": 1e-3, "max": 4e-3, "sampling": "log"},
        "quantization": ["int8", "dynamic"],
        **RECIPE,
    }


def budget_bytes(baseline_gzip_bytes: int) -> int:
    """The largest gzip size strictly under a tenth of the baseline's (the search's upper bound).

    Args:
        baseline_gzip_bytes: Integer, the baseline's float32 TFLite gzip bytes.

    >>> budget_bytes(1_565_659)
    156565
    """
    return (int(baseline_gzip_bytes) - 1) // BUDGET_FRACTION


def retrain(hyperparameters: dict, train_ds, info, epochs: int, seed: int):
    """A model built from a trial's settings and trained on ``train_ds`` for ``epochs`` (its schedule spans them).

    Args:
        hyperparameters: Dict, a trial's settings (``SearchResult.best_hyperparameters``).
        train_ds: tf.data.Dataset of (x, y) batches.
        info: The dataset's info (input_shape, num_classes).
        epochs: Integer, the epochs to train.
        seed: Integer, seeds the initial weights.
    """
    from tfopt._model import count_steps
    from tfopt.tune import training
    from tfopt.tune.spaces import split

    build_cfg, train_cfg, _ = split(hyperparameters)
    set_seed(seed)
    model = training.build_model(build_cfg, info.input_shape, info.num_classes)
    training.compile_model(model, train_cfg, count_steps(train_ds), epochs)
    train.fit(model, train_ds, epochs=epochs, verbose=0)
    return model


def _row(label, hps, model, tfl, measured, paired, base_gzip):
    return [label, str(tuple(hps["filters"])), str(tuple(hps["dense"])), round(float(hps["dropout"]), 2),
            f"{float(hps['learning_rate']):.2g}", tfl.quantization or "float32", model.count_params(), tfl.bytes,
            tfl.gzip_bytes, round(base_gzip / tfl.gzip_bytes, 1), f"{measured['val_accuracy']:.4f}",
            common.fmt_acc(measured["test_accuracy"], measured["test_accuracy_ci95"]),
            common.fmt_delta(paired) if paired else "", common.fmt_p(paired["mcnemar_p"]) if paired else "",
            measured["note"] or ""]


def run(settings: common.Settings) -> dict:
    """Headline: baseline float32 TFLite accuracy - best feasible tuned model's TFLite accuracy (points)."""
    from tfopt.tune import search

    train_ds, val_ds, test_ds, info = common.load_data(settings)
    kwargs, full_epochs, quick_epochs = common.BASELINES["cnn"]
    epochs = settings.pick(full_epochs, quick_epochs)
    base = common.baseline("cnn", settings)
    base_tfl = export.to_tflite(base)
    base_eval = common.val_test(base_tfl, val_ds, test_ds)
    base_acc = base_eval["test_accuracy"]
    bound = budget_bytes(base_tfl.gzip_bytes)

    max_epochs, max_trials = settings.pick(9, 1), settings.pick(30, 2)
    result = search(space(settings.quick), train_ds, val_ds, algorithm="hyperband", objective="val_accuracy",
                    max_trials=max_trials, max_epochs=max_epochs, constraints={"tflite_gzip_bytes": bound},
                    directory=str(common.scratch_dir("csearch")), project_name="csearch",
                    overwrite=True, seed=settings.seed, verbose=0)
    done = [t for t in result.trials if t["status"] in ("COMPLETED", "INFEASIBLE")]
    feasible = [t for t in done if t["status"] == "COMPLETED"]
    trained_epochs = sum(int(t.get("epochs_trained") or 0) for t in done)
    base_hps = {**kwargs, "learning_rate": 2e-3}
    rows = [_row("documents' CNN (demo recipe)", base_hps, base, base_tfl, base_eval, None, base_tfl.gzip_bytes)]
    notes = [
        f"budget: gzip bytes <= {bound:,} (under 1/{BUDGET_FRACTION} of the baseline's float32 "
        f"{base_tfl.gzip_bytes:,}); accuracies: LiteRT on the exported files, val on the 800 validation digits "
        "(reference; the search chose on validation), test on the 1,000 fixed test digits [95% Wilson interval] "
        "(0.1 point = 1 digit); test Δ = model - baseline on the same test digits [95% paired bootstrap "
        "interval], p = exact McNemar, ▼ a significant drop (p < 0.05).",
        f"search: tfopt.tune.search, Hyperband (factor 3, max_epochs={max_epochs}, at most {max_trials} trials), "
        "objective val_accuracy, constraint tflite_gzip_bytes measured on each trial's quantized export; trained "
        f"on the 3,200 training digits and scored on the 800 validation digits: {len(done)} trials, "
        f"{len(feasible)} feasible, {trained_epochs} epochs trained.",
        "space: filters (16, 32) or (32, 64); dense (32,), (64,) or (128,); dropout 0-0.4; peak learning rate "
        "1e-3-4e-3 (log); quantization int8 or dynamic; AdamW (weight decay 1e-4), warm-up cosine, label "
        "smoothing 0.1 as in the demo recipe." if not settings.quick else "quick space: one small int8 CNN.",
        f"the best feasible hyperparameters are retrained on the 3,200 training digits for the baseline's "
        f"{epochs} epochs (same seed) and exported with their quantization (int8: calibrated on training "
        "batches); its float32 export is shown for reference.",
    ]
    if result.best_hyperparameters is None:
        notes.append("no feasible trial: the figure failed")
        return common.figure(NAME, "baseline CNN TFLite test accuracy - best feasible tuned model's (points)",
                             float("nan"), " pt", f"<= {TOLERANCE:g} pt with gzip < 1/{BUDGET_FRACTION}", False,
                             common.spread([]), _COLUMNS, rows, notes=notes, details={"budget": bound})

    hps = result.best_hyperparameters
    model = retrain(hps, train_ds, info, epochs, settings.seed)
    quant = hps.get("quantization")
    tfl = export.to_tflite(model, quant, representative_data=train_ds if quant == "int8" else None)
    tuned = common.val_test(tfl, val_ds, test_ds)
    float_tfl = export.to_tflite(model)
    tuned_float = common.val_test(float_tfl, val_ds, test_ds)
    paired = common.compare(base_eval["correct"], tuned["correct"])
    paired_float = common.compare(base_eval["correct"], tuned_float["correct"])
    acc, float_acc = tuned["test_accuracy"], tuned_float["test_accuracy"]
    drop = -paired["test_delta_points"]
    ratio = base_tfl.gzip_bytes / tfl.gzip_bytes
    fits = tfl.gzip_bytes <= bound
    met = fits and drop <= TOLERANCE + 1e-9
    trial = result.best_trial
    rows += [
        _row(f"best feasible, {quant} **tuned**" + ("" if fits else " (over budget)"), hps, model, tfl, tuned,
             paired, base_tfl.gzip_bytes),
        _row("best feasible, float32 export (reference)", hps, model, float_tfl, tuned_float, paired_float,
             base_tfl.gzip_bytes),
    ]
    notes.append(f"the search scored the best feasible trial ({trial['trial_id']}) val_accuracy "
                 f"{trial['metrics'].get('val_accuracy', float('nan')):.4f} on the 800 search-validation digits "
                 f"with gzip {int(trial['metrics'].get('tflite_gzip_bytes', 0)):,} bytes.")
    summary = [
        {"label": "constrained search (trial chosen on validation): baseline CNN TFLite test accuracy - tuned "
                  f"model's (gzip < 1/10); {common.significance(paired)}, McNemar p {common.fmt_p(paired['mcnemar_p'])}",
         "value": drop, "unit": " pt",
         "interval": (f"drop [{-paired['test_delta_ci95_points'][1]:.1f}, {-paired['test_delta_ci95_points'][0]:.1f}]; "
                      f"test accuracy {common.fmt_acc(base_acc, base_eval['test_accuracy_ci95'])} -> "
                      f"{common.fmt_acc(acc, tuned['test_accuracy_ci95'])}, n={tuned['test_n']}"),
         "goal": f"<= {TOLERANCE:g} pt test drop (point estimate), gzip < 1/{BUDGET_FRACTION}", "met": met},
        {"label": "constrained search: baseline float32 gzip / tuned model's gzip", "value": ratio, "unit": "x",
         "goal": f">= {BUDGET_FRACTION}x", "met": ratio > BUDGET_FRACTION},
    ]
    return common.figure(
        NAME, "baseline CNN TFLite test accuracy - best feasible tuned model's TFLite test accuracy (points), "
              f"gzip under 1/{BUDGET_FRACTION}", drop, " pt", f"<= {TOLERANCE:g} pt with gzip < 1/{BUDGET_FRACTION}",
        met, common.spread([drop]), _COLUMNS, rows, summary=summary, notes=notes,
        details={"budget": bound, "baseline_accuracy": base_acc, "tuned_accuracy": acc, "tuned_float_accuracy":
                 float_acc, "test_n": tuned["test_n"], "baseline_test_accuracy_ci95": base_eval["test_accuracy_ci95"],
                 "tuned_test_accuracy_ci95": tuned["test_accuracy_ci95"], "baseline_val_accuracy":
                 base_eval["val_accuracy"], "tuned_val_accuracy": tuned["val_accuracy"], "tuned_vs_baseline_test": paired, "baseline_gzip_bytes": base_tfl.gzip_bytes, "tuned_gzip_bytes": tfl.gzip_bytes,
                 "gzip_ratio": ratio, "best_hyperparameters": hps, "trials": len(done), "feasible": len(feasible),
                 "epochs_trained": trained_epochs, "best_trial": trial["trial_id"],
                 "search_val_accuracy": trial["metrics"].get("val_accuracy")},
    )


_COLUMNS = ["model", "filters", "dense", "dropout", "peak lr", "export", "params", "bytes", "gzip bytes",
            "x smaller (gzip)", "val accuracy", "test accuracy [95% CI]", "test Δ (points) [95% CI]", "McNemar p",
            "note"]


if __name__ == "__main__":
    common.main(NAME, run)
