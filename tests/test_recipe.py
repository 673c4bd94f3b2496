"""Recipe validation: every shipped recipe loads; every kind of error is reported at once with its line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tfopt.errors import ConfigError
from tfopt.pipeline import load_recipe
from tfopt.pipeline.config.recipe import merge

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def _problems(err: ConfigError) -> dict:
    """{line number: message line} of a ConfigError's problem lines."""
    out = {}
    for line in str(err).splitlines()[1:]:
        m = re.match(r"\s+\S+?:(\d+): (.*)", line)
        assert m, line
        out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


GOOD = """\
name: tiny
seed: 3
data:
  name: digits
model:
  builder: cnn
  args: {filters: [8], dense: [16]}
training:
  epochs: 2
stages:
  - train
  - prune: {target_sparsity: 0.5}
  - export:
      variants:
        - {name: float32, model: train}
        - {name: pruned_int8, quantization: int8}
"""


def test_every_shipped_recipe_validates():
    names = {p.stem for p in RECIPES}
    assert {"mnist_cnn", "cifar_resnet", "text_lstm", "lenet_300_100", "distill_cnn", "fine_tune", "demo"} <= names
    for path in RECIPES:
        recipe = load_recipe(path)
        assert recipe.name == path.stem
        assert recipe.stages[0].type in ("train", "tune")
        assert recipe.stages[-1].type == "evaluate"  # every recipe measures what it exported
        assert [s.index for s in recipe.stages] == list(range(1, len(recipe.stages) + 1))
        assert len(recipe.hash) == 16 and recipe.hash == load_recipe(path).hash


def test_lenet_recipe_resolves_compression_chain():
    recipe = load_recipe(RECIPES[[p.stem for p in RECIPES].index("lenet_300_100")])
    assert [s.dirname for s in recipe.stages] == ["01_train", "02_prune", "03_cluster", "04_quantize_aware",
                                                  "05_export", "06_evaluate"]
    assert recipe.stage("prune").options["target_sparsity"] >= 0.9
    qat = recipe.stage("quantize_aware").options
    assert qat["preserve_sparsity"] is True and qat["preserve_clusters"] is True
    variants = {v["name"]: v for v in recipe.stage("export").options["variants"]}
    assert variants["pcqat_int8"]["tflite_quantization"] == "int8" and variants["float32"]["tflite_quantization"] is None


def test_implicit_train_and_evaluate_and_defaults(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD.replace("  - train\n", "")))
    assert [(s.name, s.implicit) for s in recipe.stages] == [
        ("train", True), ("prune", False), ("export", False), ("evaluate", True)]
    export = recipe.stage("export").options
    assert export["baseline"] == "float32"
    assert [v["model"] for v in export["variants"]] == ["train", "prune"]  # default: the latest model
    assert recipe.stage("prune").options["epochs"] == 2 and recipe.seed == 3


def test_overrides_merge_into_sections_and_stages(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD), overrides={"training": {"epochs": 1}, "stages": {"prune": {"epochs": 1}}})
    assert recipe.training["epochs"] == 1 and recipe.stage("prune").options["epochs"] == 1
    assert recipe.stage("prune").options["target_sparsity"] == 0.5  # untouched keys kept
    assert load_recipe(_write(tmp_path, GOOD)).hash != recipe.hash
    assert merge({"stages": ["train"]}, {"stages": {"prune": {"epochs": 1}}}) == {"stages": ["train"]}


def test_many_errors_at_once_with_line_numbers(tmp_path):
    text = """\
name: tiny
seed: -1
data:
  name: digits
  bogus: 1
model:
  builder: cnn
  args: {filterz: [8]}
training:
  epochs: two
  optimizer: adamx
stages:
  - prune: {target_sparsity: 1.5}
  - shrink
"""
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, text))
    lines = _problems(info.value)
    assert str(info.value).startswith("7 problem(s) in recipe")
    assert "seed=-1" in lines[2][0] and "seed:" in lines[2][0]
    assert "data.bogus: unknown key 'bogus'" in lines[5][0]
    assert "model.args.filterz" in lines[8][0] and "filterz" in lines[8][0]
    assert "training.epochs: epochs='two' has the wrong type" in lines[10][0]
    assert "optimizer='adamx' is unknown" in lines[11][0]
    assert "stages[0].prune.target_sparsity: target_sparsity=1.5 is out of range" in lines[13][0]
    assert "unknown stage 'shrink'" in lines[14][0]


def test_stage_order_errors_name_their_lines(tmp_path):
    text = """\
name: tiny
data: {name: digits}
model: {builder: mlp}
stages:
  - evaluate
  - train
  - export:
      variants: [{name: float32}]
  - quantize_aware: {epochs: 1}
  - cluster: {preserve_sparsity: true}
"""
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, text))
    lines = _problems(info.value)
    assert "put an 'export' stage before it" in lines[5][0]
    assert "'quantize_aware' after 'export'" in lines[9][0]
    assert any("'cluster' after 'quantize_aware'" in m for m in lines[10])
    assert any("preserve_sparsity: true needs an earlier 'prune'" in m for m in lines[10])


