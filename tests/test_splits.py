"""Three splits (train, val, fixed test) for every loader, and class balancing of train only."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfopt._keras import keras, tf
from tfopt.data import BALANCE, Splits, class_weights, from_arrays, load
from tfopt.errors import ConfigError


def _all(ds):
    """(x, y) of a dataset of (x, y) batches, concatenated."""
    xs, ys = zip(*[(b[0].numpy(), b[1].numpy()) for b in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _hashes(ds) -> list:
    """One hash per example (of a dataset, or of ``(x, y)`` arrays): its input bytes and its label."""
    x, y = ds if isinstance(ds, tuple) else _all(ds)
    return [hashlib.sha1(xi.tobytes() + bytes([int(yi)])).hexdigest() for xi, yi in zip(x, y)]


def _imbalanced_digits():
    """scikit-learn's digits with classes 0-4 cut to their first 20% of rows (a fixed cut)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.images[..., None] / 16.0).astype(np.float32), d.target
    rank = np.zeros(len(y), int)
    for c in range(10):
        rank[y == c] = np.arange((y == c).sum())
    keep = (y >= 5) | (rank < 0.2 * np.bincount(y)[y])
    return x[keep], y[keep]


# ---------------------------------------------------------------- three splits


@pytest.mark.parametrize("name, sizes", [("mnist_5k", (3200, 800, 1000)), ("digits", (1149, 288, 360)),
                                         ("mnist_rows", (3200, 800, 1000))])
def test_embedded_splits_are_disjoint_and_test_does_not_move_with_the_seed(name, sizes):
    a, b = load(name, batch_size=500, seed=0), load(name, batch_size=500, seed=1)
    assert isinstance(a, Splits) and a.test is a[2] and a.info is a[3]
    assert (a.info.n_train, a.info.n_val, a.info.n_test) == sizes
    for splits in (a, b):
        train, val, test = (set(_hashes(ds)) for ds in splits[:3])
        assert (len(train), len(val), len(test)) == sizes  # no example twice within a split
        assert not train & val and not train & test and not val & test
    assert _hashes(a.test) == _hashes(b.test)  # the same examples, in the same order
    assert set(_hashes(a.val)) != set(_hashes(b.val))  # while train/val follow the seed
    other_val = load(name, batch_size=500, seed=0, val_fraction=0.5)
    assert _hashes(other_val.test) == _hashes(a.test) and other_val.info.n_test == sizes[2]
    assert a.info.test_source.startswith("fixed")


def test_mnist_rows_tests_on_the_same_digits_as_mnist_5k():
    images, rows = load("mnist_5k", batch_size=1000).test, load("mnist_rows", batch_size=1000).test
    x_img, y_img = _all(images)
    x_rows, y_rows = _all(rows)
    np.testing.assert_array_equal(x_img[..., 0], x_rows)
    np.testing.assert_array_equal(y_img, y_rows)
    np.testing.assert_array_equal(np.bincount(y_img), [100] * 10)


def test_from_arrays_carves_a_fixed_stratified_test_split():
    x, y = _imbalanced_digits()
    a = from_arrays(x, y, batch_size=64, seed=0)
    b = from_arrays(x, y, batch_size=64, seed=1, val_fraction=0.3)
    assert _hashes(a.test) == _hashes(b.test)
    assert a.info.n_test == int(np.ceil(0.2 * len(y))) and a.info.n_train + a.info.n_val + a.info.n_test == len(y)
    train, val, test = (set(_hashes(ds)) for ds in a[:3])
    assert not train & val and not train & test and not val & test
    _, y_test = _all(a.test)
    assert np.all(np.abs(np.bincount(y_test, minlength=10) - 0.2 * np.bincount(y)) <= 1)  # stratified
    assert from_arrays(x, y, test_fraction=0.5).info.n_test == int(np.ceil(0.5 * len(y)))


def test_from_arrays_uses_test_data_as_given():
    x, y = _imbalanced_digits()
    x_test, y_test = x[:37], y[:37]
    splits = from_arrays(x[37:], y[37:], batch_size=16, test_data=(x_test, y_test), val_data=(x[37:50], y[37:50]))
    got_x, got_y = _all(splits.test)
    np.testing.assert_array_equal(got_x, x_test)
    np.testing.assert_array_equal(got_y, y_test)
    assert (splits.info.n_train, splits.info.n_val, splits.info.n_test) == (len(y) - 37, 13, 37)
    assert splits.info.test_source == "test_data"


@pytest.mark.parametrize("bad, message", [
    (-0.1, r"test_fraction=-0\.1 is out of range; allowed: 0 <= test_fraction < 1"),
    (1, r"test_fraction=1 is out of range"),
    (1.5, r"test_fraction=1\.5 is out of range"),
    ("0.2", r"test_fraction='0\.2' has the wrong type"),
    (0, r"test_fraction=0\.0 of the 20 rows of 'arrays' leaves no test rows"),
    (0.96, r"test_fraction=0\.96 of the 20 rows of 'arrays' leaves no train rows"),
])
def test_bad_test_fraction_is_a_config_error_naming_it(bad, message):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    with pytest.raises(ConfigError, match=message):
        from_arrays(x, np.arange(20) % 2, test_fraction=bad)


