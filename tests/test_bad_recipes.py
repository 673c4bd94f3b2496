"""Hostile and careless recipes, and the API values behind them, as a table: each row names the input, the
tfopt exception it must raise and the words its one-line message must contain. A refused recipe leaves no
manifest.json in the run directory (nothing ran); through ``tfopt run`` it is one line on stderr, exit code 2.

The resource cases (an alias bomb, deep nesting, huge mappings) are refused before the work they would cost:
these tests just assert the refusal; there are no timing assertions.
"""

import numpy as np
import pytest

import tfopt
from tfopt import export, losses, models, optimizers, regularizers, schedules
from tfopt._keras import derive_seed, keras, tf
from tfopt.errors import ConfigError

GOOD = "name: r\ndata: {name: digits}\nmodel: {builder: cnn}\n"
EXPORT = "stages:\n  - train\n  - export: {variants: [{name: f}]}\n"


def _alias_bomb(levels: int = 9) -> str:
    """ "Billion laughs": each level a list of nine aliases of the level below (9**9 strings expanded)."""
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return GOOD + text + f"description: *a{levels}\n"


def _merge_chain(n: int = 400) -> str:
    """Mappings merging the one before (``<<: *m{i-1}``): small text, quadratic when expanded."""
    text = "m0: &m0 {k0: 0}\n" + "".join(f"m{i}: &m{i} {{<<: *m{i - 1}, k{i}: {i}}}\n" for i in range(1, n))
    return GOOD + "description: x\n" + "extra:\n" + "".join("  " + line + "\n" for line in text.splitlines())


