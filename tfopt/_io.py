"""Atomic file output: everything tfopt writes goes to a temporary name first and is renamed into place,
so a killed process never leaves a truncated file that a later run would trust.

A write that fails because the disk is full, a quota is reached, or the folder is read-only or not
writable raises :class:`tfopt.errors.WriteError` naming the file (:func:`as_write_error` makes one from
the OSError, or from the TensorFlow or h5py error that carries the errno only in its text).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "atomic_path", "h5_bytes",
           "write_fault", "as_write_error", "remove_partial_files", "TEMP_MARK"]

TEMP_MARK = ".tmp-"  # in the name of every temporary file atomic_path makes: ".<name>.tmp-<random><suffix>"

# errno -> what it means for the file being written, and what lets the same command go on
_WRITE_FAULTS = {
    errno.ENOSPC: ("no space left on the device", "free some space"),
    errno.EDQUOT: ("disk quota exceeded", "free some space"),
    errno.EROFS: ("read-only file system", "make it writable"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
}


@contextlib.contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    A full disk, a read-only folder or a missing permission raises :class:`tfopt.errors.WriteError`
    naming ``path`` (the temporary file is removed first).

    Args:
        path: String or Path, the file to write.
        suffix: String or None, the temporary file's suffix (e.g. ``".keras"`` where a writer picks its format
            by the name); default ``<path's suffix>.tmp``.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with atomic_path(Path(folder) / "out.txt") as tmp:
    ...         _ = Path(tmp).write_text("ok")
    ...     print((Path(folder) / "out.txt").read_text(), sorted(p.name for p in Path(folder).iterdir()))
    ok ['out.txt']
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}",
                                   suffix=suffix or path.suffix + ".tmp")
        os.close(fd)
    except OSError as err:
        raise as_write_error(err, path) or err
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode a plain open() would
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        fault = as_write_error(err, path) if isinstance(err, Exception) else None
        if fault is None:
            raise
        raise fault from err


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


def h5_bytes(write) -> bytes:
    """The bytes of an HDF5 file made in memory by ``write(h5py.File)``.

    Write them with :func:`atomic_write_bytes`: a full disk then fails a plain write (a clean OSError)
    instead of failing inside HDF5, whose files left half-written can crash the process when closed.

    Args:
        write: Callable taking an open, writable ``h5py.File``.

    >>> data = h5_bytes(lambda f: f.create_dataset("x", data=[1, 2, 3]))
    >>> data[:4]
    b'\\x89HDF'
    """
    import h5py

    f = h5py.File(f"tfopt-{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
    try:
        write(f)
        f.flush()
        return f.id.get_file_image()
    finally:
        f.close()


def write_fault(err: BaseException) -> int | None:
    """The errno of ``err`` when it is a full disk, a reached quota, a read-only file system or a missing
    permission (also when TensorFlow or h5py carry the errno only in their message); else None.

    >>> write_fault(OSError(errno.ENOSPC, "No space left on device")) == errno.ENOSPC
    True
    >>> write_fault(ValueError("No space left on device")) is None
    True
    """
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno if err.errno in _WRITE_FAULTS else None
    text = str(err)
    found = re.search(r"errno = (\d+)", text)  # h5py: "... file write failed: ..., errno = 28, ..."
    if found and int(found.group(1)) in _WRITE_FAULTS and isinstance(err, (OSError, RuntimeError)):
        return int(found.group(1))
    if type(err).__module__.startswith("tensorflow"):  # e.g. ResourceExhaustedError "...; No space left on device"
        for code in _WRITE_FAULTS:
            if os.strerror(code) in text:
                return code
    return None


def _path_in_message(err: BaseException) -> str | None:
    text = str(err)
    found = re.search(r"filename = '([^']+)'", text)  # h5py
    if found:
        return found.group(1)
    for code in _WRITE_FAULTS:  # TensorFlow: "{{function_node ...}} <path>; No space left on device"
        found = re.search(r"(\S+); " + re.escape(os.strerror(code)), text)
        if found:
            return found.group(1)
    return None


def _shown_path(path: str) -> str:
    """A temporary file's name as the file it was to become (``.x.h5.tmp-ab12.h5`` -> ``x.h5``)."""
    p = Path(path)
    if p.name.startswith(".") and TEMP_MARK in p.name:
        return str(p.with_name(p.name[1:p.name.index(TEMP_MARK)]))
    if "_temp/" in path:  # TensorFlow's checkpoint writers: "<prefix>_temp/part-..."
        return path[:path.index("_temp/")]
    return path


def as_write_error(err: BaseException, path=None, near=None, writing: bool = True):
    """A :class:`tfopt.errors.WriteError` for ``err`` when :func:`write_fault` finds one (else None).

    Args:
        err: The exception raised while writing.
        path: String or Path, the file being written, when known.
        near: String or Path, what to name when neither ``path`` nor the error itself (its ``filename``, or
            a file named in its message) says which file it was, e.g. the stage folder.
        writing: Boolean, whether ``path`` was being written; False when it may have been read (a missing
            permission then says "cannot use" and "check its permissions").

    >>> err = as_write_error(OSError(errno.EROFS, "Read-only file system"), "/runs/x/manifest.json")
    >>> str(err).split(";")[0], err.errno == errno.EROFS
    ("cannot write '/runs/x/manifest.json': read-only file system (EROFS)", True)
    """
    from tfopt.errors import WriteError

    if isinstance(err, WriteError):
        return err
    code = write_fault(err)
    if code is None:
        return None
    reason, remedy = _WRITE_FAULTS[code]
    writing = writing or code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # only ever met writing
    remedy = remedy if writing else "check its permissions"
    named = getattr(err, "filename", None) if isinstance(err, OSError) else None
    shown = _shown_path(str(path or named or _path_in_message(err) or near or ""))
    what = f"cannot {'write' if writing else 'use'} {repr(shown) if shown else 'a file'}"
    fault = WriteError(f"{what}: {reason} ({errno.errorcode.get(code, code)}); {remedy} and run the same command "
                       "again (a run directory resumes where it stopped)")
    fault.errno, fault.strerror, fault.filename = code, os.strerror(code), shown or None
    return fault


def remove_partial_files(directory, recursive: bool = True) -> list:
    """Delete what a killed writer can leave in ``directory``: :func:`atomic_path`'s temporary files and
    TensorFlow's checkpoint temporaries (``*_temp`` folders, ``*.tempstate*`` files). Returns what went.

    Only for a directory no other process writes in (a run directory under its lock).

    Args:
        directory: String or Path.
        recursive: Boolean, also look in every sub-folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in list(directory.rglob("*") if recursive else directory.iterdir()):
        name = entry.name
        ours = name.startswith(".") and (TEMP_MARK in name or name.endswith(".tmp"))
        tf_temp = ".tempstate" in name or (entry.is_dir() and name.endswith("_temp")
                                            and all(p.name.startswith("part-") for p in entry.iterdir()))
        if not (ours or tf_temp) or entry.is_symlink() or not entry.exists():
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(entry)
    return removed


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