def test_test_data_checked_like_val_data():
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    with pytest.raises(ConfigError, match=r"test_data must be a tuple \(x_test, y_test\).*array of shape \(20, 3\)"):
        from_arrays(x, np.arange(20) % 2, test_data=x)
    with pytest.raises(Exception, match="x_test has rows of shape"):
        from_arrays(x, np.arange(20) % 2, test_data=(x[:, :2], np.arange(20) % 2))
    with pytest.raises(Exception, match="label 7 is out of range"):
        from_arrays(x, np.arange(20) % 2, test_data=(x, np.full(20, 7)), num_classes=2)
    with pytest.raises(ConfigError, match=r"val_fraction=0\.5 of the 1 rows of 'arrays' leaves no train rows"):
        from_arrays(x[:2], np.arange(2), test_fraction=0.5, val_fraction=0.5)


class TfoptTrainOnlyToy(tfds.core.GeneratorBasedBuilder):
    """A tiny tfds set with a "train" split only, prepared offline in tmp_path."""

    # a module name without a package: tfds then looks for no checksums file beside the code (its lookup of
    # a package's resources needs importlib_resources, which is not installed)
    __module__ = "tfopt_toy_tfds"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"image": tfds.features.Image(shape=(4, 4, 1)), "label": tfds.features.ClassLabel(num_classes=3)}
        return tfds.core.DatasetInfo(builder=self, supervised_keys=("image", "label"),
                                     features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(50)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 1), i, np.uint8), "label": i % 3}


def test_tfds_set_without_test_split_carves_a_fixed_one_and_says_so(tmp_path, caplog):
    tfds.builder("tfopt_train_only_toy", data_dir=str(tmp_path)).download_and_prepare()
    with caplog.at_level(logging.WARNING, logger="tfopt.data.datasets"):
        splits = load("tfopt_train_only_toy", batch_size=8, data_dir=str(tmp_path), seed=0)
    assert "has no 'test' split" in caplog.text and "train[80%:]" in caplog.text
    info = splits.info
    assert (info.n_train, info.n_val, info.n_test) == (32, 8, 10) and info.test_source == "train[80%:] (no test split)"
    rows = [{int(v) for v in _all(ds)[0][:, 0, 0, 0] * 255 + 0.5} for ds in splits[:3]]  # the example ids
    assert [len(r) for r in rows] == [32, 8, 10] and set.union(*rows) == set(range(50))
    again = load("tfopt_train_only_toy", batch_size=8, data_dir=str(tmp_path), seed=5, val_fraction=0.5)
    assert _hashes(again.test) == _hashes(splits.test) and again.info.n_val == 20


# ---------------------------------------------------------------- class balancing


@pytest.fixture(scope="module")
def imbalanced():
    x, y = _imbalanced_digits()
    return x, y, {balance: from_arrays(x, y, batch_size=32, seed=0, balance=balance) for balance in (None, *BALANCE)}


def test_balance_leaves_val_and_test_untouched(imbalanced):
    _, _, by_balance = imbalanced
    plain = by_balance[None]
    assert min(plain.info.class_counts) * 3 < max(plain.info.class_counts)  # really imbalanced
    for balance in BALANCE:
        splits = by_balance[balance]
        assert splits.info.balance == balance and splits.info.class_counts == plain.info.class_counts
        assert _hashes(splits.val) == _hashes(plain.val) and _hashes(splits.test) == _hashes(plain.test)
        assert len(splits.val.element_spec) == len(splits.test.element_spec) == 2


def test_oversample_draws_every_class_as_often_as_the_largest(imbalanced):
    _, _, by_balance = imbalanced
    splits = by_balance["oversample"]
    counts = np.array(splits.info.class_counts)
    for _ in range(2):  # every epoch
        x, y = _all(splits.train)
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [counts.max()] * 10)
    epoch = _hashes((x, y))
    assert int(splits.train.cardinality()) == int(np.ceil(10 * counts.max() / 32))
    # every train example of a small class is drawn, each about equally often
    small = int(np.argmin(counts))
    seen = np.unique([h for h, label in zip(epoch, y) if label == small], return_counts=True)[1]
    assert len(seen) == counts[small] and seen.max() - seen.min() <= 1
    assert set(epoch) == set(_hashes(by_balance[None].train))  # nothing from val or test


def test_undersample_draws_every_class_as_often_as_the_smallest_and_a_fresh_subset_each_epoch(imbalanced):
    _, _, by_balance = imbalanced
    splits = by_balance["undersample"]
    counts = np.array(splits.info.class_counts)
    epochs = [_all(splits.train) for _ in range(2)]
    for _, y in epochs:
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [counts.min()] * 10)
    large = int(np.argmax(counts))
    drawn = [{xi.tobytes() for xi, yi in zip(x, y) if yi == large} for x, y in epochs]
    assert drawn[0] != drawn[1]  # another subset of the large class next epoch
    assert set(_hashes(splits.train)) <= set(_hashes(by_balance[None].train))