RECIPE_CASES = [
    # resource exhaustion: refused before the work, one line naming the file and the limit
    ("alias bomb", _alias_bomb(), ["r.yaml:", "aliases expanded", "at most 50,000"]),
    ("alias chain through merge keys", _merge_chain(), ["r.yaml:", "at most 50"]),
    ("recursive alias", GOOD + "description: &d [1, *d]\n", ["r.yaml:4:", "recursive alias"]),
    ("100k nested brackets", "x: " + "[" * 100_000 + "]" * 100_000 + "\n", ["r.yaml:1:", "at most 50 levels"]),
    ("60 nested mappings", GOOD + "training: " + "{a: " * 60 + "1" + "}" * 60 + "\n", ["r.yaml:4:", "at most 50 levels"]),
    ("300k keys (too many bytes)", "".join(f"k{i}: {i}\n" for i in range(300_000)), ["r.yaml", "1,048,576 bytes"]),
    ("60k values under 1 MiB", GOOD + "description: [" + ",".join(["1"] * 60_000) + "]\n",
     ["r.yaml:4:", "at most 50,000"]),
    ("python object tag", GOOD + "description: !!python/object/apply:os.system ['touch pwned']\n",
     ["r.yaml:4:", "malformed YAML", "python/object"]),
    ("unconstructable scalar", GOOD + "seed: !!int abc\n", ["r.yaml", "malformed YAML", "abc"]),
    # silently accepted before
    ("duplicate key", "name: r\nseed: 1\nseed: 2\ndata: {name: digits}\nmodel: {builder: cnn}\n",
     ["r.yaml:3:", "duplicate key 'seed'", "line 2"]),
    ("duplicate nested key", GOOD + "training:\n  epochs: 1\n  batch_size: 8\n  epochs: 3\n",
     ["r.yaml:7:", "duplicate key 'epochs'", "line 5"]),
    ("beta_1 5.0", GOOD + "training: {optimizer: {name: adam, beta_1: 5.0}}\n",
     ["r.yaml:4:", "training.optimizer.beta_1", "5.0", "0 <= beta_1 < 1"]),
    # seeds
    ("seed -1", "name: r\nseed: -1\ndata: {name: digits}\nmodel: {builder: cnn}\n",
     ["r.yaml:2:", "seed=-1", "0 <= seed < 2**32"]),
    ("seed 2**32", "name: r\nseed: 4294967296\ndata: {name: digits}\nmodel: {builder: cnn}\n",
     ["r.yaml:2:", "seed=4294967296", "2**32"]),
    ("seed '2**32' (a string)", "name: r\nseed: 2**32\ndata: {name: digits}\nmodel: {builder: cnn}\n",
     ["r.yaml:2:", "seed='2**32'", "wrong type"]),
    # non-finite and negative penalties
    ("training l2 .inf", GOOD + "training: {l2: .inf}\n", ["r.yaml:4:", "training.l2", "inf", "finite"]),
    ("training l2 negative", GOOD + "training: {l2: -0.1}\n", ["r.yaml:4:", "training.l2", "-0.1"]),
    ("learning_rate .nan", GOOD + "training: {learning_rate: .nan}\n", ["training.learning_rate", "nan"]),
    ("model l2 .inf", "name: r\ndata: {name: digits}\nmodel: {builder: cnn, args: {l2: .inf}}\n",
     ["r.yaml:3:", "model.args.l2", "inf", "finite"]),
    ("model l2 .nan", "name: r\ndata: {name: digits}\nmodel: {builder: mlp, args: {l2: .nan}}\n",
     ["model.args.l2", "nan"]),
    # builder sizes that cannot work (ResourceExhaustedError before)
    ("kernel_size 100000", "name: r\ndata: {name: digits}\nmodel: {builder: cnn, args: {kernel_size: 100000}}\n",
     ["r.yaml:3:", "model.args.kernel_size", "100000", "8x8 input of conv1"]),
    ("dense 2e9", "name: r\ndata: {name: digits}\nmodel: {builder: cnn, args: {dense: [2000000000]}}\n",
     ["r.yaml:3:", "model.args", "layer 'dense1'", "2000000000", "allowed: at most"]),
    ("distill student too large", GOOD + "stages:\n  - train\n  - distill: {student: {builder: mlp, args: "
     "{units: [2000000000]}}}\n", ["r.yaml:6:", "student", "layer 'dense1'", "allowed: at most"]),
    ("201 hidden layers", "name: r\ndata: {name: digits}\nmodel: {builder: mlp, args: {units: [" +
     ", ".join(["4"] * 201) + "]}}\n", ["model.args", "units has 201 entries", "at most 100"]),
    # LiteRT thread count (the process aborted in LLVM before)
    ("evaluate threads 100000", GOOD + EXPORT + "  - evaluate: {threads: 100000}\n",
     ["r.yaml:7:", "stages[2].evaluate.threads", "100000", "1 <= threads <= 256"]),
    ("evaluate threads 0", GOOD + EXPORT + "  - evaluate: {threads: 0}\n", ["threads=0", "1 <= threads"]),
    ("evaluate runs -1", GOOD + EXPORT + "  - evaluate: {runs: -1}\n", ["runs=-1", "0 <= runs"]),
    # optimizer and schedule options: type and range
    ("beta_1 'x'", GOOD + "training: {optimizer: {name: adam, beta_1: x}}\n",
     ["r.yaml:4:", "training.optimizer.beta_1", "'x'", "wrong type", "0 <= beta_1 < 1"]),
    ("nesterov 'yes'", GOOD + "training: {optimizer: {name: sgd, nesterov: 'yes'}}\n",
     ["training.optimizer.nesterov", "true or false"]),
    ("lion beta_1 0", GOOD + "training: {optimizer: {name: lion, beta_1: 0}}\n", ["beta_1=0", "0 < beta_1 <= 1"]),
    ("epsilon -1", GOOD + "training: {optimizer: {name: adam, epsilon: -1}}\n", ["epsilon=-1", "0 < epsilon"]),
    ("optimizer learning_rate", GOOD + "training: {optimizer: {name: adam, learning_rate: 0.1}}\n",
     ["training.optimizer.learning_rate", "training.learning_rate"]),
    ("warmup_fraction 'x'", GOOD + "training: {schedule: {name: warmup_cosine, warmup_fraction: x}}\n",
     ["r.yaml:4:", "training.schedule.warmup_fraction", "'x'", "0 <= warmup_fraction < 1"]),
    ("warmup_fraction 1.5", GOOD + "training: {schedule: {name: warmup_cosine, warmup_fraction: 1.5}}\n",
     ["warmup_fraction=1.5", "0 <= warmup_fraction < 1"]),
    ("pct_start 2", GOOD + "training: {schedule: {name: one_cycle, pct_start: 2}}\n",
     ["training.schedule.pct_start", "pct_start=2", "0 < pct_start < 1"]),
    ("decay_steps 'ten'", GOOD + "training: {schedule: {name: exponential, decay_rate: 0.5, decay_steps: ten}}\n",
     ["training.schedule.decay_steps", "'ten'", "an integer"]),
    ("focal gamma -1", GOOD + "training: {loss: {name: focal, gamma: -1}}\n", ["training.loss", "gamma=-1"]),
]


