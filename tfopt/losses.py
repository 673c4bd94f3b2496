"""Training losses: label smoothing, focal loss, adaptively class-weighted cross-entropy, and ``get``.

Every loss here is a serializable ``keras.losses.Loss``: a model compiled with one saves as ``.keras``
and loads back with ``keras.models.load_model(path)`` and no ``custom_objects``.

>>> loss = get("label_smoothing", smoothing=0.1)
>>> float(loss([0, 1], [[2.0, 0.0], [0.0, 2.0]])) > 0
True
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tfopt._keras import keras, serializable, tf
from tfopt._registry import from_registry
from tfopt.errors import ConfigError, DataError, check_range

__all__ = [
    "LabelSmoothingCrossEntropy",
    "SparseFocalLoss",
    "AdaptiveClassWeightedLoss",
    "AdaptiveClassWeights",
    "UncertaintyWeighting",
    "get",
    "LOSSES",
]


def _sparse_labels(y_true, y_pred):
    """Integer labels shaped like ``y_pred`` without its class axis ((B,) or (B, 1) -> (B,))."""
    y_true = tf.cast(y_true, tf.int32)
    return tf.reshape(y_true, tf.shape(y_pred)[:-1])


def _log_probs(y_pred, from_logits: bool):
    """Log-probabilities over the last axis, from logits or (clipped, renormalised) probabilities."""
    if from_logits:
        return tf.nn.log_softmax(y_pred, axis=-1)
    eps = keras.backend.epsilon()
    probs = y_pred / tf.reduce_sum(y_pred, axis=-1, keepdims=True)
    return tf.math.log(tf.clip_by_value(probs, eps, 1.0 - eps))


def _sparse_ce(y_true, y_pred, from_logits: bool):
    """Per-sample sparse categorical cross-entropy, exactly as Keras computes it."""
    return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=from_logits)


@serializable
class LabelSmoothingCrossEntropy(keras.losses.Loss):
    """Cross-entropy against smoothed labels: ``y * (1 - smoothing) + smoothing / num_classes``.

    On one-hot labels it equals ``keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)``;
    on integer labels it equals that applied to ``one_hot(labels)`` (the class count is read from
    the last axis of ``y_pred`` unless ``num_classes`` is given).

    Args:
        smoothing: Float in [0, 1), the probability mass spread uniformly over all classes.
        sparse: Boolean, True when labels are integer class ids, False when they are one-hot.
        from_logits: Boolean, True when the model outputs logits (no softmax).
        num_classes: Integer or None, the class count for integer labels (None: from ``y_pred``).
        reduction: String, a ``keras.losses.Reduction`` value.
        name: String, the loss name.

    >>> round(float(LabelSmoothingCrossEntropy(0.1)([1], [[0.0, 3.0]])), 4)
    0.1986
    """

    def __init__(
        self,
        smoothing: float = 0.1,
        sparse: bool = True,
        from_logits: bool = True,
        num_classes: int | None = None,
        reduction: str = keras.losses.Reduction.AUTO,
        name: str = "label_smoothing_cross_entropy",
    ):
        super().__init__(reduction=reduction, name=name)
        check_range("smoothing", smoothing, 0, 1, high_open=True)
        if num_classes is not None:
            check_range("num_classes", num_classes, 2)
        self.smoothing = float(smoothing)
        self.sparse = bool(sparse)
        self.from_logits = bool(from_logits)
        self.num_classes = None if num_classes is None else int(num_classes)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        if self.sparse:
            depth = self.num_classes if self.num_classes is not None else tf.shape(y_pred)[-1]
            y_true = tf.one_hot(_sparse_labels(y_true, y_pred), depth, dtype=y_pred.dtype)
        else:
            y_true = tf.cast(y_true, y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits, label_smoothing=self.smoothing
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            smoothing=self.smoothing,
            sparse=self.sparse,
            from_logits=self.from_logits,
            num_classes=self.num_classes,
        )
        return config


@serializable
class SparseFocalLoss(keras.losses.Loss):
    """Focal loss for integer labels (Lin et al. 2017): ``-alpha_y * (1 - p_y)**gamma * log(p_y)``.

    With ``gamma=0`` and ``alpha=None`` it is sparse categorical cross-entropy.

    Args:
        gamma: Float >= 0, the focusing exponent (larger down-weights easy examples more).
        alpha: None, a float > 0 (one factor for every class) or a sequence of per-class floats.
        from_logits: Boolean, True when the model outputs logits.
        reduction: String, a ``keras.losses.Reduction`` value.
        name: String, the loss name.

    >>> round(float(SparseFocalLoss(gamma=0.0)([0], [[0.0, 0.0]])), 4)
    0.6931
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        from_logits: bool = True,
        reduction: str = keras.losses.Reduction.AUTO,
        name: str = "sparse_focal_loss",
    ):
        super().__init__(reduction=reduction, name=name)
        check_range("gamma", gamma, 0)
        if alpha is not None:
            values = np.atleast_1d(np.asarray(alpha, dtype="float64"))
            if values.ndim != 1 or values.size == 0 or not np.all(values > 0):
                raise ConfigError(
                    f"alpha={alpha!r} is not allowed; allowed: None, a float > 0 or a list of floats > 0"
                )
            alpha = float(values[0]) if np.ndim(alpha) == 0 else [float(v) for v in values]
        self.gamma = float(gamma)
        self.alpha = alpha
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        labels = _sparse_labels(y_true, y_pred)
        one_hot = tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype)
        log_p = tf.reduce_sum(one_hot * _log_probs(y_pred, self.from_logits), axis=-1)
        loss = -tf.pow(1.0 - tf.exp(log_p), self.gamma) * log_p
        if isinstance(self.alpha, list):
            loss *= tf.gather(tf.constant(self.alpha, y_pred.dtype), labels)
        elif self.alpha is not None:
            loss *= self.alpha
        return loss

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(gamma=self.gamma, alpha=self.alpha, from_logits=self.from_logits)
        return config


