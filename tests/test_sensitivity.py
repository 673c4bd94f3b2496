"""Per-layer sensitivity scan and plan: exact drops on a hand-made model, the plan's arithmetic, bad input; and
prune's budgets="sensitivity" (the prune stage's option): the plan on validation, its report, its refusals."""

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras, tf
from tfopt.compress.sensitivity import fake_quantize, kmeans_1d, layer_budgets, magnitude_prune, sensitivity
from tfopt.errors import ConfigError, DataError


def _model_and_data():
    """Class 1 when 1.5 * x1 > 2 * x0: ``hidden`` computes both (6 of its 8 weights are zero), ``logits`` is the
    identity; every product is one float32 rounding, the same in NumPy and TensorFlow."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.01, 1.0, size=(200, 4)).astype("float32")
    y = (np.float32(1.5) * x[:, 1] > np.float32(2.0) * x[:, 0]).astype("int32")
    model = keras.Sequential([keras.layers.Dense(2, use_bias=False, input_shape=(4,), name="hidden"),
                              keras.layers.Dense(2, use_bias=False, name="logits")])
    model.layers[0].set_weights([np.array([[2.0, 0], [0, 1.5], [0, 0], [0, 0]], "float32")])
    model.layers[1].set_weights([np.eye(2, dtype="float32")])
    return model, tf.data.Dataset.from_tensor_slices((x, y)).batch(64), y


def test_scan_gives_exact_drops_and_restores_the_weights():
    model, val_ds, y = _model_and_data()
    before = [w.copy() for w in model.get_weights()]
    scan = sensitivity(model, val_ds, sparsities=(0.5, 0.8, 0.9), clusters=(3,), bits=(4,))
    assert scan["baseline"] == 1.0 and scan["n"] == 200
    lost = 100.0 * float(np.mean(y == 1))  # every class-1 digit once the x1 weight (1.5) is gone
    hidden, logits = scan["layers"]["hidden"], scan["layers"]["logits"]
    assert hidden["size"] == 8 and logits["size"] == 4
    assert hidden["sparsity"] == {0.5: 0.0, 0.8: 0.0, 0.9: pytest.approx(lost)}  # 7 of 8 zeros takes the 1.5
    assert logits["sparsity"][0.5] == 0.0 and logits["sparsity"][0.9] == pytest.approx(lost)
    assert hidden["clusters"] == {3: 0.0} and hidden["bits"] == {4: 0.0}  # 2 values and the zero: exact
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


def test_scan_of_chosen_layers_and_bad_input():
    model, val_ds, _ = _model_and_data()
    assert list(sensitivity(model, val_ds, sparsities=(0.5,), clusters=(), bits=(), layers=["logits"])["layers"]) \
        == ["logits"]
    with pytest.raises(ConfigError, match="sparsities entry=1.0 is out of range"):
        sensitivity(model, val_ds, sparsities=(0.5, 1.0))
    with pytest.raises(ConfigError, match="bits entry 4.5 is not allowed"):
        sensitivity(model, val_ds, bits=(4.5,))
    with pytest.raises(ConfigError, match="'nope'"):
        sensitivity(model, val_ds, layers=["nope"])
    unlabelled = tf.data.Dataset.from_tensor_slices(np.zeros((4, 4), "float32")).batch(2)
    with pytest.raises(DataError, match=r"val_ds must yield \(x, y\) batches"):
        sensitivity(model, unlabelled)


def test_budgets_by_tolerance_and_by_overall_sparsity():
    scan = {"layers": {
        "conv1": {"size": 100, "sparsity": {0.5: 1.0, 0.9: 20.0}, "clusters": {16: 0.0, 4: 2.0}, "bits": {4: 0.0}},
        "dense": {"size": 900, "sparsity": {0.5: 0.0, 0.9: 0.5, 0.95: 3.0}, "clusters": {16: 0.0, 4: 0.25},
                  "bits": {4: 1.0}},
    }}
    p = layer_budgets(scan, max_drop=0.5)
    assert p["sparsity"] == {"conv1": 0.25, "dense": 0.9} and p["rate"] is None
    assert p["clusters"] == {"conv1": 16, "dense": 4} and p["bits"] == {"conv1": 4, "dense": 8}
    assert p["overall_sparsity"] == pytest.approx((100 * 0.25 + 900 * 0.9) / 1000)
    assert p["predicted_drop"] == pytest.approx(0.5 + 0.5)
    # overall 0.9 = 900 of 1,000 weights: dense's free 450, its next 360 (0.5 point for 360 weights), conv1's 50
    # (1 point for 50), then dense's last 45 (2.5 points) are cheaper per weight than conv1's 40 (19 points)
    p = layer_budgets(scan, target_sparsity=0.9)
    assert p["sparsity"] == {"conv1": 0.5, "dense": 0.9444} and p["overall_sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert p["rate"] == pytest.approx(1000 * 2.5 / (0.05 * 900))
    assert p["clusters"] == {"conv1": 16, "dense": 16} and p["bits"] == {"conv1": 4, "dense": 8}  # no one-shot loss
    assert layer_budgets(scan, target_sparsity=0.5)["sparsity"] == {"conv1": 0.0, "dense": 0.5556}  # free first
    assert layer_budgets(scan, max_drop=100.0, max_sparsity=0.92)["sparsity"] == {"conv1": 0.9, "dense": 0.92}
    assert layer_budgets(scan, target_sparsity=0.915, max_sparsity=0.92)["sparsity"] == {"conv1": 0.87, "dense": 0.92}
    # a drop that falls back at a higher sparsity (noise) does not let a budget jump over the worse point
    bumpy = {"layers": {"d": {"size": 10, "sparsity": {0.5: 2.0, 0.9: 0.0}}}}
    assert layer_budgets(bumpy, max_drop=1.0)["sparsity"] == {"d": 0.25}


def test_budgets_bad_input_names_the_value():
    scan = {"layers": {"d": {"size": 10, "sparsity": {0.5: 0.0, 0.9: 1.0}}}}
    with pytest.raises(ConfigError, match="exactly one of max_drop"):
        layer_budgets(scan)
    with pytest.raises(ConfigError, match="exactly one of max_drop"):
        layer_budgets(scan, max_drop=1.0, target_sparsity=0.5)
    with pytest.raises(ConfigError, match=r"target_sparsity=0.95 is beyond what the scan covers \(at most 0.900"):
        layer_budgets(scan, target_sparsity=0.95)
    with pytest.raises(ConfigError, match="max_drop=-1"):
        layer_budgets(scan, max_drop=-1)
    with pytest.raises(ConfigError, match="sensitivity"):
        layer_budgets({}, max_drop=1.0)


def test_kernel_changes():
    kernel = np.array([[0.1, -0.4], [0.2, 0.8], [0.0, -0.05]], "float32")
    pruned = magnitude_prune(kernel, 0.5)
    assert np.count_nonzero(pruned) == 3 and pruned[1, 1] == np.float32(0.8) and pruned[0, 1] == np.float32(-0.4)
    clustered = kmeans_1d(kernel, 3)
    assert clustered[2, 0] == 0 and len(set(clustered.ravel().tolist())) <= 3
    q = fake_quantize(kernel, 8)
    assert np.abs(q - kernel).max() <= np.abs(kernel).max(axis=0).max() / 127 / 2 + 1e-7


# ---------------------------------------------------------------- prune(budgets="sensitivity") and the prune stage

SENSITIVITY_RECIPE = {
    "name": "sens", "seed": 0, "data": {"name": "digits"},
    "model": {"builder": "cnn", "args": {"filters": [8], "dense": [32]}},
    "training": {"epochs": 2, "batch_size": 32, "optimizer": "adam", "learning_rate": 0.01},
    "stages": ["train", {"prune": {"target_sparsity": 0.8, "budgets": "sensitivity", "epochs": 1}}],
}


def test_prune_stage_with_sensitivity_budgets_reaches_the_overall_target(tmp_path):
    """conv1 (72 weights) and logits (320) cost more accuracy per weight removed than dense1 (4,096): the plan puts
    the zeros in dense1, and the scan is measured on the 288 validation digits (the test split has 360)."""
    from tfopt.compress.inspect import sparsity
    from tfopt.compress.sensitivity import PLAN_SPARSITIES
    from tfopt.pipeline import run_recipe
    from tfopt.saving import load_model

    run_dir = tmp_path / "run"
    results = run_recipe(SENSITIVITY_RECIPE, run_dir=run_dir, verbose=0)
    metrics = results["stages"][1]["metrics"]
    plan, layers = metrics["sensitivity_plan"], metrics["layer_sparsity"]
    assert metrics["budgets"] == "sensitivity" and metrics["target_sparsity"] == 0.8
    assert metrics["sparsity"] == pytest.approx(0.8, abs=0.005) and plan["overall_sparsity"] == pytest.approx(0.8)
    assert sorted(plan["sparsity"]) == sorted(layers) == ["conv1", "dense1", "logits"]
    assert layers["conv1"] < layers["dense1"] and layers["logits"] < layers["dense1"]
    assert layers["dense1"] == pytest.approx(0.8 * 4488 / 4096, abs=0.01)  # all 3,590 zeros in dense1
    for name, budget in plan["sparsity"].items():  # each layer reached its own budget
        assert layers[name] == pytest.approx(budget, abs=0.01)
    assert plan["val_examples"] == 288 and 0.5 < plan["val_accuracy"] <= 1.0
    # the plan is layer_budgets' on the trained model's scan of the same validation split
    train_model = load_model(run_dir / "01_train" / "model.keras")
    _, val_ds, _, _ = tfopt.data.load("digits", batch_size=32, seed=0)
    scan = sensitivity(train_model, val_ds, sparsities=PLAN_SPARSITIES, clusters=(), bits=())
    assert layer_budgets(scan, target_sparsity=0.8)["sparsity"] == plan["sparsity"]
    assert sparsity(load_model(run_dir / "02_prune" / "model.keras"))["overall"] == pytest.approx(metrics["sparsity"])


def test_prune_sensitivity_budgets_bad_combinations_and_no_validation_data():
    from tfopt.compress.prune import prune

    model, val_ds, _ = _model_and_data()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    with pytest.raises(ConfigError, match=r"budgets='sensitivity' plans each layer's sparsity .* "
                                          r"target_sparsity=\{'hidden': 0.5\}"):
        prune(model, val_ds, {"hidden": 0.5}, val_ds=val_ds, budgets="sensitivity")
    with pytest.raises(ConfigError, match=r"budgets='sensitivity' cannot be combined with m_by_n=\(2, 4\)"):
        prune(model, val_ds, 0.5, val_ds=val_ds, budgets="sensitivity", m_by_n=(2, 4))
    with pytest.raises(ConfigError, match="budgets='sensitivity' cannot be combined with policy='xnnpack'"):
        prune(model, val_ds, 0.5, val_ds=val_ds, budgets="sensitivity", policy="xnnpack")
    with pytest.raises(ConfigError, match="budgets='global' is not allowed; allowed: 'uniform', 'sensitivity'"):
        prune(model, val_ds, 0.5, val_ds=val_ds, budgets="global")
    with pytest.raises(ConfigError, match="target_sparsity=0 is out of range"):
        prune(model, val_ds, 0, val_ds=val_ds, budgets="sensitivity")
    with pytest.raises(DataError, match="budgets='sensitivity' needs val_ds.*got val_ds=None"):
        prune(model, val_ds, 0.5, budgets="sensitivity")
    # overall 0.7 of 12 weights: hidden's 6 zeros and another (0.8), then logits' two off-diagonal zeros (0.5)
    with pytest.raises(ConfigError, match="initial_sparsity=0.6 is not below every layer's budget: the sensitivity "
                                          "scan gave 'logits' 0.5"):
        prune(model, val_ds, 0.7, val_ds=val_ds, budgets="sensitivity", initial_sparsity=0.6)


def test_prune_stage_without_validation_data_is_a_data_error(tmp_path):
    """The stage passes its own validation split to the scan: a StageInputs without one fails, naming val_ds."""
    from tfopt.techniques import StageInputs, get_technique

    model, val_ds, _ = _model_and_data()
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    technique = get_technique("prune")
    options = {**{k: f.default for k, f in technique.options.items()}, "target_sparsity": 0.5,
               "budgets": "sensitivity"}
    inputs = StageInputs(model=lambda name=None: model, model_data=None,
                         load=lambda data=None: (val_ds, None, None),  # train, no validation split, info
                         test=None, fresh_data=None, build=None, compile=None, regularize=None, stage_dir=tmp_path,
                         run_dir=tmp_path, backup_dir=tmp_path / "backup", training={}, verbose=0)
    with pytest.raises(DataError, match="needs val_ds, the labelled validation batches"):
        technique.run(inputs, options)
    assert technique.check(options) is None
    assert "target_sparsity={'d': 0.5}" in technique.check({**options, "target_sparsity": {"d": 0.5}})
    assert technique.check({**options, "budgets": "uniform", "m_by_n": [2, 4]}) is None


BAD_STAGES = [
    ("unknown budgets", "  - prune: {target_sparsity: 0.8, budgets: magic}\n",
     ["r.yaml:6:", "stages[1].prune.budgets", "budgets='magic' is not allowed; allowed: 'uniform', 'sensitivity'"]),
    ("budgets a number", "  - prune: {target_sparsity: 0.8, budgets: 3}\n",
     ["r.yaml:6:", "budgets=3 has the wrong type"]),
    ("sensitivity and m_by_n", "  - prune: {target_sparsity: 0.8, budgets: sensitivity, m_by_n: [2, 4]}\n",
     ["r.yaml:6:", "stages[1].prune:", "budgets='sensitivity' cannot be combined with m_by_n=[2, 4]"]),
    ("sensitivity and policy", "  - prune: {target_sparsity: 0.8, budgets: sensitivity, policy: xnnpack}\n",
     ["r.yaml:6:", "budgets='sensitivity' cannot be combined with policy='xnnpack'"]),
    ("sensitivity and a dict", "  - prune:\n      target_sparsity: {dense1: 0.9}\n      budgets: sensitivity\n",
     ["r.yaml:6:", "budgets='sensitivity'", "target_sparsity={'dense1': 0.9}", "r.yaml:7:", "wrong type (dict)"]),
]


@pytest.mark.parametrize("stage,words", [c[1:] for c in BAD_STAGES], ids=[c[0] for c in BAD_STAGES])
def test_bad_budgets_in_a_recipe_is_refused_at_its_line(tmp_path, stage, words):
    from tfopt.pipeline import load_recipe, run_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {name: digits}\nmodel: {builder: cnn}\nstages:\n  - train\n" + stage)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {str(info.value)!r}"
    with pytest.raises(ConfigError, match="r.yaml"):
        run_recipe(path, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_budgets_in_a_recipe_default_to_uniform(tmp_path):
    from tfopt.pipeline import load_recipe

    head = "name: r\ndata: {name: digits}\nmodel: {builder: cnn}\nstages:\n  - train\n"
    (tmp_path / "a.yaml").write_text(head + "  - prune: {target_sparsity: 0.9}\n")
    (tmp_path / "b.yaml").write_text(head + "  - prune: {target_sparsity: 0.9, budgets: sensitivity}\n")
    assert load_recipe(tmp_path / "a.yaml").stage("prune").options["budgets"] == "uniform"
    assert load_recipe(tmp_path / "b.yaml").stage("prune").options["budgets"] == "sensitivity"
