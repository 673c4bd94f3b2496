"""4-bit weights through the LiteRT quantizer: to_tflite(model, "int4" | "int4_weight_only" | "int4_block32",
layer_bits=...), measured with LiteRT on real digits and read back from the file."""

import logging
import re

import numpy as np
import pytest

import tfopt
from tfopt._keras import keras
from tfopt.compress import cluster, prune
from tfopt.errors import ConfigError, ExportError
from tfopt.export import (QUANTIZATIONS, VARIANT, evaluate, quantize_tflite, tflite_weight_bits, tflite_weights,
                          to_tflite, weight_stats)
from tfopt.cli import main
from tfopt.options import check_value
from tfopt.techniques import get_technique

_CACHE = {}


def _exit_code(argv) -> int:
    """What ``tfopt ARGV`` exits with: main's return, or argparse's exit for a value it refuses."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


def _digits():
    if "data" not in _CACHE:
        _CACHE["data"] = tfopt.data.load("digits", batch_size=32)
    return _CACHE["data"]


def _mlp():
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Flatten(name="flat")(inp)
    h = keras.layers.Dense(64, activation="relu", name="hidden")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h))


def _trained_mlp():
    """A small MLP after 3 epochs on the digits (weights cached across tests)."""
    train_ds, *_ = _digits()
    model = _mlp()
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    if "weights" not in _CACHE:
        model.fit(train_ds, epochs=3, verbose=0)
        _CACHE["weights"] = [w.copy() for w in model.get_weights()]
    model.set_weights(_CACHE["weights"])
    return model


def _kernel_bits(content) -> dict:
    """Bits per value of each kernel (the weight input of each FULLY_CONNECTED/CONV op), by Keras layer name."""
    bits = tflite_weight_bits(content)
    return {name.split("/")[-2]: b for name, b in bits.items() if name.count("/") >= 2 and name.endswith(
        ("MatMul", "Conv2D"))}


def test_the_int4_quantizations_are_in_the_registry_recipes_tune_and_the_cli(tmp_path, capsys):
    int4s = {"int4", "int4_weight_only", "int4_block32"}
    assert int4s <= set(QUANTIZATIONS)
    assert int4s <= set(VARIANT["quantization"].choices)
    assert int4s <= set(get_technique("export").tune_keys["quantization"].choices)
    _trained_mlp().save(tmp_path / "m.keras")
    assert main(["export", str(tmp_path / "m.keras"), "--quantization", "int4", "--data", "digits"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert set(_kernel_bits((tmp_path / "m.int4.tflite").read_bytes()).values()) == {4}


def test_export_command_takes_layer_bits_and_refuses_bad_ones_in_one_line(tmp_path, capsys):
    _trained_mlp().save(tmp_path / "m.keras")
    out = tmp_path / "m.tflite"
    args = ["export", str(tmp_path / "m.keras"), "--quantization", "int4", "--output", str(out)]
    assert main([*args, "--layer-bits", "hidden=8,logits=float"]) == 0
    assert _kernel_bits(out.read_bytes()) == {"hidden": 8, "logits": 32}
    out.unlink()
    capsys.readouterr()
    for extra, words in [(["--layer-bits", "hidden=3"], "'hidden=3' is not allowed; allowed: LAYER=BITS pairs"),
                         (["--layer-bits", "hidden=8,hidden=4"], "'hidden' twice is not allowed"),
                         (["--layer-bits", "nothing=8"], "layer_bits names 'nothing', not a layer of the model"),
                         (["--quantization", "dynamic", "--layer-bits", "hidden=8"],
                          "layer_bits needs an int4 quantization")]:
        code = _exit_code([*args, *extra])
        err = capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


@pytest.mark.parametrize("quantization", ["int4", "int4_weight_only"])
def test_int4_files_are_accurate_on_test_digits_and_smaller(quantization):
    _, _, test_ds, _ = _digits()
    model = _trained_mlp()
    f32 = evaluate(to_tflite(model), test_ds, runs=0)
    tfl = to_tflite(model, quantization)
    i4 = evaluate(tfl, test_ds, runs=0)
    assert tfl.quantization == quantization
    assert f32["accuracy"] > 0.8  # 3 epochs; ~0.93 measured
    assert i4["accuracy"] > 0.5 and i4["accuracy"] >= f32["accuracy"] - 0.1  # chance is 0.1
    assert i4["bytes"] < f32["bytes"] / 3  # 4 bits where float32 spent 32 (scales, biases and the graph stay)
    assert set(_kernel_bits(tfl.content).values()) == {4}
    assert weight_stats(tfl.content, min_size=64)["bits"] == {"int4": 2}


def test_layer_bits_keep_chosen_layers_at_8_bits_or_float():
    model = _trained_mlp()
    assert _kernel_bits(to_tflite(model, "int4", layer_bits={"logits": 8}).content) == {"hidden": 4, "logits": 8}
    assert _kernel_bits(to_tflite(model, "int4", layer_bits={"hidden": None}).content) == {"hidden": 32, "logits": 4}
    _, _, test_ds, _ = _digits()
    mixed = to_tflite(model, "int4_weight_only", layer_bits={"hidden": 8})
    assert _kernel_bits(mixed.content) == {"hidden": 8, "logits": 4}
    assert evaluate(mixed, test_ds, runs=0)["accuracy"] > 0.5


def test_block_wise_int4_quantizes_a_zero_channel_per_channel_and_runs_in_xnnpack(caplog):
    """A fully pruned output channel gives its blocks the scale 0, which XNNPACK refuses (and the builtin kernels
    turn into wrong outputs): that op is quantized per channel instead."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="relu", name="pruned")(inp)
    model = keras.Model(inp, keras.layers.Dense(32, name="dense")(hidden))
    kernel, bias = model.get_layer("pruned").get_weights()
    kernel[:, 3] = 0  # output channel 3: all zeros
    model.get_layer("pruned").set_weights([kernel, bias])
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    with caplog.at_level(logging.WARNING, logger="tfopt.export.tflite"):
        tfl = to_tflite(model, "int4_block32")
        out = tfl.predict(x)
    assert tfl.notes == ["quantized per channel instead of per block of 32: FULLY_CONNECTED 'pruned' (a block of 32 "
                         "zeros would get the scale 0)"]
    assert not any("could not prepare" in r.message for r in caplog.records)  # XNNPACK took it
    assert np.isfinite(out).all() and np.abs(out - model.predict(x, verbose=0)).max() < 0.5
    assert tflite_weights(tfl.content)["model/pruned/MatMul"][3].tolist() == [0] * 64
    assert _kernel_bits(tfl.content) == {"pruned": 4, "dense": 4}  # the other Dense is block-wise


