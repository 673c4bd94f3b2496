"""Quantization-aware training (QAT) with tfmot, leaving what tfmot cannot quantize in float.

``quantize_aware`` flattens nested sub-models, annotates only the layers the chosen tfmot 8-bit
scheme can quantize, applies the scheme and fine-tunes. The result is tfmot's quantize-wrapped
model: still trainable, and ``tf.lite.TFLiteConverter`` with ``Optimize.DEFAULT`` turns it into a
real int8 model. Schemes (all tfmot 0.8.1):

- ``"default_8bit"``: ``tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme``.
- ``"prune_preserve"`` (PQAT): ``tfmot.quantization.keras.collab_opts.Default8BitPrunePreserveQuantizeScheme``.
- ``"cluster_preserve"`` (CQAT) and ``"prune_cluster_preserve"`` (PCQAT):
  ``tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=...)``
  (its own default is ``preserve_sparsity=True``, so it is always passed explicitly).
"""

from __future__ import annotations

import re

from tfopt._io import atomic_write_bytes, h5_bytes
from tfopt._keras import check_model, keras, serializable, tf, tfmot
from tfopt._model import compile_like, count_steps, flatten_model, outputs_logits, rebuilding_in_memory, strategy_scope
from tfopt.compress._fit import (TEACHER_OPTIONS, check_epochs_and_rate, compression_fit, distillation_settings,
                                 stage_resume, stage_teacher)
from tfopt.errors import CompressionError, ConfigError, UnsupportedLayerError
from tfopt.options import BOOL, NONE, at_least, options_from, positive
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["quantize_aware", "save_quantized", "load_quantized", "quantize_scheme", "QAT_SCHEMES"]


def _default_scheme():
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


def _prune_preserve_scheme():
    return tfmot.quantization.keras.collab_opts.Default8BitPrunePreserveQuantizeScheme()


def _cluster_preserve_scheme():
    return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=False)


def _prune_cluster_preserve_scheme():
    return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)


# (preserve_sparsity, preserve_clusters) -> (scheme name, factory)
QAT_SCHEMES = {
    (False, False): ("default_8bit", _default_scheme),
    (True, False): ("prune_preserve", _prune_preserve_scheme),
    (False, True): ("cluster_preserve", _cluster_preserve_scheme),
    (True, True): ("prune_cluster_preserve", _prune_cluster_preserve_scheme),
}

# Why a layer class stays in float; anything else gets the generic reason.
_FLOAT_REASONS = {
    keras.layers.LSTM: "recurrent layer: tfmot's 8-bit registry has no quantize config for LSTMCell",
    keras.layers.GRU: "recurrent layer: tfmot's 8-bit registry has no quantize config for GRUCell",
    keras.layers.SimpleRNN: "recurrent layer: tfmot's 8-bit registry has no quantize config for SimpleRNNCell",
    keras.layers.RNN: "recurrent layer: tfmot's 8-bit registry does not quantize RNN cells",
    keras.layers.Lambda: "Lambda layer: tfmot needs a user QuantizeConfig for it",
    keras.layers.BatchNormalization: "BatchNormalization not directly after a linear Conv2D/DepthwiseConv2D/Dense "
    "cannot be folded by tfmot",
    keras.layers.Embedding: "Embedding is not enabled in tfmot's 8-bit registry",
}
# Layer classes tfmot's layout transforms handle although the registry does not list them.
_TRANSFORM_HANDLED = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_FOLDABLE_INTO = ("Conv2D", "DepthwiseConv2D", "Dense")


def quantize_scheme(preserve_sparsity: bool = False, preserve_clusters: bool = False):
    """Return ``(name, scheme)``: the tfmot 8-bit QuantizeScheme for these preservation flags.

    Args:
        preserve_sparsity: Boolean, keep the zeros of a pruned model (PQAT, or PCQAT with clusters).
        preserve_clusters: Boolean, keep the centroids of a clustered model (CQAT, or PCQAT).

    >>> quantize_scheme(True, False)[0]
    'prune_preserve'
    """
    name, factory = QAT_SCHEMES[(bool(preserve_sparsity), bool(preserve_clusters))]
    return name, factory()


# ----------------------------------------------------------------------------------------------------
# Flattening nested sub-models
# ----------------------------------------------------------------------------------------------------


def _inbound_layers(layer):
    nodes = layer._inbound_nodes  # pylint: disable=protected-access
    return tf.nest.flatten(nodes[0].inbound_layers) if len(nodes) == 1 else []


def _linear(layer) -> bool:
    return getattr(getattr(layer, "activation", None), "__name__", "") == "linear"


