"""Model plumbing every layer above uses: counting steps, strategy scopes, logits or not, re-compiling like a
model, private copies, layer wrapping and flattening of nested models (for tfmot), weight counts and "is this
quantization-aware"."""

from __future__ import annotations

import contextlib
from typing import Sequence

from tfopt._keras import check_model, keras, tf
from tfopt.errors import ConfigError, DataError, UnsupportedLayerError

__all__ = ["count_steps", "holds_kernel", "check_input_shape", "check_shape", "check_data_fits", "strategy_scope",
           "outputs_logits", "compile_like", "rebuilding_in_memory", "private_copy", "wrap_layers", "flatten_model",
           "weight_count", "is_qat", "recalibrate_batchnorm"]


def count_steps(dataset, what: str = "train_ds") -> int:
    """Integer, the number of batches one pass over ``dataset`` yields (counted when unknown).

    >>> count_steps(tf.data.Dataset.range(10).batch(4))
    3
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise DataError(f"{what} must be a tf.data.Dataset of (x, y) batches, got {type(dataset).__name__}")
    n = int(dataset.cardinality())
    if n == int(tf.data.INFINITE_CARDINALITY):
        raise DataError(f"{what} is infinite (repeat() without a count); pass a finite dataset")
    if n == int(tf.data.UNKNOWN_CARDINALITY):
        n = int(dataset.reduce(0, lambda count, _: count + 1))
    if n == 0:
        raise DataError(f"{what} is empty: it yields no batch")
    return n


def holds_kernel(layer) -> bool:
    """Whether ``layer`` holds a weight of two or more dimensions (a kernel, an embedding table, a Bidirectional's
    kernels): what a weight quantization could store in fewer bits.

    >>> dense, norm = keras.Sequential([keras.layers.Dense(2, input_shape=(3,)), keras.layers.LayerNormalization()]).layers
    >>> holds_kernel(dense), holds_kernel(norm)
    (True, False)
    """
    return any(len(w.shape) >= 2 for w in layer.weights)


def check_input_shape(model, shape, what: str) -> None:
    """DataError unless examples of ``shape`` (without the batch) fit ``model``'s input, naming both (models with
    several inputs are not checked).

    >>> check_input_shape(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]), (4,), "the data")
    Traceback (most recent call last):
    ...
    tfopt.errors.DataError: the data: examples of shape (4,), but the model takes (3,): give data of the model's input shape
    """
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        return
    check_shape(shape, inputs[0].shape[1:], what)


def check_shape(shape, expected, what: str, taker: str = "the model") -> None:
    """DataError unless examples of ``shape`` match ``expected`` (both without the batch; None in either: any
    size), naming both; ``taker`` names what takes them (a Keras model, a TFLite file).

    >>> check_shape((28, 28), (None, 8), "the data", "the TFLite model")
    Traceback (most recent call last):
    ...
    tfopt.errors.DataError: the data: examples of shape (28, 28), but the TFLite model takes (any, 8): give data of the model's input shape
    """
    expected = tuple(None if e is None else int(e) for e in expected)
    shape = tuple(None if d is None else int(d) for d in shape)
    if len(shape) != len(expected) or any(None not in (e, g) and e != g for e, g in zip(expected, shape)):
        wanted = ", ".join("any" if e is None else str(e) for e in expected) + ("," if len(expected) == 1 else "")
        raise DataError(f"{what}: examples of shape {shape}, but {taker} takes ({wanted}): give data of the "
                        "model's input shape")


def check_data_fits(model, dataset, what: str = "train_ds") -> None:
    """DataError unless the examples of ``dataset`` (a tf.data.Dataset of (x, y[, w]) batches) fit ``model``'s
    input: read from its element spec, before Keras fails inside ``fit`` with a traceback."""
    spec = getattr(dataset, "element_spec", None)
    x = spec[0] if isinstance(spec, tuple) and spec else None
    if not isinstance(x, tf.TensorSpec) or x.shape.rank is None or x.shape.rank < 1:
        return
    try:
        check_input_shape(model, x.shape[1:], what)
    except DataError:
        inputs = model.inputs[0].shape[1:]
        if x.shape.rank == len(inputs) and x.shape.is_compatible_with(inputs):
            raise DataError(f"{what} yields single examples of the model's input shape {tuple(x.shape)}, not "
                            f"batches: batch it ({what}.batch(32))") from None
        raise


def strategy_scope(strategy=None):
    """``strategy.scope()`` when a tf.distribute strategy is given, else a no-op context.

    A strategy NAME is refused: a function that enters the scope twice would build two different
    strategies; resolve it once with ``tfopt.distribute.get_strategy(name)`` and pass the object.
    """
    if strategy is None:
        return contextlib.nullcontext()
    if not isinstance(strategy, tf.distribute.Strategy):
        raise ConfigError(
            f"strategy={strategy!r} is not a tf.distribute.Strategy; pass tfopt.distribute.get_strategy({strategy!r})"
        )
    return strategy.scope()


@contextlib.contextmanager
def rebuilding_in_memory():
    """Keras's safe mode lifted while a model ALREADY IN MEMORY is rebuilt from its config (tfmot's quantize_apply).

    ``deserialize_keras_object`` is safe by default, so tfmot's layout transforms, which rebuild the model through
    it, refused every Python ``lambda``: those of tfmot's own SeparableConv1D transform (so 8-bit QAT of any
    SeparableConv1D failed) and a user's Lambda layer. Those functions already run in this process (a model read
    from a file passed :func:`tfopt.saving.load_model`'s check first), so nothing new is executed. Never wrap the
    reading of a file in it.

    >>> with rebuilding_in_memory():
    ...     keras.layers.deserialize(keras.layers.serialize(keras.layers.Lambda(lambda x: x + 1))).name
    'lambda'
    """
    from tfopt._private import private

    with private("tfk_safe_mode_scope")(False):
        yield


def outputs_logits(model) -> bool:
    """True when the model's last layer has no softmax/sigmoid, i.e. it outputs logits."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", str(activation))
    return name not in ("softmax", "sigmoid")


