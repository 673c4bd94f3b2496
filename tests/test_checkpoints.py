"""The run-directory callbacks of tfopt.train.fit: the best checkpoint links the epoch's last one, and the
recorded variable layout writes the same file as ``save_weights``."""

import numpy as np

def test_best_checkpoint_is_a_frozen_link_to_the_epochs_last_checkpoint(tmp_path):
    """tfopt.train's run_dir writes the weights once per epoch; the best file keeps the best epoch's weights."""
    from tfopt import checkpoints
    from tfopt._keras import keras

    model = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    model.compile("adam", "mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    hooks = keras.callbacks.CallbackList(checkpoints.run_callbacks(tmp_path, "loss"), model=model, add_history=False,
                                         add_progbar=False, epochs=3, steps=1, verbose=0)
    ckpt = tmp_path / "checkpoints"
    hooks.on_train_begin()
    kept = []
    for epoch, loss in enumerate([1.0, 0.5, 0.9]):  # epoch 1 is the best
        model.set_weights([np.full_like(w, epoch + 1) for w in model.get_weights()])
        kept.append(model.get_weights())
        hooks.on_epoch_begin(epoch)
        hooks.on_epoch_end(epoch, {"loss": loss})
        if epoch == 1:
            assert (ckpt / "best.weights.h5").stat().st_ino == (ckpt / "last.weights.h5").stat().st_ino
    hooks.on_train_end()
    assert (ckpt / "best.weights.h5").stat().st_ino != (ckpt / "last.weights.h5").stat().st_ino
    for name, want in (("best", kept[1]), ("last", kept[2])):
        model.load_weights(str(ckpt / f"{name}.weights.h5"))
        for got, ref in zip(model.get_weights(), want):
            np.testing.assert_array_equal(got, ref)


def test_checkpoint_save_plan_writes_what_save_weights_writes(tmp_path):
    """tfopt.train writes .weights.h5 checkpoints from a save plan: same groups, datasets and values."""
    import h5py

    from tfopt import checkpoints, models
    from tfopt._keras import keras

    model = models.build("cnn", input_shape=(8, 8, 1), num_classes=3, filters=(4,), dense=(8,), dropout=0.1)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.random((16, 8, 8, 1)), rng.integers(0, 3, 16), verbose=0)
    model.save_weights(str(tmp_path / "ref.weights.h5"))
    checkpoints._write_weights(checkpoints._save_plan(model), tmp_path / "plan.weights.h5")

    def tree(path):
        out = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda k, v: out.__setitem__(k, v[()] if isinstance(v, h5py.Dataset) else None))
        return out

    ref, got = tree(tmp_path / "ref.weights.h5"), tree(tmp_path / "plan.weights.h5")
    assert list(got) == list(ref) and any(k.startswith("optimizer/") for k in ref)
    for key, value in ref.items():
        assert (value is None and got[key] is None) or np.array_equal(value, got[key]), key
    fresh = models.build("cnn", input_shape=(8, 8, 1), num_classes=3, filters=(4,), dense=(8,), dropout=0.1)
    fresh.load_weights(str(tmp_path / "plan.weights.h5"))
    x = rng.random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
