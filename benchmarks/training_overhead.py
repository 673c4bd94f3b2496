"""Figure 3, training overhead: seconds per step of ``tfopt.train.fit`` over plain tf_keras ``model.fit``.

The same CNN (``tfopt.models.build("cnn", ...)`` for tfopt, the same layers hand-written in tf_keras for
plain Keras), the same initial weights, data, optimizer (Adam 1e-3) and loss. Each timed unit is one
epoch (63 steps, including fit's own per-epoch overhead and, with a run_dir, the callbacks' real
cost: checkpoints, BackupAndRestore, TensorBoard, CSV), divided by its steps. Entries are interleaved
A/B/A/B with a rotating order; each round's time is divided by the same round's plain time. The
pruning wrapper's step (tfmot ``prune_low_magnitude`` + ``UpdatePruningStep``) is reported the same way.

>>> python -m benchmarks.training_overhead [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from benchmarks import common
from tfopt import models, train
from tfopt._keras import keras, set_seed, tfmot
from tfopt.compress._common import count_steps

NAME = "training_overhead"
GOAL = 1.03
PLAIN = "plain tf_keras model.fit"


def hand_written(input_shape, num_classes: int):
    """The documents' CNN written directly in tf_keras (what a user would write without tfopt)."""
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dropout(0.25),
        keras.layers.Dense(num_classes),
    ])


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _models(info, seed: int) -> dict:
    set_seed(seed)
    built = models.build("cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                         filters=(32, 64), dense=(128,), dropout=0.25)
    weights = built.get_weights()

    def same():
        m = hand_written(info.input_shape, info.num_classes)
        m.set_weights(weights)
        return _compile(m)

    def tfopt_model():
        m = models.build("cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                         filters=(32, 64), dense=(128,), dropout=0.25)
        m.set_weights(weights)
        return _compile(m)

    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        same(), pruning_schedule=tfmot.sparsity.keras.PolynomialDecay(0.0, 0.8, 0, 1000, frequency=10))
    return {"plain": same(), "tfopt_run_dir": tfopt_model(), "tfopt": tfopt_model(), "pruned": _compile(pruned)}


def run(settings: common.Settings) -> dict:
    """Interleave one-epoch fits of each entry; headline: tfopt.train.fit (with run_dir) over plain fit."""
    train_ds, _, info = common.load_data(settings)
    if settings.quick:
        train_ds = train_ds.take(20)
    steps = count_steps(train_ds)
    ms = _models(info, settings.seed)
    tmp = Path(tempfile.mkdtemp(prefix="tfopt-bench-"))
    run_ids = itertools.count()
    fns = {
        PLAIN: lambda: ms["plain"].fit(train_ds, epochs=1, verbose=0),
        "tfopt.train.fit with run_dir": lambda: train.fit(ms["tfopt_run_dir"], train_ds, epochs=1,
                                                          run_dir=tmp / f"run{next(run_ids)}", verbose=0),
        "tfopt.train.fit without run_dir": lambda: train.fit(ms["tfopt"], train_ds, epochs=1, verbose=0),
        "pruning wrapper (model.fit + UpdatePruningStep)": lambda: ms["pruned"].fit(
            train_ds, epochs=1, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=0),
    }
    repeats = settings.pick(8, 2)
    times = common.interleaved(fns, repeats=repeats, warmup=1)
    ratios = {n: common.spread([t / p for t, p in zip(times[n], times[PLAIN])]) for n in fns}
    rows = []
    for n in fns:
        per_step = common.spread([1000 * t / steps for t in times[n]])
        r = ratios[n]
        rows.append([n, round(per_step["median"], 2), f"{per_step['min']:.2f}-{per_step['max']:.2f}",
                     round(r["median"], 3), f"{r['min']:.3f}-{r['max']:.3f}"])
    head = ratios["tfopt.train.fit with run_dir"]
    per_epoch = common.spread([1000 * (t - p) for t, p in zip(times["tfopt.train.fit with run_dir"], times[PLAIN])])
    summary = [
        {"label": "training overhead: tfopt.train.fit (run_dir) step / plain model.fit step", "value": head["median"],
         "unit": "x", "goal": f"<= {GOAL:.2f}x", "met": head["median"] <= GOAL},
        {"label": "training overhead: tfopt.train.fit (no run_dir) step / plain step",
         "value": ratios["tfopt.train.fit without run_dir"]["median"], "unit": "x", "goal": f"<= {GOAL:.2f}x",
         "met": ratios["tfopt.train.fit without run_dir"]["median"] <= GOAL},
        {"label": "pruning wrapper step / plain step",
         "value": ratios["pruning wrapper (model.fit + UpdatePruningStep)"]["median"], "unit": "x",
         "goal": "report", "met": None},
    ]
    notes = [
        f"{steps} steps of batch {common.BATCH} per timed epoch, {repeats} interleaved rounds after one warm-up "
        "round; ms/step = epoch seconds / steps (median, min-max over rounds); ratio per round to the plain fit.",
        "with run_dir the epoch includes tfopt's callbacks: best and last weight checkpoints (HDF5), "
        "BackupAndRestore, TensorBoard and CSV history, written every epoch (each round gets a fresh run_dir, "
        "so BackupAndRestore never skips the epoch).",
        f"the run_dir callbacks cost a fixed {per_epoch['median']:.0f} ms per epoch (median; range "
        f"{per_epoch['min']:.0f}-{per_epoch['max']:.0f}), i.e. {per_epoch['median'] / steps:.1f} ms per step at "
        f"{steps} steps per epoch: the overhead shrinks as epochs get longer.",
    ]
    return common.figure(
        NAME, "tfopt.train.fit step time / plain tf_keras model.fit step time", head["median"], "x",
        f"<= {GOAL:.2f}x (at most 3% slower)", head["median"] <= GOAL, head,
        ["entry", "ms / step", "range", "ratio to plain", "ratio range"], rows, summary=summary, notes=notes,
        details={"seconds_per_epoch": times, "steps": steps, "run_dir_ms_per_epoch": per_epoch},
    )


if __name__ == "__main__":
    common.main(NAME, run)
