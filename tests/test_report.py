"""The run report: table values equal results.json, self-contained HTML, figures, TFLite read-back sparsity."""

from __future__ import annotations

import base64
import re

import pytest

from tfopt._io import read_json
from tfopt.errors import ConfigError
from tfopt.pipeline import run_recipe, write_report
from tfopt.pipeline.report.plots import front_variants, read_history
from tfopt.pipeline.report.results import with_ratios

PNG = b"\x89PNG\r\n\x1a\n"


def _recipe() -> dict:
    return {
        "name": "report", "seed": 1, "data": {"name": "digits"},
        "model": {"builder": "cnn", "args": {"filters": [8], "dense": [32]}},
        "training": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.01},
        "stages": ["train", {"prune": {"target_sparsity": 0.6, "epochs": 1}},
                   {"export": {"variants": [{"name": "float32", "model": "train"}, {"name": "pruned", "model": "prune"},
                                            {"name": "pruned_int8", "model": "prune", "quantization": "int8"}]}},
                   {"evaluate": {"runs": 20, "warmup": 2}}],
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    return run_dir, run_recipe(_recipe(), run_dir=run_dir, verbose=0)


def _md_table(text: str, heading: str) -> list[dict]:
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def test_report_files_and_figures(run):
    run_dir, _ = run
    for rel in ("report.md", "report.html", "report/curves.png", "report/pareto.png", "report/layers.png",
                "report/layers.json"):
        assert (run_dir / rel).is_file(), rel
    for name in ("curves", "pareto", "layers"):
        content = (run_dir / "report" / f"{name}.png").read_bytes()
        assert content.startswith(PNG) and len(content) > 5000


def test_markdown_table_equals_results_json(run):
    run_dir, results = run
    saved = read_json(run_dir / "results.json")
    rows = _md_table((run_dir / "report.md").read_text(), "Variants")
    assert [r["variant"] for r in rows] == [v["variant"] for v in saved["variants"]] == ["float32", "pruned",
                                                                                           "pruned_int8"]
    for row, v in zip(rows, saved["variants"]):
        assert float(row["accuracy"]) == pytest.approx(v["accuracy"], abs=5e-5)
        assert int(row["bytes"].replace(",", "")) == v["bytes"]
        assert int(row["gzip bytes"].replace(",", "")) == v["gzip_bytes"]
        assert int(row["params"].replace(",", "")) == v["params"]
        assert float(row["p50 µs"]) == pytest.approx(v["latency_us_p50"], abs=0.05)
        assert float(row["p90 µs"]) == pytest.approx(v["latency_us_p90"], abs=0.05)
        assert float(row["gzip x smaller"]) == pytest.approx(saved["variants"][0]["gzip_bytes"] / v["gzip_bytes"], abs=0.005)
        assert float(row["p50 speed-up"]) == pytest.approx(v["speedup_p50"], abs=0.005)
        assert float(row["Δ accuracy"]) == pytest.approx(v["accuracy"] - saved["variants"][0]["accuracy"], abs=5e-5)
    assert rows[0]["gzip x smaller"] == "1.00" and rows[0]["Δ accuracy"] == "+0.0000"
    text = (run_dir / "report.md").read_text()
    assert f"hash `{results['recipe_hash']}`, seed 1" in text and "## Versions" in text and "tf_keras" in text
    assert "target_sparsity: 0.6" in text  # the recipe used


def test_html_is_self_contained_with_the_same_numbers(run):
    run_dir, results = run
    page = (run_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "url(" not in page
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) == 3 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(base64.b64decode(s.split(",", 1)[1]).startswith(PNG) for s in sources)
    for v in results["variants"]:
        assert f"<td>{v['accuracy']:.4f}</td>" in page and f"<td>{v['gzip_bytes']:,}</td>" in page


def test_layer_sparsity_is_read_back_from_the_tflite_files(run):
    run_dir, results = run
    layers = read_json(run_dir / "report" / "layers.json")
    assert set(layers) == {"float32", "pruned", "pruned_int8"}
    assert set(layers["pruned"]) == {"conv1", "dense1", "logits"}
    for name in ("conv1", "dense1", "logits"):
        assert layers["float32"][name][0] < 0.05
        assert layers["pruned"][name][0] == pytest.approx(0.6, abs=0.02)
        assert layers["pruned_int8"][name][0] >= 0.58  # int8 keeps every zero (zero point 0)
        assert layers["pruned_int8"][name][1] <= 256
    # the same fractions as the Keras model the prune stage saved
    per_stage = results["stages"][1]["metrics"]["layer_sparsity"]
    assert {k: round(v, 4) for k, v in per_stage.items()} == {k: round(v[0], 4) for k, v in layers["pruned"].items()}


