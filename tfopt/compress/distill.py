"""Knowledge distillation (Hinton et al., 2015): train a small student on a frozen teacher's soft targets.

The loss is ``alpha * CE(y, student) + (1 - alpha) * T**2 * KL(softmax(teacher / T) || softmax(student / T))``:
``alpha`` weights the HARD-label loss, ``1 - alpha`` the soft (distillation) loss, and ``T**2`` keeps
the soft gradients' scale independent of the temperature. Both models should output logits; a model
whose last layer ends in softmax is read as probabilities and turned into logits with ``log``
(a sigmoid output is ambiguous and rejected).
"""

from __future__ import annotations

from tfopt._keras import check_model, keras, serializable, tf
from tfopt._model import compile_like, count_steps, outputs_logits, strategy_scope
from tfopt.compress._fit import compression_fit, stage_resume
from tfopt.errors import ConfigError, check_range
from tfopt.options import INT, MAP, NONE, Field, at_least, in_unit, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["distill", "distillation_loss", "Distiller"]

_EPS = 1e-7


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


def distillation_loss(y_true, teacher_logits, student_logits, temperature: float = 4.0, alpha: float = 0.1,
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

    def __init__(self, student, teacher, temperature: float = 4.0, alpha: float = 0.1, **kwargs):
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


def distill(
    teacher,
    student,
    train_ds,
    temperature: float = 4.0,
    alpha: float = 0.1,
    epochs: int = 1,
    val_ds=None,
    optimizer=None,
    learning_rate: float = 1e-3,
    callbacks=(),
    strategy=None,
    verbose="auto",
    backup_dir=None,
    keep_backup: bool = False,
):
    """Train ``student`` to match ``teacher``'s soft targets and the hard labels; return the student.

    The loss is ``alpha * CE(labels) + (1 - alpha) * T**2 * KL(teacher_T || student_T)``: ``alpha``
    weights the HARD loss (``alpha=1`` is plain training on labels, ``alpha=0`` pure distillation).
    The teacher is frozen and runs in inference mode. The returned student is the same tf_keras
    object, trained and compiled with sparse categorical cross-entropy; it saves with no custom objects.

    Args:
        teacher: tf_keras model (trained), outputting logits or softmax probabilities.
        student: tf_keras model to train, with the teacher's output shape.
        train_ds: tf.data.Dataset of (x, integer label) batches.
        temperature: Float > 0, the softmax temperature of the soft targets.
        alpha: Float in [0, 1], the weight of the hard-label loss.
        epochs: Integer >= 1, training epochs.
        val_ds: tf.data.Dataset or None, validation batches.
        optimizer: Optimizer or None (Adam at ``learning_rate``).
        learning_rate: Float > 0, the rate of the default Adam.
        callbacks: Sequence of Keras callbacks (they see the Distiller as ``self.model``).
        strategy: tf.distribute.Strategy or None.
        verbose: "auto", 0, 1 or 2, as in ``fit``.
        backup_dir: String, Path or None: keep a resumable state there (see ``tfopt.compress.prune``).
        keep_backup: Boolean, keep that state when training ends.

    >>> student = distill(teacher, student, train_ds, temperature=4.0, alpha=0.1)  # doctest: +SKIP
    """
    check_model(teacher, "distill")
    check_model(student, "distill")
    check_range("temperature", temperature, 0, low_open=True)
    check_range("alpha", alpha, 0, 1)
    check_range("learning_rate", learning_rate, 0, low_open=True)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be an integer >= 1")
    _check_shapes(teacher, student)
    count_steps(train_ds, "train_ds")
    _logits_fn(student, "student")  # a sigmoid student is refused before anything runs
    with strategy_scope(strategy):
        compile_like(student, optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    # the Distiller is made there: resumable, even batches under a strategy
    compression_fit(student, train_ds, epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose, strategy=strategy,
                    backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher, temperature=temperature,
                    alpha=alpha, what="distill")
    compile_like(student, learning_rate=learning_rate)
    return student


# ---------------------------------------------------------------- the "distill" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The distill stage: the current model teaches a new student built from the ``student`` section."""
    train_ds, val_ds, info = inputs.load()
    teacher = inputs.model()
    student = inputs.build(o["student"], info)
    epochs = o["epochs"] or inputs.training["epochs"]
    student = distill(teacher, student, train_ds, temperature=o["temperature"], alpha=o["alpha"], epochs=epochs,
                      val_ds=val_ds, learning_rate=o["learning_rate"], verbose=inputs.verbose, **stage_resume(inputs))
    teacher_metrics = inputs.held_out(teacher, val_ds)
    metrics = {"epochs": epochs, "teacher_val_accuracy": teacher_metrics["val_accuracy"],
               "teacher_params": teacher_metrics["params"], **inputs.held_out(student, val_ds)}
    return StageResult(student, metrics, f"student accuracy {metrics['val_accuracy']:.4f} "
                                         f"({metrics['params']:,} params) vs teacher "
                                         f"{metrics['teacher_val_accuracy']:.4f}")


TECHNIQUE = register_technique(Technique(
    "distill",
    options_from(distill, ["student", "temperature", "alpha", "epochs", "learning_rate"],
                 student=Field((MAP,), required=True, section="model",
                               help="the student model: {builder: ..., args: {...}}"),
                 temperature={"check": positive},
                 alpha={"check": in_unit(high_open=False), "help": "the weight of the hard-label loss"},
                 epochs={"kinds": (INT, NONE), "default": None, "check": at_least(1),
                         "help": "unset: the recipe's training.epochs"},
                 learning_rate={"check": positive}),
    _run_stage, summary="knowledge distillation: the current model teaches a new, smaller student",
    function=distill, own_defaults=("epochs",), sets=("trained",), clears=("pruned", "clustered")))
