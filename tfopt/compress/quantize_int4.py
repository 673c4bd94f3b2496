"""4-bit weight quantization-aware fine-tuning (tfmot), for the int4 TFLite file: its kernels are what the file stores.

Post-training int4 (``to_tflite(model, "int4")``, the LiteRT quantizer) rounds each output channel of a kernel onto
15 evenly spaced levels, ``k * max|w| / 7`` for k in -7..7. :func:`quantize_aware_int4` fine-tunes the model through
that rounding instead: tfmot wraps each Dense and convolution kernel in its ``LastValueQuantizer`` (4 bits, per
output channel, symmetric, narrow range: the same 15 levels), the gradients pass it straight through, and the
result is a plain float tf_keras model whose kernels lie on those levels. The LiteRT quantizer then stores every
weight exactly (read back from the file: one code per weight, the same value): each channel holds at most 15
values, the clusters that fit in 4 bits; k-means clusters (``cluster``) do not survive the levels (two of 16 centroids
closer than a level apart share a code).

- Activations stay float (no input or activation fake-quant): the int4 files keep float activations.
- Trained on the levels: Dense, Conv1D and Conv2D kernels. Other kernels (depthwise, transposed and separable
  convolutions, attention's EinsumDense, recurrent layers) are left as they are, for the quantizer's own rounding;
  the report lists them. A convolution followed by BatchNormalization is folded into one kernel by the converter:
  each output channel times one factor, which keeps it on its own levels, so the file stores that kernel exactly
  too.
- ``preserve_sparsity=True`` keeps a pruned model's zeros: they are zero again after every step and on the levels
  (0 is one).

>>> four = quantize_aware_int4(pruned, train_ds, epochs=2, preserve_sparsity=True)  # doctest: +SKIP
>>> tfopt.export.to_tflite(four, "int4")  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from tfopt._keras import check_model, keras, tf, tfmot
from tfopt._model import (compile_like, count_steps, flatten_model, holds_kernel, is_qat, rebuilding_in_memory,
                          strategy_scope)
from tfopt.compress._fit import (TEACHER_OPTIONS, check_epochs_and_rate, compression_fit, distillation_settings,
                                 stage_resume, stage_teacher)
from tfopt.errors import ConfigError, UnsupportedLayerError
from tfopt.options import BOOL, NONE, at_least, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["INT4_LEVELS", "quantize_aware_int4", "snap_to_int4"]

INT4_LEVELS = 7  # per channel, the levels are k * max|w| / 7, k in -7..7 (tfmot narrow range = LiteRT's int4 scale)
_ON_LEVELS = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)  # exact classes: kernel's last axis = out
_TFMOT_WRAPPERS = ("PruneLowMagnitude", "ClusterWeights", "ClusterWeightsMHA", "ClusterWeightsRNN")


def snap_to_int4(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` rounded per output channel (its last axis) onto the int4 levels ``k * max|w| / 7``, k in -7..7.

    The channel's largest magnitude is a level itself, so the LiteRT quantizer, whose int4 scale is ``max|w| / 7``,
    finds the same scale again and stores each snapped weight exactly. An all-zero channel stays zero.

    >>> [round(float(w), 2) for w in snap_to_int4(np.array([[0.7], [0.31], [-0.04]], np.float32)).ravel()]
    [0.7, 0.3, -0.0]
    """
    kernel = np.asarray(kernel, np.float32).astype(np.float64)  # in float64: the largest weight comes back as itself
    scale = np.abs(kernel).max(axis=tuple(range(kernel.ndim - 1)), keepdims=True) / INT4_LEVELS
    scale = np.where(scale == 0, 1, scale)
    return (np.round(kernel / scale) * scale).astype(np.float32)


def _on_levels(layer) -> bool:
    return type(layer) in _ON_LEVELS


class _ChannelsLastValueQuantizer(tfmot.quantization.keras.quantizers.LastValueQuantizer):
    """tfmot's ``LastValueQuantizer`` per output channel for a kernel of any rank: tfmot's own takes 2-D and 4-D
    tensors only (a Conv1D kernel, 3-D, failed inside it with UnboundLocalError), so the kernel goes through it as
    ``(-1, channels)`` and comes back in its shape (the same channels, the same levels)."""

    def __call__(self, inputs, training, weights, **kwargs):
        if inputs.shape.rank in (2, 4):
            return super().__call__(inputs, training, weights, **kwargs)
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        return tf.reshape(super().__call__(flat, training, weights, **kwargs), tf.shape(inputs))


class Int4WeightsConfig(tfmot.quantization.keras.QuantizeConfig):
    """tfmot QuantizeConfig: the kernel through a 4-bit per-channel symmetric narrow-range ``LastValueQuantizer``;
    no activation or output quantizer (the int4 files keep float activations)."""

    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, _ChannelsLastValueQuantizer(num_bits=4, per_axis=True, symmetric=True,
                                                           narrow_range=True))]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


