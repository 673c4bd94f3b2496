"""Conversion of tf_keras models to TFLite flatbuffers, and running them with the LiteRT interpreter."""

from __future__ import annotations

import contextlib
import functools
import gzip
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tfopt import _faults
from tfopt._io import atomic_write_bytes
from tfopt._keras import check_model, keras, tf
from tfopt._model import check_input_shape, check_shape, is_qat, weight_count
from tfopt.flops import flops
from tfopt.errors import ConfigError, DataError, ExportError
from tfopt.export import _guard
from tfopt.export._guard import CRASH_PRONE
from tfopt.export.int4 import INT4_QUANTIZATIONS, LAYER_BITS, layer_bits_problem, quantize_tflite
from tfopt.options import INT, LIST, MAP, NONE, STR, Field, at_least, options_from, safe_name
from tfopt.techniques import StageResult, Technique, register_technique

__all__ = ["QUANTIZATIONS", "CALIBRATED", "CRASH_PRONE", "QUANTIZATION_NAMES", "VARIANT", "TFLiteModel", "to_tflite", "interpreter",
           "tflite_weights", "tflite_weight_bits", "weight_stats"]

log = logging.getLogger(__name__)

QUANTIZATIONS = (None, "dynamic", "float16", "int8", "int16x8", *INT4_QUANTIZATIONS)  # int4*: the LiteRT quantizer
CALIBRATED = ("int8", "int16x8")  # quantizations that calibrate activation ranges on representative data
# a recipe's name of each quantization: "float32" is None (no quantization)
QUANTIZATION_NAMES = {"float32" if q is None else q: q for q in QUANTIZATIONS}
IO_DTYPES = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}


@dataclass
class TFLiteModel:
    """A converted model: the flatbuffer bytes plus what was done to get them.

    Attributes:
        content: Bytes, the TFLite flatbuffer.
        quantization: String or None, one of ``QUANTIZATIONS``.
        notes: List of strings, what conversion had to do (fixed batch size, TF select ops...).

    >>> m = to_tflite(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]))
    >>> m.predict(np.ones((4, 3), np.float32)).shape
    (4, 2)
    """

    content: bytes
    quantization: str | None = None
    notes: list = field(default_factory=list)
    path: Path | None = None

    @property
    def bytes(self) -> int:
        """Integer, the size of the flatbuffer in bytes."""
        return len(self.content)

    @property
    def gzip_bytes(self) -> int:
        """Integer, the size after gzip at level 9 (what zeros and shared values buy on the wire)."""
        return len(gzip.compress(self.content, compresslevel=9, mtime=0))

    def save(self, path) -> Path:
        """Write the flatbuffer to ``path`` atomically and return the path."""
        self.path = atomic_write_bytes(path, self.content)
        return self.path

    @classmethod
    def load(cls, path) -> "TFLiteModel":
        """Read a ``.tflite`` file."""
        path = Path(path)
        if not path.is_file():
            raise ExportError(f"no TFLite file at {str(path)!r}")
        content = path.read_bytes()
        if content[4:8] != b"TFL3":  # the flatbuffer's file identifier
            kind = ("a .keras model (a zip archive): export it first, `tfopt export`" if content[:2] == b"PK" else
                    "an HDF5 file (a Keras .h5 model?): export it first, `tfopt export`"
                    if content[:8] == b"\x89HDF\r\n\x1a\n" else f"it starts with {content[:8]!r}")
            raise ExportError(f"{str(path)!r} is not a TFLite file (no TFL3 identifier): {kind}")
        return cls(content=content, quantization=None, notes=[], path=path)

    def interpreter(self, threads: int = 1):
        """A fresh, allocated LiteRT interpreter for this model."""
        return interpreter(self.content, threads=threads)

    def predict(self, x, threads: int = 1) -> np.ndarray:
        """Run the model on a NumPy batch ``x`` (float, as the Keras model takes it); returns float outputs.

        Quantized inputs and outputs are handled with the tensors' scale and zero point.
        """
        runner = _Runner(self.interpreter(threads))
        return runner.predict(np.asarray(x))


