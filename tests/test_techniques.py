"""The technique registry: each technique declared once, and what recipes, the runner, the tuner and the command
line derive from it. A technique defined here, in a user's module, is registered through the public API and used
in recipes like a built-in one: it costs this module only."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

import tfopt
from tfopt import compress, distribute, schedules
from tfopt._keras import keras
from tfopt._model import compile_like, is_qat, weight_count
from tfopt.errors import ConfigError
from tfopt.options import FLOAT, Field, Number, check_value, options_from, signature_default
from tfopt.pipeline import load_recipe, run_recipe
from tfopt.pipeline.config import sections
from tfopt.techniques import (
    TECHNIQUES, StageResult, Technique, get_technique, list_techniques, register_technique, unregister_technique,
)
from tfopt.tune import training as tune_training

BUILT_IN = ("train", "tune", "search_compression", "prune_channels", "factorize", "prune", "cluster", "quantize_aware",
            "quantize_aware_int4",
            "distill", "fine_tune", "export", "evaluate")


# ---------------------------------------------------------------- a technique of the user's own (this module)


def scale_weights(model, factor: float = 0.5):
    """A copy of ``model`` with every weight multiplied by ``factor`` (compiled like ``model``)."""
    copy = keras.models.clone_model(model)
    copy.set_weights([w * factor for w in model.get_weights()])
    return compile_like(copy, model)


def _run_scale(inputs, options):
    model = scale_weights(inputs.model(), options["factor"])
    _, val_ds, _ = inputs.load()
    return StageResult(model, {"factor": options["factor"], **inputs.held_out(model, val_ds)},
                       f"weights x{options['factor']}")


SCALE = Technique("scale_weights",
                  options_from(scale_weights, ["factor"], factor={"check": Number(0, 2, low_open=True)}),
                  _run_scale, summary="multiply every weight by a factor", function=scale_weights, trains=False)


@pytest.fixture
def scale():
    """``scale_weights`` registered through the public API for one test, then removed."""
    register_technique(SCALE)
    yield SCALE
    unregister_technique("scale_weights")


RECIPE = {"name": "scaled", "seed": 0, "data": {"name": "digits"},
          "model": {"builder": "mlp", "args": {"units": [8]}},
          "training": {"epochs": 1, "batch_size": 64},
          "stages": ["train", {"scale_weights": {"factor": 0.5}}]}

YAML = """\
name: scaled
data: {name: digits}
model:
  builder: mlp
  args: {units: [8]}
stages:
  - train
  - scale_weights:
      factor: 3.0