def test_block_wise_int4_quantizes_kernels_without_whole_blocks_per_channel():
    """The quantizer refuses block-wise scales for a kernel whose inputs are not a multiple of 32 (LeNet's 784, 300
    and 100; a Dense on 24 features): that op is quantized per channel, the others block-wise, with a note."""
    inp = keras.Input((64,))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Dense(40, name="d40")(inp)))
    x = np.random.default_rng(0).random((8, 64), dtype=np.float32)
    tfl = to_tflite(model, "int4_block32")
    assert tfl.notes == ["quantized per channel instead of per block of 32: FULLY_CONNECTED 'logits' (40 inputs, "
                         "not a multiple of 32)"]
    assert _kernel_bits(tfl.content) == {"d40": 4, "logits": 4}
    assert np.abs(tfl.predict(x) - model.predict(x, verbose=0)).max() < 0.5


def test_a_quantizer_failure_is_an_export_error_naming_the_op_and_its_layer(monkeypatch):
    """No model on hand makes the LiteRT quantizer 0.11 fail once kernels without whole blocks go per channel, so
    one failure is simulated where the quantizer runs: the error names the op and its Keras layer (not the
    'Tensordot' of its tensor's name) and the way out, which works."""
    from tfopt.export import int4

    inp = keras.Input((6, 24))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Dense(16, name="hidden")(inp)))
    real_recipe, real_quantize = int4._recipe, int4._quantize

    def quantize(content, recipe):  # the last entry matching an op's outputs wins, as in the quantizer
        entries, scheme = recipe
        for op in int4._weight_ops(content):
            matching = [bits for regex, bits, _ in entries if re.search(regex, op.scope)]
            if "logits" in op.kernel and matching and matching[-1] is not None:
                raise ValueError("simulated: no kernel for this op")
        return real_quantize(content, real_recipe(scheme, entries))

    monkeypatch.setattr(int4, "_recipe", lambda scheme, entries: (entries, scheme))
    monkeypatch.setattr(int4, "_quantize", quantize)
    with pytest.raises(ExportError, match=r"the LiteRT quantizer cannot quantize the FULLY_CONNECTED op of layer "
                                          r"'logits' \(kernel model/logits/Tensordot/MatMul\) with "
                                          r"quantization='int4': ValueError: simulated: no kernel for this op; use "
                                          r"quantization='dynamic' \(int8\), or leave that layer float with "
                                          r"layer_bits=\{'logits': None\}"):
        to_tflite(model, "int4")
    tfl = to_tflite(model, "int4", layer_bits={"logits": None})  # what the message says works
    bits = tflite_weight_bits(tfl.content)
    assert bits["model/hidden/Tensordot/MatMul"] == 4 and bits["model/logits/Tensordot/MatMul"] == 32


