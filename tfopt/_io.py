"""Atomic file output: everything tfopt writes goes to a temporary name first and is renamed into place,
so a killed process never leaves a truncated file that a later run would trust."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "atomic_path"]


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    >>> with atomic_path("/tmp/tfopt_doc.txt") as tmp:
    ...     _ = Path(tmp).write_text("ok")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync, then rename); returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON atomically (NumPy scalars and arrays become plain numbers/lists)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_to_builtin) + "\n")


def read_json(path):
    """Read a JSON file written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _to_builtin(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def path_inside(root, relative, what: str) -> Path:
    """``root / relative`` if it stays inside ``root`` once symlinks are resolved, else ConfigError.

    For every path read from a run directory's own files (manifest, results): an edited file must never
    make tfopt read, write or delete anything outside the run directory (``../x``, ``/abs/x``, or a
    symlink leading out). ``root`` itself is refused too: an entry names something inside it.

    Args:
        root: String or Path, the directory the path must stay in.
        relative: String, the path as the file gives it (relative to ``root``).
        what: String naming the entry in the message, e.g. ``"manifest.json stages[0].dir"``.

    Returns:
        Path, ``root / relative`` (not resolved).

    >>> path_inside("/tmp/run", "01_train/model.keras", "model").name
    'model.keras'
    >>> path_inside("/tmp/run", "../victim", "manifest.json stages[0].dir")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tfopt.errors.ConfigError: manifest.json stages[0].dir='../victim' leads outside the run directory '/tmp/run' ...
    """
    from tfopt.errors import ConfigError

    if not isinstance(relative, str) or not relative.strip() or "\x00" in relative:
        raise ConfigError(f"{what}={relative!r} in the run directory {str(root)!r} is not a path inside it")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target == base:
        raise ConfigError(f"{what}={relative!r} names the run directory {str(root)!r} itself, not a path inside it")
    if not target.is_relative_to(base):
        raise ConfigError(f"{what}={relative!r} leads outside the run directory {str(root)!r} (to {str(target)!r}); "
                          "refused: tfopt reads and deletes only inside a run directory")
    return Path(root) / relative