def _write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,words", [c[1:] for c in RECIPE_CASES], ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_is_one_line_before_anything_is_written(tmp_path, text, words):
    from tfopt.pipeline import load_recipe, run_recipe

    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    with pytest.raises(ConfigError, match="r.yaml"):
        run_recipe(path, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_good_recipes_with_aliases_merges_and_limits_load(tmp_path):
    from tfopt.pipeline import load_recipe

    text = ("name: r\nseed: 4294967295\ndata: {name: digits}\nmodel: {builder: cnn, args: {kernel_size: 4}}\n"
            "training: {epochs: 1, l2: 1.0e-4, optimizer: &adam {name: adam, beta_1: 0.0},\n"
            "  schedule: {name: warmup_cosine, warmup_fraction: 0.1}}\n"
            "stages:\n  - train\n  - export: {variants: [{name: f}]}\n  - evaluate: {threads: 256}\n")
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.seed == 2**32 - 1 and recipe.training["optimizer"]["beta_1"] == 0.0
    assert [s.options.get("threads") for s in recipe.stages if s.type == "evaluate"] == [256]
    # stage seeds wrap into [0, 2**32) instead of leaving it
    assert derive_seed(recipe.seed, 2) == 1


def test_nesting_limit_is_50_levels():
    from tfopt.pipeline.config._yaml import MAX_DEPTH, parse_yaml

    value, _ = parse_yaml("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n", "r.yaml")
    assert isinstance(value["x"], list)
    with pytest.raises(ConfigError, match="r.yaml:1: .* at most 50 levels"):
        parse_yaml("x: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n", "r.yaml")
    # aliases count as the levels they expand to
    chain = "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, MAX_DEPTH + 1))
    with pytest.raises(ConfigError, match="at most 50 levels"):
        parse_yaml(chain, "r.yaml")


def test_merge_keys_override_without_being_duplicates(tmp_path):
    from tfopt.pipeline.config._yaml import parse_yaml

    value, lines = parse_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, x: 3}\n", "r.yaml")
    assert value["use"] == {"x": 3, "y": 2} and lines[("use",)] == 2


def test_recipe_file_too_long_is_not_read_whole(tmp_path):
    from tfopt.pipeline.config._yaml import MAX_BYTES, read_text

    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (3 * MAX_BYTES) + b"\n")
    with pytest.raises(ConfigError, match=r"big\.yaml: the recipe is 3,145,731 bytes; allowed: at most 1,048,576"):
        read_text(path)


# ---------------------------------------------------------------- the same values through the API
X = np.random.default_rng(0).random((40, 8, 8, 1)).astype("float32")
Y = np.arange(40) % 10
DS = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
IMAGE = dict(input_shape=(8, 8, 1), num_classes=10)


def _demo(tmp_path):
    from tfopt.demo import run_demo

    run_demo(run_dir=tmp_path / "demo", seed=-1)


def _recipe_dict(tmp_path):
    from tfopt.pipeline import run_recipe

    run_recipe({"name": "r", "seed": 2**32, "data": {"name": "digits"}, "model": {"builder": "cnn"}},
               run_dir=tmp_path / "run")


def _search(tmp_path):
    tfopt.tune.search("cnn", DS, DS, directory=tmp_path / "s", max_trials=1, seed=-5)


def _mlp():
    return models.build("mlp", input_shape=(4,), num_classes=2, units=(3,))