def compile_like(model, source=None, optimizer=None, loss=None, metrics=("accuracy",), learning_rate=1e-4):
    """Compile ``model`` for fine-tuning, reusing ``source``'s loss and optimizer settings when it has them.

    Args:
        model: tf_keras model to compile (e.g. a tfmot-wrapped copy of ``source``).
        source: tf_keras model whose compiled loss and optimizer are reused, or None.
        optimizer: Optimizer, name or None: None copies ``source``'s optimizer class and config (a fresh
            instance, so slots are not shared) with its rate set to ``learning_rate`` (fine-tuning a trained
            model wants a lower rate than its training schedule), or Adam(learning_rate) when ``source``
            is not compiled.
        loss: Loss or None: None reuses ``source.loss``, else sparse categorical cross-entropy
            (from logits when the model outputs logits).
        metrics: Sequence of metrics.
        learning_rate: Float, the fine-tuning rate; None keeps ``source``'s rate (or schedule) as it is,
            and means 1e-3 for the default Adam.

    >>> m = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    >>> compile_like(m).loss.get_config()["from_logits"]
    True
    """
    check_model(model, "compile_like")
    src_opt = getattr(source, "optimizer", None) if source is not None else None
    if optimizer is None:
        if src_opt is not None:
            config = src_opt.get_config()
            if learning_rate is not None:
                config["learning_rate"] = learning_rate
            optimizer = type(src_opt).from_config(config)
        else:
            optimizer = keras.optimizers.Adam(1e-3 if learning_rate is None else learning_rate)
    if loss is None:
        loss = getattr(source, "loss", None) if source is not None else None
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=outputs_logits(model))
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics))
    return model