@serializable
class AdaptiveClassWeightedLoss(keras.losses.Loss):
    """Sparse cross-entropy weighted per sample by a per-class weight that training can change.

    The weights live in a non-trainable ``tf.Variable`` (``class_weights``); the
    :class:`AdaptiveClassWeights` callback updates them at each epoch end from the per-class error.
    The loss also counts, per class, the samples and errors it sees (``seen``, ``wrong``), so the
    callback can use the training batches themselves when it is given no dataset.

    Args:
        num_classes: Integer >= 2, the number of classes.
        from_logits: Boolean, True when the model outputs logits.
        initial_weights: Sequence of num_classes floats > 0, or None for all ones.
        reduction: String, a ``keras.losses.Reduction`` value.
        name: String, the loss name.

    >>> loss = AdaptiveClassWeightedLoss(2, initial_weights=[1.0, 3.0])
    >>> round(float(loss([1], [[0.0, 0.0]])), 4)
    2.0794
    """

    def __init__(
        self,
        num_classes: int,
        from_logits: bool = True,
        initial_weights: Sequence[float] | None = None,
        reduction: str = keras.losses.Reduction.AUTO,
        name: str = "adaptive_class_weighted_loss",
    ):
        super().__init__(reduction=reduction, name=name)
        check_range("num_classes", num_classes, 2)
        weights = np.ones(int(num_classes)) if initial_weights is None else np.asarray(initial_weights, "float32")
        if weights.shape != (int(num_classes),) or not np.all(weights > 0):
            raise ConfigError(
                f"initial_weights={initial_weights!r} is not allowed; allowed: None or {num_classes} floats > 0"
            )
        self.num_classes = int(num_classes)
        self.from_logits = bool(from_logits)
        self.class_weights = tf.Variable(weights, dtype=tf.float32, trainable=False, name="class_weights")
        self.seen = tf.Variable(tf.zeros(self.num_classes), trainable=False, name="seen")
        self.wrong = tf.Variable(tf.zeros(self.num_classes), trainable=False, name="wrong")

    def reset_counts(self) -> None:
        """Zero the per-class sample and error counts."""
        self.seen.assign(tf.zeros(self.num_classes))
        self.wrong.assign(tf.zeros(self.num_classes))

    def call(self, y_true, y_pred):
        y_pred = tf.convert_to_tensor(y_pred)
        labels = tf.reshape(_sparse_labels(y_true, y_pred), [-1])
        flat_pred = tf.reshape(y_pred, [-1, self.num_classes])
        errors = tf.cast(tf.not_equal(tf.argmax(flat_pred, -1, output_type=tf.int32), labels), tf.float32)
        self.seen.assign_add(tf.math.unsorted_segment_sum(tf.ones_like(errors), labels, self.num_classes))
        self.wrong.assign_add(tf.math.unsorted_segment_sum(errors, labels, self.num_classes))
        weights = tf.cast(tf.gather(self.class_weights, _sparse_labels(y_true, y_pred)), y_pred.dtype)
        return _sparse_ce(y_true, y_pred, self.from_logits) * weights

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            from_logits=self.from_logits,
            initial_weights=[float(w) for w in self.class_weights.numpy()],
        )
        return config