def test_needs_a_trained_model_and_variant_model_names(tmp_path):
    text = """\
name: tiny
data: {name: digits}
model: {builder: mlp}
stages:
  - prune: {target_sparsity: 0.5}
  - train
  - export:
      baseline: nope
      variants:
        - {name: a, model: distill}
        - {name: a, quantization: int3}
"""
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, text))
    lines = _problems(info.value)
    assert "'prune' needs a trained model" in lines[5][0]
    assert "model='distill' is not an earlier stage" in lines[10][0]
    joined = " ".join(lines[11])
    assert "quantization='int3' is not allowed" in joined and "variant name 'a' is used twice" in joined
    assert "baseline='nope' is not a variant" in lines[8][0]


def test_path_escaping_names_refused(tmp_path):
    text = """\
name: ../../etc
data: {name: digits}
model: {builder: mlp}
stages:
  - train: {name: /abs/train}
  - export:
      variants: [{name: ../up}]
"""
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, text))
    lines = _problems(info.value)
    assert "name='../../etc'" in lines[1][0] and "inside the run directory" in lines[1][0]
    assert "name='/abs/train'" in lines[5][0]
    assert "name='../up'" in lines[7][0]


def test_model_that_the_data_cannot_feed(tmp_path):
    text = GOOD.replace("args: {filters: [8], dense: [16]}", "args: {input_shape: [28, 28, 1], num_classes: 3}")
    with pytest.raises(ConfigError) as info:
        load_recipe(_write(tmp_path, text))
    lines = _problems(info.value)
    assert "input_shape=[28, 28, 1] does not match the data 'digits'" in " ".join(lines[7])
    assert "num_classes=3 does not match" in " ".join(lines[7]) and "10 classes" in " ".join(lines[7])
    # the data override is checked the same way: a fixed 8x8 input cannot take mnist_5k
    fixed = GOOD.replace("args: {filters: [8], dense: [16]}", "args: {input_shape: [8, 8, 1]}")
    assert load_recipe(_write(tmp_path, fixed)).data.name == "digits"
    with pytest.raises(ConfigError, match=r"input_shape=\[8, 8, 1\] does not match the data 'mnist_5k'"):
        load_recipe(_write(tmp_path, fixed), data="mnist_5k")


def test_data_override_drops_text_options_and_follows_data():
    text_lstm = RECIPES[[p.stem for p in RECIPES].index("text_lstm")]
    assert load_recipe(text_lstm).data.vocab_size == 10000
    recipe = load_recipe(text_lstm, data="mnist_rows")
    assert (recipe.data.name, recipe.data.vocab_size, recipe.data.seq_len) == ("mnist_rows", None, None)
    from tfopt.data import load
    from tfopt.pipeline.run.context import Context

    info = load("mnist_rows", batch_size=32).info
    model = Context(recipe, Path("unused")).build(recipe.model, info)
    assert model.input_shape == (None, 28, 28) and model.output_shape == (None, 10)


def test_malformed_and_empty_yaml_name_file_and_line(tmp_path):
    path = _write(tmp_path, "name: x\ndata: {name: digits\nmodel: {builder: mlp}\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r":\d+: malformed YAML"):
        load_recipe(path)
    path.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r":1: the recipe is empty"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe must be a mapping"):
        load_recipe(path)


def test_missing_sections_and_dict_recipes_without_lines():
    with pytest.raises(ConfigError) as info:
        load_recipe({"name": "x", "stages": "train"})
    message = str(info.value)
    assert "needs the key 'data'" in message and "needs the key 'model'" in message
    assert "stages='train' has the wrong type" in message and "<dict>: " in message


def test_saved_model_path_must_exist(tmp_path):
    text = GOOD.replace("  builder: cnn\n  args: {filters: [8], dense: [16]}\n", "  path: nowhere.keras\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:6: model.path: model.path='nowhere.keras' does not exist"):
        load_recipe(_write(tmp_path, text))


def test_tune_stage_needs_tfopt_tune_search(tmp_path):
    import tfopt.tune

    text = GOOD.replace("  - train\n", "  - tune: {space: cnn, max_trials: 2}\n").replace("model: train", "model: tune")
    if getattr(tfopt.tune, "search", None) is None:
        with pytest.raises(ConfigError, match=r"recipe.yaml:11: stages\[0\].tune: .*tfopt.tune.search"):
            load_recipe(_write(tmp_path, text))
    else:
        recipe = load_recipe(_write(tmp_path, text))
        assert recipe.stages[0].type == "tune" and recipe.stages[0].options["max_trials"] == 2