def interpreter(content: bytes, threads: int = 1):
    """A LiteRT (``ai_edge_litert``) interpreter for a flatbuffer, tensors allocated.

    When the default XNNPACK delegate cannot prepare the model (measured: int8 files with sparse-encoded
    weights, ``to_tflite(..., sparse=True)``), the builtin kernels are used instead, with a warning.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        it = Interpreter(model_content=content, num_threads=threads)
        it.allocate_tensors()
        return it
    except (ValueError, RuntimeError) as e:
        first = e
    try:
        it = Interpreter(model_content=content, num_threads=threads,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"LiteRT could not load the model: {first}") from e
    log.warning("LiteRT's default delegate could not prepare this model (%s); running builtin kernels",
                str(first).splitlines()[0][:200])
    return it


class _Runner:
    """Feeds batches through an interpreter one sample at a time (or a whole batch when resizable)."""

    def __init__(self, it):
        self.it = it
        self.inp = it.get_input_details()[0]
        self.out = it.get_output_details()[0]
        self.resizable = int(self.inp["shape_signature"][0]) == -1
        # Trap: LiteRT's fused RNN ops keep their hidden/cell state in variable tensors across invoke()
        # calls, so without a reset every sample after the first starts from the previous one's state.
        ops = {op["op_name"] for op in it._get_ops_details()}
        self.stateful = any("LSTM" in op or "RNN" in op for op in ops)

    def quantize(self, x):
        dtype = self.inp["dtype"]
        if dtype in (np.int8, np.uint8, np.int16):
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return x.astype(dtype)

    def dequantize(self, y):
        if self.out["dtype"] in (np.int8, np.uint8, np.int16):
            scale, zero = self.out["quantization"]
            return (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)

    def invoke(self, x):
        """Run one already-shaped batch; returns the float output."""
        if self.stateful:
            self.it.reset_all_variables()
        self.it.set_tensor(self.inp["index"], self.quantize(x))
        self.it.invoke()
        return self.dequantize(self.it.get_tensor(self.out["index"]))

    def predict(self, x):
        if x.ndim == len(self.inp["shape"]) - 1:
            x = x[None]
        check_shape(x.shape[1:], [None if d == -1 else d for d in self.inp["shape_signature"][1:]], "the data",
                    "the TFLite model")
        if self.resizable and len(x) != self.inp["shape"][0]:
            self.it.resize_tensor_input(self.inp["index"], [len(x), *self.inp["shape"][1:]])
            self.it.allocate_tensors()
            self.inp = self.it.get_input_details()[0]
            self.out = self.it.get_output_details()[0]
        if self.inp["shape"][0] == len(x):
            return self.invoke(x)
        step = int(self.inp["shape"][0])
        return np.concatenate([self.invoke(x[i : i + step]) for i in range(0, len(x), step)])


def _representative(data, samples):
    """A generator function yielding ``[x]`` single samples: ``data`` itself when it is a generator function, else
    over ``samples`` (:func:`representative_samples` of it)."""
    if data is None:
        return None
    if callable(data) and not isinstance(data, tf.data.Dataset):
        return data
    return calibration(samples)


def _input_dtype(model) -> np.dtype:
    """The NumPy dtype of the model's (first) input: float32 for images and features, int32 for token ids."""
    return np.dtype(model.inputs[0].dtype.as_numpy_dtype)


def representative_samples(data, num_samples: int, dtype="float32") -> list:
    """The calibration samples ``to_tflite`` would hand the converter, as a list of ``[x]`` lists.

    Args:
        data: tf.data.Dataset of (x, y) or x batches, a NumPy array of inputs, or a generator function
            yielding ``[x]`` (all of whose items are taken, as they are).
        num_samples: Integer, how many samples to take from a dataset or array.
        dtype: The model input's dtype, which dataset and array samples are cast to (token ids stay integers:
            the converter refuses a float32 sample for an int32 input).

    >>> [x.dtype.name for [x] in representative_samples(np.zeros((2, 3), "int64"), 5, "int32")]
    ['int32', 'int32']
    """
    if callable(data) and not isinstance(data, tf.data.Dataset):
        return [[np.asarray(x) for x in item] for item in data()]
    if isinstance(data, tf.data.Dataset):
        batches = (b[0] if isinstance(b, tuple) else b for b in data.as_numpy_iterator())
    else:
        arr = np.asarray(data)
        if arr.size == 0:
            raise DataError("representative_data is empty")
        batches = iter([arr])

    samples = []
    for batch in batches:
        for row in np.asarray(batch).astype(dtype, copy=False):
            samples.append([row[None]])
            if len(samples) >= num_samples:
                break
        if len(samples) >= num_samples:
            break
    if not samples:
        raise DataError("representative_data yielded no sample")
    return samples