class AdaptiveClassWeights(keras.callbacks.Callback):
    """Callback: at each epoch end, re-weight the classes of an :class:`AdaptiveClassWeightedLoss`.

    New weights are ``target = (error_c + eps) ** power`` normalised to mean 1, blended as
    ``momentum * old + (1 - momentum) * target`` and normalised to mean 1 again, where ``error_c``
    is the fraction of class ``c`` misclassified on ``data`` (or, without ``data``, on the training
    batches of the epoch, counted by the loss). Classes absent from the data keep their weight.

    Args:
        loss: AdaptiveClassWeightedLoss or None (None: the model's compiled loss).
        data: tf.data.Dataset of (x, y) batches or None (None: the training batches).
        power: Float > 0, how strongly the error drives the weight.
        momentum: Float in [0, 1), the share of the old weight kept at each update.
        eps: Float > 0, added to the error so perfectly learnt classes keep a weight above zero.
        verbose: Integer, 1 prints the weights at each update.

    >>> cb = AdaptiveClassWeights(AdaptiveClassWeightedLoss(3), power=1.0, momentum=0.0)
    """

    def __init__(self, loss=None, data=None, power: float = 1.0, momentum: float = 0.5,
                 eps: float = 0.05, verbose: int = 0):
        super().__init__()
        check_range("power", power, 0, low_open=True)
        check_range("momentum", momentum, 0, 1, high_open=True)
        check_range("eps", eps, 0, low_open=True)
        if data is not None and not isinstance(data, tf.data.Dataset):
            raise DataError(f"data must be a tf.data.Dataset of (x, y) batches or None, got {type(data).__name__}")
        self.loss, self.data = loss, data
        self.power, self.momentum, self.eps, self.verbose = float(power), float(momentum), float(eps), verbose
        self.history: list[np.ndarray] = []
        self._snapshot = None

    def _weighted_loss(self) -> AdaptiveClassWeightedLoss:
        loss = self.loss if self.loss is not None else getattr(self.model, "loss", None)
        if not isinstance(loss, AdaptiveClassWeightedLoss):
            raise ConfigError(
                f"AdaptiveClassWeights needs an AdaptiveClassWeightedLoss (as `loss=` or the model's compiled "
                f"loss), got {type(loss).__name__}"
            )
        return loss

    def on_epoch_begin(self, epoch, logs=None):
        self._weighted_loss().reset_counts()
        self._snapshot = None

    def on_test_begin(self, logs=None):
        # fit's validation calls the loss too: keep the counts of the training batches only.
        if self._snapshot is None:
            loss = self._weighted_loss()
            self._snapshot = (loss.seen.numpy(), loss.wrong.numpy())

    def class_errors(self, loss: AdaptiveClassWeightedLoss) -> tuple[np.ndarray, np.ndarray]:
        """Per-class (sample count, error rate) on ``data`` or the epoch's training batches."""
        if self.data is not None:
            seen = np.zeros(loss.num_classes)
            wrong = np.zeros(loss.num_classes)
            for x, y in self.data:
                pred = np.argmax(self.model(x, training=False).numpy().reshape(-1, loss.num_classes), -1)
                y = np.asarray(y).reshape(-1).astype(int)
                np.add.at(seen, y, 1)
                np.add.at(wrong, y, (pred != y).astype(float))
        else:
            seen, wrong = self._snapshot or (loss.seen.numpy(), loss.wrong.numpy())
        return seen, np.divide(wrong, np.maximum(seen, 1))

    def on_epoch_end(self, epoch, logs=None):
        loss = self._weighted_loss()
        seen, error = self.class_errors(loss)
        old = loss.class_weights.numpy().astype("float64")
        target = (error + self.eps) ** self.power
        target = np.where(seen > 0, target / target[seen > 0].mean(), old)
        new = self.momentum * old + (1.0 - self.momentum) * target
        new = new / new.mean()
        loss.class_weights.assign(new.astype("float32"))
        self.history.append(new)
        if logs is not None:
            logs["max_class_weight"] = float(new.max())
        if self.verbose:
            print(f"AdaptiveClassWeights epoch {epoch + 1}: weights={np.round(new, 3).tolist()}")