API_CASES = [
    # seeds: one validator (tfopt.errors.check_seed) wherever a seed is taken
    ("set_seed -1", lambda p: tfopt.set_seed(-1), ["seed=-1", "0 <= seed < 2**32"]),
    ("set_seed 2**32", lambda p: tfopt.set_seed(2**32), ["seed=4294967296", "2**32"]),
    ("set_seed '3'", lambda p: tfopt.set_seed("3"), ["seed='3'", "wrong type"]),
    ("set_seed 1.5", lambda p: tfopt.set_seed(1.5), ["seed=1.5", "wrong type"]),
    ("data.load seed -1", lambda p: tfopt.data.load("digits", seed=-1), ["seed=-1", "2**32"]),
    ("from_arrays seed 2**32", lambda p: tfopt.data.from_arrays(X, Y, seed=2**32), ["seed=4294967296"]),
    ("run_demo seed -1", _demo, ["seed=-1", "2**32"]),
    ("run_recipe dict seed 2**32", _recipe_dict, ["seed=4294967296", "2**32"]),
    ("tune.search seed -5", _search, ["seed=-5", "2**32"]),
    # penalties
    ("regularizers l2 inf", lambda p: regularizers.apply(_mlp(), l2=float("inf")), ["l2=inf", "finite"]),
    ("regularizers l1 nan", lambda p: regularizers.apply(_mlp(), l1=float("nan")), ["l1=nan"]),
    ("regularizers l2 -1", lambda p: regularizers.apply(_mlp(), l2=-1.0), ["l2=-1.0", "0 <= l2"]),
    ("cnn l2 inf", lambda p: models.build("cnn", **IMAGE, l2=float("inf")), ["l2=inf", "finite"]),
    ("mlp l1 'x'", lambda p: models.build("mlp", **IMAGE, l1="x"), ["l1='x'", "wrong type"]),
    # builder sizes
    ("cnn kernel_size 100000", lambda p: models.build("cnn", **IMAGE, kernel_size=100000),
     ["kernel_size=(100000, 100000)", "8x8 input of conv1"]),
    ("cnn kernel larger than a pooled input", lambda p: models.build("cnn", input_shape=(28, 28, 1), num_classes=10,
                                                                     kernel_size=20),
     ["kernel_size=(20, 20)", "14x14 input of conv2"]),
    ("cnn dense 2e9", lambda p: models.build("cnn", **IMAGE, dense=[2_000_000_000]),
     ["layer 'dense1'", "[256, 2000000000]", "512,000,000,000 parameters", "allowed: at most"]),
    ("cnn filters 2e9", lambda p: models.cnn((8, 8, 1), 10, filters=[2_000_000_000]), ["layer 'conv1'"]),
    ("mlp units 2e9 (called directly)", lambda p: models.mlp((1,), 10, units=[2_000_000_000]),
     ["layer 'dense1'", "2,000,000,000 parameters"]),
    ("mlp 10**10 classes", lambda p: models.build("mlp", input_shape=(4,), num_classes=10**10), ["layer 'logits'"]),
    ("resnet width 1000", lambda p: models.build("resnet", input_shape=(8, 8, 3), num_classes=10, width=1000.0),
     ["layer 'stage1_block1_conv1'", "[3, 3, 64000, 64000]"]),
    ("lstm vocabulary 1e9", lambda p: models.build("lstm", vocab_size=10**9, seq_len=4), ["layer 'embedding'"]),
    ("mlp 101 layers", lambda p: models.build("mlp", **IMAGE, units=[4] * 101), ["units has 101 entries"]),
    # LiteRT threads (checked before the model is even read)
    ("evaluate threads 100000", lambda p: export.evaluate(b"", DS, threads=100_000), ["threads=100000", "<= 256"]),
    ("evaluate threads 0", lambda p: export.evaluate(b"", DS, threads=0), ["threads=0", "1 <= threads"]),
    ("evaluate threads '2'", lambda p: export.evaluate(b"", DS, threads="2"), ["threads='2'", "an integer"]),
    ("latency runs 10**12", lambda p: export.latency(b"", X[0], runs=10**12), ["runs=1000000000000", "<= 1000000"]),
    ("compare limit 0", lambda p: export.compare(_mlp(), b"", DS, limit=0), ["limit=0", "1 <= limit"]),
    # optimizer options, from one table
    ("adam beta_1 'x'", lambda p: optimizers.get("adam", beta_1="x"), ["beta_1='x'", "wrong type", "0 <= beta_1 < 1"]),
    ("adam beta_1 5.0", lambda p: optimizers.get("adam", beta_1=5.0), ["beta_1=5.0", "0 <= beta_1 < 1"]),
    ("adam beta_2 1.0", lambda p: optimizers.get("adam", beta_2=1.0), ["beta_2=1.0", "0 <= beta_2 < 1"]),
    ("adam epsilon 0", lambda p: optimizers.get("adam", epsilon=0), ["epsilon=0", "0 < epsilon"]),
    ("sgd momentum -0.5", lambda p: optimizers.get("sgd", momentum=-0.5), ["momentum=-0.5", "0 <= momentum <= 1"]),
    ("sgd nesterov 'yes'", lambda p: optimizers.get("sgd", nesterov="yes"), ["nesterov='yes'", "true or false"]),
    ("rmsprop rho nan", lambda p: optimizers.get("rmsprop", rho=float("nan")), ["rho=nan"]),
    ("lion beta_1 0", lambda p: optimizers.get("lion", beta_1=0.0), ["beta_1=0.0", "0 < beta_1 <= 1"]),
    ("weight_decay inf", lambda p: optimizers.get("adamw", weight_decay=float("inf")), ["weight_decay=inf"]),
    ("clipnorm 'big'", lambda p: optimizers.get("adam", clipnorm="big"), ["clipnorm='big'", "wrong type"]),
    ("learning_rate inf", lambda p: optimizers.get("adam", learning_rate=float("inf")), ["learning_rate=inf"]),
    ("flat config beta_1 'x'", lambda p: optimizers.get({"name": "nadam", "beta_1": "x"}), ["beta_1='x'"]),
    # schedule options, from one table
    ("warmup_fraction 'x'", lambda p: schedules.check_option("warmup_cosine", "warmup_fraction", "x"),
     ["warmup_fraction='x'", "0 <= warmup_fraction < 1"]),
    ("warmup_steps 'x'", lambda p: schedules.warmup_cosine(0.1, 100, warmup_steps="x"),
     ["warmup_steps='x'", "an integer"]),
    ("total_steps 2.5", lambda p: schedules.warmup_cosine(0.1, 2.5), ["total_steps=2.5", "an integer"]),
    ("base_lr inf", lambda p: schedules.get("exponential", base_lr=float("inf"), decay_steps=10, decay_rate=0.5),
     ["base_lr=inf", "finite"]),
    ("pct_start 1.5", lambda p: schedules.one_cycle(0.1, 100, pct_start=1.5), ["pct_start=1.5", "0 < pct_start < 1"]),
    ("gamma nan", lambda p: schedules.step_decay(0.1, 10, gamma=float("nan")), ["gamma=nan"]),
    ("Warmup steps 0", lambda p: schedules.Warmup(0.1, warmup_steps=0), ["warmup_steps=0", "1 <= warmup_steps"]),
    ("focal gamma 'x'", lambda p: losses.get("focal", gamma="x"), ["gamma='x'", "wrong type"]),
]