def calibration(samples: list):
    """A generator function over ``samples`` (lists of ``[x]``) for the converter, with the fault hook points
    ``calibrate:<k>``."""

    def gen():
        for i, item in enumerate(samples):
            _faults.reached(f"calibrate:{i}")
            yield list(item)

    return gen


@contextlib.contextmanager
def _interrupts_kept():
    """While converting: remember Ctrl-C (SIGINT) and yield a check that raises KeyboardInterrupt if one came.

    The converter runs C++ and TensorFlow code that can turn the KeyboardInterrupt into an ordinary error
    (or swallow it and fall back to another conversion path, finishing with a differently converted file):
    the check, called after every attempt, stops the conversion whatever became of the exception. Only in
    the main thread, and only where SIGINT raises KeyboardInterrupt (Python's default handler).
    """
    received = []

    def check():
        if received:
            raise KeyboardInterrupt("interrupted during TFLite conversion")

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield check
        return

    def handler(signum, frame):
        received.append(signum)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt: stop as soon as possible

    signal.signal(signal.SIGINT, handler)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _configure(converter, quantization, rep, io_dtype, qat):
    if quantization is None and qat:
        quantization = "int8"  # a QAT model carries its ranges: converting it means int8.
    if quantization is None:
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if rep is not None:
            converter.representative_dataset = rep
        if not qat or rep is not None:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = IO_DTYPES[io_dtype]
        converter.inference_output_type = IO_DTYPES[io_dtype]
    elif quantization == "int16x8":
        converter.representative_dataset = rep
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]
        if io_dtype != "float32":
            converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16


def _has_rnn(model) -> bool:
    return any(isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)) for layer in _all_layers(model))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        inner = getattr(layer, "layer", None)  # tfmot wrappers, Bidirectional, TimeDistributed
        if inner is not None:
            yield inner


def _concrete_converter(model, batch=None):
    """A converter over the model's inference function, with a bare ``tf.Module`` holding its variables as the
    object the converter tracks (``batch``: None for any batch size, 1 for the fixed batch LSTMs need to fuse).

    The converter saves the object it tracks as a SavedModel before converting: given the Keras model, that is
    tf_keras's export of every layer's own functions (measured: MobileNetV2 at 32x32, 18 of 20 s of ``to_tflite``);
    given a module that holds only the variables, it is the one function (0.8 s). The graph is the same, and so are
    the file's tensor names and its "serving_default" signature (the Keras input and output names).
    """
    module = tf.Module()
    module.model_variables = list(model.variables)  # tracked: saved beside the function, the signature kept
    specs = [tf.TensorSpec([batch, *inp.shape[1:]], inp.dtype, name=name)
             for inp, name in zip(model.inputs, model.input_names)]

    def serve(*xs):
        outputs = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        if isinstance(outputs, dict):
            return outputs
        return dict(zip(model.output_names, outputs if isinstance(outputs, (list, tuple)) else [outputs]))

    module.serve = tf.function(serve, input_signature=specs)
    return tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module)


# Each way to get a converter, tried in turn (the fixed batch first for recurrent models); the note says which one
# converted when it is not the first kind. "keras" (from_keras_model: tf_keras's whole SavedModel export, 10-25x
# slower on the applications) is the last resort, for a model the concrete function cannot be traced from.
_CONVERTERS = {
    "concrete": (lambda model: _concrete_converter(model), None),
    "fixed batch 1": (lambda model: _concrete_converter(model, batch=1),
                      "converted with a fixed batch 1 concrete function"),
    "keras": (lambda model: tf.lite.TFLiteConverter.from_keras_model(model),
              "converted from the Keras model (tf_keras SavedModel export): the concrete function failed"),
}


