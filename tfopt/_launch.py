"""What the ``tfopt`` command needs before anything heavy is imported: Ctrl-C while TensorFlow is still
loading (``import tfopt`` takes seconds) ends the command with one line and exit code 130, as it does later.

``tfopt/__init__.py`` calls :func:`install` first. It changes nothing unless this process is the ``tfopt``
command (the console script, ``python -m tfopt`` or ``python -m tfopt.cli``): a program that imports tfopt keeps
Python's own handling of Ctrl-C.
"""

from __future__ import annotations

import os
import sys

__all__ = ["INTERRUPTED", "EXIT_INTERRUPTED", "launched_as_cli", "install"]

INTERRUPTED = "tfopt: interrupted; run the same command again to resume where a run directory allows"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C


def launched_as_cli(argv=None) -> bool:
    """True when the process was started as the ``tfopt`` command.

    Args:
        argv: List of strings, the interpreter's command line (default ``sys.orig_argv``).

    >>> launched_as_cli(["python", "-m", "tfopt.cli", "run", "r.yaml"]), launched_as_cli(["python", "x.py"])
    (True, False)
    >>> launched_as_cli(["python", "-m", "tfopt", "run", "r.yaml"])
    True
    """
    args = iter(list(sys.orig_argv if argv is None else argv)[1:])
    for arg in args:  # the interpreter's options come first, then -m MODULE, -c CODE or the script
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            next(args, None)
        elif arg == "-m":
            return next(args, None) in ("tfopt", "tfopt.cli")
        elif arg == "-c" or arg == "-" or not arg.startswith("-"):
            return os.path.basename(arg) == "tfopt"
    return False


def _excepthook(previous):
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):  # before cli.main's own handler could take it
            print(INTERRUPTED, file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(EXIT_INTERRUPTED)
        previous(exc_type, exc, tb)

    return hook


def install() -> None:
    """In the ``tfopt`` command only: an uncaught Ctrl-C prints :data:`INTERRUPTED` and exits with 130."""
    if launched_as_cli() and not getattr(sys.excepthook, "_tfopt", False):
        sys.excepthook = _excepthook(sys.excepthook)
        sys.excepthook._tfopt = True
