"""Figure 4, input pipeline: augmented tf.data examples/second over the CNN train step's examples/second.

Producer: ``tfopt.data.load("mnist_5k", augment="standard")`` (cached, shuffled, one projective
transform per batch, prefetched), iterated for a full epoch after a warm-up epoch that fills the cache.
Consumer: the documents' CNN's compiled ``train_step`` in a ``tf.function``, on one batch of tensors
already in memory (no input cost at all). Rounds interleave the two; the ratio is per round.

>>> python -m benchmarks.input_pipeline [--quick]  # doctest: +SKIP
"""

from __future__ import annotations

from benchmarks import common
from tfopt import models
from tfopt._keras import keras, set_seed, tf

NAME = "input_pipeline"
GOAL = 3.0


def _consumer(info, batch, steps: int):
    """A no-arg callable running ``steps`` CNN train steps on ``batch``."""
    model = models.build("cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                         filters=(32, 64), dense=(128,), dropout=0.25)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    step = tf.function(lambda x, y: model.train_step((x, y)))
    x, y = tf.constant(batch[0]), tf.constant(batch[1])

    def go():
        for _ in range(steps):
            out = step(x, y)
        float(out["loss"])  # wait for the last step

    return go


def run(settings: common.Settings) -> dict:
    """Headline: pipeline examples/s over train-step examples/s (median of per-round ratios)."""
    set_seed(settings.seed)
    train_ds, _, _, info = common.load_data(settings, augment="standard")
    batch = next(iter(train_ds.as_numpy_iterator()))
    steps = settings.pick(30, 8)
    n_train = info.n_train

    def produce():
        for _ in train_ds:
            pass

    fns = {"pipeline": produce, "train_step": _consumer(info, batch, steps)}
    repeats = settings.pick(5, 2)
    times = common.interleaved(fns, repeats=repeats, warmup=1)
    produce_rate = [n_train / t for t in times["pipeline"]]
    consume_rate = [steps * common.BATCH / t for t in times["train_step"]]
    ratio = common.spread([p / c for p, c in zip(produce_rate, consume_rate)])
    p, c = common.spread(produce_rate), common.spread(consume_rate)
    rows = [
        ["tf.data, augment='standard' (examples/s)", round(p["median"]), f"{p['min']:.0f}-{p['max']:.0f}"],
        ["CNN train step on cached tensors (examples/s)", round(c["median"]), f"{c['min']:.0f}-{c['max']:.0f}"],
        ["ratio (pipeline / train step)", round(ratio["median"], 2), f"{ratio['min']:.2f}-{ratio['max']:.2f}"],
    ]
    notes = [
        f"pipeline: one full epoch ({n_train} examples, batch {common.BATCH}) per round; train step: {steps} "
        f"steps of batch {common.BATCH} per round; {repeats} interleaved rounds after a warm-up round.",
        "each is measured alone with every core; in training they share the cores, and prefetch overlaps them.",
    ]
    return common.figure(
        NAME, "augmented tf.data examples/s / CNN train step examples/s", ratio["median"], "x", f">= {GOAL:g}x",
        ratio["median"] >= GOAL, ratio, ["entry", "median", "range"], rows, notes=notes,
        details={"pipeline_examples_per_s": p, "train_step_examples_per_s": c},
    )


if __name__ == "__main__":
    common.main(NAME, run)