def _convert(model, quantization, rep, io_dtype, qat, sparse) -> tuple[bytes, list]:
    """The conversion itself, in this process: each converter path in turn, TF select ops last.

    Returns:
        ``(flatbuffer bytes, notes)``.
    """
    notes = []
    order = ["fixed batch 1", "concrete", "keras"] if _has_rnn(model) else ["concrete", "fixed batch 1", "keras"]
    errors = []
    with _interrupts_kept() as stop_if_interrupted:
        for select_ops in (False, True):
            for how in order:
                make, note = _CONVERTERS[how]
                try:
                    converter = make(model)
                    _configure(converter, quantization, rep, io_dtype, qat)
                    if sparse:
                        converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY, *converter.optimizations]
                    if select_ops:
                        converter.target_spec.supported_ops = [
                            tf.lite.OpsSet.TFLITE_BUILTINS,
                            tf.lite.OpsSet.SELECT_TF_OPS,
                        ]
                    content = converter.convert()
                except Exception as e:  # the converter raises many types; keep the first lines of each
                    stop_if_interrupted()  # Ctrl-C turned into an error: stop, do not try another path
                    errors.append(f"{how}{' + select TF ops' if select_ops else ''}: "
                                  f"{(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}")
                    continue
                stop_if_interrupted()  # Ctrl-C swallowed inside the converter: stop all the same
                if note:
                    notes.append(note)
                if select_ops:
                    notes.append(SELECT_OPS_NOTE)
                    log.warning("to_tflite fell back to SELECT_TF_OPS: %s", errors)
                return content, notes
    raise ExportError("TFLite conversion failed: " + " | ".join(errors))


SELECT_OPS_NOTE = "needs TF select ops (SELECT_TF_OPS): run with the Flex delegate"


def _check_int4(model, quantization, layer_bits, sparse) -> None:
    """ConfigError for what an int4 quantization cannot take (and for layer_bits without one)."""
    if layer_bits is not None and quantization not in INT4_QUANTIZATIONS:
        raise ConfigError(f"layer_bits needs an int4 quantization ({', '.join(map(repr, INT4_QUANTIZATIONS))}), "
                          f"not quantization={quantization!r}")
    if quantization not in INT4_QUANTIZATIONS:
        return
    if is_qat(model):
        raise ConfigError(f"quantization={quantization!r} needs a float model: a quantization-aware model converts "
                          "to int8 with its learned ranges; convert the model from before quantize_aware")
    if sparse:
        raise ConfigError(f"sparse=True does not go with quantization={quantization!r} (the LiteRT quantizer needs "
                          "dense float weights); gzip the file to get the zeros' worth")
    if layer_bits:
        names = {layer.name for layer in _all_layers(model)}
        unknown = [name for name in layer_bits if name not in names]
        if unknown:
            raise ConfigError(f"layer_bits names {', '.join(map(repr, unknown))}, not a layer of the model; layers: "
                              f"{', '.join(sorted(names))}")