def _float_reason(layer, scheme_name: str, default_registry, scheme_registry):
    """None when the scheme can quantize ``layer``, else the reason it stays in float."""
    if isinstance(layer, keras.layers.InputLayer):
        return None
    if isinstance(layer, _TRANSFORM_HANDLED) and scheme_name == "default_8bit":
        return None
    if isinstance(layer, keras.layers.BatchNormalization):
        inbound = _inbound_layers(layer)
        if len(inbound) == 1 and type(inbound[0]).__name__ in _FOLDABLE_INTO and _linear(inbound[0]):
            return None
    elif default_registry.supports(layer) and scheme_registry.supports(layer):
        return None
    for cls in type(layer).__mro__:
        if cls in _FLOAT_REASONS:
            return _FLOAT_REASONS[cls]
    if default_registry.supports(layer):
        return f"{type(layer).__name__} is not supported by the {scheme_name} scheme's registry"
    return f"{type(layer).__name__} is not in tfmot's Default8BitQuantizeRegistry (custom or unsupported layer)"


def _annotate(flat, skip):
    """Clone ``flat`` wrapping every layer not in ``skip`` (a name set) in QuantizeAnnotate."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def wrap(layer):
        if isinstance(layer, keras.layers.InputLayer) or layer.name in skip:
            return layer
        return annotate(layer)

    return keras.models.clone_model(flat, clone_function=wrap)


_UNSUPPORTED = re.compile(r"Layer (.+?):<class '([^']+)'> is not supported")


@serializable
class ExpandDims(keras.layers.Layer):
    """``tf.expand_dims(x, axis)`` as a layer: what comes before the SeparableConv2D that tfmot's 8-bit QAT makes of
    a SeparableConv1D, in place of tfmot's Python lambda (which a safe load refuses, so the QAT model did not load
    back).

    >>> ExpandDims(1)(tf.zeros((2, 5, 3))).shape
    TensorShape([2, 1, 5, 3])
    """

    def __init__(self, axis: int, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        return tf.expand_dims(inputs, self.axis)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


@serializable
class Squeeze(keras.layers.Layer):
    """``tf.squeeze(x, [axis])`` as a layer: what follows that SeparableConv2D (see :class:`ExpandDims`).

    >>> Squeeze(1)(tf.zeros((2, 1, 5, 3))).shape
    TensorShape([2, 5, 3])
    """

    def __init__(self, axis: int, **kwargs):
        super().__init__(**kwargs)
        self.axis = axis

    def call(self, inputs):
        return tf.squeeze(inputs, [self.axis])

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


_TFMOT_SEPCONV1D_LAMBDAS = {"sepconv1d_expand": ExpandDims, "sepconv1d_squeeze": Squeeze}


def _without_tfmot_lambdas(qat) -> None:
    """Swap the Python lambdas tfmot's SeparableConv1D transform wraps (``expand_dims`` / ``squeeze`` on its
    ``spatial_dim``) for :class:`ExpandDims` / :class:`Squeeze`, in place: the QAT model then saves without bytecode
    and loads back in safe mode. Only lambdas written in tfmot's transforms module are touched."""
    for wrapper in qat.layers:
        inner = getattr(wrapper, "layer", None)
        if not isinstance(inner, keras.layers.Lambda):
            continue
        kind = next((cls for prefix, cls in _TFMOT_SEPCONV1D_LAMBDAS.items() if inner.name.startswith(prefix)), None)
        code = getattr(inner.function, "__code__", None)
        if kind is None or code is None or not code.co_filename.endswith("default_8bit_transforms.py") \
                or "spatial_dim" not in code.co_freevars:
            continue
        axis = inner.function.__closure__[code.co_freevars.index("spatial_dim")].cell_contents
        wrapper.layer = kind(axis, name=inner.name)


def _apply(flat, scheme, scheme_name, report):
    """quantize_apply, moving layers tfmot still rejects (e.g. an unfoldable pattern) to float."""
    for _ in range(len(flat.layers) + 1):
        if not report["quantized"]:
            raise UnsupportedLayerError(
                f"quantize_aware found no layer the {scheme_name} scheme can quantize; float layers: {report['float']}"
            )
        annotated = _annotate(flat, set(report["float"]))
        try:
            with tfmot.quantization.keras.quantize_scope(), rebuilding_in_memory():
                qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
            _without_tfmot_lambdas(qat)
            return qat
        except RuntimeError as err:
            match = _UNSUPPORTED.search(str(err))
            if not match or match.group(1) not in report["quantized"]:
                raise CompressionError(f"tfmot quantize_apply failed: {err}") from err
            report["quantized"].remove(match.group(1))
            report["float"][match.group(1)] = f"tfmot's layout transforms left it unsupported ({match.group(2)})"
        except ValueError as err:
            raise UnsupportedLayerError(f"tfmot could not quantize model {flat.name!r}: {err}") from err
    raise CompressionError("quantize_aware could not settle which layers to quantize")  # pragma: no cover


