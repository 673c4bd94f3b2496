"""A testing hook: kill the process with SIGKILL at a named point, to test kill-and-resume without races.

Off by default. When the environment variable ``TFOPT_FAULT`` names a point, the process kills itself
(``SIGKILL``: no cleanup, no ``finally``, exactly like ``kill -9`` or the OOM killer) the moment it reaches
that point. Several points may be given, separated by commas. The points:

* ``stage:<name>:before`` - a pipeline stage is about to start (the earlier stages are finished);
* ``stage:<name>:after`` - a stage's work and model file are done, its manifest entry is not yet "done";
* ``epoch:<n>:batch:<k>`` - a ``tfopt.train.fit`` run with a run directory starts batch ``k`` of epoch
  ``n`` (both 0-based, as in ``history.csv``);
* ``<function>:epoch:<n>:batch:<k>`` - a compression's fine-tuning (``prune``, ``cluster``, ``quantize_aware``,
  ``distill``, ``prune_channels``, ``factorize``: ``tfopt.compress._fit.compression_fit``) starts that batch;
* ``export:<variant>`` - the export stage converted ``<variant>`` and is about to write its file;
* ``calibrate:<k>`` - a TFLite conversion is calibrating and hands sample ``k`` (0-based) to the converter;
* ``trial:<k>:end`` - ``tfopt tune`` finished its ``k``-th trial in this process (state saved).

``TFOPT_FAULT_SIGNAL=STOP`` sends SIGSTOP instead: the process freezes at the point (holding its run
directory lock, say) until the test sends SIGCONT or SIGKILL (or changes the disk under it).
``TFOPT_FAULT_SIGNAL=INT`` sends SIGINT, what Ctrl-C sends. Never set these outside tests.

>>> reached("stage:train:before")  # TFOPT_FAULT unset: nothing happens
False
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENV", "SIGNALS", "reached", "armed"]

ENV = "TFOPT_FAULT"
SIGNALS = {"KILL": signal.SIGKILL, "STOP": signal.SIGSTOP, "INT": signal.SIGINT}


def armed() -> bool:
    """True when ``TFOPT_FAULT`` names any point (callers may skip adding hooks otherwise)."""
    return bool(os.environ.get(ENV, "").strip())


def reached(point: str) -> bool:
    """Kill (or stop) this process if ``TFOPT_FAULT`` names ``point``; else return False.

    Args:
        point: String, the point reached, e.g. ``"stage:prune:before"``.
    """
    wanted = {p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip()}
    if point in wanted:
        sig = SIGNALS.get(os.environ.get(ENV + "_SIGNAL", "KILL").upper(), signal.SIGKILL)
        os.kill(os.getpid(), sig)
        return True  # only after SIGSTOP and SIGCONT, or a SIGINT that raised nothing
    return False