def to_tflite(
    model,
    quantization: str | None = None,
    representative_data=None,
    path=None,
    io_dtype: str = "float32",
    num_samples: int = 200,
    sparse: bool = False,
    layer_bits: dict | None = None,
    isolate: bool | None = None,
) -> TFLiteModel:
    """Convert a tf_keras model to TFLite.

    A conversion the TFLite converter is known to crash on (:data:`tfopt.export.CRASH_PRONE`: a recurrent
    layer with int8 or int16x8 calibration) runs in a child process, so a crash cannot take this process
    down: it comes back as an ExportError naming the layers and the quantizations that work.

    Args:
        model: tf_keras model (plain, pruned-and-stripped, clustered, or QAT).
        quantization: None (float32), "dynamic" (int8 weights), "float16", "int8" (full integer; needs
            ``representative_data`` unless the model is quantization-aware), "int16x8", or int4 weights
            through the LiteRT quantizer (:mod:`tfopt.export.int4`): "int4" (per channel, integer compute),
            "int4_weight_only" (per channel, float compute) or "int4_block32" (per block of 32 inputs).
        representative_data: tf.data.Dataset of (x, y) or x batches, a NumPy array of inputs, or a generator
            function yielding ``[x]``; used to calibrate activation ranges.
        path: Optional path; when given the flatbuffer is written there atomically.
        io_dtype: String, "float32", "int8" or "uint8": the input/output type of a full-int8 model.
        num_samples: Integer, how many representative samples to calibrate on.
        sparse: Bool, also encode sparse weights (``Optimize.EXPERIMENTAL_SPARSITY``) for XNNPACK.
        layer_bits: Dict or None, with an int4 quantization: layer name -> 4, 8 or None (left float), e.g.
            ``{"conv1": 8}`` keeps the first convolution at 8 bits.
        isolate: Bool or None, convert in a child process (True), in this one (False), or as
            :data:`CRASH_PRONE` decides (None). The child costs a fresh Python and TensorFlow start.

    Returns:
        A :class:`TFLiteModel`.

    >>> tfl = to_tflite(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))]), quantization="dynamic")
    >>> tfl.quantization
    'dynamic'
    """
    check_model(model, "to_tflite")
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization={quantization!r} is not allowed; allowed: {', '.join(map(repr, QUANTIZATIONS))}")
    if io_dtype not in IO_DTYPES:
        raise ConfigError(f"io_dtype={io_dtype!r} is not allowed; allowed: {', '.join(IO_DTYPES)}")
    if io_dtype != "float32" and quantization not in CALIBRATED:
        raise ConfigError(f"io_dtype={io_dtype!r} needs quantization='int8' or 'int16x8', not {quantization!r}")
    _check_int4(model, quantization, layer_bits, sparse)
    if isolate not in (None, True, False):
        raise ConfigError(f"isolate={isolate!r} is not allowed; allowed: None (as CRASH_PRONE decides), True, False")
    qat = is_qat(model)
    if quantization in CALIBRATED and representative_data is None and not qat:
        raise ConfigError(
            f"quantization={quantization!r} needs representative_data (a tf.data.Dataset or array of inputs) "
            "to calibrate activation ranges, unless the model is quantization-aware (tfopt.compress.quantize_aware)"
        )
    converted = "int8" if qat and quantization is None else quantization  # a QAT model converts to int8
    calibrated = quantization in CALIBRATED and representative_data is not None
    generator = callable(representative_data) and not isinstance(representative_data, tf.data.Dataset)
    samples = None  # a user's generator function is read lazily, by the converter, unless in a child process
    if calibrated and not generator:
        samples = representative_samples(representative_data, num_samples, _input_dtype(model))
        check_input_shape(model, np.shape(samples[0][0])[1:], "representative_data")
    hazards = _guard.crash_prone_layers(model, converted)
    if isolate or (isolate is None and hazards):
        if calibrated and generator:
            samples = representative_samples(representative_data, num_samples, _input_dtype(model))
        content, notes = _guard.convert_in_child(
            model, dict(quantization=quantization, io_dtype=io_dtype, num_samples=num_samples, sparse=sparse,
                        layer_bits=layer_bits),
            samples, hazards, converted, QUANTIZATIONS)
        if SELECT_OPS_NOTE in notes:
            log.warning("to_tflite fell back to SELECT_TF_OPS (in the child process)")
    else:
        rep = _representative(representative_data, samples) if quantization in CALIBRATED else None
        int4 = quantization in INT4_QUANTIZATIONS  # the LiteRT quantizer rewrites the float file
        content, notes = _convert(model, None if int4 else quantization, rep, io_dtype, qat, sparse)
        if int4:
            content, more = quantize_tflite(content, quantization, layer_bits,
                                            layers={layer.name: layer for layer in _all_layers(model)})
            notes += more
    result = TFLiteModel(content=content, quantization=converted, notes=notes)
    if path is not None:
        result.save(path)
    return result


def tflite_weights(content: bytes) -> dict:
    """The constant weight tensors of a flatbuffer, read back from the file: name -> NumPy array.

    Every subgraph is read, so the kernels inside a recurrent layer's loop (``while/MatMul``) are found too; a name
    met again in another subgraph gets ``#<subgraph>`` appended. A weight is a constant tensor of two or more
    dimensions that an op reads. Integer tensors are returned as stored (int8 values; int4 values unpacked into int8
    arrays, in [-8, 7]: :func:`tflite_weight_bits` tells which), which is what sparsity and cluster counts of the
    shipped file must be measured on. Sparse-encoded kernels (``sparse=True``: rows dense, columns compressed) are
    expanded to their dense shape; other sparse encodings (blocks) are left out.

    Args:
        content: Bytes, the flatbuffer.

    >>> model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,), name="d")])
    >>> {name: w.shape for name, w in tflite_weights(to_tflite(model).content).items()}  # doctest: +ELLIPSIS
    {'sequential.../d/MatMul': (2, 3)}
    """
    return _weights_of(_read_flatbuffer(content), content)


