"""A run directory's own files read back as untrusted input.

``manifest.json`` and ``results.json`` may have been edited or damaged: each is checked for the shape tfopt
writes (a :class:`DamagedFile` error naming the file and the entry otherwise), every path in them must stay
inside the run directory (:func:`tfopt._io.path_inside`), no symlink in the run directory may lead out of
it, and a finished stage's model file is checked for damage before the stage is trusted.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from tfopt._io import path_inside
from tfopt.errors import ConfigError

__all__ = ["MANIFEST", "RESULTS", "DamagedFile", "read_manifest", "read_results", "refuse_links_out", "model_damage"]

MANIFEST = "manifest.json"
RESULTS = "results.json"

# the variant-table columns the report formats as numbers
_NUMBER_COLUMNS = ("accuracy", "params", "bytes", "gzip_bytes", "latency_us_p50", "latency_us_p90", "gzip_x_smaller",
                   "speedup_p50", "accuracy_delta")


class DamagedFile(ConfigError):
    """A run directory's file is unreadable, or not shaped as tfopt writes it."""


class _Shape(Exception):
    """Where a file's content differs from what tfopt writes (internal)."""


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _get(obj: dict, key: str, want: str, where: str, optional: bool = False):
    """``obj[key]`` checked to be ``want`` ("object", "list", "string", "integer", "number")."""
    value = obj.get(key)
    if value is None:
        if optional:
            return None
        raise _Shape(f"{where}{key} is missing")
    types = {"object": dict, "list": list, "string": str, "integer": int, "number": (int, float)}[want]
    if not isinstance(value, types) or isinstance(value, bool):
        raise _Shape(f"{where}{key} is {_kind(value)}, not {'an' if want[0] in 'aeiou' else 'a'} {want}")
    return value


def _load(run_dir: Path, name: str):
    path = path_inside(run_dir, name, "file")  # a symlink out of the run directory is not read
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        why = f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    except UnicodeDecodeError:
        why = "not UTF-8 text"
    except RecursionError:
        why = "nested too deeply"
    except OSError as err:
        why = f"unreadable ({err.strerror or err})"
    raise DamagedFile(f"{name} of the run directory {str(run_dir)!r} is damaged: {why}")


def _stage(entry, where: str, run_dir: Path, file: str) -> None:
    """Check one stage entry (manifest or results), its paths included."""
    if not isinstance(entry, dict):
        raise _Shape(f"{where[:-1]} is {_kind(entry)}, not an object")
    for key in ("name", "type"):
        _get(entry, key, "string", where)
    _get(entry, "status", "string", where, optional=True)
    _get(entry, "seconds", "number", where, optional=True)
    outputs = _get(entry, "outputs", "object", where, optional=True) or {}
    metrics = _get(entry, "metrics", "object", where, optional=True) or {}
    dirname = _get(entry, "dir", "string", where, optional=True)
    for key in ("model", "history"):
        _get(outputs, key, "string", f"{where}outputs.", optional=True)
    _get(outputs, "data", "object", f"{where}outputs.", optional=True)
    variants = _get(metrics, "variants", "list", f"{where}metrics.", optional=True) or []
    _rows(variants, f"{where}metrics.variants")
    # paths last: a damaged file is reported as such, an escaping path as an escape
    if dirname is not None:
        path_inside(run_dir, dirname, f"{file} {where}dir")
        if os.sep in dirname or (os.altsep and os.altsep in dirname) or dirname in (".", ".."):
            raise ConfigError(f"{file} {where}dir={dirname!r} is not a folder directly inside the run directory "
                              f"{str(run_dir)!r}; refused")
    for key in ("model", "history"):
        if outputs.get(key) is not None:
            path_inside(run_dir, outputs[key], f"{file} {where}outputs.{key}")
    for i, row in enumerate(variants):
        if row.get("path") is not None:
            path_inside(run_dir, row["path"], f"{file} {where}metrics.variants[{i}].path")


def _rows(rows: list, where: str) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _Shape(f"{where}[{i}] is {_kind(row)}, not an object")
        _get(row, "variant", "string", f"{where}[{i}].")
        _get(row, "path", "string", f"{where}[{i}].", optional=True)
        _get(row, "data", "object", f"{where}[{i}].", optional=True)
        for key in _NUMBER_COLUMNS:
            _get(row, key, "number", f"{where}[{i}].", optional=True)


