"""The child side of :mod:`tfopt.export._guard`: load the saved model and samples, convert, write the result.

Run as ``python -c "...; main(folder)"`` by :func:`tfopt.export._guard.convert_in_child`; it writes
``result.tflite`` and ``result.json`` (notes) into the folder, or ``error.json`` (the error's type and message).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from tfopt._io import atomic_write_bytes, write_json
from tfopt.errors import TfoptError
from tfopt.export._guard import one_line
from tfopt.export.tflite import calibration, to_tflite
from tfopt.saving import load_model

__all__ = ["main"]


def main(folder) -> int:
    """In the child: convert the job in ``folder`` and write ``result.tflite`` (or ``error.json``); exit code."""
    folder = Path(folder)
    try:
        job = json.loads((folder / "job.json").read_text())
        sys.path.extend(p for p in job["sys_path"] if p not in sys.path)  # the caller's modules (custom objects)
        try:
            model = load_model(folder / job["model"], safe_mode=False, compile=False)  # our own file, just written
        except Exception as err:  # noqa: BLE001 - what Keras could not load back
            cause = err.__cause__ if isinstance(err, TfoptError) and err.__cause__ is not None else err
            write_json(folder / "error.json", {"type": "ExportError", "loading": True,
                                               "message": f"{type(cause).__name__}: {one_line(cause)}"})
            return 1
        rep = None
        if job["samples"] is not None:
            with np.load(folder / "samples.npz") as saved:
                rep = calibration([[saved[f"s{i}_{j}"] for j in range(n)] for i, n in enumerate(job["samples"])])
        tfl = to_tflite(model, representative_data=rep, isolate=False, **job["options"])
        atomic_write_bytes(folder / "result.tflite", tfl.content)
        write_json(folder / "result.json", {"notes": tfl.notes})
        return 0
    except Exception as err:  # noqa: BLE001 - every failure goes back to the caller as one error
        kind = type(err).__name__ if isinstance(err, TfoptError) else "ExportError"
        message = str(err) if isinstance(err, TfoptError) else f"{type(err).__name__}: {one_line(err)}"
        write_json(folder / "error.json", {"type": kind, "message": message})
        return 1