def test_report_rebuilds_from_the_manifest(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    (copy / "results.json").unlink()
    (copy / "report.md").unlink()
    paths = write_report(copy)
    assert paths["md"] == copy / "report.md" and len(paths["images"]) == 3
    rows = _md_table(paths["md"].read_text(), "Variants")
    assert [float(r["accuracy"]) for r in rows] == pytest.approx([v["accuracy"] for v in run[1]["variants"]], abs=5e-5)
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))!s}.*is not a tfopt run directory"):
        write_report(tmp_path)


def test_pareto_front_and_ratios():
    rows = [{"variant": "f32", "gzip_bytes": 1000, "accuracy": 0.95, "latency_us_p50": 100.0},
            {"variant": "int8", "gzip_bytes": 250, "accuracy": 0.94, "latency_us_p50": 80.0},
            {"variant": "bad", "gzip_bytes": 500, "accuracy": 0.90, "latency_us_p50": 50.0},
            {"variant": "tiny", "gzip_bytes": 100, "accuracy": 0.50, "latency_us_p50": 40.0}]
    assert front_variants(rows) == {"f32", "int8", "tiny"}
    ratios = {r["variant"]: r for r in with_ratios(rows, "f32")}
    assert ratios["int8"]["gzip_x_smaller"] == 4.0 and ratios["int8"]["speedup_p50"] == 1.25
    assert ratios["bad"]["accuracy_delta"] == pytest.approx(-0.05)
    assert with_ratios(rows, "missing")[0]["gzip_x_smaller"] == 1.0  # falls back to the first row


