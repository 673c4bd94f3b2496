"""One progress line per pipeline stage, printed above Keras's own progress bars."""

from __future__ import annotations

import contextlib
import sys
import time

__all__ = ["Stages"]


class Stages:
    """Counts stages and prints ``[2/5] prune: ... (12.3 s)`` lines to stderr.

    >>> stages = Stages(2, stream=sys.stdout)
    >>> with stages("data") as note:
    ...     note("ready")  # doctest: +ELLIPSIS
    [1/2] data ...
    """

    def __init__(self, total: int, stream=None):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def __call__(self, name: str, what: str = ""):
        self.done += 1
        prefix = f"[{self.done}/{self.total}] {name}"
        self._print(f"{prefix} {what}".rstrip() + " ...")
        notes = []
        start = time.perf_counter()
        yield notes.append
        took = time.perf_counter() - start
        self._print(f"{prefix}: {'; '.join(notes) or 'done'} ({took:.1f} s)")