def _weights_of(model, content: bytes) -> dict:
    """:func:`tflite_weights` of the parsed flatbuffer ``model`` (``content``: its bytes, for buffers kept after it)."""
    weights = {}
    for index, subgraph in enumerate(model.subgraphs):
        produced = {int(i) for op in subgraph.operators or () for i in (op.outputs if op.outputs is not None else ())}
        consumed = {int(i) for op in subgraph.operators or () for i in (op.inputs if op.inputs is not None else ())
                    if i >= 0}
        inputs = {int(i) for i in (subgraph.inputs if subgraph.inputs is not None else ())}
        for t in sorted(consumed - produced - inputs):
            tensor = subgraph.tensors[t]
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
            if len(shape) < 2:
                continue
            value = _tensor_value(tensor, shape, model.buffers, content)
            if value is not None and value.size:
                name = tensor.name.decode("utf-8", "replace") if isinstance(tensor.name, bytes) else str(tensor.name)
                weights[name if name not in weights else f"{name}#{index}"] = value
    return weights


def _read_flatbuffer(content: bytes):
    """The flatbuffer's object tree (``ModelT``: subgraphs, tensors, buffers); ExportError when it cannot be read."""
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ExportError(f"cannot read the TFLite flatbuffer ({len(content):,} bytes): {type(err).__name__}: "
                          f"{err}") from err


@functools.lru_cache(maxsize=1)
def _type_names() -> dict:
    """TFLite tensor type code -> the schema's name ("FLOAT32", "INT4", ...)."""
    from ai_edge_litert import schema_py_generated as schema

    return {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}


def _type_name(code: int) -> str | None:
    """The schema's name of TFLite tensor type ``code``, None for an unknown code."""
    return _type_names().get(code)


# numpy dtypes of the TFLite tensor types a weight may be stored in (INT4: two values a byte, unpacked below)
_TYPE_DTYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT8": np.int8,
                "UINT8": np.uint8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64}


def _tensor_value(tensor, shape: tuple, buffers, content: bytes) -> np.ndarray | None:
    """The constant value of flatbuffer ``tensor`` (None when it has no data or a type that holds no weights)."""
    kind = _type_name(tensor.type)
    buffer = buffers[tensor.buffer] if 0 <= tensor.buffer < len(buffers) else None
    if buffer is None:
        return None
    if buffer.data is not None and len(buffer.data):
        raw = np.asarray(buffer.data, dtype=np.uint8).tobytes()
    elif buffer.offset and buffer.offset > 1:  # kept outside the flatbuffer, after it (files over 2 GB)
        raw = content[buffer.offset:buffer.offset + buffer.size]
    else:
        return None
    if tensor.sparsity is not None:
        dtype = _TYPE_DTYPES.get(kind)
        return None if dtype is None else _densify(np.frombuffer(raw, dtype=dtype), tensor.sparsity, shape)
    count = int(np.prod(shape))
    if kind == "INT4":  # two's-complement nibbles, the low one first
        packed = np.frombuffer(raw, dtype=np.uint8)
        values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)[:count].astype(np.int8)
        return np.where(values > 7, values - 16, values).astype(np.int8).reshape(shape)
    dtype = _TYPE_DTYPES.get(kind)
    if dtype is None or len(raw) < count * np.dtype(dtype).itemsize:
        return None
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape).copy()