def test_the_kernels_in_a_grus_loop_are_its_own_for_layer_bits_and_read_back():
    """A GRU's kernels sit in the file's loop subgraph as ``while/MatMul``: they are found by value as the GRU's, so
    ``layer_bits`` (and layer_budgets' plan) can name the GRU, and weight_stats reads them back."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 12))
    hidden = keras.layers.Dropout(0.1, name="drop")(keras.layers.GRU(32, name="gru")(inp))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(hidden))
    x = np.random.default_rng(0).random((4, 10, 12), dtype=np.float32)
    four = to_tflite(model, "int4")
    mixed = to_tflite(model, "int4", layer_bits={"gru": 8})
    bits = tflite_weight_bits(mixed.content)
    loop = {name: bits[name] for name in tflite_weights(mixed.content) if name.startswith("while/")}
    assert sorted(loop.values()) == [8, 8]  # the kernel and the recurrent kernel, read from the loop subgraph
    assert weight_stats(four.content, min_size=16)["bits"] == {"int4": 3}  # both loop kernels and the logits
    assert weight_stats(mixed.content, min_size=16)["bits"] == {"int4": 1, "int8": 2}
    assert np.abs(mixed.predict(x) - model.predict(x, verbose=0)).max() < 0.2
    with pytest.raises(ConfigError, match=r"layer_bits names 'drop', which has no weight op .*; layers with weight "
                                          r"ops: gru, logits$"):
        to_tflite(model, "int4", layer_bits={"drop": 8})


def test_a_fused_lstm_is_left_float_with_a_note_and_a_plan_naming_it_still_exports():
    """TFLite fuses an LSTM into one op the quantizer does not take: its weights stay float32, a note names it, and a
    sensitivity plan's bits for it (layer_budgets names every layer with a kernel) are noted, not a ConfigError."""
    keras.utils.set_random_seed(0)
    model = tfopt.models.build("lstm", input_shape=(12, 6), num_classes=3)
    tfl = to_tflite(model, "int4", layer_bits={"lstm1": 4, "logits": 8})
    assert any(re.search(r"left float32.*'lstm1' \(LSTM\)", note) for note in tfl.notes)
    assert any("layer_bits['lstm1']=4 not applied" in note for note in tfl.notes)
    bits = tflite_weight_bits(tfl.content)
    stored = {name: bits[name] for name, value in tflite_weights(tfl.content).items() if value.size >= 4 * 6}
    assert sorted(stored.values()).count(8) == 1 and 4 not in stored.values()  # logits at 8 bits, the LSTM float
    x = np.random.default_rng(0).random((1, 12, 6), dtype=np.float32)
    assert np.abs(tfl.predict(x) - model.predict(x, verbose=0)).max() < 0.1
    plain = to_tflite(model, "int4", layer_bits={"lstm1": None})  # left float as asked: nothing to say about it
    assert not any("not applied" in note for note in plain.notes)


def test_an_embedding_table_is_named_as_left_float_in_an_int4_file():
    model = keras.Sequential([keras.layers.Embedding(50, 8, input_length=16, name="emb"), keras.layers.Flatten(),
                              keras.layers.Dense(3, name="logits")])
    tfl = to_tflite(model, "int4")
    assert tfl.notes == ["left float32, the quantizer takes none of their ops (a fused LSTM, an Embedding's GATHER): "
                         "'emb' (Embedding)"]
    assert sorted(tflite_weight_bits(tfl.content)[name] for name in tflite_weights(tfl.content)) == [4, 32]


