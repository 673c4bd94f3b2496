"""``write_report(run_dir)``: ``report.md`` and a self-contained ``report.html`` (images inlined) of a run.

The report holds the table of every exported variant (accuracy of the TFLite model itself on held-out
data, parameters, bytes, gzip bytes, p50/p90 latency and each one's ratio to the baseline), training
curves, accuracy against gzip size (Pareto front), per-layer sparsity and distinct values read back from
the TFLite files, the recipe and seeds, and the versions. Figures are PNGs in ``run_dir/report/``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
from pathlib import Path

import numpy as np
import yaml

from tfopt._io import atomic_write_text, path_inside, write_json
from tfopt.errors import ConfigError, ExportError
from tfopt.pipeline import plots
from tfopt.pipeline.results import collect_results
from tfopt.pipeline.rundir import MANIFEST, RESULTS, check_paths, read_manifest, read_results, refuse_links_out

__all__ = ["write_report", "variants_table", "variants_markdown", "markdown_table", "layer_stats", "TABLE_COLUMNS"]

# (header, key, format)
TABLE_COLUMNS = (
    ("variant", "variant", "{}"),
    ("model", "model", "{}"),
    ("quantization", "quantization", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("params", "params", "{:,}"),
    ("bytes", "bytes", "{:,}"),
    ("gzip bytes", "gzip_bytes", "{:,}"),
    ("p50 µs", "latency_us_p50", "{:.1f}"),
    ("p90 µs", "latency_us_p90", "{:.1f}"),
    ("gzip x smaller", "gzip_x_smaller", "{:.2f}"),
    ("p50 speed-up", "speedup_p50", "{:.2f}"),
    ("Δ accuracy", "accuracy_delta", "{:+.4f}"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    return "–" if value is None else fmt.format(value)


def variants_table(rows: list) -> list[list[str]]:
    """The variant table as rows of strings (header first), formatted as in the report.

    >>> variants_table([{"variant": "a", "accuracy": 0.5}])[1][:4]
    ['a', '–', '–', '0.5000']
    """
    return [[c[0] for c in TABLE_COLUMNS]] + [[_cell(r, key, fmt) for _, key, fmt in TABLE_COLUMNS] for r in rows]


def _short(name: str) -> str:
    """A readable layer name from a TFLite tensor name.

    >>> _short("cnn/quant_conv1/Conv2D;cnn/quant_conv1/BiasAdd")
    'conv1'
    """
    first = name.split(";")[0]
    ops = ("Conv2D", "MatMul", "BiasAdd", "Reshape", "ReadVariableOp", "Cast", "Conv2D1", "kernel", "Const")
    parts = [p for p in first.split("/") if p and p not in ops and not p.startswith("ReadVariableOp")]
    layer = parts[-1] if len(parts) > 1 else (parts[0] if parts else first)
    return (layer[len("quant_"):] if layer.startswith("quant_") else layer)[:40]


def layer_stats(run_dir: Path, rows: list) -> dict:
    """``{variant: {layer: (zero fraction, distinct values)}}`` read back from each TFLite file's weights."""
    from tfopt.export import tflite_weights

    out = {}
    for i, r in enumerate(rows):
        path = path_inside(run_dir, r["path"], f"variants[{i}].path")
        if not path.exists():
            continue
        try:
            weights = tflite_weights(path.read_bytes())
        except ExportError as err:
            raise ConfigError(f"{r['path']} of the run directory {str(run_dir)!r} (variant {r['variant']!r}) is "
                              f"damaged: {err}; export it again (--force the recipe's export stage)") from None
        per_layer = {}
        for name, values in weights.items():
            values = np.asarray(values)
            if values.size < 16 or values.dtype.kind not in "fiu":
                continue
            key = _short(name)
            while key in per_layer:
                key += "'"
            per_layer[key] = (float(np.mean(values == 0)), int(np.unique(values).size))
        out[r["variant"]] = per_layer
    return out


def _histories(run_dir: Path, results: dict) -> dict:
    out = {}
    for stage in results["stages"]:
        rel = (stage.get("outputs") or {}).get("history")
        if rel and path_inside(run_dir, rel, f"stage {stage['name']!r} outputs.history").exists():
            try:
                out[stage["name"]] = plots.read_history(run_dir / rel)
            except (UnicodeDecodeError, csv.Error) as err:
                raise ConfigError(f"{rel} of the run directory {str(run_dir)!r} is damaged: {err}") from None
    return out


def variants_markdown(rows: list) -> str:
    """The variant table (with ratios to the baseline) as Markdown, as the command line prints it."""
    return markdown_table(variants_table(rows))


def markdown_table(table: list[list[str]]) -> str:
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _stage_rows(results: dict) -> list[list[str]]:
    rows = [["#", "stage", "type", "status", "seconds", "seed", "key metric"]]
    for i, s in enumerate(results["stages"], start=1):
        m = s.get("metrics") or {}
        key = ", ".join(f"{k} {m[k]:.4f}" for k in ("val_accuracy", "sparsity") if isinstance(m.get(k), float))
        rows.append([str(i), s["name"], s["type"], s.get("status") or "", f"{s.get('seconds') or 0:.1f}",
                     str(s.get("seed")), key])
    return rows


