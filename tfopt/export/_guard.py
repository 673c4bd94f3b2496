"""Conversions that can crash the TFLite converter run in a child process, so a crash cannot take the caller down.

The TFLite converter is C++: on some legal models it dies with a segmentation fault instead of raising (measured
with TF 2.21: full-int8 and int16x8 calibration of GRU, SimpleRNN and Bidirectional(GRU) models, with tfopt and
with the raw converter). :data:`CRASH_PRONE` declares which conversions those are; :func:`convert_in_child` saves
the model and the calibration samples into a private temporary folder, converts in a fresh Python (``python -c``,
not multiprocessing: its "spawn" start would run the caller's ``__main__`` script again in the child), and turns
a child killed by a signal into one :class:`tfopt.errors.ExportError` naming the layers and the quantizations
that work. The folder is always removed. A child stopped by Ctrl-C (SIGINT) is a KeyboardInterrupt here too.

>>> [rule.quantizations for rule in CRASH_PRONE]
[('int8', 'int16x8')]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfopt._io import h5_bytes, write_json
from tfopt._keras import keras
from tfopt._model import is_qat
from tfopt.errors import ConfigError, DataError, ExportError

__all__ = ["CrashRule", "CRASH_PRONE", "crash_prone_layers", "convert_in_child"]


@dataclass(frozen=True)
class CrashRule:
    """Conversions the converter may crash on: a model holding one of ``layers`` converted with one of
    ``quantizations``.

    Attributes:
        layers: Tuple of layer classes (a wrapper whose ``.layer`` is one counts too).
        quantizations: Tuple of quantization names (as ``to_tflite`` takes them; a QAT model converts as "int8").
        why: String, what was measured, for the error message.
        works: Tuple of the quantizations measured to convert such a model (named in the error message).
    """

    layers: tuple
    quantizations: tuple
    why: str
    works: tuple = ()


CRASH_PRONE = (
    CrashRule((keras.layers.RNN, keras.layers.Bidirectional), ("int8", "int16x8"),
              "the TFLite converter (TF 2.21) segfaults calibrating GRU and SimpleRNN layers",
              works=("dynamic", "float16", "int4", "int4_weight_only", None)),
)
_CHILD = "import sys; from tfopt.export._child import main; sys.exit(main(sys.argv[1]))"
_ERRORS = {cls.__name__: cls for cls in (ExportError, ConfigError, DataError)}  # what a child's error comes back as


def _label(layer) -> str:
    inner = getattr(layer, "layer", None)
    kind = type(layer).__name__ if inner is None else f"{type(layer).__name__}({type(inner).__name__})"
    return f"{kind} layer {layer.name!r}"


def _matches(layer, classes) -> bool:
    while layer is not None:
        if isinstance(layer, classes):
            return True
        layer = getattr(layer, "layer", None)  # tfmot wrappers, TimeDistributed
    return False


def _walk(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def crash_prone_layers(model, quantization) -> list:
    """``[(label, rule)]`` for each layer of ``model`` (nested models included) that a :data:`CRASH_PRONE`
    rule names for ``quantization``; empty when the conversion is not known to crash.

    Args:
        model: tf_keras model.
        quantization: String or None, the quantization the model converts with.

    >>> inp = keras.Input((4, 3))
    >>> [label for label, _ in crash_prone_layers(keras.Model(inp, keras.layers.GRU(2, name="gru")(inp)), "int8")]
    ["GRU layer 'gru'"]
    """
    found = []
    for rule in CRASH_PRONE:
        if quantization in rule.quantizations:
            found += [(_label(layer), rule) for layer in _walk(model) if _matches(layer, rule.layers)]
    return found


def _named(q) -> str:
    return "None (float32)" if q is None else repr(q)


def _alternatives(hazards, quantization, quantizations) -> str:
    """The quantizations to name instead: those every hazard's rule measured to work (all others when none)."""
    ok = [_named(q) for q in sorted(quantizations, key=lambda q: q is None)  # float32 last: it gives up the most
          if q != quantization and all(q in rule.works for _, rule in hazards)]
    return ", ".join(ok[:-1]) + f" or {ok[-1]}" if len(ok) > 1 else "".join(ok)


def _save_model(model, folder: Path) -> str:
    """Save ``model`` into ``folder``; a QAT model as HDF5 (tfmot's QuantizeLayer loads back only from it)."""
    if is_qat(model):
        (folder / "model.h5").write_bytes(h5_bytes(lambda f: model.save(f, include_optimizer=False)))
        return "model.h5"
    model.save(folder / "model.keras")
    return "model.keras"