def test_read_history(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,accuracy,loss,val_accuracy,val_loss\n0,0.5,1.2,0.6,1.0\n1,0.7,0.8,0.75,0.7\n")
    hist = read_history(path)
    assert hist == {"accuracy": [0.5, 0.7], "loss": [1.2, 0.8], "val_accuracy": [0.6, 0.75], "val_loss": [1.0, 0.7]}


# ---------------------------------------------------------------- test split, intervals, paired comparisons


def test_each_variant_holds_test_and_validation_figures(run):
    run_dir, results = run
    saved = read_json(run_dir / "results.json")
    n_test = saved["data"]["n_test"]
    for v in saved["variants"]:
        assert v["accuracy"] == v["test_accuracy"] and v["test_n"] == v["n"] == n_test
        low, high = v["test_accuracy_ci95"]
        assert 0 <= low < v["test_accuracy"] < high <= 1
        assert 0 < v["val_accuracy"] <= 1 and v["val_n"] == saved["data"]["n_val"]
        assert sum(map(sum, v["test_confusion"])) == n_test and len(v["test_confusion"]) == 10
        assert len(v["test_per_class_recall"]) == 10
        assert v["test_delta"] == pytest.approx(v["accuracy_delta"], abs=1e-12)
        low, high = v["test_delta_ci95"]
        assert low <= v["test_delta"] <= high and 0 <= v["mcnemar_p"] <= 1
        assert v["significant_drop"] == (v["mcnemar_p"] < 0.05 and v["test_delta"] < 0)
    base = saved["variants"][0]
    assert (base["test_delta"], base["test_delta_ci95"], base["mcnemar_p"], base["significant_drop"]) == \
        (0.0, [0.0, 0.0], 1.0, False)
    # what pairing needs is kept beside the evaluate stage's metrics
    predictions = read_json(run_dir / "04_evaluate" / "predictions.json")["variants"]
    assert set(predictions) == {"float32", "pruned", "pruned_int8"}
    assert all(len(p["labels"]) == len(p["predictions"]) == n_test for p in predictions.values())


def test_report_says_test_and_shows_intervals_recall_and_confusion(run):
    run_dir, results = run
    saved = read_json(run_dir / "results.json")
    text = (run_dir / "report.md").read_text()
    d = saved["data"]
    assert f"{d['n_train']:,} train / {d['n_val']:,} validation / {d['n_test']:,} test" in text
    assert "on the **test** split" in text and "Pareto-optimal (validation accuracy vs gzip size)" in text
    rows = _md_table(text, "Variants")
    for row, v in zip(rows, saved["variants"]):
        assert row["95% CI"] == "[{:.4f}, {:.4f}]".format(*v["test_accuracy_ci95"])
        assert int(row["n"]) == v["test_n"] and float(row["val accuracy"]) == pytest.approx(v["val_accuracy"], abs=5e-5)
        assert row["Δ 95% CI"] == "[{:+.4f}, {:+.4f}]".format(*v["test_delta_ci95"])
        p = v["mcnemar_p"]
        assert row["McNemar p"].split()[0] == ("<0.0001" if p < 1e-4 else f"{p:.4f}")
        assert row["McNemar p"].endswith("▼") == v["significant_drop"]
        assert row["McNemar p"].endswith("▲") == (p < 0.05 and v["test_delta"] > 0)
    recall = _md_table(text, "Per-class recall (test)")
    assert [r["class"] for r in recall] == [str(i) for i in range(10)]
    assert sum(int(r["test n"]) for r in recall) == d["n_test"]
    assert [float(r["pruned"]) for r in recall] == pytest.approx(saved["variants"][1]["test_per_class_recall"], abs=5e-4)
    smallest = min(saved["variants"], key=lambda v: v["gzip_bytes"])
    for name in ("float32 (baseline)", f"{smallest['variant']} (smallest variant)"):
        matrix = _md_table(text, f"Confusion matrix (test): {name}")
        assert sum(int(c) for r in matrix for k, c in r.items() if k != "true ↓ predicted →") == d["n_test"]
    page = (run_dir / "report.html").read_text()
    assert "<b>test</b> split" in page and "<h2>Per-class recall (test)</h2>" in page


def test_report_recomputes_missing_comparisons_and_a_damaged_predictions_file_is_one_line(run, tmp_path, caplog):
    import json
    import shutil

    from tfopt.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    saved = read_json(copy / "results.json")
    keys = ("test_delta", "test_delta_ci95", "mcnemar_p", "significant_drop", "test_discordant")
    stripped = {**saved, "variants": [{k: v for k, v in row.items() if k not in keys} for row in saved["variants"]]}
    (copy / "results.json").write_text(json.dumps(stripped))
    write_report(copy)  # recomputed from 04_evaluate/predictions.json
    rows = _md_table((copy / "report.md").read_text(), "Variants")
    assert [r["Δ 95% CI"] for r in rows] == ["[{:+.4f}, {:+.4f}]".format(*v["test_delta_ci95"]) for v in saved["variants"]]

    (copy / "04_evaluate" / "predictions.json").write_text('{"variants": {"float32": {"labels": [0, 1], "pred')
    with caplog.at_level("WARNING", logger="tfopt.pipeline.report.report"):
        assert main(["report", str(copy)]) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "predictions.json is damaged: not valid JSON" in warnings[0]
    assert "\n" not in warnings[0]
    text = (copy / "report.md").read_text()
    assert "predictions.json is damaged" in text
    assert [r["Δ 95% CI"] for r in _md_table(text, "Variants")] == ["–"] * 3  # not made up
    assert [r["accuracy"] for r in _md_table(text, "Variants")] == [r["accuracy"] for r in rows]


def test_a_run_without_a_named_baseline_still_has_a_pareto_front(run, tmp_path):
    """Variants recorded with no baseline (e.g. only a search_compression stage's file) are compared with the first,
    and the front is chosen among the variants of its data section: all of them here."""
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    saved = read_json(copy / "results.json")
    (copy / "results.json").write_text(json.dumps({**saved, "baseline": None}))
    write_report(copy)
    front = (copy / "report.md").read_text().split("Pareto-optimal (validation accuracy vs gzip size): ")[1]
    named = [name.strip() for name in front.split(".")[0].split(",")]
    assert named and set(named) <= {v["variant"] for v in saved["variants"]}


@pytest.mark.parametrize("edit,match", [
    (lambda v: v.update(test_accuracy_ci95=[0.9]), r"variants\[0\].test_accuracy_ci95 is not a \[low, high\] pair"),
    (lambda v: v.update(test_delta_ci95="wide"), r"variants\[0\].test_delta_ci95 is a string, not a list"),
    (lambda v: v.update(test_confusion=[[1, 2], [3]]), r"variants\[0\].test_confusion is not a square matrix"),
    (lambda v: v.update(mcnemar_p="low"), r"variants\[0\].mcnemar_p is a string, not a number"),
])
def test_damaged_test_figures_in_results_are_one_line(run, tmp_path, edit, match):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run[0], copy)
    saved = read_json(copy / "results.json")
    edit(saved["variants"][0])
    (copy / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=f"results.json of the run directory .* is damaged: {match}"):
        write_report(copy)


def test_variants_table_marks_significant_drops_and_gains():
    from tfopt.pipeline.report.report import SHORT_COLUMNS, variants_table

    rows = [{"variant": "drop", "mcnemar_p": 0.012, "test_delta": -0.02, "significant_drop": True},
            {"variant": "gain", "mcnemar_p": 3e-6, "test_delta": 0.03, "significant_drop": False},
            {"variant": "noise", "mcnemar_p": 0.2, "test_delta": -0.01, "significant_drop": False},
            {"variant": "older run", "accuracy": 0.9}]
    table = variants_table(rows, SHORT_COLUMNS)
    assert sorted(table[0]) == sorted(SHORT_COLUMNS)  # in the report's order
    p = table[0].index("McNemar p")
    assert [row[p] for row in table[1:]] == ["0.0120 ▼", "<0.0001 ▲", "0.2000", "–"]
    assert table[4][table[0].index("95% CI")] == "–"  # a results.json from before intervals still prints
