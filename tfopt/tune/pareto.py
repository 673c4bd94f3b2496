"""The real Pareto front of a multi-objective search, and a PNG plot of it.

keras-tuner's multi-objective search only minimises the sum of the objectives (maximised ones
subtracted); the front here is computed from every trial's recorded metrics: the feasible, completed
trials that no other such trial dominates (at least as good in every objective, better in one).

>>> recs = [{"trial_id": "0", "status": "COMPLETED", "metrics": {"acc": 0.9, "bytes": 100}},
...         {"trial_id": "1", "status": "COMPLETED", "metrics": {"acc": 0.8, "bytes": 200}},
...         {"trial_id": "2", "status": "COMPLETED", "metrics": {"acc": 0.7, "bytes": 50}}]
>>> [r["trial_id"] for r in pareto_front(recs, {"acc": "max", "bytes": "min"})]
['0', '2']
"""

from __future__ import annotations

import math
from pathlib import Path

__all__ = ["dominates", "non_dominated", "pareto_front", "plot_pareto"]


def dominates(a: dict, b: dict, objectives: dict) -> bool:
    """True when metrics ``a`` are at least as good as ``b`` in every objective and better in one.

    Args:
        a: Dict of metric values.
        b: Dict of metric values.
        objectives: Dict ``{name: "min" | "max"}``.

    >>> dominates({"x": 1, "y": 1}, {"x": 2, "y": 1}, {"x": "min", "y": "min"})
    True
    """
    strictly = False
    for name, way in objectives.items():
        va, vb = (a[name], b[name]) if way == "min" else (-a[name], -b[name])
        if va > vb:
            return False
        strictly |= va < vb
    return strictly


def _finite(values: dict, objectives: dict) -> bool:
    return all(isinstance(values.get(name), (int, float)) and math.isfinite(values[name]) for name in objectives)


def non_dominated(items, objectives: dict, values=None) -> list:
    """The items no other item dominates, in their original order; items without a finite value for every
    objective are left out. The one Pareto computation of tfopt: searches' trials and a run's variants.

    Args:
        items: Sequence of items (dicts).
        objectives: Dict ``{name: "min" | "max"}``.
        values: Callable ``item -> dict of metric values`` (default: the item itself).

    >>> rows = [{"v": "a", "gzip_bytes": 10, "accuracy": 0.9}, {"v": "b", "gzip_bytes": 5, "accuracy": 0.8},
    ...         {"v": "c", "gzip_bytes": 20, "accuracy": 0.85}]
    >>> [r["v"] for r in non_dominated(rows, {"gzip_bytes": "min", "accuracy": "max"})]
    ['a', 'b']
    """
    values = values or (lambda item: item)
    cands = [item for item in items if _finite(values(item), objectives)]
    return [r for r in cands if not any(dominates(values(o), values(r), objectives) for o in cands if o is not r)]


def _metrics(record: dict) -> dict:
    return record.get("metrics") or {}


def _candidates(records, objectives: dict) -> list:
    return [r for r in records if r.get("status") == "COMPLETED" and _finite(_metrics(r), objectives)]


def pareto_front(records, objectives: dict) -> list:
    """The non-dominated feasible, completed records (status "COMPLETED"), in their original order.

    Args:
        records: Sequence of trial records (dicts with "status" and "metrics").
        objectives: Dict ``{name: "min" | "max"}``.
    """
    return non_dominated([r for r in records if r.get("status") == "COMPLETED"], objectives, values=_metrics)


def plot_pareto(records, objectives: dict, path) -> Path | None:
    """Save a scatter plot of the trials over the first two objectives, the front highlighted, as PNG.

    Args:
        records: Sequence of trial records.
        objectives: Dict ``{name: "min" | "max"}`` with at least two entries (else nothing is drawn).
        path: Path of the PNG, written atomically.

    Returns:
        The path, or None when there are fewer than two objectives.
    """
    if len(objectives) < 2:
        return None
    from matplotlib.figure import Figure  # not pyplot: a notebook's inline backend stays as it is

    from tfopt._io import atomic_path

    (xn, xd), (yn, yd) = list(objectives.items())[:2]
    cands = _candidates(records, objectives)
    front = pareto_front(records, objectives)
    others = [r for r in records if r.get("status") == "INFEASIBLE" and xn in (r.get("metrics") or {})
              and yn in r["metrics"]]
    fig = Figure(figsize=(6, 4.5), dpi=100)
    ax = fig.subplots()
    ax.scatter([r["metrics"][xn] for r in cands], [r["metrics"][yn] for r in cands], c="tab:blue",
               label="feasible trials")
    if others:
        ax.scatter([r["metrics"][xn] for r in others], [r["metrics"][yn] for r in others], c="tab:gray",
                   marker="x", label="infeasible trials")
    pts = sorted((r["metrics"][xn], r["metrics"][yn], r["trial_id"]) for r in front)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", label="Pareto front")
        for x, y, tid in pts:
            ax.annotate(str(tid), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"{xn} ({xd})")
    ax.set_ylabel(f"{yn} ({yd})")
    ax.set_title("Pareto front" + (f" (first 2 of {len(objectives)} objectives)" if len(objectives) > 2 else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