def _densify(values: np.ndarray, sparsity, shape: tuple) -> np.ndarray | None:
    """The dense kernel of a sparse-encoded tensor: the leading dimensions dense, the last compressed (CSR) in each
    of their positions, which is what the converter's ``EXPERIMENTAL_SPARSITY`` writes for an unstructured Dense or
    convolution kernel; None for other encodings (blocks, another traversal order)."""
    from ai_edge_litert import schema_py_generated as schema

    dims = list(sparsity.dimMetadata or ())
    order = [int(i) for i in (sparsity.traversalOrder if sparsity.traversalOrder is not None else ())]
    if (order != list(range(len(shape))) or len(sparsity.blockMap if sparsity.blockMap is not None else ())
            or len(dims) != len(shape) or any(d.format != schema.DimensionType.DENSE for d in dims[:-1])
            or dims[-1].format != schema.DimensionType.SPARSE_CSR):
        return None
    rows = int(np.prod(shape[:-1]))
    segments = np.asarray(dims[-1].arraySegments.values, dtype=np.int64)
    columns = np.asarray(dims[-1].arrayIndices.values, dtype=np.int64)
    if len(segments) != rows + 1 or len(columns) != len(values) or segments[-1] != len(values):
        return None
    dense = np.zeros((rows, shape[-1]), dtype=values.dtype)
    dense[np.repeat(np.arange(rows), np.diff(segments)), columns] = values
    return dense.reshape(shape)


# bits per value of each TFLite tensor type that holds weights (schema TensorType names)
_TYPE_BITS = {"INT2": 2, "INT4": 4, "INT8": 8, "UINT8": 8, "INT16": 16, "FLOAT16": 16, "FLOAT32": 32}


def tflite_weight_bits(content: bytes) -> dict:
    """How many bits the file spends on each value of each tensor: name -> bits (4 for int4, 8 for int8, ...).

    :func:`tflite_weights` hands int4 tensors back unpacked as int8 arrays (values in [-8, 7]); the file's own
    tensor types tell them apart.

    Args:
        content: Bytes, the flatbuffer.

    >>> tflite_weight_bits(to_tflite(keras.Sequential([keras.layers.Dense(2, input_shape=(3,), name="d")])).content)
    ... # doctest: +ELLIPSIS
    {...: 32...}
    """
    return _bits_of(_read_flatbuffer(content))


def _bits_of(model) -> dict:
    """:func:`tflite_weight_bits` of the parsed flatbuffer ``model``."""
    return {tensor.name.decode("utf-8", "replace"): _TYPE_BITS.get(_type_name(tensor.type), 0)
            for subgraph in model.subgraphs for tensor in subgraph.tensors}


def weight_stats(content: bytes, min_size: int = 256) -> dict:
    """Sparsity and distinct values of the integer (int8 and int4) kernels stored in a TFLite file: what pruning,
    clustering and quantization left in the shipped model, read back from the file itself.

    Args:
        content: Bytes, the flatbuffer.
        min_size: Integer, kernels with fewer weights are left out (biases, tiny layers).

    Returns:
        ``{"sparsity": zero fraction over the integer kernels, "max_values_per_channel": int,
        "max_values_per_kernel": int, "kernels": n, "bits": {"int4": n4, "int8": n8}}`` (the stored integer
        values, counted per output channel and per kernel; kernels by storage type); None values and ``{}``
        when the file has no readable integer kernel (e.g. float files, or kernels sparse-encoded in blocks).
        Sparse-encoded (``sparse=True``) and loop-subgraph kernels count (see :func:`tflite_weights`).

    >>> weight_stats(to_tflite(keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])).content)["kernels"]
    0
    """
    try:
        parsed = _read_flatbuffer(content)  # once, for the weights and their bits
    except ExportError:  # not a flatbuffer the reader can parse: no kernel to count
        parsed = None
    weights = _weights_of(parsed, content) if parsed is not None else {}
    kernels = {name: w for name, w in weights.items() if w.dtype == np.int8 and w.size >= min_size}
    if not kernels:
        return {"sparsity": None, "max_values_per_channel": None, "max_values_per_kernel": None, "kernels": 0,
                "bits": {}}
    stored = _bits_of(parsed)
    bits = {}
    for name in kernels:
        kind = f"int{stored.get(name, 8)}"
        bits[kind] = bits.get(kind, 0) + 1
    zeros = sum(int((k == 0).sum()) for k in kernels.values())
    total = sum(k.size for k in kernels.values())
    # TFLite stores kernels output-channel first (FULLY_CONNECTED: [out, in]; CONV_2D: [out, h, w, in]).
    per_channel = max(int(np.unique(row).size) for k in kernels.values() for row in k.reshape(k.shape[0], -1))
    per_kernel = max(int(np.unique(k).size) for k in kernels.values())
    return {"sparsity": zeros / total, "max_values_per_channel": per_channel, "max_values_per_kernel": per_kernel,
            "kernels": len(kernels), "bits": dict(sorted(bits.items()))}


