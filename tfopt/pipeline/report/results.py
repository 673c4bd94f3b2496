"""``results.json``: every number of a run, gathered from its manifest, with each variant's ratios to the baseline."""

from __future__ import annotations

import platform
from pathlib import Path

from tfopt._io import path_inside
from tfopt.errors import ConfigError

__all__ = ["collect_results", "with_ratios", "versions", "fill_comparisons"]


def versions() -> dict:
    """Versions of Python and the libraries that made the numbers, and the machine."""
    import tensorflow_model_optimization as tfmot

    from tfopt import __version__
    from tfopt._keras import keras, tf

    out = {"tfopt": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
           "tf_keras": keras.__version__, "tfmot": tfmot.__version__, "machine": platform.machine(),
           "processor": platform.processor()}
    try:
        from importlib import metadata

        out["ai_edge_litert"] = metadata.version("ai-edge-litert")
    except Exception:  # not installed: the report simply omits it
        pass
    return out


def with_ratios(rows: list, baseline: str | None) -> list:
    """Copy of ``rows`` with ``gzip_x_smaller``, ``speedup_p50`` and ``accuracy_delta`` against ``baseline``
    (``accuracy_delta`` None for a row measured on another data section than the baseline: another task).

    >>> rows = [{"variant": "a", "gzip_bytes": 100, "latency_us_p50": 10.0, "accuracy": 0.9},
    ...         {"variant": "b", "gzip_bytes": 25, "latency_us_p50": 5.0, "accuracy": 0.88}]
    >>> [(r["gzip_x_smaller"], r["speedup_p50"], round(r["accuracy_delta"], 2)) for r in with_ratios(rows, "a")]
    [(1.0, 1.0, 0.0), (4.0, 2.0, -0.02)]
    """
    from tfopt.export.evaluate import baseline_row

    if not rows:
        return []
    base = baseline_row(rows, baseline)
    out = []
    for r in rows:
        r = dict(r)
        r["gzip_x_smaller"] = base["gzip_bytes"] / r["gzip_bytes"] if r.get("gzip_bytes") else None
        if r.get("latency_us_p50") and base.get("latency_us_p50"):
            r["speedup_p50"] = base["latency_us_p50"] / r["latency_us_p50"]
        else:
            r["speedup_p50"] = None
        same_data = r.get("data") == base.get("data")
        r["accuracy_delta"] = (r["accuracy"] - base["accuracy"] if "accuracy" in r and "accuracy" in base and same_data
                               else None)
        out.append(r)
    return out


def collect_results(manifest: dict) -> dict:
    """The run's results from its manifest: per-stage metrics and the measured variants."""
    stages, variants, baseline = [], [], None
    for entry in manifest["stages"]:
        stages.append({k: entry.get(k) for k in ("name", "type", "dir", "status", "seconds", "seed", "metrics",
                                                 "outputs")})
        metrics = entry.get("metrics") or {}
        if entry["type"] == "export" and entry.get("status") == "done":
            baseline = baseline or metrics.get("baseline")
        if entry["type"] == "evaluate" and entry.get("status") == "done":
            known = {r["variant"] for r in variants}
            variants += [r for r in metrics.get("variants", []) if r["variant"] not in known]
    return {
        "recipe": manifest["recipe"]["name"],
        "recipe_hash": manifest["recipe_hash"],
        "source": manifest.get("source"),
        "seed": manifest["seed"],
        "data": manifest.get("data"),
        "stages": stages,
        "baseline": baseline,
        "variants": with_ratios(variants, baseline),
        "seconds": sum(s.get("seconds") or 0 for s in stages),
        "versions": manifest.get("versions") or versions(),
    }


def fill_comparisons(results: dict, run_dir) -> str | None:
    """Recompute the paired test comparisons a variant of ``results`` lacks from its evaluate stage's
    ``predictions.json`` (in place). Returns None, or the one line saying why a predictions file could not
    be used (damaged); nothing is raised for it.

    Args:
        results: Dict, a run's results (shape-checked).
        run_dir: String or Path, the run directory.
    """
    from tfopt.export.evaluate import PREDICTIONS, compare_with_baseline, read_predictions

    missing = [r for r in results.get("variants") or [] if r.get("test_n") is not None and r.get("test_delta") is None]
    if not missing or not results.get("baseline"):
        return None
    for stage in reversed(results.get("stages") or []):
        if stage.get("type") != "evaluate" or stage.get("status") != "done" or not stage.get("dir"):
            continue
        rel = f"{stage['dir']}/{PREDICTIONS}"
        path = path_inside(Path(run_dir), rel, f"stage {stage.get('name')!r} predictions")
        if not path.is_file():
            continue
        try:
            outcomes = read_predictions(path)
        except ConfigError as err:
            return f"{err}; the paired comparisons it holds are left out"
        compared = compare_with_baseline(outcomes, results["baseline"])
        for row in missing:
            row.update(compared.get(row["variant"], {}))
        missing = [r for r in missing if r.get("test_delta") is None]
        if not missing:
            break
    return None