def _sparsity_masks(qat_model):
    """``[(kernel variable, its nonzero mask)]`` of the weights PQAT masks, read before fine-tuning.

    tfmot's prune-preserve quantizer masks only the value it hands to the fake-quant op (its mask is
    a graph tensor, ``kernel != 0`` at wrap time); the float kernel it trains drifts away from zero,
    and a reloaded model would rebuild its mask from that drifted kernel. ``_keep_zeros`` writes the
    mask back after fine-tuning; the layer's output does not change (it already uses ``kernel * mask``).
    """
    masks = []
    for layer in qat_model.layers:
        for weight, _quantizer, qvars in getattr(layer, "_weight_vars", []):
            if isinstance(qvars, dict) and "sparsity_mask" in qvars:
                masks.append((weight, (weight.numpy() != 0).astype(weight.dtype.as_numpy_dtype)))
    return masks


def _keep_zeros(masks) -> None:
    for weight, mask in masks:
        weight.assign(weight * mask)


def quantize_aware(
    model,
    train_ds,
    epochs: int = 1,
    preserve_sparsity: bool = False,
    preserve_clusters: bool = False,
    val_ds=None,
    callbacks=(),
    optimizer=None,
    loss=None,
    learning_rate: float = 1e-4,
    strategy=None,
    verbose="auto",
    return_report: bool = False,
    teacher=None,
    temperature: float | None = None,
    alpha: float | None = None,
    backup_dir=None,
    keep_backup: bool = False,
):
    """Quantization-aware fine-tuning of ``model`` with tfmot's 8-bit scheme.

    Layers the scheme cannot quantize (LSTM, GRU, custom layers, ...) stay in float and are listed in
    the report; nested sub-models are flattened first (``flatten_model``). ``model`` is not modified.

    Args:
        model: tf_keras functional or Sequential model (pretrained).
        train_ds: tf.data.Dataset of (x, y) batches for fine-tuning.
        epochs: Integer, fine-tuning epochs (0 returns the QAT model untrained).
        preserve_sparsity: Boolean, keep a pruned model's zeros (PQAT; PCQAT with preserve_clusters).
        preserve_clusters: Boolean, keep a clustered model's centroids (CQAT; PCQAT with preserve_sparsity).
        val_ds: tf.data.Dataset or None, validation batches.
        callbacks: Sequence of Keras callbacks.
        optimizer: Optimizer or None: None uses ``model``'s optimizer class (Adam when not compiled)
            at ``learning_rate``.
        loss: Loss or None: None reuses ``model.loss``, else sparse categorical cross-entropy.
        learning_rate: Float, the fine-tuning rate of the default optimizer.
        strategy: tf.distribute.Strategy or None.
        verbose: "auto", 0, 1 or 2, as in ``fit``.
        return_report: Boolean, also return ``{"quantized": [...], "float": {name: reason}, "scheme": name}``.
        teacher: tf_keras model or None: distil the fine-tuning from it (e.g. the float model).
        temperature: Float > 0 or None, the distillation temperature (None: ``distill``'s default).
        alpha: Float in [0, 1] or None, the weight of the task loss (None: ``distill``'s default).
        backup_dir: String, Path or None: keep a resumable state there (see ``prune``).
        keep_backup: Boolean, keep that state when fine-tuning ends.

    Returns:
        The QAT model, or ``(model, report)`` when ``return_report``.

    >>> qat, report = quantize_aware(model, train_ds, epochs=1, return_report=True)  # doctest: +SKIP
    >>> report["scheme"]  # doctest: +SKIP
    'default_8bit'
    """
    check_model(model, "quantize_aware")
    check_epochs_and_rate(epochs, learning_rate)
    temperature, alpha = distillation_settings(teacher, temperature, alpha, model)
    if epochs:
        count_steps(train_ds, "train_ds")
    scheme_name, scheme = quantize_scheme(preserve_sparsity, preserve_clusters)
    flat = flatten_model(model)
    default_registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeRegistry()
    scheme_registry = scheme.get_quantize_registry()
    report = {"quantized": [], "float": {}, "scheme": scheme_name}
    for layer in flat.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        reason = _float_reason(layer, scheme_name, default_registry, scheme_registry)
        if reason is None:
            report["quantized"].append(layer.name)
        else:
            report["float"][layer.name] = reason
    if loss is None:
        loss = getattr(model, "loss", None) or keras.losses.SparseCategoricalCrossentropy(
            from_logits=outputs_logits(flat)
        )
    with strategy_scope(strategy):
        qat = _apply(flat, scheme, scheme_name, report)
        compile_like(qat, source=model, optimizer=optimizer, loss=loss, learning_rate=learning_rate)
    masks = _sparsity_masks(qat) if preserve_sparsity else []
    if epochs:
        compression_fit(qat, train_ds, epochs, val_ds=val_ds, callbacks=callbacks, verbose=verbose, strategy=strategy,
                        backup_dir=backup_dir, keep_backup=keep_backup, teacher=teacher, temperature=temperature,
                        alpha=alpha, what="quantize_aware")
    _keep_zeros(masks)
    return (qat, report) if return_report else qat


