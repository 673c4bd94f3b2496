"""The benchmark scripts run end to end (``--quick``, into a tmp dir) and write complete, sane results.

Timing goals are never asserted: only that every figure produced finite numbers, the spread fields, the
tables, and that BENCHMARKS.md got the summary table. One quick run is shared by all tests.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common
from tfopt._io import read_json

ROOT = Path(__file__).resolve().parent.parent
# The fast figures (~1 min quick). compression + latency (~2 min quick: tfmot fine-tunes, conversions) and
# search (keras-tuner trials) are left to `make bench`; their helpers are tested in-process below.
# constrained_search's quick run is one tiny trial (~15 s, sharing the quick CNN baseline).
FAST = ["training_overhead", "input_pipeline", "distillation", "constrained_search"]


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    temp = tmp_path_factory.mktemp("bench-temp")  # the run's TMPDIR: what it leaves there is checked below
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", *FAST, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env={**os.environ, "TMPDIR": str(temp)},
    )
    proc.temp = temp
    return out, proc


def test_quick_run_succeeds_and_writes_every_figure(quick_run):
    out, proc = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = read_json(out / "results.json")
    assert set(FAST) <= set(results["figures"])
    assert results["quick"] is True
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert {"avx2", "avx512", "vnni"} <= set(results["machine"])
    assert results["versions"]["tensorflow"] and results["versions"]["tfmot"]
    for name in FAST:
        fig = results["figures"][name]
        assert "error" not in fig, fig.get("error")
        assert math.isfinite(fig["value"]) and fig["value"] > 0, (name, fig["value"])
        for key in ("median", "min", "max", "n"):
            assert key in fig["spread"], (name, key)
        assert fig["spread"]["min"] <= fig["spread"]["median"] <= fig["spread"]["max"]
        assert fig["rows"] and all(len(r) == len(fig["columns"]) for r in fig["rows"]), name
        assert fig["summary"] and all(math.isfinite(s["value"]) for s in fig["summary"]), name
        assert fig["quick"] is True and fig["seconds"] > 0
    left = sorted(p.name for p in proc.temp.glob("tfopt-*"))
    assert not left, f"the figures' scratch folders outlived the run: {left}"


def test_sanity_values(quick_run):
    out, _ = quick_run
    figures = read_json(out / "results.json")["figures"]
    distill = figures["distillation"]["details"]
    assert distill["student_params"] * 5 < distill["teacher_params"]  # the headline MLP student: under a fifth
    assert set(distill["students"]) == {"mlp-100", "cnn-8-16"} and distill["headline"] == "mlp-100"
    assert all(0 <= e < 0.5 for e in distill["alone"] + distill["distilled"])
    pipe = figures["input_pipeline"]["details"]
    assert pipe["pipeline_examples_per_s"]["median"] > 0 and pipe["train_step_examples_per_s"]["median"] > 0
    overhead = figures["training_overhead"]
    plain = next(r for r in overhead["rows"] if r[0] == "plain tf_keras model.fit")
    assert plain[1] > 0 and plain[2] == pytest.approx(1.0) and plain[6] == pytest.approx(1.0)  # CPU, wall
    hooks = overhead["details"]["callbacks_ms_per_epoch"]
    assert hooks["n"] >= 3 and hooks["min"] > 0  # each replayed epoch writes files: never free
    assert overhead["details"]["attributed_ratio"] == pytest.approx(
        1 + hooks["median"] / overhead["details"]["plain_epoch_ms"])
    search = figures["constrained_search"]["details"]
    assert search["budget"] * 10 < search["baseline_gzip_bytes"]
    assert search["tuned_gzip_bytes"] <= search["budget"]
    assert search["gzip_ratio"] == pytest.approx(search["baseline_gzip_bytes"] / search["tuned_gzip_bytes"])
    assert 0.2 < search["tuned_accuracy"] <= 1 and 0.2 < search["baseline_accuracy"] <= 1  # above chance (0.1)
    assert figures["constrained_search"]["value"] == pytest.approx(
        100 * (search["baseline_accuracy"] - search["tuned_accuracy"]))
    # reported on the fixed test split with Wilson intervals; the drop is the paired test difference
    assert search["test_n"] == 1000
    low, high = search["tuned_test_accuracy_ci95"]
    assert low <= search["tuned_accuracy"] <= high
    paired = search["tuned_vs_baseline_test"]
    assert paired["test_delta_points"] == pytest.approx(-figures["constrained_search"]["value"])
    assert 0 <= paired["mcnemar_p"] <= 1 and isinstance(paired["significant_drop"], bool)
    seed = distill["per_seed"][0]
    assert seed["test_n"] == 1000 and seed["alone_test_error"] == pytest.approx(distill["alone"][0])
    assert 0 <= seed["mcnemar_p"] <= 1
    # the student alone is the better of its two recipes on VALIDATION, and its test error is that recipe's
    recipe = seed["alone_recipe"]
    assert recipe in ("augmented", "plain")
    assert seed["alone_val_error"] == min(seed["augmented_alone_val_error"], seed["plain_alone_val_error"])
    assert seed["alone_test_error"] == seed[f"{recipe}_alone_test_error"]
    assert distill["plain"][0] == seed["plain_alone_test_error"] and distill["teacher_val_error"] < 0.5
    assert distill["never_worse"] == all(s["test_delta_points"] >= 0 for s in distill["per_seed"])
    # the short run: its student alone is the better of its two optimizers on VALIDATION, reported on test
    short = distill["short_run"]["per_seed"][0]
    chosen = min(short["recipes_val_error"], key=lambda name: (short["recipes_val_error"][name],
                                                               list(short["recipes_val_error"]).index(name)))
    assert short["alone_recipe"] == chosen and short["alone_test_error"] == short["recipes_test_error"][chosen]
    assert 0 <= short["distilled_test_error"] < 1 and 0 <= short["mcnemar_p"] <= 1
    assert any("short run" in row["label"] for row in figures["distillation"]["summary"])
    # Hinton et al.'s protocol: the plain student alone against the student distilled on the same plain digits
    for seed_row in distill["per_seed"]:
        assert 0 <= seed_row["distilled_plain_test_error"] < 0.5 and 0 <= seed_row["hinton_mcnemar_p"] <= 1
        assert seed_row["hinton_ratio"] == pytest.approx(
            seed_row["plain_alone_test_error"] / max(seed_row["distilled_plain_test_error"], 1e-9))
    assert sum("Hinton et al.'s protocol" in row["label"] for row in figures["distillation"]["summary"]) == 2


def test_int4_qat_exact_tells_a_kernel_on_the_levels_from_a_rounded_one():
    from benchmarks.int4_qat import _exact
    from tfopt import export
    from tfopt.compress import snap_to_int4

    model, _ = _tiny_pruned_model()
    model.layers[1].set_weights([np.random.default_rng(1).normal(size=(32, 4)).astype("float32")])
    assert not _exact(model, export.to_tflite(model, "int4").content)  # 0.5 and 0.25 share no scale of 7 levels
    for layer in model.layers:
        layer.set_weights([snap_to_int4(layer.get_weights()[0])])
    assert _exact(model, export.to_tflite(model, "int4").content)


def _tiny_pruned_model():
    from tfopt._keras import keras

    model = keras.Sequential([keras.layers.Dense(32, input_shape=(16,), use_bias=False),
                              keras.layers.Dense(4, use_bias=False)])
    rng = np.random.default_rng(0)
    # 75% zeros and 4 distinct non-zero values in the first kernel.
    kernel = rng.choice([0.0, 0.0, 0.0, 0.5, -0.5, 0.25, -0.25], size=(16, 32), p=[.25, .25, .25, .0625, .0625, .0625, .0625])
    model.layers[0].set_weights([kernel.astype("float32")])
    return model, rng


def test_file_stats_reads_sparsity_and_values_from_the_int8_file():
    from benchmarks.compression import file_stats
    from tfopt import export

    model, rng = _tiny_pruned_model()
    x = rng.random((32, 16)).astype("float32")
    tfl = export.to_tflite(model, "int8", representative_data=x)
    weights = export.tflite_weights(tfl.content)
    first = next(w for w in weights.values() if w.shape == (32, 16))
    stats = file_stats(tfl.content)
    assert stats["kernels"] == 1  # the 4x32 kernel is below the 256-weight floor
    assert stats["sparsity"] == pytest.approx(float(np.mean(first == 0)))
    assert 0.6 < stats["sparsity"] < 0.9
    assert stats["max_values_per_channel"] <= 5  # 4 values and the zero, per output channel


def test_latency_measure_gives_per_round_ratios():
    from benchmarks.latency import measure
    from tfopt import export

    model, rng = _tiny_pruned_model()
    models = {"float32": export.to_tflite(model), "dynamic": export.to_tflite(model, "dynamic")}
    result = measure(models, rng.random(16).astype("float32"), threads=1, rounds=2, runs=5)
    assert result["float32"]["ratio"] == pytest.approx([1.0, 1.0])
    assert len(result["dynamic"]["p50"]) == 2 and all(v > 0 for v in result["dynamic"]["p50"])
    assert result["dynamic"]["ratio"][0] == pytest.approx(result["float32"]["p50"][0] / result["dynamic"]["p50"][0])


def test_benchmarks_md_has_the_summary_table(quick_run):
    out, _ = quick_run
    text = (out / "BENCHMARKS.md").read_text()
    assert "## Summary" in text and "| figure | value | interval / spread | goal | met? |" in text
    assert "Select on validation, report on test" in text and "avx2" in text
    for name in FAST:
        assert f"## {name}:" in text
    assert "(quick)" in text


def test_spread_and_markdown_helpers():
    s = common.spread([4.0, 1.0, 3.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 4.0, 4)
    fig = common.figure("x", "a / b", 2.0, "x", ">= 1x", True, s, ["k", "v"], [["a", 1.5]])
    results = {"date": "d", "quick": False, "seed": 0, "machine": common.machine(), "versions": {},
               "figures": {"x": {**fig, "seconds": 1.0}}}
    md = common.render_markdown(results)
    assert "| a / b | 2x | [1, 4] over 4 | >= 1x | yes |" in md
    assert "| a | 1.5 |" in md


def test_constrained_search_budget_and_space():
    from benchmarks.constrained_search import budget_bytes, space
    from tfopt.tune.spaces import Space

    assert budget_bytes(1000) == 99 and budget_bytes(1001) == 100  # strictly under a tenth
    assert budget_bytes(1_565_659) * 10 < 1_565_659
    full = Space.parse(space())
    assert full.params["quantization"].values == ["int8", "dynamic"] and full.fixed["optimizer"] == "adamw"
    assert Space.parse(space(quick=True)).fixed["quantization"] == "int8"


def test_compression_choice_is_the_smallest_within_a_quarter_point_on_validation():
    from benchmarks import compression

    def row(variant, kind, gzip, val_drop):
        return {"variant": variant, "kind": kind, "gzip_bytes": gzip, "ratio": 1000 / gzip,
                "val_drop_points": val_drop, "val_accuracy": 0.98 - val_drop / 100, "test_delta_points": -0.1}

    rows = [row("float32", "float32", 1000, 0.0), row("fine-tuned float", "reference", 1000, -1.0),
            row("a", "int8", 100, 0.25), row("b", "int4", 20, 0.5), row("c", "int4", 10, 0.625),
            row("d", "int4", 30, 0.0), row("e", "int4", 25, 0.25)]
    assert compression.MAX_DROP == 0.5 and compression.GOAL_RATIO == 40 and compression.SELECT_DROP == 0.25
    # b loses 4 digits of 800: within the 0.5 point allowed on test, not within the choice's 0.25; the reference
    # never counts
    assert compression.choose_best(rows)["variant"] == "e"
    assert [r["variant"] for r in rows if r["frontier"]] == ["b", "c", "d", "e"]  # a: d is smaller and more accurate
    assert [r["within_drop_val"] for r in rows[2:]] == [True, False, False, True, True]
    far = [row("float32", "float32", 1000, 0.0), row("x", "int4", 10, 2.0), row("y", "int4", 20, 1.0)]
    assert compression.choose_best(far)["variant"] == "y"  # none within: the one losing least on validation


def test_compression_int8_layers_are_small_or_sensitive():
    from benchmarks.compression import layer_bits

    scan = {"layers": {"conv1": {"size": 288, "bits": {4: 0.0}}, "dense1": {"size": 400_000, "bits": {4: 0.125}},
                       "dense2": {"size": 30_000, "bits": {4: 0.5}}, "logits": {"size": 1280, "bits": {4: -0.125}}}}
    assert layer_bits(scan) == {"conv1": 8, "dense2": 8, "logits": 8}


def test_structured_choice_is_the_fastest_within_a_quarter_point_on_validation():
    from benchmarks import structured

    def row(name, kind, drop, speed):
        return {"variant": name, "kind": kind, "val_drop_points": drop, "speedup": {"median": speed}}

    rows = [row("base", "baseline", 0.0, 1.0), row("a", "structured", 0.25, 2.0), row("b", "structured", 0.375, 3.0),
            row("c", "combined", 0.25, 4.0), row("d", "magnitude", 0.0, 5.0)]
    assert structured.SELECT_DROP == 0.25 and structured.MAX_DROP == 0.5
    assert structured.choose(rows, ("structured",))["variant"] == "a"  # b loses 3 digits of 800 on validation
    assert structured.choose(rows, ("structured", "combined"))["variant"] == "c"
    assert structured.choose(rows[:1], ("structured",)) is None
