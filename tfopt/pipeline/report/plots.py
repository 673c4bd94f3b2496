"""The report's figures (matplotlib Figures drawn off-screen; pyplot's backend is never changed): training curves, accuracy against gzip size, per-layer sparsity."""

from __future__ import annotations

import csv
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tfopt._io import atomic_path
from tfopt.tune.pareto import non_dominated

SIZE_ACCURACY = {"gzip_bytes": "min", "accuracy": "max"}

__all__ = ["read_history", "plot_curves", "plot_pareto", "plot_layers", "front_variants", "SIZE_ACCURACY"]


def read_history(path) -> dict:
    """A ``history.csv`` (Keras CSVLogger) as ``{column: [floats]}``; epochs renumbered 1..n."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict = {}
    for row in rows:
        for key, value in row.items():
            if key == "epoch" or value in (None, ""):
                continue
            try:
                out.setdefault(key, []).append(float(value))
            except ValueError:
                continue
    return out


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def _subplots(*args, figsize=None):
    """A figure and its axes without pyplot, so the caller's (e.g. a notebook's) backend is left alone."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args)


def plot_curves(histories: dict, path: Path) -> Path | None:
    """Loss and accuracy per epoch of each stage (``{stage name: history}``), train solid, validation dashed."""
    histories = {k: v for k, v in histories.items() if v.get("loss")}
    if not histories:
        return None
    fig, (ax_loss, ax_acc) = _subplots(1, 2, figsize=(11, 4))
    offset = 0
    for i, (stage, hist) in enumerate(histories.items()):
        color = f"C{i % 10}"
        n = len(hist["loss"])
        epochs = list(range(offset + 1, offset + n + 1))
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            if hist.get(key):
                ax.plot(epochs, hist[key], "-o", color=color, ms=3, label=f"{stage} train")
            if hist.get(f"val_{key}"):
                ax.plot(epochs, hist[f"val_{key}"], "--s", color=color, ms=3, label=f"{stage} validation")
        offset += n
        if i < len(histories) - 1:
            for ax in (ax_loss, ax_acc):
                ax.axvline(offset + 0.5, color="grey", lw=0.8, ls=":")
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch (stages one after another)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def front_variants(rows: list) -> set:
    """Names of the variants no other variant beats on both gzip size (smaller) and accuracy (higher).

    >>> sorted(front_variants([{"variant": "a", "gzip_bytes": 10, "accuracy": 0.9},
    ...                        {"variant": "b", "gzip_bytes": 5, "accuracy": 0.8},
    ...                        {"variant": "c", "gzip_bytes": 20, "accuracy": 0.85}]))
    ['a', 'b']
    """
    return {r["variant"] for r in non_dominated(rows, SIZE_ACCURACY)}


def plot_pareto(rows: list, path: Path, front: set | None = None) -> Path | None:
    """Test accuracy against gzip bytes (log x); Pareto-optimal variants (``front``, by default computed on
    the plotted accuracy) highlighted and joined."""
    rows = [r for r in rows if r.get("gzip_bytes") and r.get("accuracy") is not None]
    if not rows:
        return None
    front = front_variants(rows) if front is None else front
    fig, ax = _subplots(figsize=(7, 4.5))
    for r in rows:
        best = r["variant"] in front
        ax.scatter(r["gzip_bytes"], r["accuracy"], s=70 if best else 35, color="C3" if best else "C0",
                   edgecolor="black" if best else "none", zorder=3)
        ax.annotate(r["variant"], (r["gzip_bytes"], r["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    pts = sorted((r["gzip_bytes"], r["accuracy"]) for r in rows if r["variant"] in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="C3", alpha=0.5, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("gzip bytes of the .tflite file (log scale)")
    ax.set_ylabel("test accuracy (TFLite model)")
    ax.set_title("accuracy against compressed size")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_layers(layers: dict, path: Path) -> Path | None:
    """Per-layer zero fraction and distinct-value count of each variant (``{variant: {layer: (sparsity, n)}}``)."""
    layers = {k: v for k, v in layers.items() if v}
    if not layers:
        return None
    names = sorted({layer for v in layers.values() for layer in v})
    fig, (ax_s, ax_c) = _subplots(1, 2, figsize=(12, max(3.0, 0.35 * len(names) * len(layers) ** 0.5 + 1.5)))
    height = 0.8 / len(layers)
    for i, (variant, per_layer) in enumerate(layers.items()):
        ys = [j + i * height for j in range(len(names))]
        ax_s.barh(ys, [per_layer.get(n, (0, 0))[0] for n in names], height, label=variant, color=f"C{i % 10}")
        ax_c.barh(ys, [per_layer.get(n, (0, 0))[1] for n in names], height, label=variant, color=f"C{i % 10}")
    for ax in (ax_s, ax_c):
        ax.set_yticks([j + 0.4 - height / 2 for j in range(len(names))])
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    ax_s.set_xlabel("fraction of zero weights")
    ax_s.set_xlim(0, 1)
    ax_c.set_xscale("log")
    ax_c.set_xlabel("distinct weight values (log)")
    ax_c.legend(fontsize=7, loc="lower right")
    fig.suptitle("per-layer sparsity and distinct values, read back from the TFLite files")
    return _save(fig, path)