def test_ops_without_a_4_bit_kernel_are_stored_in_8_bits_and_named_and_a_bidirectional_gru_is_4_bit():
    """A transposed convolution and a separable convolution's depthwise half are outside the quantizer's int4
    policy: they are stored in 8 bits (they were once left float32) and a note names them; layer_bits None leaves
    one float32. A Bidirectional GRU's loop kernels are 4-bit (found by the kernels they store: the loop's ops are
    named ``while/...``): no note."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2DTranspose(4, 3, name="up")(inp)
    h = keras.layers.SeparableConv2D(8, 3, name="sep")(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h)))
    tfl = to_tflite(model, "int4")
    assert tfl.notes == ["stored in 8 bits, the quantizer's int4 policy has no 4-bit kernel for them: "
                         "CONV_2D_TRANSPOSE 'up'; DEPTHWISE_CONV_2D 'sep' (layer_bits={layer: None} leaves them "
                         "float32)"]
    stored = tflite_weights(tfl.content)
    bits = {name: tflite_weight_bits(tfl.content)[name] for name in stored if stored[name].size >= 32}
    assert sorted(bits.values()) == [4, 4, 8, 8]  # logits and the pointwise half 4-bit; the two named 8-bit
    eight = to_tflite(model, "int4", layer_bits={"up": 8, "sep": 8})  # asked: no note
    assert eight.notes == []
    bits = {name: tflite_weight_bits(eight.content)[name] for name in stored if stored[name].size >= 32}
    assert sorted(bits.values()) == [4, 8, 8, 8]  # the pointwise half follows its layer's entry too
    kept = to_tflite(model, "int4", layer_bits={"up": None})
    assert kept.notes == ["stored in 8 bits, the quantizer's int4 policy has no 4-bit kernel for them: "
                          "DEPTHWISE_CONV_2D 'sep' (layer_bits={layer: None} leaves them float32)"]
    bits = {name: tflite_weight_bits(kept.content)[name] for name in stored if stored[name].size >= 32}
    assert sorted(bits.values()) == [4, 4, 8, 32]
    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    assert np.abs(tfl.predict(x) - model.predict(x, verbose=0)).max() < 0.2
    inp = keras.Input((8, 8))
    gru = keras.layers.Bidirectional(keras.layers.GRU(16), name="bigru")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(gru))
    tfl = to_tflite(model, "int4")
    assert tfl.notes == ["converted with a fixed batch 1 concrete function"]
    loop = [tflite_weight_bits(tfl.content)[name] for name in tflite_weights(tfl.content) if name.startswith("while/")]
    assert loop == [4, 4, 4, 4]  # each direction's kernel and recurrent kernel
    eight = to_tflite(model, "int4", layer_bits={"bigru": 8})  # the Bidirectional named: both directions
    assert [tflite_weight_bits(eight.content)[name] for name in tflite_weights(eight.content)
            if name.startswith("while/")] == [8, 8, 8, 8]
    x = np.random.default_rng(0).random((1, 8, 8), dtype=np.float32)
    assert np.abs(tfl.predict(x) - model.predict(x, verbose=0)).max() < 0.2


def test_layer_names_holding_a_slash_are_found_in_notes_and_layer_bits():
    """MobileNetV3 names its layers ``expanded_conv/depthwise``: such a name is one layer, not two path parts (the
    note once named a depthwise op by the ReLU fused after it)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 1, name="block/expand")(inp)
    h = keras.layers.ReLU(name="block/relu")(keras.layers.DepthwiseConv2D(3, name="block/depthwise")(h))
    model = keras.Model(inp, keras.layers.Dense(10, name="head")(keras.layers.Flatten()(h)))
    tfl = to_tflite(model, "int4")
    assert tfl.notes == ["stored in 8 bits, the quantizer's int4 policy has no 4-bit kernel for them: "
                         "DEPTHWISE_CONV_2D 'block/depthwise' (layer_bits={layer: None} leaves them float32)"]
    mixed = to_tflite(model, "int4", layer_bits={"block/depthwise": 8, "block/expand": None})
    assert mixed.notes == []
    stored = tflite_weights(mixed.content)
    bits = {name: tflite_weight_bits(mixed.content)[name] for name in stored if stored[name].size >= 24}
    assert sorted(bits.values()) == [4, 8, 32]  # the head, the depthwise kernel, the expansion left float