@pytest.mark.parametrize("call,words", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_value_through_the_api_is_a_named_config_error(tmp_path, call, words):
    with pytest.raises(ConfigError) as info:
        call(tmp_path)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message
    assert not (tmp_path / "demo").exists() and not (tmp_path / "run" / "manifest.json").exists()


def test_a_refused_weight_takes_no_memory():
    """The budget refuses the weight before TensorFlow allocates it (a 2e12-parameter kernel would need 8 TB)."""
    from tfopt.models.blocks import parameter_budget

    with pytest.raises(ConfigError, match="layer 'huge'"):
        with parameter_budget():
            keras.layers.Dense(2_000_000_000, name="huge")(keras.Input((1000,)))
    with parameter_budget(100):
        keras.layers.Dense(10, name="small")(keras.Input((9,)))  # exactly 100 parameters


# ---------------------------------------------------------------- the command line: one line, exit 2, no manifest
CLI_CASES = ["alias bomb", "100k nested brackets", "duplicate key", "seed -1", "kernel_size 100000",
             "evaluate threads 100000", "beta_1 5.0", "warmup_fraction 'x'"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_tfopt_run_refuses_with_one_line_and_exit_code_2(tmp_path, capsys, monkeypatch, case):
    from tfopt.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    text, words = next(c[1:] for c in RECIPE_CASES if c[0] == case)
    run_dir = tmp_path / "run"
    assert main(["run", str(_write(tmp_path, text)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfopt: error: ConfigError: ") and "Traceback" not in err
    assert all(word in err for word in words), err
    assert not (run_dir / "manifest.json").exists()


def test_tfopt_demo_refuses_a_negative_seed(tmp_path, capsys):
    from tfopt.cli import main

    try:
        code = main(["demo", "--seed", "-1", "--run-dir", str(tmp_path / "demo")])
    except SystemExit as exit_info:  # refused by the argument parser
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert "seed=-1" in err and "2**32" in err
    assert not (tmp_path / "demo").exists()
