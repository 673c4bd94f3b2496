"""The distillation loss and the Distiller model (Hinton et al., 2015), below both ``tfopt.compress.distill`` (the
``distill`` function and stage) and ``tfopt.compress._fit`` (``teacher=`` for every compression's fine-tuning),
which both train through them; ``tfopt.compress.distill`` re-exports the public names.

The loss is ``alpha * CE(y, student) + (1 - alpha) * T**2 * KL(softmax(teacher / T) || softmax(student / T))``:
``alpha`` weights the HARD-label loss, ``1 - alpha`` the soft (distillation) loss, and ``T**2`` keeps
the soft gradients' scale independent of the temperature. Both models should output logits; a model
whose last layer ends in softmax is read as probabilities and turned into logits with ``log``
(a sigmoid output is ambiguous and rejected).
"""

from __future__ import annotations

from tfopt._keras import keras, serializable, tf
from tfopt._model import outputs_logits
from tfopt.errors import ConfigError

__all__ = ["distillation_loss", "Distiller", "TEMPERATURE", "ALPHA"]

_EPS = 1e-7
# the defaults of every distillation (distill, Distiller, distillation_loss, teacher= on a compression), measured on
# validation: see tfopt.compress.distill's docstring and benchmarks/distillation.py's TUNING
TEMPERATURE = 1.0
ALPHA = 0.1


def _last_activation(model) -> str:
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", str(activation))


def _logits_fn(model, role: str):
    """A function turning ``model``'s outputs into logits (identity for logits, log for softmax)."""
    if outputs_logits(model):
        return tf.identity
    if _last_activation(model) == "softmax":
        return lambda p: tf.math.log(tf.clip_by_value(p, _EPS, 1.0))
    raise ConfigError(
        f"{role} {model.name!r} ends in a {_last_activation(model)!r} activation; distill needs logits "
        "(or a softmax output, read as probabilities): remove the sigmoid"
    )


def distillation_loss(y_true, teacher_logits, student_logits, temperature: float = TEMPERATURE, alpha: float = ALPHA,
                      sample_weight=None):
    """Return ``(total, hard, soft)`` losses, each averaged over the batch (weighted per example, as Keras
    weighs a loss, when ``sample_weight`` is given: class-weighted data weighs both terms).

    Args:
        y_true: Integer tensor of class ids, shape (batch,) or (batch, 1).
        teacher_logits: Float tensor (batch, classes).
        student_logits: Float tensor (batch, classes).
        temperature: Float > 0, the softmax temperature of the soft targets.
        alpha: Float in [0, 1], the weight of the hard-label loss.
        sample_weight: Optional float tensor (batch,), per-example weights (e.g. ``balance="class_weight"``).

    >>> total, hard, soft = distillation_loss([0], [[2.0, 0.0]], [[2.0, 0.0]])
    >>> round(float(soft), 6)
    0.0
    """
    student_logits = tf.convert_to_tensor(student_logits, tf.float32)
    teacher_logits = tf.convert_to_tensor(teacher_logits, tf.float32)
    y_true = tf.reshape(tf.cast(y_true, tf.int32), [-1])
    weight = 1.0 if sample_weight is None else tf.reshape(tf.cast(sample_weight, tf.float32), [-1])
    hard = tf.reduce_mean(weight * tf.nn.sparse_softmax_cross_entropy_with_logits(y_true, student_logits))
    log_p_teacher = tf.nn.log_softmax(teacher_logits / temperature, axis=-1)
    log_p_student = tf.nn.log_softmax(student_logits / temperature, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
    soft = temperature**2 * tf.reduce_mean(weight * kl)
    return alpha * hard + (1.0 - alpha) * soft, hard, soft


@serializable
class Distiller(keras.Model):
    """Wraps a frozen teacher and a trainable student; ``fit`` trains only the student.

    Args:
        student: tf_keras model being trained.
        teacher: tf_keras model giving soft targets, run in inference mode and never updated.
        temperature: Float > 0, the softmax temperature.
        alpha: Float in [0, 1], the weight of the hard-label loss.

    >>> distiller = Distiller(student, teacher, temperature=4.0, alpha=0.1)  # doctest: +SKIP
    """

    def __init__(self, student, teacher, temperature: float = TEMPERATURE, alpha: float = ALPHA, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self._student_logits = _logits_fn(student, "student")
        self._teacher_logits = _logits_fn(teacher, "teacher")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.hard_tracker = keras.metrics.Mean(name="hard_loss")
        self.soft_tracker = keras.metrics.Mean(name="soft_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.hard_tracker, self.soft_tracker, self.accuracy]

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _distill_losses(self, x, y, training: bool, sample_weight=None):
        teacher_logits = self._teacher_logits(self.teacher(x, training=False))
        student_logits = self._student_logits(self.student(x, training=training))
        total, hard, soft = distillation_loss(y, teacher_logits, student_logits, self.temperature, self.alpha,
                                              sample_weight)
        if self.student.losses:
            total += tf.add_n(self.student.losses)
        return total, hard, soft, student_logits

    def _record(self, y, total, hard, soft, student_logits):
        self.loss_tracker.update_state(total)
        self.hard_tracker.update_state(hard)
        self.soft_tracker.update_state(soft)
        self.accuracy.update_state(y, student_logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)  # (x, y, w) from balance="class_weight"
        with tf.GradientTape() as tape:
            total, hard, soft, student_logits = self._distill_losses(x, y, training=True, sample_weight=w)
            # each replica averages its own rows and the optimizer sums the replicas' gradients: divide by the
            # replicas, as Keras' compiled loss does, or N replicas train at N times the rate
            scaled = total / tf.cast(self.distribute_strategy.num_replicas_in_sync, total.dtype)
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._record(y, total, hard, soft, student_logits)

    def test_step(self, data):
        x, y, w = keras.utils.unpack_x_y_sample_weight(data)
        return self._record(y, *self._distill_losses(x, y, training=False, sample_weight=w))

    def get_config(self):
        return {
            "student": keras.saving.serialize_keras_object(self.student),
            "teacher": keras.saving.serialize_keras_object(self.teacher),
            "temperature": self.temperature,
            "alpha": self.alpha,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teacher"] = keras.saving.deserialize_keras_object(config["teacher"])
        return cls(**config)


def _check_shapes(teacher, student) -> None:
    t_shape, s_shape = tuple(teacher.output_shape), tuple(student.output_shape)
    if len(t_shape) != 2 or t_shape[1:] != s_shape[1:]:
        raise ConfigError(
            f"teacher output shape {t_shape} and student output shape {s_shape} differ; distill needs both "
            "to output (batch, num_classes) with the same num_classes"
        )
