"""Run every benchmark figure and write ``benchmarks/results.json`` and ``BENCHMARKS.md``.

``python -m benchmarks.run_all [--quick] [--only NAME ...] [--out DIR] [--seed 0]`` (``make bench``).
Figures run in one process, so trained baselines are shared (the CNN is trained once). A failing figure
is recorded with its traceback and the others still run; the exit code is 1 when any figure failed.

>>> python -m benchmarks.run_all --quick --only compression latency  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import time

from benchmarks import common

__all__ = ["FIGURES", "run_all", "main"]

# figure name -> module under benchmarks/ with a ``run(settings) -> figure dict``
FIGURES = ("compression", "latency", "structured", "training_overhead", "input_pipeline", "distillation", "search",
           "constrained_search", "int4_qat")


def run_all(names, settings: common.Settings, out=None) -> dict:
    """Run the named figures in order and save them; returns the saved results."""
    figures = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        figures[name] = common.run_figure(name, module.run, settings)
    return common.save(figures, out, settings)


def main(argv=None) -> int:
    """Command-line entry point; returns the exit code."""
    p = common.parser("Run tfopt's benchmark figures (each a ratio measured side by side in one run).")
    p.add_argument("--only", nargs="+", choices=FIGURES, metavar="NAME",
                   help=f"run only these figures: {', '.join(FIGURES)}")
    args = p.parse_args(argv)
    settings = common.Settings(quick=args.quick, seed=args.seed)
    start = time.perf_counter()
    results = run_all(args.only or FIGURES, settings, args.out)
    failed = [n for n in (args.only or FIGURES) if results["figures"][n].get("error")]
    where = args.out or "benchmarks/results.json and BENCHMARKS.md"
    print(f"[bench] done in {time.perf_counter() - start:.0f} s; written to {where}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
