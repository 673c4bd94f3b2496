"""Knowledge distillation (Hinton et al., 2015): train a small student on a frozen teacher's soft targets.

The loss, what ``alpha`` weights (the HARD-label loss) and which outputs are read as logits are those of
:mod:`tfopt.compress._distiller` (``distillation_loss``, ``Distiller``), re-exported here; this module holds the
``distill`` function, its defaults (measured: see :func:`distill`) and the "distill" stage.
"""

from __future__ import annotations

from tfopt._keras import check_model, keras, tf
from tfopt._model import compile_like, count_steps, strategy_scope
from tfopt.compress._distiller import ALPHA, TEMPERATURE, Distiller, _check_shapes, _logits_fn, distillation_loss
from tfopt.compress._fit import compression_fit, stage_resume
from tfopt.data.augment import AUGMENTATIONS, get_augmentation
from tfopt.errors import ConfigError, check_range
from tfopt.options import INT, MAP, NONE, STR, Field, at_least, in_unit, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["distill", "distillation_loss", "Distiller", "consistent_batches"]


def consistent_batches(train_ds, augment, input_shape):
    """``train_ds`` with each batch's inputs augmented once: the Distiller then runs the teacher and the student on
    the same augmented batch (a consistent teacher, Beyer et al. 2022), a fresh augmentation every step.

    Args:
        train_ds: tf.data.Dataset of (x, y) or (x, y, sample_weight) batches of images.
        augment: String, one of ``tfopt.data.AUGMENTATIONS`` ("light", "standard"), or a callable
            ``(x, y) -> (x, y)`` applied to each batch.
        input_shape: Tuple, the shape of one input (H, W, C) (for a named augmentation).

    >>> ds = tf.data.Dataset.from_tensor_slices((tf.ones([4, 8, 8, 1]), tf.range(4))).batch(2)
    >>> [tuple(x.shape) for x, _ in consistent_batches(ds, "light", (8, 8, 1))]
    [(2, 8, 8, 1), (2, 8, 8, 1)]
    """
    fn = get_augmentation(augment, input_shape)

    def apply(x, y, *weight):
        x, y = fn(x, y)
        return (x, y, *weight)

    return train_ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)