def _layers_table(layers: dict) -> list[list[str]]:
    variants = list(layers)
    names = sorted({n for v in layers.values() for n in v})
    table = [["layer"] + [f"{v} zeros / values" for v in variants]]
    for n in names:
        table.append([n] + [f"{layers[v][n][0]:.3f} / {layers[v][n][1]:,}" if n in layers[v] else "–" for v in variants])
    return table


def _html_table(table: list[list[str]]) -> str:
    head, *body = table
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</table>"])


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}")


def write_report(run_dir) -> dict:
    """Write ``report.md``, ``report.html`` and ``report/*.png`` for a run directory; returns their paths.

    Args:
        run_dir: String or Path of a run directory made by :func:`tfopt.pipeline.run_recipe`.

    Returns:
        Dict with ``"md"``, ``"html"`` and ``"images"`` (a list of PNG paths).

    >>> paths = write_report("runs/mnist_cnn")  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'images', 'md']
    """
    run_dir = Path(run_dir)
    has_manifest, has_results = ((run_dir / name).is_file() for name in (MANIFEST, RESULTS))
    if not (has_manifest or has_results):
        raise ConfigError(f"{str(run_dir)!r} is not a tfopt run directory (no {RESULTS} or {MANIFEST})")
    # both files are checked (shape, and every path inside run_dir) before anything is read or written
    manifest = read_manifest(run_dir) if has_manifest else {}
    if has_results:
        try:
            results = read_results(run_dir, paths=False)
        except ConfigError as err:
            raise ConfigError(f"{err}; delete it to report from {MANIFEST}, or run the recipe again") from None
        check_paths(results, run_dir, RESULTS)
    else:
        results = collect_results(manifest)
    refuse_links_out(run_dir)
    out_dir = run_dir / "report"
    rows = results.get("variants") or []
    layers = layer_stats(run_dir, rows)
    write_json(out_dir / "layers.json", layers)
    images = {
        "Training curves": plots.plot_curves(_histories(run_dir, results), out_dir / "curves.png"),
        "Accuracy against gzip size": plots.plot_pareto(rows, out_dir / "pareto.png"),
        "Per-layer sparsity and distinct values": plots.plot_layers(layers, out_dir / "layers.png"),
    }
    images = {k: v for k, v in images.items() if v is not None}
    table = variants_table(rows)
    front = plots.front_variants(rows)
    recipe_text = yaml.safe_dump(manifest.get("recipe") or {"name": results["recipe"]}, sort_keys=False)
    versions = results.get("versions") or {}
    data = results.get("data") or {}
    intro = (f"Recipe **{results['recipe']}** (hash `{results['recipe_hash']}`, seed {results['seed']}), data "
             f"**{data.get('name')}** ({data.get('n_train')} train / {data.get('n_val')} held-out, input "
             f"{data.get('input_shape')}, {data.get('num_classes')} classes). Accuracy is measured on the exported "
             f"TFLite model itself with LiteRT; ratios are against the baseline **{results.get('baseline')}**. "
             f"Pareto-optimal (accuracy vs gzip size): {', '.join(sorted(front)) or '–'}. "
             f"Total stage time {results.get('seconds') or 0:.1f} s.")

    md = [f"# tfopt report: {results['recipe']}", "", intro, "", "## Variants", "", markdown_table(table) if rows else
          "_no variant was exported_", "", "## Stages", "", markdown_table(_stage_rows(results)), ""]
    for title, path in images.items():
        md += [f"## {title}", "", f"![{title}](report/{path.name})", ""]
    if layers:
        md += ["## Per-layer sparsity (TFLite weights)", "", markdown_table(_layers_table(layers)), ""]
    md += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", "", "## Versions", "",
           markdown_table([["package", "version"]] + [[k, str(v)] for k, v in versions.items()]), ""]
    md_path = atomic_write_text(run_dir / "report.md", "\n".join(md))

    parts = [f"<h1>tfopt report: {html.escape(results['recipe'])}</h1>",
             "<p>" + re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(intro)).replace("`", "") + "</p>",
             "<h2>Variants</h2>", _html_table(table) if rows else "<p>no variant was exported</p>",
             "<h2>Stages</h2>", _html_table(_stage_rows(results))]
    for title, path in images.items():
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")
        parts += [f"<h2>{html.escape(title)}</h2>", f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">']
    if layers:
        parts += ["<h2>Per-layer sparsity (TFLite weights)</h2>", _html_table(_layers_table(layers))]
    parts += ["<h2>Recipe</h2>", f"<pre>{html.escape(recipe_text)}</pre>", "<h2>Versions</h2>",
              _html_table([["package", "version"]] + [[k, str(v)] for k, v in versions.items()]),
              "<h2>results.json</h2>", f"<details><pre>{html.escape(json.dumps(results, indent=1))}</pre></details>"]
    page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>tfopt report: '
            f"{html.escape(results['recipe'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
    html_path = atomic_write_text(run_dir / "report.html", page)
    return {"md": md_path, "html": html_path, "images": list(images.values())}