def read_manifest(run_dir) -> dict:
    """``run_dir/manifest.json``, checked: its shape, and every path in it inside ``run_dir``.

    Args:
        run_dir: String or Path of a run directory.

    Returns:
        Dict, the manifest.

    Raises:
        DamagedFile: the file is not JSON, or not shaped as tfopt writes it (the entry is named).
        ConfigError: a path in it (a stage ``dir``, a model or history file, a variant's ``path``) leads
            outside ``run_dir``.

    >>> manifest = read_manifest("runs/mnist_cnn")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    manifest = _load(run_dir, MANIFEST)
    try:
        if not isinstance(manifest, dict):
            raise _Shape(f"it holds {_kind(manifest)}, not an object")
        _get(manifest, "recipe_hash", "string", "")
        _get(_get(manifest, "recipe", "object", ""), "name", "string", "recipe.")
        _get(manifest, "seed", "integer", "")
        _get(manifest, "data", "object", "", optional=True)
        _get(manifest, "versions", "object", "", optional=True)
        stages = _get(manifest, "stages", "list", "")
        for i, entry in enumerate(stages):
            _stage(entry, f"stages[{i}].", run_dir, MANIFEST)
            for key in ("dir", "status"):
                _get(entry, key, "string", f"stages[{i}].")
            _get(entry, "seed", "integer", f"stages[{i}].")
            _get(entry, "outputs", "object", f"stages[{i}].")
            _get(entry, "metrics", "object", f"stages[{i}].")
    except _Shape as err:
        raise DamagedFile(f"{MANIFEST} of the run directory {str(run_dir)!r} is damaged: {err}") from None
    return manifest


def read_results(run_dir) -> dict:
    """``run_dir/results.json``, checked like :func:`read_manifest` (shape, numbers, paths inside ``run_dir``).

    Args:
        run_dir: String or Path of a run directory.

    Returns:
        Dict, the results.

    Raises:
        DamagedFile: the file is not JSON, or not shaped as tfopt writes it.
        ConfigError: a path in it leads outside ``run_dir``.

    >>> results = read_results("runs/mnist_cnn")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    results = _load(run_dir, RESULTS)
    try:
        if not isinstance(results, dict):
            raise _Shape(f"it holds {_kind(results)}, not an object")
        _get(results, "recipe", "string", "")
        _get(results, "recipe_hash", "string", "")
        _get(results, "seed", "integer", "")
        _get(results, "baseline", "string", "", optional=True)
        _get(results, "seconds", "number", "", optional=True)
        _get(results, "data", "object", "", optional=True)
        _get(results, "versions", "object", "", optional=True)
        for i, entry in enumerate(_get(results, "stages", "list", "")):
            _stage(entry, f"stages[{i}].", run_dir, RESULTS)
        variants = _get(results, "variants", "list", "")
        _rows(variants, "variants")
        for i, row in enumerate(variants):
            if row.get("path") is not None:
                path_inside(run_dir, row["path"], f"{RESULTS} variants[{i}].path")
    except _Shape as err:
        raise DamagedFile(f"{RESULTS} of the run directory {str(run_dir)!r} is damaged: {err}") from None
    return results


def refuse_links_out(run_dir) -> None:
    """ConfigError when a symlink anywhere in ``run_dir`` leads outside it (tfopt would write or delete there).

    Args:
        run_dir: String or Path of a run directory (symlinks are not followed while walking it).

    >>> refuse_links_out("runs/mnist_cnn")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for folder, dirs, files in os.walk(run_dir):  # os.walk does not descend into symlinked folders
        for name in dirs + files:
            path = Path(folder) / name
            if path.is_symlink():
                path_inside(run_dir, str(path.relative_to(run_dir)), "symlink")


def model_damage(path) -> str | None:
    """Why the model file tfopt saved at ``path`` is not intact (None when it is), without loading it.

    A ``.keras`` file must be a complete zip archive whose members pass their checksums and hold a
    ``config.json``; a ``.h5`` file must open as HDF5 with a model config and readable datasets.

    Args:
        path: String or Path of a ``model.keras`` or ``model.h5`` written by the pipeline.

    Returns:
        String (the damage) or None.

    >>> model_damage("/nonexistent/model.keras")
    'missing'
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                names = set(archive.namelist())
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as err:
            return f"not a complete zip archive: {err}"
        if bad is not None:
            return f"member {bad!r} fails its checksum"
        return None if "config.json" in names else "no config.json in the archive"
    if path.suffix == ".h5":
        import h5py

        def read(_, obj):
            if isinstance(obj, h5py.Dataset):
                obj[()]

        try:
            with h5py.File(path, "r") as f:
                if "model_config" not in f.attrs:
                    return "no model config in the HDF5 file"
                f.visititems(read)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            return f"not a readable HDF5 file: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return None