def distill(
    teacher,
    student,
    train_ds,
    temperature: float = TEMPERATURE,
    alpha: float = ALPHA,
    epochs: int = 1,
    val_ds=None,
    optimizer=None,
    learning_rate: float = 3e-3,
    callbacks=(),
    strategy=None,
    verbose="auto",
    backup_dir=None,
    keep_backup: bool = False,
    augment=None,
):
    """Train ``student`` to match ``teacher``'s soft targets and the hard labels; return the student.

    The loss is ``alpha * CE(labels) + (1 - alpha) * T**2 * KL(teacher_T || student_T)``: ``alpha``
    weights the HARD loss (``alpha=1`` is plain training on labels, ``alpha=0`` pure distillation).
    The teacher is frozen and runs in inference mode. The returned student is the same tf_keras
    object, trained and compiled with sparse categorical cross-entropy; it saves with no custom objects.

    The recipe for a strong student (Beyer et al. 2022): a teacher better than the student by a margin, the SAME
    augmented inputs for both at every step (``augment=``, or a ``train_ds`` that augments), and a long schedule.
    The defaults (T=1, alpha=0.1, Adam with a cosine decay from 3e-3 to 0 over the run) are what measured best on the
    800 validation digits of mnist_5k (2-core AMD EPYC, shared; ``benchmarks/distillation.py`` lists every setting
    tried): a 27k-parameter CNN student of a 422k-parameter CNN teacher, 60 epochs on "standard"-augmented digits,
    val error T=1: 1.62% / 1.25% (Adam 1e-3 / 3e-3, cosine), T=2: 1.75% / 1.38%, T=4: 2.38% (1e-3); alpha 0.1
    against 0: 1.50% / 1.12% vs 1.62% / 1.25%; cosine against a constant rate (3e-3): 1.12% vs 1.25%. Without
    augmentation the teacher's targets on its own training digits are nearly one-hot: there the CNN student did
    better at T=4 (mean val error of seeds 10 and 11: 1.50% against 1.75% at T=1), but a 100-unit MLP student of the
    same teacher (600 epochs) did worse (5.38% against 4.12%): try ``temperature=4`` beside the default on your own
    validation data. In a short run the rate matters most: a 52k CNN student
    of the documents' CNN (8 epochs, plain digits), 2 epochs on plain digits, val accuracy at seeds 0 / 1 / 2:
    distilled from 3e-3 0.881 / 0.846 / 0.861, from 1e-3 0.773 / 0.734 / 0.720 (the cosine decay halves a short
    run's mean rate), against 0.860 / 0.800 / 0.828 for the student alone with Adam at a constant 1e-3.

    Args:
        teacher: tf_keras model (trained), outputting logits or softmax probabilities.
        student: tf_keras model to train, with the teacher's output shape.
        train_ds: tf.data.Dataset of (x, integer label) batches.
        temperature: Float > 0, the softmax temperature of the soft targets.
        alpha: Float in [0, 1], the weight of the hard-label loss.
        epochs: Integer >= 1, training epochs.
        val_ds: tf.data.Dataset or None, validation batches.
        optimizer: Optimizer or None (Adam from ``learning_rate``, cosine-decayed to 0 over the ``epochs``).
        learning_rate: Float > 0, the initial rate of the default Adam (3e-3 did better than 1e-3 for the small
            students above, alone and distilled, in 60 epochs and in 2).
        callbacks: Sequence of Keras callbacks (they see the Distiller as ``self.model``).
        strategy: tf.distribute.Strategy or None.
        verbose: "auto", 0, 1 or 2, as in ``fit``.
        backup_dir: String, Path or None: keep a resumable state there (see ``tfopt.compress.prune``).
        keep_backup: Boolean, keep that state when training ends.
        augment: None, "light", "standard" (``tfopt.data`` augmentations, images only) or a callable
            ``(x, y) -> (x, y)``: each batch is augmented once and BOTH models see it (see
            :func:`consistent_batches`); a ``train_ds`` that already augments does the same.

    >>> student = distill(teacher, student, train_ds, epochs=60, augment="standard")  # doctest: +SKIP
    """
    check_model(teacher, "distill")
    check_model(student, "distill")
    check_range("temperature", temperature, 0, low_open=True)
    check_range("alpha", alpha, 0, 1)
    check_range("learning_rate", learning_rate, 0, low_open=True)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs={epochs!r} must be an integer >= 1")
    _check_shapes(teacher, student)
    steps = count_steps(train_ds, "train_ds")
    if augment is not None:
        train_ds = consistent_batches(train_ds, augment, tuple(student.input_shape[1:]))
    _logits_fn(student, "student")  # a sigmoid student is refused before anything runs
    with strategy_scope(strategy):
        if optimizer is None:
            optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, epochs * steps))
        compile_like(student, optimizer=optimizer)
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
    with strategy_scope(inputs.strategy):  # the student trains under the run's strategy: its variables are made there
        student = inputs.build(o["student"], info)
    epochs = o["epochs"] or inputs.training["epochs"]
    student = distill(teacher, student, train_ds, temperature=o["temperature"], alpha=o["alpha"], epochs=epochs,
                      val_ds=val_ds, learning_rate=o["learning_rate"], verbose=inputs.verbose, augment=o["augment"],
                      strategy=inputs.strategy, **stage_resume(inputs, inputs.strategy))
    teacher_metrics = inputs.held_out(teacher, val_ds)
    metrics = {"epochs": epochs, "teacher_val_accuracy": teacher_metrics["val_accuracy"],
               "teacher_params": teacher_metrics["params"], **inputs.held_out(student, val_ds)}
    return StageResult(student, metrics, f"student accuracy {metrics['val_accuracy']:.4f} "
                                         f"({metrics['params']:,} params) vs teacher "
                                         f"{metrics['teacher_val_accuracy']:.4f}")


TECHNIQUE = register_technique(Technique(
    "distill",
    options_from(distill, ["student", "temperature", "alpha", "epochs", "learning_rate", "augment"],
                 student=Field((MAP,), required=True, section="model",
                               help="the student model: {builder: ..., args: {...}}"),
                 temperature={"check": positive},
                 alpha={"check": in_unit(high_open=False), "help": "the weight of the hard-label loss"},
                 epochs={"kinds": (INT, NONE), "default": None, "check": at_least(1),
                         "help": "unset: the recipe's training.epochs"},
                 learning_rate={"check": positive},
                 augment=Field((STR, NONE), None, choices=tuple(AUGMENTATIONS),
                               help="augment each batch once for both teacher and student (images; on top of the "
                                    "data section's augment)")),
    _run_stage, summary="knowledge distillation: the current model teaches a new, smaller student",
    function=distill, own_defaults=("epochs",), sets=("trained",), clears=("pruned", "clustered")))
