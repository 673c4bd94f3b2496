"""Figure 5, distillation: test error of a small student trained alone over the same student distilled.

The recipe for strong students (Beyer et al. 2022, "Knowledge distillation: A good teacher is patient and
consistent"; Hinton et al. 2015): a teacher better than the student by a margin, teacher and student shown the
SAME augmented digits at every step (consistent), a long schedule (patient), and a temperature and loss weighting
tuned on validation.

- Teacher: the documents' CNN (~420k parameters) trained with the demo recipe on augmented digits ("standard":
  shifts, rotations, zoom) for 40 epochs, a margin above the 8-epoch baseline of the other figures.
- Student: a CNN with 8 and 16 filters and 32 dense units (~27k parameters, under a tenth of the teacher).
- Per seed, the student starts from the same initial weights three times and trains for the same epochs with Adam
  and a cosine-decayed rate, on the same augmented training digits: alone on the labels; alone on the labels
  without augmentation (plain training, Hinton et al.'s "student alone"); and distilled with
  ``tfopt.compress.distill`` (soft targets at temperature T plus alpha on the labels, the teacher run on each
  augmented batch the student sees).
- The student alone is the better of its two recipes on VALIDATION (per seed); T, alpha, the rate and the epochs
  were chosen on validation before the run (:data:`TUNING` records every setting tried). Nothing is chosen on test.

Errors are reported on the 1,000 fixed TEST digits per seed with a 95% Wilson interval and the paired test
difference distilled - alone (95% interval, exact McNemar p); the headline is mean test error alone / mean test
error distilled over the seeds, with the per-seed ratios as its spread.

>>> python -m benchmarks.distillation [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics

from benchmarks import common
from tfopt import compress, models
from tfopt._keras import keras, set_seed

NAME = "distillation"
AUGMENT = "standard"
TEACHER_EPOCHS = (40, 3)  # full, quick
STUDENT = {"name": "cnn", "filters": (8, 16), "dense": (32,), "dropout": 0.0}
EPOCHS = (60, 3)
LR = 3e-3  # Adam, cosine decay to 0 over the run
TEMPERATURE, ALPHA = 1.0, 0.1  # tfopt.compress.distill's defaults, chosen on validation (TUNING)
GOAL = 2.0

# What was tried before fixing the settings above, on the 800 VALIDATION digits (val error %, this student,
# seed 0 unless said; AMD EPYC, 2 cores shared): teacher = the demo CNN (8 epochs, no augmentation, val 2.0%)
# or trained on augmented digits for 20 / 40 epochs (val 0.9% / 0.5%).
TUNING = [
    "student alone, 30 epochs Adam 1e-3: plain 3.25, augmented 2.62; 60 epochs cosine: plain 3.38, augmented 2.25 "
    "(seed 1: 1.38); 100 epochs cosine: augmented 2.25",
    "student alone, augmented, cosine from 3e-3: 60 epochs 2.00 (seed 1: 1.25), 100 epochs 1.75",
    "distilled (augmented, consistent), teacher 40 epochs, 60 epochs cosine from 1e-3: T=1 alpha=0 1.62 (seed 1: "
    "1.62), T=2 alpha=0 1.75, T=4 alpha=0 2.38, T=1 alpha=0.1 1.50, T=2 alpha=0.1 1.88, T=1 alpha=0.5 1.88; "
    "mixup on top (Beyer's function matching) 1.62 (Beta(1,1)), 1.75 (Beta(0.4,0.4))",
    "distilled, T=1 alpha=0: teacher of 8 epochs without augmentation 2.75, teacher of 20 augmented epochs 1.88, "
    "of 40 augmented epochs 1.62; 30 epochs 1.62, 100 epochs 1.38 (cosine from 1e-3)",
    "distilled, cosine from 3e-3, 60 epochs: T=1 alpha=0 1.25 (seed 1: 1.00), T=2 alpha=0 1.38, T=1 alpha=0.1 "
    "1.12; 100 epochs T=1 alpha=0 1.12",
    "without augmentation (the previous figure's setting), 30 epochs Adam 1e-3, teacher of 8 epochs, T=4 alpha=0.1: "
    "2.50",
]


def _pct(outcome: dict) -> str:
    """``1.9% [1.2, 2.9]``: an error rate with its 95% Wilson interval (from an accuracy outcome)."""
    lo, hi = outcome["ci95"]
    return f"{100 * (1 - outcome['accuracy']):.1f}% [{100 * (1 - hi):.1f}, {100 * (1 - lo):.1f}]"


def _student(info, seed: int):
    set_seed(seed)
    kwargs = dict(STUDENT)
    return models.build(kwargs.pop("name"), input_shape=info.input_shape, num_classes=info.num_classes, **kwargs)


def _optimizer(epochs: int, steps_per_epoch: int):
    return keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LR, epochs * steps_per_epoch))


def _alone(info, init, train_ds, epochs: int, seed: int):
    """The student trained on the labels of ``train_ds`` alone, from ``init``."""
    student = _student(info, seed)
    student.set_weights(init)
    student.compile(optimizer=_optimizer(epochs, math.ceil(info.n_train / common.BATCH)),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    student.fit(train_ds, epochs=epochs, verbose=0)
    return student


def _evaluate(model, val_ds, test_ds) -> dict:
    test = common.outcome(common.keras_correct(model, test_ds))
    return {"test": test, "val_error": 1 - common.outcome(common.keras_correct(model, val_ds))["accuracy"]}


def run(settings: common.Settings) -> dict:
    """Headline: mean test error of the student alone (its recipe chosen on validation) / mean test error distilled."""
    plain_ds, val_ds, test_ds, info = common.load_data(settings)
    teacher = common.augmented_baseline("cnn", settings, epochs=TEACHER_EPOCHS, augment=AUGMENT)
    teacher_test = common.outcome(common.keras_correct(teacher, test_ds))
    teacher_val = common.outcome(common.keras_correct(teacher, val_ds))
    seeds = settings.pick([settings.seed, settings.seed + 1, settings.seed + 2], [settings.seed])
    epochs = settings.pick(*EPOCHS)
    steps_per_epoch = math.ceil(info.n_train / common.BATCH)
    rows, per_seed = [], []
    student_params = None
    for seed in seeds:
        init = _student(info, seed).get_weights()
        set_seed(seed)
        augmented_ds = common.load_data(settings, augment=AUGMENT).train
        trained = {"augmented": _alone(info, init, augmented_ds, epochs, seed),
                   "plain": _alone(info, init, plain_ds, epochs, seed)}
        set_seed(seed)
        augmented_ds = common.load_data(settings, augment=AUGMENT).train  # the same augmented stream again
        kd = _student(info, seed)
        kd.set_weights(init)
        student_params = kd.count_params()
        compress.distill(teacher, kd, augmented_ds, temperature=TEMPERATURE, alpha=ALPHA, epochs=epochs,
                         optimizer=_optimizer(epochs, steps_per_epoch), verbose=0)
        result = {name: _evaluate(model, val_ds, test_ds) for name, model in trained.items()}
        distilled = _evaluate(kd, val_ds, test_ds)
        chosen = min(result, key=lambda name: (result[name]["val_error"], name != "augmented"))
        alone = result[chosen]
        paired = common.compare(alone["test"]["correct"], distilled["test"]["correct"])
        e_alone, e_kd = 1 - alone["test"]["accuracy"], 1 - distilled["test"]["accuracy"]
        e_plain = 1 - result["plain"]["test"]["accuracy"]
        per_seed.append({
            "seed": seed, "test_n": alone["test"]["n"], "alone_recipe": chosen, "alone_test_error": e_alone,
            "alone_test_accuracy_ci95": alone["test"]["ci95"], "distilled_test_error": e_kd,
            "distilled_test_accuracy_ci95": distilled["test"]["ci95"],
            "augmented_alone_test_error": 1 - result["augmented"]["test"]["accuracy"], "plain_alone_test_error": e_plain,
            "plain_alone_test_accuracy_ci95": result["plain"]["test"]["ci95"],
            "alone_val_error": alone["val_error"], "augmented_alone_val_error": result["augmented"]["val_error"],
            "plain_alone_val_error": result["plain"]["val_error"], "distilled_val_error": distilled["val_error"],
            "ratio": e_alone / max(e_kd, 1e-9), "plain_ratio": e_plain / max(e_kd, 1e-9), **paired})
        rows.append([seed, _pct(result["augmented"]["test"]), _pct(result["plain"]["test"]), f"{chosen}: {100 * e_alone:.1f}%",
                     _pct(distilled["test"]), common.fmt_delta(paired), common.fmt_p(paired["mcnemar_p"]),
                     f"{100 * result['augmented']['val_error']:.1f}% / {100 * result['plain']['val_error']:.1f}% / "
                     f"{100 * distilled['val_error']:.1f}%", round(per_seed[-1]["ratio"], 2),
                     round(per_seed[-1]["plain_ratio"], 2)])
    alone = [s["alone_test_error"] for s in per_seed]
    distilled = [s["distilled_test_error"] for s in per_seed]
    plain = [s["plain_alone_test_error"] for s in per_seed]
    mean_alone, mean_kd, mean_plain = statistics.mean(alone), statistics.mean(distilled), statistics.mean(plain)
    value = mean_alone / max(mean_kd, 1e-9)
    plain_value = mean_plain / max(mean_kd, 1e-9)
    n_test = per_seed[0]["test_n"]
    never_worse = all(s["test_delta_points"] >= 0 for s in per_seed)
    sd = (lambda v: f" ± {100 * statistics.stdev(v):.2f} sd" if len(v) > 1 else "")  # noqa: E731
    mean_aug = statistics.mean(s["augmented_alone_test_error"] for s in per_seed)
    rows.append(["mean", f"{100 * mean_aug:.2f}%", f"{100 * mean_plain:.2f}%{sd(plain)} ({mean_plain * n_test:.0f} errors)",
                 f"{100 * mean_alone:.2f}%{sd(alone)} ({mean_alone * n_test:.0f} errors)",
                 f"{100 * mean_kd:.2f}%{sd(distilled)} ({mean_kd * n_test:.0f} errors)",
                 f"{100 * (mean_alone - mean_kd):+.2f}", "", "", round(value, 2), round(plain_value, 2)])
    teacher_params = teacher.count_params()
    spread_ = common.spread([s["ratio"] for s in per_seed])
    plain_spread = common.spread([s["plain_ratio"] for s in per_seed])
    met = value >= GOAL and never_worse
    goal = f">= {GOAL:g}x (mean over seeds) and the distilled student never worse than alone on a seed"
    notes = [
        f"teacher: the documents' CNN, {teacher_params:,} parameters, trained {settings.pick(*TEACHER_EPOCHS)} "
        f"epochs with the demo recipe on '{AUGMENT}'-augmented digits: test error {_pct(teacher_test)}, val error "
        f"{100 * (1 - teacher_val['accuracy']):.1f}%; student: CNN filters {STUDENT['filters']}, dense "
        f"{STUDENT['dense']}, {student_params:,} parameters ({student_params / teacher_params:.3f} of the teacher).",
        f"every student: {epochs} epochs, Adam with a cosine decay from {LR:g}, the same initial weights per seed; "
        f"'augmented' and 'distilled' train on the same '{AUGMENT}'-augmented digits (the teacher is run on each "
        f"augmented batch the student sees: consistent), 'plain' on the digits as they are. Distillation: "
        f"T={TEMPERATURE:g}, alpha={ALPHA:g} (weight of the label loss), the defaults of tfopt.compress.distill.",
        "student alone = the better of 'augmented' and 'plain' on the 800 validation digits, per seed; headline = mean "
        "test error of the student alone / mean test error distilled; spread = the per-seed ratios. 'ratio to plain' "
        "divides by the plain student's error instead (Hinton et al.'s protocol, where the student alone had no "
        "regularization): reported, not the headline.",
        f"errors on the {n_test:,} fixed test digits [95% Wilson interval]; test Δ = distilled test accuracy - alone "
        "test accuracy on the same digits, in points [95% paired bootstrap interval]; p = exact McNemar; ▲ a "
        "significant gain (p < 0.05). The validation errors chose the student alone's recipe only.",
        "T, alpha, the rate, the epochs and the teacher were chosen on validation before this run: " + "; ".join(TUNING)
        + " (val error %).",
        "Hinton et al. 2015 (MNIST, 60k train, 10k test): 146 -> 74 errors, about 2x against an unregularized "
        "student: the aim.",
    ]
    summary = [
        {"label": f"distillation: student test error alone (recipe chosen on validation) / distilled ({len(seeds)} "
                  f"seed(s); mean {100 * mean_alone:.2f}% -> {100 * mean_kd:.2f}% of {n_test:,} test digits; "
                  f"{'never worse on a seed' if never_worse else 'worse on a seed'})",
         "value": value, "unit": "x",
         "interval": f"per-seed ratios [{spread_['min']:.2f}, {spread_['max']:.2f}] over {spread_['n']}",
         "goal": goal, "met": met},
        {"label": f"distillation: plain student's test error (no augmentation, Hinton's baseline) / distilled "
                  f"(mean {100 * mean_plain:.2f}% -> {100 * mean_kd:.2f}%)",
         "value": plain_value, "unit": "x",
         "interval": f"per-seed ratios [{plain_spread['min']:.2f}, {plain_spread['max']:.2f}] over {plain_spread['n']}",
         "goal": "report", "met": None},
    ]
    return common.figure(
        NAME, "test error of the student alone / of the distilled student (mean over seeds)", value, "x", goal, met,
        spread_,
        ["seed", "test error alone, augmented [95% CI]", "alone, plain [95% CI]", "alone (chosen on val)",
         "distilled [95% CI]", "test Δ accuracy distilled - alone (points) [95% CI]", "McNemar p",
         "val error augmented / plain / distilled", "ratio", "ratio to plain"],
        rows, summary=summary, notes=notes,
        details={"alone": alone, "distilled": distilled, "plain": plain, "per_seed": per_seed,
                 "teacher_error": 1 - teacher_test["accuracy"], "teacher_test_accuracy_ci95": teacher_test["ci95"],
                 "teacher_val_error": 1 - teacher_val["accuracy"], "test_n": n_test,
                 "teacher_params": teacher_params, "student_params": student_params, "temperature": TEMPERATURE,
                 "alpha": ALPHA, "epochs": epochs, "learning_rate": LR, "augment": AUGMENT, "seeds": seeds,
                 "plain_ratio": plain_value, "never_worse": never_worse, "tuning": TUNING},
    )


if __name__ == "__main__":
    common.main(NAME, run)
