"""Figure 5, distillation: test error of a small student trained alone over the same student distilled.

Teacher: the documents' CNN trained with the demo recipe (~420k parameters). Student: an MLP with one
hidden layer of 32 units (~25k parameters, under a tenth of the teacher). For each seed the two students
start from the same initial weights and train for the same epochs with Adam: alone on the labels, or with
``tfopt.compress.distill`` (soft targets at temperature T plus a small weight on the labels). Hinton et
al. (2015) report 146 -> 74 test errors on MNIST (about 2x).

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


def _error(model, dataset) -> float:
    return 1.0 - float(model.evaluate(dataset, verbose=0, return_dict=True)["accuracy"])


def run(settings: common.Settings) -> dict:
    """Headline: mean error alone / mean error distilled, over the seeds."""
    train_ds, _, test_ds, info = common.load_data(settings)
    teacher = common.baseline("cnn", settings)
    teacher_error = _error(teacher, test_ds)
    seeds = settings.pick([settings.seed, settings.seed + 1, settings.seed + 2], [settings.seed])
    epochs = settings.pick(30, 3)
    rows, alone, distilled, ratios = [], [], [], []
    student_params = None
    for seed in seeds:
        set_seed(seed)
        student = models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes, units=STUDENT_UNITS)
        student_params = student.count_params()
        init = student.get_weights()
        student.compile(optimizer=keras.optimizers.Adam(LR),
                        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        student.fit(train_ds, epochs=epochs, verbose=0)
        e_alone = _error(student, test_ds)
        set_seed(seed)
        kd = models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes, units=STUDENT_UNITS)
        kd.set_weights(init)
        compress.distill(teacher, kd, train_ds, temperature=TEMPERATURE, alpha=ALPHA, epochs=epochs,
                         learning_rate=LR, verbose=0)
        e_kd = _error(kd, test_ds)
        alone.append(e_alone)
        distilled.append(e_kd)
        ratios.append(e_alone / max(e_kd, 1e-9))
        rows.append([seed, f"{100 * e_alone:.1f}%", f"{100 * e_kd:.1f}%", round(e_alone / max(e_kd, 1e-9), 2)])
    mean_alone, mean_kd = statistics.mean(alone), statistics.mean(distilled)
    value = mean_alone / max(mean_kd, 1e-9)
    n_test = info.n_test
    rows.append(["mean", f"{100 * mean_alone:.2f}% ({mean_alone * n_test:.0f} errors)",
                 f"{100 * mean_kd:.2f}% ({mean_kd * n_test:.0f} errors)", round(value, 2)])
    teacher_params = teacher.count_params()
    notes = [
        f"teacher: CNN, {teacher_params:,} parameters, test error {100 * teacher_error:.1f}%; student: MLP "
        f"{STUDENT_UNITS}, {student_params:,} parameters ({student_params / teacher_params:.3f} of the teacher).",
        f"{epochs} epochs each, Adam {LR:g}, T={TEMPERATURE:g}, alpha={ALPHA:g} (weight of the hard-label loss); "
        f"errors on the {n_test} fixed test digits; {len(seeds)} seed(s), same initial weights per seed.",
        "Hinton et al. 2015 (MNIST, 60k train, 10k test): 146 -> 74 errors, about 2x: the aim.",
    ]
    return common.figure(
        NAME, "test error of the student alone / of the distilled student", value, "x",
        "> 1x (lower error with KD on average; aim 2x)", value > 1.0, common.spread(ratios),
        ["seed", "error alone", "error distilled", "ratio"], rows, notes=notes,
        details={"alone": alone, "distilled": distilled, "teacher_error": teacher_error,
                 "teacher_params": teacher_params, "student_params": student_params, "temperature": TEMPERATURE,
                 "alpha": ALPHA, "epochs": epochs},
    )


if __name__ == "__main__":
    common.main(NAME, run)