def one_line(err) -> str:
    """An error's text on one line, at most 300 characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"


def convert_in_child(model, options: dict, samples, hazards, quantization, quantizations) -> tuple[bytes, list]:
    """Convert ``model`` with ``to_tflite(model, **options)`` in a child process; ``(content, notes)``.

    Args:
        model: tf_keras model (savable as ``.keras``, or ``.h5`` when quantization-aware).
        options: Dict of ``to_tflite`` keyword arguments (quantization, io_dtype, num_samples, sparse).
        samples: List of ``[x]`` calibration samples, or None.
        hazards: ``crash_prone_layers(model, quantization)``, named when the child crashes.
        quantization: String or None, the quantization the model converts with (QAT: "int8").
        quantizations: Sequence of every quantization ``to_tflite`` offers, for the alternatives named.

    Raises:
        ExportError: the child died of a signal (naming the layers and the quantizations that work), the model
            could not be saved for it, or its conversion failed (its own error, re-raised here).
        KeyboardInterrupt: Ctrl-C (SIGINT) reached this process or stopped the child.
    """
    import tfopt

    folder = Path(tempfile.mkdtemp(prefix="tfopt-convert-"))
    try:
        try:
            model_file = _save_model(model, folder)
        except Exception as err:  # noqa: BLE001 - Keras raises many types for what it cannot save
            raise ExportError(
                f"this conversion (quantization={quantization!r}) runs in a child process, which needs the model "
                f"saved, and saving it failed ({type(err).__name__}: {one_line(err)}); make it "
                f"savable as .keras, or convert with quantization={_alternatives(hazards, quantization, quantizations)}"
            ) from err
        if samples is not None:
            np.savez(folder / "samples.npz", **{f"s{i}_{j}": x for i, item in enumerate(samples)
                                                for j, x in enumerate(item)})
        write_json(folder / "job.json", {
            "model": model_file, "options": options,
            "samples": None if samples is None else [len(item) for item in samples],
            "sys_path": [p for p in sys.path if p]})
        root = str(Path(tfopt.__file__).resolve().parent.parent)
        env = dict(os.environ, TMPDIR=str(folder),  # whatever the child writes in temp goes with the folder
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        with open(folder / "stderr.txt", "wb") as stderr:
            proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            try:
                code = proc.wait()
            finally:
                if proc.poll() is None:  # Ctrl-C (or any error) here: the child goes too
                    proc.kill()
                    proc.wait()
        return _outcome(folder, code, hazards, quantization, quantizations)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _outcome(folder: Path, code: int, hazards, quantization, quantizations) -> tuple[bytes, list]:
    if code == 0 and (folder / "result.tflite").is_file():
        notes = json.loads((folder / "result.json").read_text())["notes"]
        why = f" ({', '.join(dict.fromkeys(label for label, _ in hazards))} with quantization={quantization!r} can " \
              "crash the converter)" if hazards else ""
        return (folder / "result.tflite").read_bytes(), [*notes, f"converted in a child process{why}"]
    if code == -signal.SIGINT:
        raise KeyboardInterrupt("interrupted during TFLite conversion")
    if code < 0:
        name = _signal_name(-code)
        layers = "; ".join(dict.fromkeys(label for label, _ in hazards))
        why = "; ".join(dict.fromkeys(rule.why for _, rule in hazards))
        cause = f" on the model's {layers} ({why})" if hazards else ""
        raise ExportError(
            f"TFLite conversion with quantization={quantization!r} crashed the converter (the child process "
            f"converting it died of {name}){cause}; convert with quantization="
            f"{_alternatives(hazards, quantization, quantizations)} instead (this process was not harmed)")
    if (folder / "error.json").is_file():
        error = json.loads((folder / "error.json").read_text())
        if error.get("loading"):
            raise ExportError(
                f"this conversion (quantization={quantization!r}) runs in a child process, which could not load "
                f"the model saved for it ({error['message']}); register its custom classes "
                "(keras.saving.register_keras_serializable) in a module the child can import, or convert with "
                f"quantization={_alternatives(hazards, quantization, quantizations)}")
        raise _ERRORS.get(error["type"], ExportError)(error["message"])
    raise ExportError(f"TFLite conversion in a child process failed (exit code {code}): "
                      f"{_last_line(folder / 'stderr.txt')}")