def test_balanced_epochs_are_seeded():
    x, y = _imbalanced_digits()
    first = [_all(from_arrays(x, y, batch_size=32, seed=3, balance="oversample").train)[1] for _ in range(2)]
    np.testing.assert_array_equal(*first)
    other = _all(from_arrays(x, y, batch_size=32, seed=4, balance="oversample").train)[1]
    assert not np.array_equal(first[0], other)


def test_class_weight_yields_inverse_frequency_weights_and_fits(imbalanced):
    _, _, by_balance = imbalanced
    splits = by_balance["class_weight"]
    counts = np.array(splits.info.class_counts)
    batches = list(splits.train)
    assert all(len(b) == 3 for b in batches)
    y = np.concatenate([b[1].numpy() for b in batches])
    w = np.concatenate([b[2].numpy() for b in batches])
    np.testing.assert_array_equal(np.bincount(y, minlength=10), counts)  # the same examples, weighted
    expected = counts.sum() / (10 * counts)
    np.testing.assert_allclose(w, expected[y], rtol=1e-6)
    np.testing.assert_allclose(np.bincount(y, weights=w, minlength=10), counts.sum() / 10, rtol=1e-5)
    np.testing.assert_allclose(class_weights(counts), expected, rtol=1e-6)
    model = keras.Sequential([keras.layers.Flatten(input_shape=(8, 8, 1)), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(splits.train, validation_data=splits.val, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and "val_accuracy" in history.history


def test_balance_works_through_load_and_tfds():
    plain, over = load("digits", batch_size=256), load("digits", batch_size=256, balance="undersample")
    assert _hashes(plain.test) == _hashes(over.test)
    np.testing.assert_array_equal(np.bincount(_all(over.train)[1]), [min(over.info.class_counts)] * 10)
    labels = np.array([0, 1, 0, 0, 2] * 10)  # train[:80%]: 24 zeros, 8 ones, 8 twos

    def as_dataset(self, split, **kwargs):
        rows = {"train": slice(0, 40), "train[:80%]": slice(0, 40), "train[80%:]": slice(40, 50), "test": slice(0, 7)}
        return tf.data.Dataset.from_tensor_slices({"image": np.zeros((50, 28, 28, 1), np.uint8)[rows[split]],
                                                   "label": labels[rows[split]]})

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=as_dataset):
        splits = load("mnist", batch_size=8, balance="oversample")
    # counted on train only, when balancing a tfds set
    assert splits.info.class_counts == (24, 8, 8) + (0,) * 7 and splits.info.n_test == 7
    np.testing.assert_array_equal(np.bincount(_all(splits.train)[1]), [24, 24, 24])
    np.testing.assert_array_equal(_all(splits.val)[1], labels[40:])


@pytest.mark.parametrize("bad", ["smote", "OVERSAMPLE", 1, True, ""])
def test_bad_balance_is_a_config_error_naming_it_and_the_allowed_values(bad):
    allowed = r"allowed: None, 'oversample', 'undersample', 'class_weight'"
    with pytest.raises(ConfigError, match=rf"balance={bad!r} is not allowed; {allowed}"):
        load("digits", balance=bad)
    with pytest.raises(ConfigError, match=rf"balance={bad!r} is not allowed; {allowed}"):
        from_arrays(np.zeros((10, 3)), np.arange(10) % 2, balance=bad)


def test_recipe_data_balance_is_validated_and_reaches_the_train_split_only(tmp_path):
    from tfopt.pipeline import load_recipe
    from tfopt.pipeline.run.context import Context

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\ndata:\n  name: digits\n  balance: smote\nmodel: {builder: mlp}\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml:4: data\.balance: balance='smote' is not allowed; "
                                          r"allowed: 'oversample', 'undersample', 'class_weight'"):
        load_recipe(recipe)
    recipe.write_text("name: t\ndata:\n  name: digits\n  classes: [0, 3, 5]\n  balance: class_weight\n"
                      "model: {builder: mlp}\ntraining: {batch_size: 32}\n")
    ctx = Context(load_recipe(recipe), tmp_path / "run")
    train_ds, val_ds, info = ctx.load()
    assert ctx.load()[2].balance == "class_weight" and info.num_classes == 3 and sum(info.class_counts) == info.n_train
    x, y, w = next(iter(train_ds))  # the weights pass the class subset's relabelling
    counts = np.array(info.class_counts)
    np.testing.assert_allclose(w.numpy() * counts[y.numpy()], (w.numpy() * counts[y.numpy()])[0], rtol=1e-6)
    test = ctx.test()
    assert len(val_ds.element_spec) == len(test.element_spec) == 2
    y_test = np.concatenate([b[1].numpy() for b in test])
    assert len(y_test) == info.n_test and set(y_test) == {0, 1, 2}
    assert _hashes(test) == _hashes(ctx.test())  # the same split, loaded once
