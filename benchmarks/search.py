"""Figure 6, search: epochs Hyperband spends to reach random search's best over random search's epochs.

Both search the same space (``tfopt.tune``'s small default CNN space: filters, dense width, dropout,
learning rate) on the same data with ``tfopt.tune.search``. Random search trains ``max_trials`` trials of
``max_epochs`` each; Hyperband (factor 3) trains many short trials and continues the best. Hyperband's
cost is counted in trial order (trial ids) up to the first trial whose val_accuracy is within 0.5 point
of random search's best.

Every choice here is made on VALIDATION (the 800 digits the searches score on): each search's best trial,
random search's best and Hyperband's comparison point. The test digits play no part; they only report
how each search's best model (as it was scored) does on the 1,000 fixed test digits, with a 95% Wilson
interval and the paired difference Hyperband - random.

>>> python -m benchmarks.search [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import math

from benchmarks import common

NAME = "search"
TOLERANCE = 0.005  # val_accuracy within 0.5 point
SPACE = "cnn"


def _search_fn():
    try:
        from tfopt.tune import search
    except ImportError:
        from tfopt.tune.tuner import search  # the module exists before the package re-exports it
    return search


def _epochs(record) -> int:
    """Epochs a trial really trained (a Hyperband continuation trains only epochs - initial_epoch)."""
    if record.get("epochs_trained") is not None:
        return int(record["epochs_trained"])
    return int(record.get("epochs") or 0) - int(record.get("initial_epoch") or 0)


def _completed(result) -> list:
    trials = [t for t in result.trials if t.get("status") == "COMPLETED"]
    return sorted(trials, key=lambda t: str(t.get("trial_id")))


def _acc(record) -> float:
    value = (record.get("metrics") or {}).get("val_accuracy")
    return float(value) if value is not None else float("nan")


def run(settings: common.Settings) -> dict:
    """Headline: Hyperband epochs to reach random's best (within 0.5 point) / random search's epochs."""
    search = _search_fn()
    train_ds, val_ds, test_ds, _ = common.load_data(settings)
    max_epochs = settings.pick(6, 2)
    random_trials, hyperband_trials = settings.pick(8, 2), settings.pick(30, 4)
    directory = str(common.scratch_dir("search"))
    common_kw = dict(objective="val_accuracy", max_epochs=max_epochs, directory=directory, overwrite=True,
                     seed=settings.seed, verbose=0)
    rnd = search(SPACE, train_ds, val_ds, algorithm="random", max_trials=random_trials, project_name="random",
                 **common_kw)
    hb = search(SPACE, train_ds, val_ds, algorithm="hyperband", max_trials=hyperband_trials,
                project_name="hyperband", **common_kw)
    r_trials, h_trials = _completed(rnd), _completed(hb)
    random_epochs = sum(_epochs(t) for t in r_trials)
    random_best = max(_acc(t) for t in r_trials)
    spent, reached_at, h_best = 0, None, float("nan")
    for t in h_trials:
        spent += _epochs(t)
        h_best = _acc(t) if math.isnan(h_best) else max(h_best, _acc(t))
        if reached_at is None and _acc(t) >= random_best - TOLERANCE:
            reached_at = spent
    hb_total = sum(_epochs(t) for t in h_trials)
    cost = reached_at if reached_at is not None else hb_total
    value = cost / max(random_epochs, 1)
    met = reached_at is not None and value < 1.0
    tested = {name: common.outcome(common.keras_correct(res.best_model, test_ds)) for name, res in
              (("random", rnd), ("hyperband", hb)) if res.best_model is not None}
    paired = (common.compare(tested["random"]["correct"], tested["hyperband"]["correct"])
              if len(tested) == 2 else None)

    def test_cell(name):
        t = tested.get(name)
        return common.fmt_acc(t["accuracy"], t["ci95"]) if t else "no model"

    rows = [
        ["random search", len(r_trials), random_epochs, f"{random_best:.4f}", test_cell("random"), "", random_epochs],
        ["Hyperband", len(h_trials), hb_total, f"{h_best:.4f}", test_cell("hyperband"),
         common.fmt_delta(paired) + f", p {common.fmt_p(paired['mcnemar_p'])}" if paired else "",
         reached_at if reached_at is not None else "not reached"],
    ]
    notes = [
        f"space: tfopt.tune DEFAULT_SPACES[{SPACE!r}]; max_epochs={max_epochs}; random: {random_trials} trials; "
        f"Hyperband: factor 3, at most {hyperband_trials} trials; objective val_accuracy on the 800 validation "
        "digits; epochs = epochs each trial really trained (continuations count only their new epochs).",
        "ratio = Hyperband epochs until its first trial within 0.5 point of random's best / random's epochs"
        + ("" if reached_at is not None else "; Hyperband never got within 0.5 point, so its total is used")
        + ". Both the bests and the comparison point are validation figures.",
        "test accuracy: each search's best trial's model (chosen on validation, with the weights it was scored "
        f"with), in Keras on the {next(iter(tested.values()))['n'] if tested else 1000:,} fixed test digits [95% "
        "Wilson interval]; test Δ = Hyperband's best - random's best on the same digits, in points [95% paired "
        "bootstrap interval], p = exact McNemar. Reported only; nothing is chosen on it.",
    ]
    summary = [{"label": "search: Hyperband epochs to reach random search's best / random search's epochs (both "
                         "bests and the comparison on validation)", "value": value, "unit": "x",
                "interval": (f"best models' test accuracy: random {test_cell('random')}, Hyperband "
                             f"{test_cell('hyperband')}"), "goal": "< 1x (Hyperband cheaper)", "met": met}]
    return common.figure(
        NAME, "Hyperband epochs to reach random search's best / random search's epochs", value, "x",
        "< 1x (Hyperband cheaper)", met, common.spread([value]),
        ["algorithm", "trials", "epochs", "best val_accuracy (chosen on)", "its test accuracy [95% CI]",
         "test Δ vs random (points) [95% CI]", "epochs to reach random's best val (-0.5 pt)"], rows,
        summary=summary, notes=notes, details={"random_best": random_best, "hyperband_best": h_best, "random_epochs": random_epochs,
                              "hyperband_epochs": hb_total, "hyperband_epochs_to_reach": reached_at,
                              "test": {k: {"test_accuracy": t["accuracy"], "test_n": t["n"],
                                           "test_accuracy_ci95": t["ci95"]} for k, t in tested.items()},
                              "hyperband_vs_random_test": paired},
    )


if __name__ == "__main__":
    common.main(NAME, run)
