"""Progress output: Keras's verbosity for where stdout goes, and one line per pipeline stage."""

from __future__ import annotations

import contextlib
import sys
import time

from tfopt.errors import check_choice

__all__ = ["Stages", "keras_verbose"]

VERBOSE_CHOICES = ("auto", 0, 1, 2)


def keras_verbose(verbose="auto", stream=None) -> int:
    """The ``verbose`` to give Keras's ``fit``: "auto" is 1 (progress bar) only where a person watches.

    tf_keras's own "auto" always means 1, so a redirected run (CI, nohup, ``> log``) fills its log with
    thousands of carriage-return updates. Here "auto" is 1 when ``stream`` (default ``sys.stdout``, where
    Keras prints) is a terminal or a Jupyter kernel's output, else 2: one line per epoch.

    Args:
        verbose: "auto", 0 (silent), 1 (progress bar) or 2 (one line per epoch).
        stream: The stream Keras prints to; default ``sys.stdout``.

    Returns:
        0, 1 or 2.

    Raises:
        ConfigError: ``verbose`` is none of "auto", 0, 1, 2.

    >>> import io
    >>> keras_verbose("auto", stream=io.StringIO()), keras_verbose(1, stream=io.StringIO())
    (2, 1)
    """
    check_choice("verbose", verbose, VERBOSE_CHOICES)
    if verbose != "auto":
        return int(verbose)
    stream = sys.stdout if stream is None else stream
    try:
        terminal = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        terminal = False
    notebook = type(stream).__module__.startswith("ipykernel")  # renders '\r' updates in place
    return 1 if terminal or notebook else 2


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