class _NoLayout:
    """No layout transform: tfmot's default one adds an 8-bit QuantizeLayer on every model input."""

    def apply(self, model, layer_quantize_map):
        return model, layer_quantize_map


class _Int4Scheme(tfmot.quantization.keras.QuantizeScheme):
    def get_layout_transformer(self):
        return _NoLayout()

    def get_quantize_registry(self):
        return tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()


def _wrapped(flat):
    """tfmot's quantize-wrapped copy of ``flat`` (weights copied): its Dense and convolution kernels on the levels."""
    config = tfmot.quantization.keras.quantize_annotate_layer

    def annotate(layer):
        return config(layer, quantize_config=Int4WeightsConfig()) if _on_levels(layer) else layer

    annotated = keras.models.clone_model(flat, clone_function=annotate)
    annotated.set_weights(flat.get_weights())
    with tfmot.quantization.keras.quantize_scope({"Int4WeightsConfig": Int4WeightsConfig}), rebuilding_in_memory():
        return tfmot.quantization.keras.quantize_apply(annotated, scheme=_Int4Scheme())


def _kernel_variables(qat) -> dict:
    """Layer name -> the float kernel variable a wrapper trains (its layer's ``kernel`` is the fake-quant tensor)."""
    return {wrapper.layer.name: next(w for w in wrapper.trainable_weights if w.name.split("/")[-1].startswith("kernel"))
            for wrapper in qat.layers if isinstance(wrapper, tfmot.quantization.keras.QuantizeWrapperV2)
            and _on_levels(wrapper.layer)}


class _KeepZeros(keras.callbacks.Callback):
    """Writes each pruned kernel's zeros back after every step (the optimizer moves them; the levels keep 0)."""

    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def on_train_batch_end(self, batch, logs=None):
        for variable, mask in self.masks:
            variable.assign(variable * mask)  # mask: a constant tensor, made once