_H5_SUFFIXES = (".h5", ".hdf5")


def save_quantized(model, path) -> str:
    """Save a QAT model as HDF5 (``.h5``), the format tfmot's QuantizeLayer loads back from.

    With tfmot 0.8.1 and tf_keras 2.21 a ``.keras`` file of a QAT model saves but fails to load
    ("Layer 'quantize_layer' expected 5 variables, but received 3"), so only ``.h5``/``.hdf5`` is allowed.

    Args:
        model: tf_keras QAT model (from ``quantize_aware``).
        path: String or path-like ending in ``.h5`` or ``.hdf5``.

    >>> save_quantized(qat, "qat.h5")  # doctest: +SKIP
    'qat.h5'
    """
    check_model(model, "save_quantized")
    path = str(path)
    if not path.lower().endswith(_H5_SUFFIXES):
        raise ConfigError(
            f"save_quantized path={path!r} must end in .h5 or .hdf5: .keras files of tfmot QAT models "
            "do not load back (QuantizeLayer variable mismatch)"
        )
    # the HDF5 file is made in memory and written with one atomic write: a full disk fails that write cleanly
    # (WriteError naming the file, no temporary left) instead of failing inside HDF5 mid-file
    atomic_write_bytes(path, h5_bytes(lambda f: model.save(f, include_optimizer=False)))
    return path


def load_quantized(path, custom_objects=None, safe_mode: bool = True):
    """Load a QAT model saved by ``save_quantized`` (HDF5) inside ``tfmot``'s ``quantize_scope``.

    Prune/cluster-preserving quantizers are not serialised by tfmot: a reloaded PQAT/CQAT model
    fine-tunes with the plain 8-bit quantizers (its saved weights, zeros included, are kept).
    The file is checked as by :func:`tfopt.saving.load_model`: its format comes from its content and,
    in safe mode, nothing in it may run code.

    Args:
        path: String or path-like, the saved model file.
        custom_objects: Dict or None, extra custom objects (tfopt's own are registered already).
        safe_mode: Bool, refuse files that would run code on loading (a Lambda layer's bytecode in any
            format, a SavedModel directory); False only for files you trust.

    Raises:
        ConfigError: the path is missing, not a loadable model file, or (safe mode) would run code.

    >>> loaded = load_quantized("qat.h5")  # doctest: +SKIP
    """
    from tfopt.saving import load_model

    return load_model(path, safe_mode=safe_mode, custom_objects=custom_objects)


# ---------------------------------------------------------------- the "quantize_aware" technique (a recipe stage)


def _run_stage(inputs, o: dict):
    """The quantize_aware stage: QAT of the current model, keeping its zeros / clusters as the options say."""
    train_ds, val_ds, _ = inputs.load()
    qat, report = quantize_aware(inputs.model(), train_ds, epochs=o["epochs"],
                                 preserve_sparsity=bool(o["preserve_sparsity"]),
                                 preserve_clusters=bool(o["preserve_clusters"]), val_ds=val_ds,
                                 learning_rate=o["learning_rate"], verbose=inputs.verbose, return_report=True,
                                 strategy=inputs.strategy, **stage_teacher(inputs, o),
                                 **stage_resume(inputs, inputs.strategy))
    metrics = {"report": report, **inputs.held_out(qat, val_ds)}
    return StageResult(qat, metrics, f"{len(report['quantized'])} layers quantized ({report['scheme']}), "
                                     f"val accuracy {metrics['val_accuracy']:.4f}")


_UNSET = "(unset: whether a {} stage came before)"
TECHNIQUE = register_technique(Technique(
    "quantize_aware",
    options_from(quantize_aware, ["epochs", "preserve_sparsity", "preserve_clusters", "learning_rate",
                                  *TEACHER_OPTIONS], **TEACHER_OPTIONS,
                 epochs={"check": at_least(0)},
                 preserve_sparsity={"kinds": (BOOL, NONE), "default": None,
                                    "help": "keep a pruned model's zeros (PQAT) " + _UNSET.format("prune")},
                 preserve_clusters={"kinds": (BOOL, NONE), "default": None,
                                    "help": "keep a clustered model's centroids (CQAT) " + _UNSET.format("cluster")},
                 learning_rate={"check": positive}),
    _run_stage, summary="quantization-aware training (tfmot 8-bit): the last training stage before an int8 export",
    function=quantize_aware, own_defaults=("preserve_sparsity", "preserve_clusters"), sets=("qat",),
    preserves={"preserve_sparsity": "pruned", "preserve_clusters": "clustered"}))
