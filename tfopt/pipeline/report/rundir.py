"""A run directory's own files read back as untrusted input.

``manifest.json`` and ``results.json`` may have been edited or damaged: each is checked for the shape tfopt
writes (a one-line ConfigError naming the file and the entry otherwise), every path in them must stay
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

__all__ = ["MANIFEST", "RESULTS", "read_manifest", "read_results", "check_paths", "refuse_links_out", "model_damage"]

MANIFEST = "manifest.json"
RESULTS = "results.json"

# the variant-table columns the report formats as numbers
_NUMBER_COLUMNS = ("accuracy", "params", "flops", "bytes", "gzip_bytes", "latency_us_p50", "latency_us_p90", "gzip_x_smaller",
                   "speedup_p50", "accuracy_delta", "test_accuracy", "test_n", "val_accuracy", "test_delta", "mcnemar_p")
# ... and the intervals ([low, high]) and the test confusion matrix it formats
_INTERVAL_COLUMNS = ("accuracy_ci95", "test_accuracy_ci95", "val_accuracy_ci95", "test_delta_ci95")


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
    raise ConfigError(f"{name} of the run directory {str(run_dir)!r} is damaged: {why}")


def _stage_shape(entry, where: str) -> None:
    if not isinstance(entry, dict):
        raise _Shape(f"{where[:-1]} is {_kind(entry)}, not an object")
    for key in ("name", "type"):
        _get(entry, key, "string", where)
    for key in ("dir", "status"):
        _get(entry, key, "string", where, optional=True)
    _get(entry, "seconds", "number", where, optional=True)
    outputs = _get(entry, "outputs", "object", where, optional=True) or {}
    metrics = _get(entry, "metrics", "object", where, optional=True) or {}
    for key in ("model", "history"):
        _get(outputs, key, "string", f"{where}outputs.", optional=True)
    _get(outputs, "data", "object", f"{where}outputs.", optional=True)
    _get(metrics, "baseline", "string", f"{where}metrics.", optional=True)
    _rows(_get(metrics, "variants", "list", f"{where}metrics.", optional=True) or [], f"{where}metrics.variants")


def _rows(rows: list, where: str) -> None:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise _Shape(f"{where}[{i}] is {_kind(row)}, not an object")
        _get(row, "variant", "string", f"{where}[{i}].")
        for key in ("path", "model"):
            _get(row, key, "string", f"{where}[{i}].", optional=True)
        _get(row, "data", "object", f"{where}[{i}].", optional=True)
        for key in _NUMBER_COLUMNS:
            _get(row, key, "number", f"{where}[{i}].", optional=True)
        for key in _INTERVAL_COLUMNS:
            pair = _get(row, key, "list", f"{where}[{i}].", optional=True)
            if pair is not None and (len(pair) != 2 or not all(_kind(v) in ("an integer", "a number") for v in pair)):
                raise _Shape(f"{where}[{i}].{key} is not a [low, high] pair of numbers")
        confusion = _get(row, "test_confusion", "list", f"{where}[{i}].", optional=True)
        if confusion is not None and not all(isinstance(r, list) and len(r) == len(confusion) and
                                             all(_kind(v) == "an integer" for v in r) for r in confusion):
            raise _Shape(f"{where}[{i}].test_confusion is not a square matrix of counts")


def _shape(content, run_dir: Path, name: str, check) -> None:
    try:
        if not isinstance(content, dict):
            raise _Shape(f"it holds {_kind(content)}, not an object")
        check(content)
    except _Shape as err:
        raise ConfigError(f"{name} of the run directory {str(run_dir)!r} is damaged: {err}") from None


def _manifest_shape(manifest: dict) -> None:
    _get(manifest, "recipe_hash", "string", "")
    _get(_get(manifest, "recipe", "object", ""), "name", "string", "recipe.")
    _get(manifest, "seed", "integer", "")
    for key in ("data", "versions"):
        _get(manifest, key, "object", "", optional=True)
    for i, entry in enumerate(_get(manifest, "stages", "list", "")):
        _stage_shape(entry, f"stages[{i}].")
        for key in ("dir", "status"):
            _get(entry, key, "string", f"stages[{i}].")
        _get(entry, "seed", "integer", f"stages[{i}].")
        for key in ("outputs", "metrics"):
            _get(entry, key, "object", f"stages[{i}].")


def _results_shape(results: dict) -> None:
    for key in ("recipe", "recipe_hash"):
        _get(results, key, "string", "")
    _get(results, "seed", "integer", "")
    _get(results, "baseline", "string", "", optional=True)
    _get(results, "seconds", "number", "", optional=True)
    for key in ("data", "versions"):
        _get(results, key, "object", "", optional=True)
    for i, entry in enumerate(_get(results, "stages", "list", "")):
        _stage_shape(entry, f"stages[{i}].")
    _rows(_get(results, "variants", "list", ""), "variants")


def check_paths(content: dict, run_dir, name: str) -> None:
    """ConfigError unless every path in a (shape-checked) manifest or results dict stays inside ``run_dir``.

    The paths: each stage's ``dir`` (a folder directly inside ``run_dir``), ``outputs.model``,
    ``outputs.history`` and ``metrics.variants[].path``, and the results' ``variants[].path``.

    Args:
        content: Dict, a manifest or results as :func:`read_manifest` / :func:`read_results` return them.
        run_dir: String or Path of the run directory.
        name: String, the file's name for the message (``"manifest.json"``).

    >>> check_paths({"stages": [{"dir": "../../victim"}]}, "/tmp/run", "manifest.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tfopt.errors.ConfigError: manifest.json stages[0].dir='../../victim' leads outside the run directory ...
    """
    for i, entry in enumerate(content.get("stages") or []):
        where = f"{name} stages[{i}]."
        dirname = entry.get("dir")
        if dirname is not None:
            path_inside(run_dir, dirname, f"{where}dir")
            if Path(dirname).name != dirname or dirname in (".", ".."):
                raise ConfigError(f"{where}dir={dirname!r} is not a folder directly inside the run directory "
                                  f"{str(run_dir)!r}; refused")
        outputs = entry.get("outputs") or {}
        for key in ("model", "history"):
            if outputs.get(key) is not None:
                path_inside(run_dir, outputs[key], f"{where}outputs.{key}")
        for j, row in enumerate((entry.get("metrics") or {}).get("variants") or []):
            if row.get("path") is not None:
                path_inside(run_dir, row["path"], f"{where}metrics.variants[{j}].path")
    for j, row in enumerate(content.get("variants") or []):
        if row.get("path") is not None:
            path_inside(run_dir, row["path"], f"{name} variants[{j}].path")


def _read_checked(run_dir, name: str, shape, paths: bool) -> dict:
    """``run_dir/name`` parsed, its shape checked against ``shape`` and (``paths``) every path in it inside."""
    run_dir = Path(run_dir)
    content = _load(run_dir, name)
    _shape(content, run_dir, name, shape)
    if paths:
        check_paths(content, run_dir, name)
    return content


def read_manifest(run_dir, paths: bool = True) -> dict:
    """``run_dir/manifest.json``, checked: its shape, and (``paths``) every path in it inside ``run_dir``.

    Args:
        run_dir: String or Path of a run directory.
        paths: Boolean, also check the paths (:func:`check_paths`).

    Returns:
        Dict, the manifest.

    Raises:
        ConfigError: the file is not JSON, or not shaped as tfopt writes it (the entry is named), or a path
            in it leads outside ``run_dir``.

    >>> manifest = read_manifest("runs/mnist_cnn")  # doctest: +SKIP
    """
    return _read_checked(run_dir, MANIFEST, _manifest_shape, paths)


def read_results(run_dir, paths: bool = True) -> dict:
    """``run_dir/results.json``, checked like :func:`read_manifest` (shape, numbers, paths inside ``run_dir``).

    Args:
        run_dir: String or Path of a run directory.
        paths: Boolean, also check the paths (:func:`check_paths`).

    Returns:
        Dict, the results.

    Raises:
        ConfigError: the file is not JSON, or not shaped as tfopt writes it, or a path in it leads outside.

    >>> results = read_results("runs/mnist_cnn")  # doctest: +SKIP
    """
    return _read_checked(run_dir, RESULTS, _results_shape, paths)


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