def recalibrate_batchnorm(model, dataset, batches: int = 50) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance as the plain average over
    ``batches`` batches of ``dataset`` (weights untouched); returns the number of batches used.

    After channels are removed or kernels replaced, the layers downstream see inputs of another scale and
    their stored statistics are stale; after fine-tuning at a constant rate they lag the weights (a small
    ResNet fine-tuned for 6 epochs at 1e-3 lost 11 points of validation accuracy to this alone). Each batch
    runs in training mode with momentum ``i / (i + 1)``, so the result is the mean of the batch statistics.

    >>> m = keras.Sequential([keras.layers.BatchNormalization(input_shape=(2,))])
    >>> recalibrate_batchnorm(m, tf.data.Dataset.from_tensors((tf.constant([[1.0, 2.0], [3.0, 6.0]]), [0, 1])))
    1
    >>> m.layers[0].moving_mean.numpy().tolist()
    [2.0, 4.0]
    """
    norms = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms or dataset is None:
        return 0
    momenta = [layer.momentum for layer in norms]
    used = 0
    try:
        for used, batch in enumerate(dataset.take(batches), start=1):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in norms:
                layer.momentum = (used - 1) / used
            model(x, training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return used


def private_copy(model, where: str):
    """A clone of functional/Sequential ``model`` with copied weights (tfmot wrappers share the layers they wrap).

    Args:
        model: tf_keras functional or Sequential model.
        where: String, the calling function's name, for messages.
    """
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)):
        raise UnsupportedLayerError(
            f"{where} got a subclassed model ({type(model).__name__}); tfmot can only wrap the layers of "
            "functional or Sequential models: rebuild it with keras.Model(inputs, outputs) or keras.Sequential"
        )
    copy = keras.models.clone_model(model)
    for source, target in zip(_leaf_layers(model), _leaf_layers(copy)):
        target.set_weights(_weights_in_order_of(source, target))
    return copy


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _weights_in_order_of(source, target) -> list:
    """``source``'s weight values in ``target``'s order: by variable name when both hold the same names in another
    order (tfmot's strip_clustering leaves a MultiHeadAttention's kernels ahead of its biases), else as they are."""
    values = source.get_weights()
    names, wanted = [w.name for w in source.weights], [w.name for w in target.weights]
    if names != wanted and sorted(names) == sorted(wanted) and len(set(names)) == len(names):
        by_name = dict(zip(names, values))
        return [by_name[name] for name in wanted]
    return values


def wrap_layers(model, wrap, names: Sequence[str]):
    """Clone ``model`` (sharing its layers) with ``wrap(layer)`` in place of the layers named in ``names``.

    Args:
        model: tf_keras functional or Sequential model (nested models are walked).
        wrap: Callable taking a layer and returning the layer to use instead.
        names: Sequence of layer names to wrap.
    """
    names = set(names)

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=clone_function)
        return wrap(layer) if layer.name in names else layer

    return keras.models.clone_model(model, clone_function=clone_function)


# tfmot's quantization-aware layers: QuantizeWrapper(V2) around each quantized layer, QuantizeLayer at the inputs
_QAT_LAYERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
# the variables tfmot adds to a quantization-aware model: ranges and step counters, not weights of the model
_QUANTIZER_VARS = ("_min", "_max", "optimizer_step", "iterations", "min_var", "max_var")


def _layers(model):
    """Every layer of ``model``, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def is_qat(model) -> bool:
    """True when ``model`` is quantization-aware: tfmot applied quantization to it (``quantize_apply``), so it
    holds QuantizeWrapper/QuantizeLayer layers (an only annotated model is not: it has no quantizers yet).

    >>> is_qat(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]))
    False
    """
    return any(type(layer).__name__ in _QAT_LAYERS for layer in _layers(model))


