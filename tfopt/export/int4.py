"""4-bit weights in the TFLite file, through the LiteRT quantizer (``litert_quantizer``), with per-layer bit widths.

The TFLite converter stores at least 8 bits per weight; the LiteRT team's post-training quantizer rewrites a float
``.tflite`` file with int4 weights (and float activations). :data:`INT4_QUANTIZATIONS` names what tfopt offers:

* ``"int4"``: int4 weights, one scale per output channel; activations quantized on the fly at run time
  (``recipe.dynamic_wi4_afp32``);
* ``"int4_weight_only"``: int4 weights per channel, dequantized to float before each op (float compute);
* ``"int4_block32"``: int4 weights with one scale per block of 32 inputs for Dense and embedding kernels
  (convolutions per channel). A block of 32 zeros (pruning makes them) gets the scale 0, which LiteRT's XNNPACK
  delegate refuses and the builtin kernels turn into NaN, and a kernel whose inputs are not a multiple of 32 has no
  blocks: such an op is quantized per channel instead (a note says which, and why).

An op the quantizer's policy has no 4-bit kernel for (a depthwise or a transposed convolution: MobileNet's depthwise
layers) is stored in 8 bits instead of left float32, and a note names it.

``layer_bits`` sets a layer's bits apart from the rest: 4, 8, or None (left float). An op is a layer's when its
tensors' names say so (``model/<layer>/MatMul``); an op inside a recurrent layer's loop (``while/MatMul``) is the
layer whose kernel it holds, value for value, when the Keras layers are given.

>>> sorted(INT4_QUANTIZATIONS)
['int4', 'int4_block32', 'int4_weight_only']
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from tfopt.errors import ConfigError, ExportError
from tfopt._keras import keras

__all__ = ["INT4_QUANTIZATIONS", "LAYER_BITS", "layer_bits_problem", "layers_with_weight_ops", "quantize_tflite"]


@dataclass(frozen=True)
class _Scheme:
    mode: str  # "dynamic" (integer compute) or "weight_only" (float compute)
    granularity: str  # a litert_quantizer QuantGranularity value
    block: int = 0  # inputs per scale for block-wise, 0 for channel-wise


INT4_QUANTIZATIONS = {
    "int4": _Scheme("dynamic", "CHANNELWISE"),
    "int4_weight_only": _Scheme("weight_only", "CHANNELWISE"),
    "int4_block32": _Scheme("dynamic", "BLOCKWISE_32", 32),
}
LAYER_BITS = (4, 8, None)  # what a layer_bits value may be: int4, int8, or left float
# the ops whose constant weights the quantizer stores in fewer bits
_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "EMBEDDING_LOOKUP", "BATCH_MATMUL",
               "CONV_2D_TRANSPOSE")
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE")
_FLOAT32 = 0  # the flatbuffer's TensorType code of float32


@dataclass
class _WeightOp:
    name: str  # the TFLite op, e.g. "FULLY_CONNECTED"
    scope: str  # the quantizer's name for it: its output tensors' names, ";"-joined (the model's output's, last)
    kernel: str  # the weight tensor's name: "model/<layer>/MatMul", "model/<sub-model>/<layer>/Conv2D"
    weights: np.ndarray | None  # the float kernel, as stored (output channel first for FULLY_CONNECTED)
    owner: str | None = None  # the Keras layer, when :func:`_resolve_owners` found it

    @property
    def stores_kernel(self) -> bool:
        """Whether the op holds a constant kernel (a BATCH_MATMUL of two activations, attention's, holds none)."""
        return self.weights is not None and self.weights.ndim >= 2

    @property
    def layer(self) -> str:
        """The Keras layer the op came from: its owner when known, else as its kernel's name (else its output's)
        says."""
        if self.owner is not None:
            return self.owner
        for names in (self.kernel, self.scope):
            parts = names.split(";")[0].split("/")
            if len(parts) > 1:
                return parts[-2]
        return self.scope.split(";")[0]

    def of(self, layer: str) -> bool:
        """Whether the op computes Keras layer ``layer`` (its owner, else by its kernel's name, else its outputs')."""
        if self.owner == layer:
            return True
        pattern = r"(^|[/;])" + re.escape(layer) + "/"
        return bool(re.search(pattern, self.kernel) or ("/" not in self.kernel and re.search(pattern, self.scope)))


def _kernels(layer) -> list:
    """The weights of two or more dimensions of Keras ``layer`` (see :func:`tfopt._model.holds_kernel`): a Dense or
    convolution kernel, a recurrent layer's kernels, a Bidirectional's both directions (which tfmot cannot inspect)."""
    if layer is None or isinstance(layer, keras.Model):  # a nested model's kernels are its layers'
        return []
    return [w for w in layer.weights if len(w.shape) >= 2]


def _deepest_layer(op: _WeightOp, candidates) -> str | None:
    """The layer among ``candidates`` named deepest in the op's tensors' names, its kernel's first; a layer's name may
    hold a "/" (MobileNetV3's ``expanded_conv/depthwise``)."""
    for names in (op.kernel, op.scope):
        for name in names.split(";"):
            path = "/" + name
            found = [(path.rfind(f"/{layer}/") + len(layer), len(layer), layer) for layer in candidates
                     if f"/{layer}/" in path]
            if found:
                return max(found)[2]
    return None


def _resolve_owners(ops: list, layers) -> None:
    """Set each op's owner among ``layers`` (names, or a dict name -> Keras layer).

    By name: the deepest part of the op's tensors' names that is a layer holding a kernel (a Dense under
    ``model/<sub-model>/``, the depthwise layer rather than its BatchNormalization and ReLU fused into the op), else
    any layer named there. By value, given the Keras layers: an op named by no layer (``while/MatMul`` inside a
    recurrent layer's loop) belongs to the layer whose kernel it stores, transposed, when exactly one layer does.
    """
    if not layers:
        return
    with_kernel = {name for name, layer in layers.items() if _kernels(layer)} if isinstance(layers, dict) else set()
    for op in ops:
        op.owner = _deepest_layer(op, with_kernel) or _deepest_layer(op, layers)
    if not isinstance(layers, dict):
        return
    claimed = {op.owner for op in ops}
    unnamed = [name for name in with_kernel if name not in claimed]
    for op in ops:
        if op.owner is not None or op.weights is None or op.weights.ndim != 2 or not unnamed:
            continue
        stored = op.weights.T  # FULLY_CONNECTED keeps (outputs, inputs); Keras (inputs, outputs)
        owners = [name for name in unnamed if any(tuple(k.shape) == stored.shape and np.array_equal(k.numpy(), stored)
                                                  for k in _kernels(layers[name]))]
        if len(owners) == 1:
            op.owner = owners[0]


def _weight_ops(content: bytes, layers=None) -> list:
    from litert_quantizer.utils import tfl_flatbuffer_utils as fb

    model = fb.read_model(bytearray(content))
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = fb.TFL_OP_CODE_TO_NAME.get(model.operatorCodes[op.opcodeIndex].builtinCode)
            name = getattr(name, "value", name)
            if name not in _WEIGHT_OPS:
                continue
            kernel, weights = "", None
            for index in list(op.inputs)[1:2]:  # the weight operand of every op above
                if index >= 0:
                    tensor = subgraph.tensors[index]
                    kernel = fb.get_tensor_name(tensor)
                    # only a float32 kernel is read (an int4 one is packed two to a byte: its data does not reshape)
                    data = fb.get_tensor_data(tensor, model.buffers) if tensor.type == _FLOAT32 else None
                    weights = None if data is None else np.array(data)
            found.append(_WeightOp(name, fb.get_op_scope(op, subgraph.tensors), kernel, weights))
    _resolve_owners(found, layers)
    return found


def layers_with_weight_ops(content: bytes, layers) -> list[str]:
    """The names among ``layers`` whose kernels are weight ops of TFLite file ``content`` (what ``layer_bits`` can
    name; a fused recurrent layer, for one, has none).

    Args:
        content: Bytes of a float32 TFLite flatbuffer.
        layers: Iterable of Keras layer names, or a dict name -> Keras layer (then an op in a recurrent layer's
            loop counts for the layer whose kernel it holds).
    """
    ops = _weight_ops(content, layers if isinstance(layers, dict) else None)
    return [layer for layer in layers if any(op.of(layer) for op in ops)]


def _op_regex(op: _WeightOp) -> str:
    return "^" + re.escape(op.scope) + "$"


def _no_blocks(op: _WeightOp, block: int) -> str | None:
    """Why a block-wise quantization of ``op`` cannot be (then it is quantized per channel), or None.

    Its inputs are not a multiple of ``block`` (the quantizer refuses it), or a block holds only zeros (it would get
    the scale 0, which XNNPACK refuses and the builtin kernels turn into NaN).
    """
    if op.weights is None or op.name not in ("FULLY_CONNECTED", "EMBEDDING_LOOKUP") or op.weights.ndim != 2:
        return None
    rows, cols = op.weights.shape
    if cols % block:
        return f"{cols} inputs, not a multiple of {block}"
    if (np.abs(op.weights.reshape(rows, cols // block, block)).max(axis=-1) == 0).any():
        return f"a block of {block} zeros would get the scale 0"
    return None


def _bits_allowed(bits) -> bool:
    return bits is None or (type(bits) is int and bits in LAYER_BITS)


def layer_bits_problem(layer_bits) -> str | None:
    """None when ``layer_bits`` is None or a mapping of layer names to 4, 8 or None; else what is allowed.

    >>> layer_bits_problem({"conv1": 8, "logits": None}) is None, layer_bits_problem({"conv1": 2})
    (True, 'a mapping of layer name to 4, 8 or None (left float)')
    """
    if layer_bits is None or (isinstance(layer_bits, dict) and all(
            isinstance(layer, str) and _bits_allowed(bits) for layer, bits in layer_bits.items())):
        return None
    return "a mapping of layer name to 4, 8 or None (left float)"


def _left_float(ops: list, layers) -> list[str]:
    """The layers of ``layers`` (a dict name -> Keras layer) that hold a kernel but no weight op the quantizer takes:
    their weights stay float32 in the file (TFLite fuses an LSTM into one UNIDIRECTIONAL_SEQUENCE_LSTM op, for one).
    A wrapper counts as its inner layer; a nested model as its layers."""
    if not isinstance(layers, dict):
        return []

    def covered(layer) -> bool:
        inner = getattr(layer, "layer", None)
        return any(op.of(layer.name) for op in ops) or (inner is not None and covered(inner))

    return [name for name, layer in layers.items() if _kernels(layer) and not covered(layer)]


def _check_layer_bits(layer_bits, ops: list, quantization: str, left_float=()) -> tuple[dict, list]:
    """``(layer_bits to apply, notes)``: a ConfigError for an entry that is not allowed or names a layer without a
    kernel; an entry for a layer in ``left_float`` (a kernel, but no weight op) is dropped with a note."""
    if layer_bits is None:
        return {}, []
    if not isinstance(layer_bits, dict):
        raise ConfigError(f"layer_bits={layer_bits!r} is not allowed; allowed: {layer_bits_problem(layer_bits)}")
    applied, notes = {}, []
    for layer, bits in layer_bits.items():
        if not isinstance(layer, str) or not _bits_allowed(bits):
            raise ConfigError(f"layer_bits[{layer!r}]={bits!r} is not allowed; allowed: a layer name mapped to 4, 8 "
                              "or None (left float)")
        if any(op.of(layer) for op in ops):
            applied[layer] = bits
        elif layer in left_float:
            if bits is not None:
                notes.append(f"layer_bits[{layer!r}]={bits} not applied: {layer!r} has no weight op the quantizer "
                             "takes, so its weights stay float32")
        else:
            known = sorted({op.layer for op in ops})
            raise ConfigError(f"layer_bits names {layer!r}, which has no weight op in the TFLite file for "
                              f"quantization={quantization!r} to quantize; layers with weight ops: {', '.join(known)}")
    return applied, notes


def _entries(scheme: _Scheme, ops: list, layer_bits: dict, channelwise_ops: list) -> list:
    """``[(regex, bits, granularity)]``: the scheme everywhere, then the ops of each layer in ``layer_bits``, then
    the per-channel fallbacks ``[(op, bits)]`` (the quantizer takes the last entry that matches an op's outputs'
    names)."""
    return [(".*", 4, scheme.granularity),
            *((_op_regex(op), bits, scheme.granularity) for layer, bits in layer_bits.items()
              for op in ops if op.of(layer)),
            *((_op_regex(op), bits, "CHANNELWISE") for op, bits in channelwise_ops)]


def _recipe(scheme: _Scheme, entries: list):
    """The quantizer's recipe for ``entries`` (see :func:`_entries`); bits None leaves the op float."""
    from litert_quantizer import qtyping
    from litert_quantizer.algorithm_manager import AlgorithmName
    from litert_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    every_op = qtyping.TFLOperationName.ALL_SUPPORTED
    add_config = manager.add_dynamic_config if scheme.mode == "dynamic" else manager.add_weight_only_config
    for regex, bits, granularity in entries:
        if bits is None:
            manager.add_quantization_config(regex, every_op, None, AlgorithmName.NO_QUANTIZE)
        else:
            add_config(regex, every_op, bits, qtyping.QuantGranularity(granularity))
            if granularity != "CHANNELWISE":  # convolutions have no block-wise kernel: these stay per channel
                for conv in _CONV_OPS:  # no 4-bit depthwise or transposed one: quantize_tflite asks 8 bits of those
                    if _policy_takes(scheme.mode, conv, bits):
                        add_config(regex, qtyping.TFLOperationName(conv), bits, qtyping.QuantGranularity.CHANNELWISE)
    return manager.get_quantization_recipe()


@functools.lru_cache(maxsize=None)
def _policy_takes(mode: str, op_name: str, bits: int) -> bool:
    """Whether the quantizer's policy has a ``bits``-bit per-channel kernel for the TFLite op ``op_name`` in ``mode``
    ("dynamic" or "weight_only"): asked of a scratch recipe, which refuses an op outside the policy (ValueError).

    >>> _policy_takes("dynamic", "DEPTHWISE_CONV_2D", 4), _policy_takes("dynamic", "DEPTHWISE_CONV_2D", 8)
    (False, True)
    """
    from litert_quantizer import qtyping
    from litert_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    add_config = manager.add_dynamic_config if mode == "dynamic" else manager.add_weight_only_config
    try:
        add_config(".*", qtyping.TFLOperationName(op_name), bits, qtyping.QuantGranularity.CHANNELWISE)
    except ValueError:
        return False
    return True


def _quantize(content: bytes, recipe) -> bytes:
    from litert_quantizer import Quantizer

    result = Quantizer(bytearray(content), recipe).quantize(enable_progress_report=False)
    return bytes(result.quantized_model)


def _bits_of(op: _WeightOp, layer_bits: dict):
    bits = 4
    for layer, value in layer_bits.items():  # the last matching entry wins, as in the recipe
        if op.of(layer):
            bits = value
    return bits


def quantize_tflite(content: bytes, quantization: str = "int4", layer_bits=None, layers=None) -> tuple[bytes, list]:
    """Rewrite a float TFLite flatbuffer with int4 (or per-layer int8) weights using the LiteRT quantizer.

    Args:
        content: Bytes, a float32 TFLite flatbuffer (``to_tflite(model).content``).
        quantization: String, one of :data:`INT4_QUANTIZATIONS`.
        layer_bits: Dict or None, Keras layer name -> 4, 8 or None (left float), overriding the 4 bits of the
            rest; a layer is found by its name in the ops' tensor names (``model/<layer>/...``).
        layers: The Keras model's layers as a dict name -> layer (or a collection of their names), or None: ops are
            named by these layers in notes and errors, ``layer_bits`` may name the layer of an op inside a recurrent
            layer's loop (named ``while/...`` in the file), found by the kernel it holds (dict only), and an error
            suggests ``layer_bits`` only for these.

    Returns:
        ``(flatbuffer bytes, notes)``: notes say which ops were quantized per channel instead of per block, which
        were stored in 8 bits because the quantizer's policy has no 4-bit kernel for them (a depthwise or a
        transposed convolution), which layers hold a kernel the quantizer cannot take (left float32: a fused LSTM,
        an Embedding's GATHER table...), which ops the quantizer left float32 although asked (read back from the
        file), and which ``layer_bits`` entries name such a layer (not applied: a sensitivity plan may name any
        layer).

    Raises:
        ConfigError: an unknown quantization, or a layer_bits entry that is not allowed or names a layer with no
            weight op and no kernel.
        ExportError: the quantizer cannot handle the model; the message names the op that fails.

    >>> from tfopt.export import to_tflite
    >>> from tfopt._keras import keras
    >>> model = keras.Sequential([keras.layers.Dense(64, input_shape=(256,), name="dense")])
    >>> content, notes = quantize_tflite(to_tflite(model).content, "int4")
    >>> round(len(to_tflite(model).content) / len(content))  # 4 bits a weight instead of 32
    7
    """
    if quantization not in INT4_QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r} is not allowed here; allowed: "
                          f"{', '.join(map(repr, INT4_QUANTIZATIONS))}")
    scheme = INT4_QUANTIZATIONS[quantization]
    ops = _weight_ops(content, layers)
    left_float = _left_float(ops, layers)
    layer_bits, notes = _check_layer_bits(layer_bits, ops, quantization, left_float)
    if left_float:
        notes.insert(0, "left float32, the quantizer takes none of their ops (a fused LSTM, an Embedding's GATHER): "
                        + ", ".join(f"{name!r} ({type(layers[name]).__name__})" for name in left_float))
    channelwise = []
    if scheme.block:
        reasons = {id(op): _no_blocks(op, scheme.block) for op in ops}
        channelwise = [(op, _bits_of(op, layer_bits)) for op in ops if _bits_of(op, layer_bits) is not None
                       and reasons[id(op)]]
        if channelwise:
            notes.append(f"quantized per channel instead of per block of {scheme.block}: " + ", ".join(
                f"{op.name} {op.layer!r} ({reasons[id(op)]})" for op, _ in channelwise))
    eight = [op for op in ops if op.stores_kernel and _bits_of(op, layer_bits) == 4
             and not _policy_takes(scheme.mode, op.name, 4) and _policy_takes(scheme.mode, op.name, 8)]
    if eight:
        notes.append(f"stored in 8 bits, the quantizer's {quantization} policy has no 4-bit kernel for them: "
                     + _by_op(eight) + " (layer_bits={layer: None} leaves them float32)")
    channelwise += [(op, 8) for op in eight]  # after the layers' entries: they win
    recipe = _recipe(scheme, _entries(scheme, ops, layer_bits, channelwise))
    try:
        quantized = _quantize(content, recipe)
    except Exception as err:  # noqa: BLE001 - the quantizer raises ValueError, RuntimeError, KeyError...
        raise _failure(content, ops, scheme, layer_bits, channelwise, quantization, err, layers) from err
    skipped = _skipped_by_quantizer(quantized, ops, layer_bits)
    if skipped:
        notes.append(f"left float32 by the quantizer (not in its {quantization} policy): " + _by_op(skipped))
    return quantized, notes


def _by_op(ops: list) -> str:
    """``ops`` named for a note, grouped by TFLite op: ``"DEPTHWISE_CONV_2D 'dw1', 'dw2'; CONV_2D_TRANSPOSE 'up'"``."""
    by_op = {}
    for op in ops:
        by_op.setdefault(op.name, []).append(repr(op.layer))
    return "; ".join(f"{name} {', '.join(dict.fromkeys(names))}" for name, names in by_op.items())


def _skipped_by_quantizer(quantized: bytes, ops: list, layer_bits: dict) -> list:
    """The ops of ``ops`` asked for 4 or 8 bits whose kernel is still a float32 constant in the ``quantized`` file
    (read back, not predicted from the quantizer's policy)."""
    asked = {op.scope: op for op in ops if _bits_of(op, layer_bits) is not None}
    return [asked[op.scope] for op in _weight_ops(quantized) if op.scope in asked and op.stores_kernel]


def _failure(content, ops, scheme, layer_bits, channelwise, quantization, err, layers) -> ExportError:
    """An ExportError naming the first op the quantizer fails on alone (each weight op is tried by itself)."""
    fallback = {op.scope: bits for op, bits in channelwise}
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    for op in ops:
        bits = fallback.get(op.scope, _bits_of(op, layer_bits))
        if bits is None:
            continue
        granularity = "CHANNELWISE" if op.scope in fallback else scheme.granularity
        try:
            _quantize(content, _recipe(scheme, [(_op_regex(op), bits, granularity)]))
        except Exception as op_err:  # noqa: BLE001
            reason = " ".join(f"{type(op_err).__name__}: {op_err}".split())[:300]
            alternatives = "quantization='int4' (per channel)" if scheme.block else "quantization='dynamic' (int8)"
            float_layer = f", or leave that layer float with layer_bits={{{op.layer!r}: None}}" \
                if layers is None or op.layer in layers else ""
            return ExportError(
                f"the LiteRT quantizer cannot quantize the {op.name} op of layer {op.layer!r} (kernel {op.kernel}) "
                f"with quantization={quantization!r}: {reason}; use {alternatives}{float_layer}")
    return ExportError(f"the LiteRT quantizer failed on this model with quantization={quantization!r}: {reason}; "
                       "use quantization='dynamic' (int8 weights) instead")
