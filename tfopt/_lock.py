"""A lock on a run directory, so two tfopt processes never write into the same run at once.

It is an ``flock`` on ``RUN_DIR/.lock``: the operating system releases it when the holder exits, even on
SIGKILL, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from tfopt.errors import ConfigError

__all__ = ["RunLock"]


class RunLock:
    """Context manager holding an exclusive, non-blocking lock on a directory.

    A second lock on the same directory, from this process or another, is refused:

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as run_dir, RunLock(run_dir):
    ...     RunLock(run_dir).__enter__()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tfopt.errors.ConfigError: run directory ... is in use by another tfopt run (pid ...); wait for it to finish ...
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        self._fd = None

    def __enter__(self) -> "RunLock":
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"run directory {str(self.run_dir)!r} is not writable: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                f"run directory {str(self.run_dir)!r} is in use by another tfopt run (pid {holder}); "
                "wait for it to finish or choose another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