def weight_count(model) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` of ``model``, trainable or not, without tfmot's quantizer variables.

    >>> weight_count(keras.Sequential([keras.layers.Dense(2, input_shape=(3,), kernel_initializer="zeros")]))
    (8, 0)
    """
    import numpy as np

    total = nonzero = 0
    for w in model.weights:
        if any(tag in w.name for tag in _QUANTIZER_VARS):
            continue
        values = np.asarray(w.numpy())
        total += values.size
        nonzero += int(np.count_nonzero(values))
    return total, nonzero


def _is_graph_model(layer) -> bool:
    return isinstance(layer, keras.Model) and (
        isinstance(layer, keras.Sequential) or getattr(layer, "_is_graph_network", False)
    )


def _has_nested_model(model) -> bool:
    return any(isinstance(layer, keras.Model) for layer in model.layers)


class _Flattener:
    """Replays a functional graph, inlining nested graph models, with fresh copies of every leaf layer."""

    def __init__(self):
        self.copies = {}  # id(original layer) -> (copy, original)
        self.names = set()

    def copy_layer(self, layer, prefix: str):
        if id(layer) in self.copies:
            return self.copies[id(layer)][0]
        config = layer.get_config()
        name = layer.name if layer.name not in self.names else f"{prefix}_{layer.name}"
        while name in self.names:
            name += "_"
        config["name"] = name
        self.names.add(name)
        try:
            copy = type(layer).from_config(config)
        except Exception as err:  # noqa: BLE001  (any from_config failure means we cannot copy it)
            raise UnsupportedLayerError(
                f"flatten_model cannot copy layer {layer.name!r} ({type(layer).__name__}): {err}; "
                "give it a complete get_config (and register it with @tfopt._keras.serializable)"
            ) from err
        self.copies[id(layer)] = (copy, layer)
        return copy

    def replay(self, model, inputs, training=None, prefix=""):
        if not _is_graph_model(model) or not model.built:
            raise UnsupportedLayerError(
                f"flatten_model cannot flatten {model.name!r} ({type(model).__name__}): only built "
                "functional or Sequential models (and sub-models of those kinds) can be flattened; "
                "subclassed models have no layer graph"
            )
        usage = model._tensor_usage_count  # pylint: disable=protected-access
        tensors = {}
        for ref, value in zip(model.inputs, inputs):
            tensors[str(id(ref))] = [value] * usage[str(id(ref))]
        for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
            for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
                if node.is_input or any(t not in tensors for t in node.flat_input_ids):
                    continue
                args, kwargs = node.map_arguments(tensors)
                layer = node.layer
                if isinstance(layer, keras.Model):
                    inner_training = training if training is not None else kwargs.get("training")
                    flat_in = tf.nest.flatten((args, {k: v for k, v in kwargs.items() if k != "training"}))
                    flat_in = [t for t in flat_in if keras.backend.is_keras_tensor(t)]
                    outputs = self.replay(layer, flat_in, inner_training, prefix=layer.name)
                else:
                    if training is not None and layer._expects_training_arg:  # pylint: disable=protected-access
                        kwargs["training"] = training
                    outputs = self.copy_layer(layer, prefix or model.name)(*args, **kwargs)
                for out_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                    tensors[out_id] = [value] * usage[out_id]
        return [tensors[str(id(ref))].pop() for ref in model.outputs]


def flatten_model(model):
    """Return one functional model in which nested functional/Sequential sub-models are inlined.

    Leaf layers are copied (same config, same weights) so the original model is left untouched; a
    copied layer whose name clashes gets its sub-model's name as a prefix. A sub-model called with
    ``training=False`` passes that on to each of its layers that takes ``training``. A model with no
    nested sub-model is returned as it is.

    Args:
        model: tf_keras functional or Sequential model, built.

    Raises:
        UnsupportedLayerError: a subclassed model (at the top or nested), or a layer that cannot be copied.

    >>> inner = keras.Sequential([keras.layers.Dense(3, input_shape=(4,))])
    >>> outer = keras.Sequential([inner, keras.layers.Dense(2)])
    >>> [type(layer).__name__ for layer in flatten_model(outer).layers]
    ['InputLayer', 'Dense', 'Dense']
    """
    check_model(model, "flatten_model")
    if not _is_graph_model(model):
        raise UnsupportedLayerError(
            f"flatten_model cannot flatten the subclassed model {model.name!r} ({type(model).__name__}); "
            "rebuild it as a functional or Sequential model"
        )
    if not model.built or not getattr(model, "inputs", None):
        raise UnsupportedLayerError(f"flatten_model needs a built model with known inputs; {model.name!r} is not built")
    if not _has_nested_model(model):
        return model
    flattener = _Flattener()
    new_inputs = []
    for ref in model.inputs:
        name = ref.node.layer.name
        flattener.names.add(name)
        new_inputs.append(keras.Input(batch_shape=ref.shape, dtype=ref.dtype, name=name))
    outputs = flattener.replay(model, new_inputs)
    flat = keras.Model(
        new_inputs if len(new_inputs) > 1 else new_inputs[0],
        outputs if len(outputs) > 1 else outputs[0],
        name=f"{model.name}_flat",
    )
    for copy, original in flattener.copies.values():
        copy.set_weights(original.get_weights())
        copy.trainable = original.trainable
    return flat


# ----------------------------------------------------------------------------------------------------
# Annotation: only what the scheme supports
# ----------------------------------------------------------------------------------------------------
