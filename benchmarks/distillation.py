"""Figure 5, distillation: test error of a small student trained alone over the same student distilled.

Teacher: the documents' CNN trained with the demo recipe (~420k parameters). Student: an MLP with one
hidden layer of 32 units (~25k parameters, under a tenth of the teacher). For each seed the two students
start from the same initial weights and train for the same epochs with Adam: alone on the labels, or with
``tfopt.compress.distill`` (soft targets at temperature T plus a small weight on the labels). Hinton et
al. (2015) report 146 -> 74 test errors on MNIST (about 2x).

Nothing is chosen: T, alpha, the learning rate and the epochs are fixed in advance (no epoch or setting
is picked on any split). Errors are reported on the 1,000 fixed TEST digits, per seed with a 95% Wilson
interval and the paired test difference distilled - alone (95% interval, exact McNemar p); the headline
is averaged over the seeds, with its spread. Validation errors are recorded beside them for reference.

>>> python -m benchmarks.distillation [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import statistics

from benchmarks import common
from tfopt import compress, models
from tfopt._keras import keras, set_seed

NAME = "distillation"
TEMPERATURE, ALPHA, LR = 4.0, 0.1, 1e-3
STUDENT_UNITS = (32,)


def _pct(outcome: dict) -> str:
    """``1.9% [1.2, 2.9]``: an error rate with its 95% Wilson interval (from an accuracy outcome)."""
    lo, hi = outcome["ci95"]
    return f"{100 * (1 - outcome['accuracy']):.1f}% [{100 * (1 - hi):.1f}, {100 * (1 - lo):.1f}]"


def run(settings: common.Settings) -> dict:
    """Headline: mean test error alone / mean test error distilled, over the seeds."""
    train_ds, val_ds, test_ds, info = common.load_data(settings)
    teacher = common.baseline("cnn", settings)
    teacher_test = common.outcome(common.keras_correct(teacher, test_ds))
    teacher_error = 1 - teacher_test["accuracy"]
    seeds = settings.pick([settings.seed, settings.seed + 1, settings.seed + 2], [settings.seed])
    epochs = settings.pick(30, 3)
    rows, alone, distilled, ratios, per_seed = [], [], [], [], []
    student_params = None
    for seed in seeds:
        set_seed(seed)
        student = models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes, units=STUDENT_UNITS)
        student_params = student.count_params()
        init = student.get_weights()
        student.compile(optimizer=keras.optimizers.Adam(LR),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        student.fit(train_ds, epochs=epochs, verbose=0)
        set_seed(seed)
        kd = models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes, units=STUDENT_UNITS)
        kd.set_weights(init)
        compress.distill(teacher, kd, train_ds, temperature=TEMPERATURE, alpha=ALPHA, epochs=epochs,
                         learning_rate=LR, verbose=0)
        t_alone = common.outcome(common.keras_correct(student, test_ds))
        t_kd = common.outcome(common.keras_correct(kd, test_ds))
        v_alone = common.outcome(common.keras_correct(student, val_ds))["accuracy"]
        v_kd = common.outcome(common.keras_correct(kd, val_ds))["accuracy"]
        paired = common.compare(t_alone["correct"], t_kd["correct"])
        e_alone, e_kd = 1 - t_alone["accuracy"], 1 - t_kd["accuracy"]
        alone.append(e_alone)
        distilled.append(e_kd)
        ratios.append(e_alone / max(e_kd, 1e-9))
        per_seed.append({"seed": seed, "test_n": t_alone["n"], "alone_test_error": e_alone,
                         "alone_test_accuracy_ci95": t_alone["ci95"], "distilled_test_error": e_kd,
                         "distilled_test_accuracy_ci95": t_kd["ci95"], "alone_val_error": 1 - v_alone,
                         "distilled_val_error": 1 - v_kd, **paired})
        rows.append([seed, _pct(t_alone), _pct(t_kd), common.fmt_delta(paired), common.fmt_p(paired["mcnemar_p"]),
                     f"{100 * (1 - v_alone):.1f}% / {100 * (1 - v_kd):.1f}%", round(ratios[-1], 2)])
    mean_alone, mean_kd = statistics.mean(alone), statistics.mean(distilled)
    value = mean_alone / max(mean_kd, 1e-9)
    n_test = per_seed[0]["test_n"]
    sd = (lambda v: f" ± {100 * statistics.stdev(v):.2f} sd" if len(v) > 1 else "")  # noqa: E731
    rows.append(["mean", f"{100 * mean_alone:.2f}%{sd(alone)} ({mean_alone * n_test:.0f} errors)",
                 f"{100 * mean_kd:.2f}%{sd(distilled)} ({mean_kd * n_test:.0f} errors)",
                 f"{100 * (mean_alone - mean_kd):+.2f}", "", "", round(value, 2)])
    teacher_params = teacher.count_params()
    spread_ = common.spread(ratios)
    notes = [
        f"teacher: CNN, {teacher_params:,} parameters, test error {_pct(teacher_test)}; student: MLP "
        f"{STUDENT_UNITS}, {student_params:,} parameters ({student_params / teacher_params:.3f} of the teacher).",
        f"{epochs} epochs each, Adam {LR:g}, T={TEMPERATURE:g}, alpha={ALPHA:g} (weight of the hard-label loss), all "
        f"fixed in advance (nothing chosen on any split); errors on the {n_test:,} fixed test digits [95% Wilson "
        f"interval]; {len(seeds)} seed(s), same initial weights per seed.",
        "test Δ = distilled test accuracy - alone test accuracy on the same digits, in points [95% paired bootstrap "
        "interval]; p = exact McNemar; ▲ a significant gain (p < 0.05). The validation errors are shown for "
        "reference only.",
        "headline = mean test error alone / mean test error distilled over the seeds; spread = the per-seed ratios.",
        "Hinton et al. 2015 (MNIST, 60k train, 10k test): 146 -> 74 errors, about 2x: the aim.",
    ]
    summary = [{"label": f"distillation: student test error alone / distilled ({len(seeds)} seed(s); mean "
                         f"{100 * mean_alone:.2f}% -> {100 * mean_kd:.2f}% of {n_test:,} test digits)",
                "value": value, "unit": "x",
                "interval": f"per-seed ratios [{_fmt_ratio(spread_['min'])}, {_fmt_ratio(spread_['max'])}] "
                            f"over {spread_['n']}",
                "goal": "> 1x (lower error with KD on average; aim 2x)", "met": value > 1.0}]
    return common.figure(
        NAME, "test error of the student alone / of the distilled student (mean over seeds)", value, "x",
        "> 1x (lower error with KD on average; aim 2x)", value > 1.0, spread_,
        ["seed", "test error alone [95% CI]", "test error distilled [95% CI]", "test Δ accuracy (points) [95% CI]",
         "McNemar p", "val error alone / distilled", "ratio"], rows, summary=summary, notes=notes,
        details={"alone": alone, "distilled": distilled, "per_seed": per_seed, "teacher_error": teacher_error,
                 "teacher_test_accuracy_ci95": teacher_test["ci95"], "test_n": n_test,
                 "teacher_params": teacher_params, "student_params": student_params, "temperature": TEMPERATURE,
                 "alpha": ALPHA, "epochs": epochs, "seeds": seeds},
    )


def _fmt_ratio(v: float) -> str:
    return f"{v:.2f}"


if __name__ == "__main__":
    common.main(NAME, run)
