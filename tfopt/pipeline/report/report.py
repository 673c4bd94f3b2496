"""``write_report(run_dir)``: ``report.md`` and a self-contained ``report.html`` (images inlined) of a run.

The report holds the table of every exported variant (test accuracy of the TFLite model itself with its
95% Wilson interval and n, validation accuracy, the paired test difference to the baseline with its
interval and McNemar p-value, parameters, bytes, gzip bytes, p50/p90 latency and each one's ratio to the
baseline), per-class test recall and confusion matrices, training curves, accuracy against gzip size
(Pareto front chosen on validation), per-layer sparsity and distinct values read back from the TFLite
files, the recipe and seeds, and the versions. Figures are PNGs in ``run_dir/report/``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import re
from pathlib import Path

import numpy as np
import yaml

from tfopt._io import atomic_write_text, path_inside, write_json
from tfopt.errors import ConfigError, ExportError
from tfopt.pipeline.report import plots
from tfopt.pipeline.report.results import collect_results, fill_comparisons
from tfopt.pipeline.report.rundir import MANIFEST, RESULTS, check_paths, read_manifest, read_results, refuse_links_out

__all__ = ["write_report", "variants_table", "variants_markdown", "markdown_table", "layer_stats", "TABLE_COLUMNS",
           "TABLE_NOTE", "SHORT_COLUMNS", "split_sizes"]

log = logging.getLogger(__name__)

DROP_MARK = "▼"  # a significant drop against the baseline (exact McNemar p < 0.05, same test examples)
GAIN_MARK = "▲"  # a significant gain


def _interval(value) -> str:
    return f"[{value[0]:.4f}, {value[1]:.4f}]"


def _signed_interval(value) -> str:
    return f"[{value[0]:+.4f}, {value[1]:+.4f}]"


def _p_value(row: dict) -> str:
    p = row["mcnemar_p"]
    text = "<0.0001" if p < 1e-4 else f"{p:.4f}"
    if row.get("significant_drop"):
        return f"{text} {DROP_MARK}"
    return f"{text} {GAIN_MARK}" if p < 0.05 and (row.get("test_delta") or 0) > 0 else text


# (header, key, format: a format string for the value, or a function of the row). "accuracy" (an alias of
# test_accuracy), its interval, n and Δ are measured on the test split; "val accuracy" on validation.
TABLE_COLUMNS = (
    ("variant", "variant", "{}"),
    ("model", "model", "{}"),
    ("quantization", "quantization", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("95% CI", "test_accuracy_ci95", _interval),
    ("n", "test_n", "{:,}"),
    ("val accuracy", "val_accuracy", "{:.4f}"),
    ("Δ accuracy", "accuracy_delta", "{:+.4f}"),
    ("Δ 95% CI", "test_delta_ci95", _signed_interval),
    ("McNemar p", "mcnemar_p", _p_value),
    ("params", "params", "{:,}"),
    ("multiply-adds", "flops", "{:,}"),
    ("bytes", "bytes", "{:,}"),
    ("gzip bytes", "gzip_bytes", "{:,}"),
    ("p50 µs", "latency_us_p50", "{:.1f}"),
    ("p90 µs", "latency_us_p90", "{:.1f}"),
    ("gzip x smaller", "gzip_x_smaller", "{:.2f}"),
    ("p50 speed-up", "speedup_p50", "{:.2f}"),
)

TABLE_NOTE = ("accuracy, its 95% CI (Wilson), n and Δ (paired, on the same examples, against the baseline; its CI a "
              "paired bootstrap) are measured on the **test** split; val accuracy on the validation split, the one "
              f"choices are made on; {DROP_MARK} / {GAIN_MARK}: a significant drop / gain (exact McNemar p < 0.05).")


def _cell(row: dict, key: str, fmt) -> str:
    value = row.get(key)
    if value is None:
        return "–"
    if callable(fmt):
        return fmt(row) if fmt is _p_value else fmt(value)
    return fmt.format(value)


def split_sizes(results: dict) -> str:
    """The split sizes of a run's data, e.g. ``"4,000 train / 1,000 validation / 1,000 test"``.

    >>> split_sizes({"data": {"n_train": 3000, "n_val": 1000, "n_test": 1000}})
    '3,000 train / 1,000 validation / 1,000 test'
    >>> split_sizes({"data": {"n_train": 3000, "n_val": 1000}, "variants": [{"test_n": 500}]})
    '3,000 train / 1,000 validation / 500 test'
    """
    data = results.get("data") or {}
    n_test = data.get("n_test")
    if n_test is None:
        n_test = next((r["test_n"] for r in results.get("variants") or [] if r.get("test_n") is not None), None)
    parts = [(data.get("n_train"), "train"), (data.get("n_val"), "validation"), (n_test, "test")]
    return " / ".join(f"{n:,} {name}" if isinstance(n, int) else f"? {name}" for n, name in parts)


# the columns the command line prints (``tfopt demo``, ``tfopt run``): the report has them all
SHORT_COLUMNS = ("variant", "quantization", "accuracy", "95% CI", "val accuracy", "Δ accuracy", "Δ 95% CI", "McNemar p",
                 "gzip bytes", "gzip x smaller", "p50 µs", "p50 speed-up")


def variants_table(rows: list, columns=None) -> list[list[str]]:
    """The variant table as rows of strings (header first), formatted as in the report.

    Args:
        rows: List of variant dicts (results.json's ``variants``).
        columns: Sequence of headers of TABLE_COLUMNS to keep (e.g. SHORT_COLUMNS), or None for all.

    >>> variants_table([{"variant": "a", "accuracy": 0.5, "test_accuracy_ci95": [0.4, 0.6]}])[1][:5]
    ['a', '–', '–', '0.5000', '[0.4000, 0.6000]']
    >>> variants_table([{"variant": "a", "accuracy": 0.5}], columns=("variant", "accuracy"))
    [['variant', 'accuracy'], ['a', '0.5000']]
    """
    chosen = [c for c in TABLE_COLUMNS if columns is None or c[0] in columns]
    return [[c[0] for c in chosen]] + [[_cell(r, key, fmt) for _, key, fmt in chosen] for r in rows]


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


def variants_markdown(rows: list, columns=None) -> str:
    """The variant table (with ratios to the baseline) as Markdown; ``columns`` as for :func:`variants_table`."""
    return markdown_table(variants_table(rows, columns), left=2 if columns == SHORT_COLUMNS else 3)


def markdown_table(table: list[list[str]], left: int = 3) -> str:
    """A table (header first) as Markdown: the first ``left`` columns aligned left, the others right."""
    head, *body = table
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < left else "---:" for i in range(len(head))) + "|"]
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


def _class_names(results: dict, count: int) -> list[str]:
    names = (results.get("data") or {}).get("class_names")
    if isinstance(names, list) and len(names) == count:
        return [str(n) for n in names]
    return [str(i) for i in range(count)]


def _same_test_examples(rows: list, baseline: str | None) -> list:
    """The rows with a test confusion matrix measured on the baseline's test examples, the baseline first."""
    measured = [r for r in rows if r.get("test_confusion")]
    base = next((r for r in measured if r["variant"] == baseline), measured[0] if measured else None)
    if base is None:
        return []
    same = [r for r in measured if r is not base and len(r["test_confusion"]) == len(base["test_confusion"])
            and r.get("test_n") == base.get("test_n") and r.get("data") == base.get("data")]
    return [base, *same]


def recall_table(rows: list, names: list) -> list[list[str]]:
    """Per-class test recall of ``rows`` (with ``test_confusion``, same classes): one row per class.

    >>> recall_table([{"variant": "a", "test_confusion": [[3, 1], [0, 0]]}], ["x", "y"])
    [['class', 'test n', 'a'], ['x', '4', '0.750'], ['y', '0', '–']]
    """
    from tfopt.stats import per_class_recall

    recalls = [per_class_recall(r["test_confusion"]) for r in rows]
    counts = [sum(row) for row in rows[0]["test_confusion"]]
    table = [["class", "test n", *[r["variant"] for r in rows]]]
    for i, name in enumerate(names):
        table.append([name, f"{counts[i]:,}", *["–" if rec[i] is None else f"{rec[i]:.3f}" for rec in recalls]])
    return table


def confusion_table(confusion: list, names: list) -> list[list[str]]:
    """A test confusion matrix as a table: one row per true class, one column per predicted class.

    >>> confusion_table([[3, 1], [0, 2]], ["x", "y"])
    [['true ↓ predicted →', 'x', 'y'], ['x', '3', '1'], ['y', '0', '2']]
    """
    return [["true ↓ predicted →", *names]] + [[name, *[f"{v:,}" for v in row]] for name, row in zip(names, confusion)]


def _class_sections(results: dict, rows: list) -> list[tuple[str, list[list[str]]]]:
    """(title, table) of per-class recall of every comparable variant, and the confusion matrices of the
    baseline and of the smallest variant (test split)."""
    same = _same_test_examples(rows, results.get("baseline"))
    if not same:
        return []
    names = _class_names(results, len(same[0]["test_confusion"]))
    sections = [("Per-class recall (test)", recall_table(same, names))]
    smallest = min(same, key=lambda r: r.get("gzip_bytes") or float("inf"))
    for r in [same[0]] + ([smallest] if smallest is not same[0] else []):
        what = "baseline" if r is same[0] else "smallest variant"
        sections.append((f"Confusion matrix (test): {r['variant']} ({what})", confusion_table(r["test_confusion"], names)))
    return sections


def _html_table(table: list[list[str]]) -> str:
    head, *body = table
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</table>"])


def _bold(text: str) -> str:
    """HTML of ``text`` with its Markdown ``**bold**`` as <b>."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


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
    damaged = fill_comparisons(results, run_dir)
    if damaged:
        log.warning("%s; the report shows the paired comparisons results.json holds", damaged)
    rows = results.get("variants") or []
    layers = layer_stats(run_dir, rows)
    from tfopt.export.evaluate import baseline_row

    # the Pareto front is a choice: made on validation accuracy where it was measured, among the files of the
    # baseline's task (a fine_tune run's earlier task is measured on other examples)
    base_data = (baseline_row(rows, results.get("baseline")) or {}).get("data")
    chosen_on = [{**r, "accuracy": r["val_accuracy"]} if r.get("val_accuracy") is not None else r for r in rows
                 if r.get("gzip_bytes") and r.get("accuracy") is not None and r.get("data") == base_data]
    front = plots.front_variants(chosen_on)
    write_json(out_dir / "layers.json", layers)
    images = {
        "Training curves": plots.plot_curves(_histories(run_dir, results), out_dir / "curves.png"),
        "Test accuracy against gzip size": plots.plot_pareto(rows, out_dir / "pareto.png", front=front),
        "Per-layer sparsity and distinct values": plots.plot_layers(layers, out_dir / "layers.png"),
    }
    images = {k: v for k, v in images.items() if v is not None}
    table = variants_table(rows)
    classes = _class_sections(results, rows)
    recipe_text = yaml.safe_dump(manifest.get("recipe") or {"name": results["recipe"]}, sort_keys=False)
    versions = results.get("versions") or {}
    data = results.get("data") or {}
    intro = (f"Recipe **{results['recipe']}** (hash `{results['recipe_hash']}`, seed {results['seed']}), data "
             f"**{data.get('name')}** ({split_sizes(results)}, input {data.get('input_shape')}, "
             f"{data.get('num_classes')} classes). Every accuracy is measured on the exported TFLite model itself "
             f"with LiteRT, on the **test** split, which chose nothing: the best checkpoint, early stopping, tuning "
             f"and the Pareto front use the validation split. Differences and ratios are against the baseline "
             f"**{results.get('baseline')}**, differences paired on the same test examples. Pareto-optimal "
             f"(validation accuracy vs gzip size): {', '.join(sorted(front)) or '–'}. "
             f"Total stage time {results.get('seconds') or 0:.1f} s.")
    if damaged:
        intro += f" Note: {damaged}."

    md = [f"# tfopt report: {results['recipe']}", "", intro, "", "## Variants", "",
          (TABLE_NOTE + "\n\n" + markdown_table(table)) if rows else "_no variant was exported_", ""]
    for title, class_table in classes:
        md += [f"## {title}", "", markdown_table(class_table, left=1), ""]
    md += ["## Stages", "", markdown_table(_stage_rows(results)), ""]
    for title, path in images.items():
        md += [f"## {title}", "", f"![{title}](report/{path.name})", ""]
    if layers:
        md += ["## Per-layer sparsity (TFLite weights)", "", markdown_table(_layers_table(layers)), ""]
    md += ["## Recipe", "", "```yaml", recipe_text.rstrip(), "```", "", "## Versions", "",
           markdown_table([["package", "version"]] + [[k, str(v)] for k, v in versions.items()]), ""]
    md_path = atomic_write_text(run_dir / "report.md", "\n".join(md))

    parts = [f"<h1>tfopt report: {html.escape(results['recipe'])}</h1>",
             "<p>" + _bold(intro).replace("`", "") + "</p>",
             "<h2>Variants</h2>", ("<p>" + _bold(TABLE_NOTE) + "</p>\n" + _html_table(table)) if rows else
             "<p>no variant was exported</p>"]
    for title, class_table in classes:
        parts += [f"<h2>{html.escape(title)}</h2>", _html_table(class_table)]
    parts += ["<h2>Stages</h2>", _html_table(_stage_rows(results))]
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