def quantize_aware_int4(
    model,
    train_ds,
    epochs: int = 1,
    preserve_sparsity: bool = False,
    val_ds=None,
    callbacks=(),
    optimizer=None,
    loss=None,
    learning_rate: float = 1e-3,
    strategy=None,
    verbose="auto",
    return_report: bool = False,
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """Fine-tune ``model`` through 4-bit per-channel weights; return a float model whose kernels lie on the levels
    the LiteRT int4 quantizer stores exactly (see the module's docstring).

    ``model`` is not modified; nested sub-models are flattened first (``flatten_model``). Export the result with
    ``to_tflite(result, "int4")`` (or ``"int4_weight_only"``); ``layer_bits`` may still keep a layer at 8 bits.

    Args:
        model: tf_keras functional or Sequential model (pretrained), with at least one Dense, Conv1D or Conv2D.
        train_ds: tf.data.Dataset of (x, y) batches for fine-tuning.
        epochs: Integer >= 0, fine-tuning epochs (0: the kernels are only snapped onto the levels).
        preserve_sparsity: Boolean, keep a pruned model's zeros.
        val_ds: tf.data.Dataset or None, validation batches.
        callbacks: Sequence of Keras callbacks.
        optimizer: Optimizer or None: None uses ``model``'s optimizer class (Adam when not compiled) at
            ``learning_rate``.
        loss: Loss or None: None reuses ``model.loss``, else sparse categorical cross-entropy.
        learning_rate: Float > 0, the fine-tuning rate of the default optimizer. 1e-3 (not ``quantize_aware``'s
            1e-4): on the validation digits of a seed no figure reports, 3 epochs at 1e-3 beat 3 at 1e-4 on both
            pruned models of the compression figure (``benchmarks/int4_qat.py``, TUNING).
        strategy: tf.distribute.Strategy or None.
        verbose: "auto", 0, 1 or 2, as in ``fit``.
        return_report: Boolean, also return ``{"on_levels": [...], "left": {name: class}}``: the layers trained
            on the levels, and the kernels left for the quantizer's own rounding.
        teacher: tf_keras model or None: distil the fine-tuning from it (e.g. the float model).
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there (see ``prune``).
        keep_backup: Boolean, keep that state when fine-tuning ends.

    Returns:
        A plain tf_keras model (no tfmot wrapper; saves and loads with no custom objects), or ``(model, report)``.

    Raises:
        UnsupportedLayerError: the model has no Dense, Conv1D or Conv2D kernel.

    >>> four, report = quantize_aware_int4(model, train_ds, epochs=2, return_report=True)  # doctest: +SKIP
    >>> report["on_levels"]  # doctest: +SKIP
    ['conv1', 'conv2', 'dense1', 'logits']
    """
    check_model(model, "quantize_aware_int4")
    check_epochs_and_rate(epochs, learning_rate)
    if not isinstance(preserve_sparsity, bool):
        raise ConfigError(f"preserve_sparsity={preserve_sparsity!r} must be true or false")
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    if is_qat(model):
        raise ConfigError(f"quantize_aware_int4 needs a float model, and {model.name!r} is quantization-aware (tfmot "
                          "QuantizeWrapper layers): give it the model from before quantize_aware")
    wrapped = [layer.name for layer in model.layers if type(layer).__name__ in _TFMOT_WRAPPERS]
    if wrapped:
        raise ConfigError(f"quantize_aware_int4 needs a plain model; {', '.join(map(repr, wrapped))} still wear "
                          "tfmot's pruning or clustering wrapper: strip them first (tfopt.compress.prune and cluster "
                          "return stripped models; tfmot: strip_pruning, strip_clustering)")
    flat = flatten_model(model)
    on_levels = [layer.name for layer in flat.layers if _on_levels(layer)]
    left = {layer.name: type(layer).__name__ for layer in flat.layers if not _on_levels(layer) and holds_kernel(layer)}
    if not on_levels:
        raise UnsupportedLayerError(f"quantize_aware_int4 found no Dense, Conv1D or Conv2D kernel in model "
                                    f"{model.name!r} to train on the int4 levels; kernels: {left or 'none'}")
    report = {"on_levels": on_levels, "left": left}
    with strategy_scope(strategy):  # built in the strategy's scope, like every compression function's result
        result = keras.models.clone_model(flat)
    result.set_weights(flat.get_weights())
    if epochs:
        count_steps(train_ds, "train_ds")
        with strategy_scope(strategy):
            qat = _wrapped(flat)
            compile_like(qat, source=model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
        kernels = _kernel_variables(qat)
        masks = [(v, tf.constant(v.numpy() != 0, v.dtype)) for v in kernels.values()] if preserve_sparsity else []
        compression_fit(qat, train_ds, epochs, val_ds=val_ds,
                        callbacks=[*callbacks, *([_KeepZeros(masks)] if masks else [])], verbose=verbose,
                        strategy=strategy, backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher,
                        temperature=temperature, alpha=alpha, what="quantize_aware_int4")
        for wrapper in qat.layers:  # the float kernels, biases and every other weight, as trained
            inner = getattr(wrapper, "layer", wrapper)
            if isinstance(wrapper, keras.layers.InputLayer) or not inner.weights:
                continue
            values = [w.numpy() for w in wrapper.weights if not w.name.split("/")[-1].startswith(
                ("kernel_min", "kernel_max", "optimizer_step"))]
            result.get_layer(inner.name).set_weights(values)
    for name in on_levels:
        layer = result.get_layer(name)
        kernel = layer.kernel.numpy()
        layer.kernel.assign(snap_to_int4(kernel * (kernel != 0) if preserve_sparsity else kernel))
    with strategy_scope(strategy):
        compile_like(result, source=model, loss=loss)
    return (result, report) if return_report else result


# ---------------------------------------------------------------- the "quantize_aware_int4" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The quantize_aware_int4 stage: fine-tune through int4 weights; the model is float, its kernels on the levels."""
    train_ds, val_ds, _ = inputs.load()
    model, report = quantize_aware_int4(
        inputs.model(), train_ds, epochs=o["epochs"], preserve_sparsity=bool(o["preserve_sparsity"]), val_ds=val_ds,
        learning_rate=o["learning_rate"], verbose=inputs.verbose, return_report=True, strategy=inputs.strategy,
        **stage_teacher(inputs, o), **stage_resume(inputs, inputs.strategy))
    metrics = {"report": report, **inputs.held_out(model, val_ds)}
    return StageResult(model, metrics, f"{len(report['on_levels'])} kernels on the int4 levels, val accuracy "
                                       f"{metrics['val_accuracy']:.4f} (export with quantization: int4)")


TECHNIQUE = register_technique(Technique(
    "quantize_aware_int4",
    options_from(quantize_aware_int4, ["epochs", "preserve_sparsity", "learning_rate", *TEACHER_OPTIONS],
                 **TEACHER_OPTIONS,
                 epochs={"check": at_least(0)},
                 preserve_sparsity={"kinds": (BOOL, NONE), "default": None,
                                    "help": "keep a pruned model's zeros (unset: whether a prune stage came before)"},
                 learning_rate={"check": positive}),
    _run_stage, summary="4-bit weight quantization-aware fine-tuning (tfmot): a float model whose kernels the int4 "
                        "export stores exactly",
    function=quantize_aware_int4, own_defaults=("preserve_sparsity",), clears=("clustered",),
    preserves={"preserve_sparsity": "pruned"}))