# ---------------------------------------------------------------- the "export" technique (a recipe stage)

# the keys of one export variant: its name (the file's), the stage whose model it converts, and to_tflite's options
VARIANT = {
    "name": Field((STR,), required=True, check=safe_name),
    **options_from(to_tflite, ["quantization", "model", "io_dtype", "sparse", "layer_bits"],
                   quantization={"kinds": (STR, NONE), "default": "float32", "choices": tuple(QUANTIZATION_NAMES)},
                   model=Field((STR, NONE), None, help="the stage whose model it converts (unset: the latest)"),
                   io_dtype={"choices": tuple(IO_DTYPES)},
                   layer_bits=Field((MAP, NONE), None, check=layer_bits_problem,
                                    help="int4 variants: {layer name: 4, 8 or null (float)}")),
}


def variant_row(name: str, stage: str, quantization, tfl, model, path: Path, run_dir: Path, data: dict) -> dict:
    """The record of one exported TFLite file that the pipeline's ``evaluate`` stage and report read: its variant
    name, the stage whose model it converts, its quantization, path (relative to ``run_dir``), bytes, gzip bytes, the
    model's parameters, non-zero parameters and multiply-adds, the converter's notes and the model's data section."""
    params, nonzero = weight_count(model)
    return {"variant": name, "model": stage, "quantization": quantization, "path": str(Path(path).relative_to(run_dir)),
            "bytes": tfl.bytes, "gzip_bytes": tfl.gzip_bytes, "params": params, "nonzero_params": nonzero,
            "flops": flops(model), "notes": list(tfl.notes), "data": dict(data)}


def _run_stage(inputs, o: dict):
    """The export stage: each variant's model converted to TFLite, ``<variant>.tflite`` in the stage folder."""
    rows = []
    for v in o["variants"]:
        model = inputs.model(v["model"])
        data = inputs.model_data(v["model"])
        train_ds, _, _ = inputs.load(data)
        quant = v["tflite_quantization"]
        tfl = to_tflite(model, quant, representative_data=train_ds if quant in CALIBRATED else None,
                        io_dtype=v["io_dtype"], num_samples=o["num_samples"], sparse=v["sparse"],
                        layer_bits=v.get("layer_bits"))
        _faults.reached(f"export:{v['name']}")
        path = tfl.save(Path(inputs.stage_dir) / f"{v['name']}.tflite")
        rows.append(variant_row(v["name"], v["model"], v["quantization"], tfl, model, path, inputs.run_dir, data))
    metrics = {"variants": rows, "baseline": o["baseline"]}
    return StageResult(None, metrics, f"{len(rows)} TFLite file(s) in {Path(inputs.stage_dir).name}/")


TECHNIQUE = register_technique(Technique(
    "export",
    options_from(to_tflite, ["variants", "baseline", "num_samples"],
                 variants=Field((LIST,), required=True, section="variants",
                                check=lambda v: None if v else "a non-empty list of variants",
                                help="[{name, model, quantization, io_dtype, sparse}, ...]"),
                 baseline=Field((STR, NONE), None, help="the variant others are compared with (unset: the first)"),
                 num_samples={"check": at_least(1), "help": "representative samples for int8/int16x8 calibration"}),
    _run_stage, summary="convert models to TFLite files (float32, dynamic, float16, int8, int16x8, int4)",
    function=to_tflite, makes_model=False, trains=False, sets=("exported",),
    tune_keys={"quantization": Field((STR, NONE), None, choices=tuple(q for q in QUANTIZATIONS if q),
                                     help="the quantization of the trial's TFLite file"),
               "layer_bits": VARIANT["layer_bits"]},
    per_layer={"layer_bits": Field((INT, NONE), 4, choices=LAYER_BITS,
                                   help="one layer's weight bits in an int4 quantization (None: left float)")}))