def test_a_clustered_model_keeps_at_most_16_values_per_kernel_in_the_int4_file():
    """Pruned, clustered to 16 values per kernel, int4 per channel: read back from the file, each kernel holds at
    most 16 values, every pruned weight is still 0, and no channel holds more values than its clusters."""
    train_ds, _, test_ds, _ = _digits()
    pruned = prune(_trained_mlp(), train_ds, 0.8, epochs=2, verbose=0)
    clustered = cluster(pruned, train_ds, n_clusters=16, preserve_sparsity=True, verbose=0)
    tfl = to_tflite(clustered, "int4")
    stats = weight_stats(tfl.content, min_size=64)
    assert stats["bits"] == {"int4": 2} and stats["max_values_per_kernel"] <= 16
    stored = tflite_weights(tfl.content)
    for layer in ("hidden", "logits"):
        kernel = clustered.get_layer(layer).kernel.numpy().T  # as TFLite stores it: [out, in]
        codes = stored[f"model/{layer}/MatMul"]
        assert np.unique(kernel).size <= 16
        assert np.array_equal(codes[kernel == 0], np.zeros(int((kernel == 0).sum()), np.int8))  # zeros stay zeros
        assert all(np.unique(c).size <= np.unique(k).size for c, k in zip(codes, kernel))  # codes never split
    assert stats["sparsity"] >= 0.75
    assert evaluate(tfl, test_ds, runs=0)["accuracy"] > 0.3  # measured, never assumed; chance is 0.1


@pytest.mark.parametrize("kwargs,error,match", [
    ({"quantization": "int4", "layer_bits": {"nope": 8}}, ConfigError, r"layer_bits names 'nope', not a layer of the "
                                                                        r"model; layers: flat, hidden, "),
    ({"quantization": "int4", "layer_bits": {"hidden": 3}}, ConfigError, r"layer_bits\['hidden'\]=3 is not allowed; "
                                                                         r"allowed: a layer name mapped to 4, 8 or None"),
    ({"quantization": "int4", "layer_bits": {"flat": 8}}, ConfigError, r"layer_bits names 'flat', which has no weight "
                                                                       r"op in the TFLite file"),
    ({"quantization": "dynamic", "layer_bits": {"hidden": 8}}, ConfigError, r"layer_bits needs an int4 quantization"),
    ({"quantization": "int4", "sparse": True}, ConfigError, r"sparse=True does not go with quantization='int4'"),
    ({"quantization": "int4", "io_dtype": "int8"}, ConfigError, r"io_dtype='int8' needs quantization='int8'"),
    ({"quantization": "int3"}, ConfigError, r"quantization='int3' is not allowed; allowed: .*'int4'"),
])
def test_bad_int4_arguments_are_config_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        to_tflite(_mlp(), **kwargs)


def test_quantize_tflite_takes_a_float_file_and_refuses_other_quantizations():
    content = to_tflite(_mlp()).content
    quantized, notes = quantize_tflite(content, "int4_weight_only")
    assert notes == [] and set(_kernel_bits(quantized).values()) == {4}
    with pytest.raises(ConfigError, match=r"quantization='int8' is not allowed here; allowed: 'int4', "):
        quantize_tflite(content, "int8")


def test_recipe_variants_check_layer_bits():
    assert check_value("layer_bits", VARIANT["layer_bits"], {"conv1": 8, "dense": None}) == {"conv1": 8, "dense": None}
    for bad in ({"conv1": 2}, {"conv1": 4.0}, {"conv1": True}):
        with pytest.raises(ConfigError, match=r"layer_bits=.* allowed: a mapping of layer name to 4, 8 or None"):
            check_value("layer_bits", VARIANT["layer_bits"], bad)


def test_an_op_the_quantizer_still_leaves_float_is_read_back_from_the_file_and_named(monkeypatch):
    """Should the quantizer's policy change (simulated: tfopt believes a depthwise convolution takes 4 bits), the
    op it skips is found by reading the written file back, not predicted, and named."""
    from tfopt.export import int4

    monkeypatch.setattr(int4, "_policy_takes", lambda mode, op_name, bits: True)
    inp = keras.Input((8, 8, 2))
    h = keras.layers.DepthwiseConv2D(3, name="dw")(inp)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(h)))
    tfl = to_tflite(model, "int4")
    assert tfl.notes == ["left float32 by the quantizer (not in its int4 policy): DEPTHWISE_CONV_2D 'dw'"]
    assert sorted(tflite_weight_bits(tfl.content)[name] for name, value in tflite_weights(tfl.content).items()
                  if value.size >= 18) == [4, 32]
