"""Worker processes for the distribution tests (run as ``python tests/_worker_main.py MODE ...``).

Logical CPU devices and multi-worker clusters must be set up before TensorFlow initialises its runtime,
so these checks run in fresh processes:

* ``mirrored OUT``: two logical CPUs; trains the same model with the same global batch on one device and
  mirrored over two (SGD, no dropout, op determinism), then prunes and QAT-fine-tunes under both; writes
  the weights and numbers to ``OUT`` (.npz + .json).
* ``user_data OUT``: two logical CPUs; trains tfopt's MLP with SGD on tfopt's own pipelines (``load("digits")``,
  whose last batch is partial, and ``from_arrays`` of 1,280 rows: 20 full batches), one device and mirrored,
  each run from freshly loaded data as a new process would; writes the largest weight differences to OUT.json.
* ``worker OUT --workers A,B --index I --run-dir D --epochs E [--slow S]``: one multi-worker task training
  via ``tfopt.train.fit``; writes its final weights to ``OUT.npz`` and facts to ``OUT.json``; a callback
  writes ``D/progress-I.txt`` ("epoch batch") at each batch and sleeps ``S`` seconds per batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
GLOBAL_BATCH = 64


def _digits(n=1280):
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype("float32")[:n]
    return x, y[:n].astype("int32"), np.float32


def _dataset(batch=GLOBAL_BATCH, n=1280):
    from tfopt._keras import tf

    x, y, _ = _digits(n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)


def _model(seed=0):
    from tfopt._keras import keras, set_seed

    set_seed(seed)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = keras.layers.Dense(32, activation="relu", name="dense")(keras.layers.Flatten()(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    return model


def mirrored(out: str) -> None:
    from tfopt._keras import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    tf.config.experimental.enable_op_determinism()
    import numpy as np

    from tfopt import distribute
    from tfopt.compress import prune, quantize_aware, quantize_aware_int4, sparsity
    from tfopt.train import fit

    mirrored = distribute.get_strategy("mirrored")
    train = _dataset()
    facts = {"replicas": mirrored.num_replicas_in_sync}
    weights = {}
    for name, strategy in (("one", None), ("two", mirrored)):
        model = _model()
        fit(model, train, epochs=2, strategy=strategy, verbose=0)
        weights.update({f"{name}_{i}": w for i, w in enumerate(model.get_weights())})
        base = _model()
        fit(base, train, epochs=2, verbose=0)  # the same trained model for both compression runs
        pruned = prune(base, train, 0.5, epochs=1, strategy=strategy, verbose=0, learning_rate=0.01, check=False)
        facts[f"{name}_sparsity"] = sparsity(pruned)["overall"]
        facts[f"{name}_pruned_accuracy"] = float(pruned.evaluate(train, verbose=0)[1])  # evaluates under its strategy
        qat = quantize_aware(base, train, epochs=1, strategy=strategy, verbose=0, learning_rate=0.01)
        facts[f"{name}_qat_accuracy"] = float(qat.evaluate(train, verbose=0)[1])
        facts[f"{name}_qat_in_scope"] = bool(strategy is None or strategy.extended.variable_created_in_scope(qat.weights[0]))
        four = quantize_aware_int4(pruned, train, epochs=1, preserve_sparsity=True, strategy=strategy, verbose=0,
                                   learning_rate=0.01)
        facts[f"{name}_int4_sparsity"] = sparsity(four)["overall"]
        facts[f"{name}_int4_accuracy"] = float(four.evaluate(train, verbose=0)[1])
        facts[f"{name}_int4_in_scope"] = bool(strategy is None or strategy.extended.variable_created_in_scope(four.weights[0]))
    try:
        fit(_model(), _dataset(batch=63), epochs=1, strategy=mirrored, verbose=0)
    except Exception as e:  # noqa: BLE001 - reported to the test
        facts["odd_batch_error"] = f"{type(e).__name__}: {e}"
    try:
        fit(_model(), train, epochs=1, strategy=mirrored, jit_compile=True, verbose=0)
    except Exception as e:  # noqa: BLE001 - reported to the test
        facts["xla_error"] = f"{type(e).__name__}: {e}"
    np.savez(out + ".npz", **weights)
    Path(out + ".json").write_text(json.dumps(facts))


def user_data(out: str) -> None:
    from tfopt._keras import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import numpy as np

    import tfopt
    from tfopt._keras import keras, set_seed

    x, y, _ = _digits(n=None)
    loaders = {
        "load": lambda: tfopt.data.load("digits", batch_size=GLOBAL_BATCH, seed=0),
        "from_arrays": lambda: tfopt.data.from_arrays(
            x[:1280], y[:1280], batch_size=GLOBAL_BATCH, seed=0, val_data=(x[1280:1540], y[1280:1540]),
            test_data=(x[1540:], y[1540:])),
    }
    facts = {}
    for name, loader in loaders.items():
        weights = {}
        for strategy in ("default", "mirrored"):
            set_seed(0)
            train, _, _, info = loader()  # afresh: a second pass over one dataset draws its next shuffle
            model = tfopt.models.build("mlp", input_shape=info.input_shape, num_classes=info.num_classes)
            model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          ["accuracy"])
            start = model.get_weights()
            tfopt.train.fit(model, train, epochs=2, strategy=tfopt.distribute.get_strategy(strategy), verbose=0)
            weights[strategy] = model.get_weights()
            facts[f"{name}_{strategy}_moved"] = max(float(np.abs(a - b).max()) for a, b in zip(start, weights[strategy]))
        facts[f"{name}_max_difference"] = max(
            float(np.abs(a - b).max()) for a, b in zip(weights["default"], weights["mirrored"]))
        facts[f"{name}_last_batch"] = info.n_train % GLOBAL_BATCH
    # a second model of other shapes under the same process's mirrored strategy (its all-reduces must not meet the
    # first model's: one MirroredStrategy per device list)
    small = tfopt.models.build("mlp", input_shape=(8, 8, 1), num_classes=10, units=(16,))
    small.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tfopt.train.fit(small, loaders["load"]()[0].take(2), strategy=tfopt.distribute.get_strategy("mirrored"), verbose=0)
    facts["same_strategy_object"] = tfopt.distribute.get_strategy("mirrored") is tfopt.distribute.get_strategy("mirrored")
    facts["replicas"] = tfopt.distribute.get_strategy("mirrored").num_replicas_in_sync
    Path(out + ".json").write_text(json.dumps(facts))


def worker(out: str, workers: str, index: int, run_dir: str, epochs: int, slow: float, timeout: float) -> None:
    from tfopt import distribute

    os.environ["TF_CONFIG"] = json.dumps(distribute.tf_config_for(workers, index))
    strategy = distribute.get_strategy("multi_worker", timeout=timeout)  # before any other TF op
    import time

    import numpy as np

    from tfopt._keras import keras
    from tfopt.train import fit

    progress = Path(run_dir) / f"progress-{index}.txt"

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            progress.write_text(f"{self.epoch} {batch}")
            time.sleep(slow)

    model = _model()
    history = fit(model, _dataset(n=1024), epochs=epochs, run_dir=run_dir, strategy=strategy,
                  callbacks=[Progress()], verbose=0)
    np.savez(out + ".npz", *model.get_weights())
    facts = {"chief": distribute.is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
             "epochs": list(history.epoch), "write_dir": str(history.run_dir)}
    Path(out + ".json").write_text(json.dumps(facts))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("mirrored", "user_data", "worker"))
    parser.add_argument("out")
    parser.add_argument("--workers", default="")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.mode == "mirrored":
        mirrored(args.out)
    elif args.mode == "user_data":
        user_data(args.out)
    else:
        worker(args.out, args.workers, args.index, args.run_dir, args.epochs, args.slow, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