"""


# ---------------------------------------------------------------- declarations


@pytest.mark.parametrize("name", BUILT_IN)
def test_options_default_to_what_the_function_takes(name):
    t = get_technique(name)
    assert t.function is not None and t.summary and t.options
    params = inspect.signature(t.function).parameters
    for option, field in t.options.items():
        default = signature_default(t.function, option)
        if option in t.own_defaults:  # a recipe default that differs on purpose, and says why
            assert default is inspect.Parameter.empty or field.default != default, f"{name}.{option}"
            assert field.help, f"{name}.{option}: say why its default differs from {t.function.__name__}'s"
        elif option in params and not field.required:
            assert field.default == default, f"{name}.{option}: {field.default!r} != {default!r}"
    assert set(t.own_defaults) <= set(t.options)


def test_allowed_values_come_from_the_library():
    assert get_technique("cluster").options["init"].choices == tuple(compress.INITS)
    assert get_technique("tune").options["algorithm"].choices == tuple(tfopt.tune.ORACLES)
    assert sections.TRAINING["augment"].choices == tuple(tfopt.data.AUGMENTATIONS)
    assert sections.TRAINING["strategy"].choices == tuple(distribute.STRATEGIES)
    assert tuple(sections.VARIANT["quantization"].choices) == ("float32", "dynamic", "float16", "int8", "int16x8", "int4",
                                                                "int4_weight_only", "int4_block32")
    check_value("quantization", get_technique("export").tune_keys["quantization"], "int16x8")  # tune too


def test_derived_tables_are_the_registry(scale):
    assert set(BUILT_IN) | {"scale_weights"} == set(list_techniques())
    assert sections.STAGE_TYPES == tuple(list_techniques())
    assert sections.STAGE_OPTIONS == {n: {"name": sections.NAME, **get_technique(n).options} for n in list_techniques()}
    assert sections.MODEL_STAGES == tuple(n for n in list_techniques() if TECHNIQUES[n].makes_model)
    assert set(sections.MODEL_STAGES) == set(BUILT_IN) - {"export", "evaluate"} | {"scale_weights"}
    keys = {k for t in TECHNIQUES.values() for k in t.tune_keys}
    assert set(tfopt.tune.COMPRESSION_KEYS) == keys == {"target_sparsity", "prune_epochs", "n_clusters",
                                                        "cluster_epochs", "quantization", "channel_fraction",
                                                        "channel_epochs", "channel_importance", "factorize_energy",
                                                        "factorize_epochs", "layer_bits"}
    assert set(tfopt.tune.spaces.per_layer_keys()) == {"target_sparsity", "n_clusters", "layer_bits"}
    assert "scale_weights" in tfopt.pipeline.STAGES


def test_registration_refuses_what_cannot_work():
    with pytest.raises(ConfigError, match="technique name 'Bad-Name' is not allowed"):
        register_technique(Technique("Bad-Name", {}, _run_scale))
    with pytest.raises(ConfigError, match="unknown states \\['sharpened'\\]"):
        register_technique(Technique("sharpen", {}, _run_scale, sets=("sharpened",)))
    with pytest.raises(ConfigError, match="already registered"):
        register_technique(dataclasses.replace(get_technique("prune"), run=_run_scale))
    with pytest.raises(ConfigError, match="unknown technique 'nosuch'; allowed: train"):
        get_technique("nosuch")


# ---------------------------------------------------------------- a user's technique in recipes


def test_user_technique_is_validated_at_its_line(scale, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(YAML)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message == f"{path}:9: stages[1].scale_weights.factor: factor=3.0 is out of range; allowed: 0 < factor <= 2"
    with pytest.raises(ConfigError, match=r"unknown key 'gain' in stage 'scale_weights'; allowed: name, factor"):
        load_recipe({**RECIPE, "stages": ["train", {"scale_weights": {"gain": 2}}]})
    # where it may stand comes from its declaration: it makes a model (so not after an export), does not train
    with pytest.raises(ConfigError, match="stages\\[2\\]: scale_weights: 'scale_weights' after 'export'"):
        load_recipe({**RECIPE, "stages": ["train", {"export": {"variants": [{"name": "f"}]}}, "scale_weights"]})
    recipe = load_recipe({**RECIPE, "stages": ["train", {"quantize_aware": {"epochs": 0}}, "scale_weights"]})
    assert recipe.stages[2].options == {"factor": 0.5}  # the function's default; allowed after QAT (no training)


def test_user_technique_runs_in_a_recipe(scale, tmp_path):
    results = run_recipe(RECIPE, run_dir=tmp_path, verbose=0)
    assert [s["type"] for s in results["stages"]] == ["train", "scale_weights"]
    assert results["stages"][1]["metrics"]["factor"] == 0.5
    trained = keras.models.load_model(tmp_path / "01_train" / "model.keras")
    scaled = keras.models.load_model(tmp_path / "02_scale_weights" / "model.keras")
    for before, after in zip(trained.get_weights(), scaled.get_weights()):
        np.testing.assert_allclose(after, before * 0.5, rtol=1e-6)


def test_register_stage_is_the_same_registry():
    from tfopt.pipeline import register_stage

    register_stage("halve", {"factor": Field((FLOAT,), 0.5)}, summary="halve the weights", trains=False)(_run_scale)
    try:
        assert get_technique("halve").run is _run_scale
        assert load_recipe({**RECIPE, "stages": ["train", "halve"]}).stages[1].type == "halve"
    finally:
        unregister_technique("halve")
    assert "halve" not in tfopt.pipeline.STAGES


# ---------------------------------------------------------------- the command line


def test_techniques_command_lists_every_technique(scale, capsys):
    from tfopt.cli import main

    assert main(["techniques"]) == 0
    out = capsys.readouterr().out
    for name in list_techniques():
        assert f"\n{name}: " in "\n" + out, name
    assert "factor: number, default 0.5; allowed: 0 < value <= 2" in out
    assert "target_sparsity: number, required; allowed: 0 <= value < 1" in out


@pytest.mark.parametrize("item, words", [
    ("prune.epochs=x", ["r.yaml:", "stages[1].prune.epochs: epochs='x' has the wrong type (str); allowed: integer"]),
    ("prune.bogus=1", ["unknown key 'bogus' in stage 'prune'"]),
    ("pruen.epochs=1", ["a stage 'pruen' the recipe does not have", "train, prune"]),
    ("prune=3", ["--set 'prune=3' is not allowed; allowed: STAGE.OPTION=VALUE"]),
])
def test_run_set_is_validated_by_the_declarations(tmp_path, capsys, monkeypatch, item, words):
    from tfopt.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    path = tmp_path / "r.yaml"
    path.write_text(YAML.replace("scale_weights:\n      factor: 3.0", "prune: {target_sparsity: 0.5}"))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--set", item]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("tfopt: error: ConfigError: "), err
    assert all(word in err for word in words), err
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_set_overrides_options():
    from tfopt.pipeline.config.recipe import parse_set

    overrides = parse_set(["prune.epochs=3", "prune.m_by_n=[2, 4]", "cluster.init=linear"])
    recipe = load_recipe({**RECIPE, "stages": ["train", {"prune": {"target_sparsity": 0.5}}, "cluster"]},
                         overrides=overrides)
    assert recipe.stage("prune").options["epochs"] == 3 and recipe.stage("prune").options["m_by_n"] == [2, 4]
    assert recipe.stage("cluster").options["init"] == "linear"


# ---------------------------------------------------------------- the tuner's compression chain


def test_tuner_chain_applies_techniques_in_tune_order(monkeypatch):
    calls = []

    def recorder(name):
        def apply(model, train_ds, strategy=None, verbose=0, **options):
            calls.append((name, options))
            return model
        return apply

    for name in ("prune", "cluster"):
        monkeypatch.setitem(TECHNIQUES, name, dataclasses.replace(TECHNIQUES[name], apply=recorder(name)))
    assert [t.name for t in tune_training.chain()] == ["prune_channels", "factorize", "prune", "cluster"]
    settings = {"n_clusters": 8, "cluster_epochs": 2, "target_sparsity": 0.5, "prune_epochs": 3}
    tune_training.compress("model", None, settings)
    assert calls == [("prune", {"target_sparsity": 0.5, "epochs": 3}),
                     ("cluster", {"n_clusters": 8, "epochs": 2, "preserve_sparsity": True})]
    calls.clear()
    tune_training.compress("model", None, {"n_clusters": 8, "target_sparsity": 0.0})  # 0: prune is off
    assert calls == [("cluster", {"n_clusters": 8, "preserve_sparsity": False})]
    # a technique registered later joins the chain at its tune_order
    shrink = Technique("shrink", {"keep": Field((FLOAT,), 1.0)}, _run_scale, tune_keys={"shrink_keep": "keep"},
                       tune_order=15, apply=recorder("shrink"))
    monkeypatch.setitem(TECHNIQUES, "shrink", shrink)
    assert [t.name for t in tune_training.chain()] == ["prune_channels", "factorize", "prune", "shrink", "cluster"]
    assert "shrink_keep" in tfopt.tune.COMPRESSION_KEYS


# ---------------------------------------------------------------- one home each


def _dense():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(keras.layers.Dense(5)(inputs)))


def test_is_qat_and_weight_count_one_rule():
    plain = _dense()
    assert not is_qat(plain)
    annotated = tfopt._keras.tfmot.quantization.keras.quantize_annotate_model(_dense())
    assert not is_qat(annotated)  # annotated only: no quantizer yet
    qat = compress.quantize_aware(plain, None, epochs=0)
    assert is_qat(qat)
    assert weight_count(plain) == (4 * 5 + 5 + 5 * 3 + 3, 4 * 5 + 5 * 3)  # biases start at zero
    assert weight_count(qat)[0] == weight_count(plain)[0]  # tfmot's ranges and step counters are not weights


def test_one_schedule_vocabulary():
    warm = schedules.from_settings("warmup_cosine", 0.1, 100)  # warms up over 10% of the run unless told
    assert float(warm(0)) == 0.0 and float(warm(5)) == pytest.approx(0.05) and float(warm(10)) == pytest.approx(0.1)
    no_warm = schedules.from_settings({"name": "warmup_cosine", "warmup_fraction": 0}, 0.1, 100)
    assert float(no_warm(0)) == pytest.approx(0.1)
    assert float(schedules.from_settings("cosine", 0.1, 100)(0)) == pytest.approx(0.1)
    assert float(schedules.from_settings("exponential", 0.1, 100)(100)) == pytest.approx(0.01)
    assert schedules.from_settings(None, 0.1, 100) == 0.1
    with pytest.raises(ConfigError, match="schedule='nosuch' is unknown"):
        schedules.from_settings("nosuch", 0.1, 100)


def test_recipes_and_searches_compile_alike():
    from tfopt.pipeline.run.context import Context

    recipe = load_recipe({**RECIPE, "training": {"optimizer": {"name": "adamw", "weight_decay": 1e-4},
                                                 "learning_rate": 2e-3, "label_smoothing": 0.1,
                                                 "schedule": "warmup_cosine"}, "stages": ["train"]})
    a, b = _dense(), _dense()
    Context(recipe, "unused").compile(a, tfopt._keras.tf.data.Dataset.range(10).batch(1), 2)
    tune_training.compile_model(b, {"optimizer": "adamw", "weight_decay": 1e-4, "learning_rate": 2e-3,
                                    "label_smoothing": 0.1, "schedule": "warmup_cosine"}, 10, 2)
    assert a.optimizer.get_config() == b.optimizer.get_config()
    assert a.loss.get_config() == b.loss.get_config()


def test_build_for_fills_what_the_data_decides():
    import types

    from tfopt.models import build_for

    image = types.SimpleNamespace(kind="image", num_classes=3, input_shape=(8, 8, 1), vocab_size=None, seq_len=None)
    assert build_for("cnn", image, filters=(4,), dense=(8,)).output_shape == (None, 3)
    tokens = types.SimpleNamespace(kind="tokens", num_classes=2, input_shape=(12,), vocab_size=50, seq_len=12)
    model = build_for("lstm", tokens, units=(4,))
    assert model.input_shape == (None, 12) and model.output_shape == (None, 2)
    assert build_for("mlp", image, num_classes=5, units=(4,)).output_shape == (None, 5)  # given args win