@serializable
class UncertaintyWeighting(keras.layers.Layer):
    """Combine several scalar losses with learnt homoscedastic uncertainty (Kendall et al., CVPR 2018).

    ``total = sum_i exp(-s_i) * loss_i + s_i`` with trainable ``s_i = log(sigma_i**2)`` (the
    ``log_vars`` weight, starting at 0, i.e. equal weights). Call it on a list of scalar losses inside
    a custom train step, or ``model.add_loss(layer([loss_a, loss_b]))``.

    Args:
        num_losses: Integer >= 2, the number of losses combined.

    >>> layer = UncertaintyWeighting(2)
    >>> float(layer([tf.constant(1.0), tf.constant(2.0)]))
    3.0
    """

    def __init__(self, num_losses: int, **kwargs):
        super().__init__(**kwargs)
        check_range("num_losses", num_losses, 2)
        self.num_losses = int(num_losses)
        self.log_vars = self.add_weight(
            name="log_vars", shape=(self.num_losses,), initializer="zeros", trainable=True
        )

    def call(self, losses):
        if len(losses) != self.num_losses:
            raise ConfigError(f"UncertaintyWeighting got {len(losses)} losses; allowed: {self.num_losses}")
        stacked = tf.stack([tf.cast(tf.reduce_mean(v), self.log_vars.dtype) for v in losses])
        return tf.reduce_sum(tf.exp(-self.log_vars) * stacked + self.log_vars)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_losses": self.num_losses}


def _keras_sparse_ce(from_logits: bool = True, **kw):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits, **kw)


def _keras_ce(from_logits: bool = True, **kw):
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits, **kw)


LOSSES = {
    "label_smoothing": LabelSmoothingCrossEntropy,
    "label_smoothing_ce": LabelSmoothingCrossEntropy,
    "focal": SparseFocalLoss,
    "sparse_focal": SparseFocalLoss,
    "adaptive": AdaptiveClassWeightedLoss,
    "sparse_categorical_crossentropy": _keras_sparse_ce,
    "categorical_crossentropy": _keras_ce,
}


def get(identifier, **kw) -> keras.losses.Loss:
    """Return a loss from a name in :data:`LOSSES`, a Keras config dict, or a Loss object (as is).

    Args:
        identifier: String (a key of LOSSES), dict (``{"class_name": ..., "config": ...}`` as Keras
            serializes losses) or a keras.losses.Loss.
        **kw: Keyword arguments of the named loss (e.g. ``smoothing=0.2``, ``num_classes=10``).

    >>> type(get("focal", gamma=1.0)).__name__
    'SparseFocalLoss'
    """
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    return from_registry("loss", identifier, LOSSES, keras.losses.deserialize, **kw)
