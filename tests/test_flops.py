"""tfopt.flops: multiply-adds counted from the layer graph, checked against hand counts and published figures."""

import pytest

from tfopt._keras import keras
from tfopt.flops import flops, flops_by_layer


def test_conv_dense_counts_by_hand():
    m = keras.Sequential([keras.layers.Conv2D(8, 3, padding="same", input_shape=(10, 10, 2), name="c"),
                          keras.layers.DepthwiseConv2D(3, name="dw"),
                          keras.layers.SeparableConv2D(4, 3, name="sep"),
                          keras.layers.Flatten(), keras.layers.Dense(5, name="d")])
    assert flops_by_layer(m) == {"c": 3 * 3 * 2 * 8 * 100, "dw": 3 * 3 * 8 * 64,
                                 "sep": 3 * 3 * 8 * 36 + 8 * 4 * 36, "d": 6 * 6 * 4 * 5}


def test_recurrent_and_attention_counts_by_hand():
    m = keras.Sequential([keras.Input((28, 28)), keras.layers.LSTM(32, name="lstm"), keras.layers.Dense(10)])
    assert flops_by_layer(m)["lstm"] == 28 * 4 * (28 + 32) * 32
    query, value = keras.Input((10, 16)), keras.Input((7, 12))
    out = keras.layers.MultiHeadAttention(4, 8, name="mha")(query, value)
    # projections q 10*16*32, k and v 7*12*32, scores and weighted sum 4*10*7*(8+8), output 10*32*16
    assert flops(keras.Model([query, value], out)) == 5120 + 2 * 2688 + 4480 + 5120


def test_shared_layer_counts_each_call_and_nested_models_are_named():
    inner = keras.Sequential([keras.layers.Dense(3, input_shape=(4,), name="inner_dense")], name="inner")
    x = keras.Input((4,))
    shared = keras.layers.Dense(4, name="shared")
    y = inner(shared(shared(x)))
    assert flops_by_layer(keras.Model(x, y)) == {"shared": 2 * 16, "inner/inner_dense": 12}


@pytest.mark.parametrize("name, millions", [("MobileNetV2", 300.8), ("ResNet50", 3858.0)])
def test_keras_applications_match_published_multiply_adds(name, millions):
    # MobileNetV2 (Sandler et al. 2018, Table 3): 300M multiply-adds at 224x224; ResNet50: 3.86G
    model = getattr(keras.applications, name)(input_shape=(224, 224, 3), weights=None)
    assert flops(model) / 1e6 == pytest.approx(millions, rel=1e-3)


def test_non_keras_model_is_refused():
    with pytest.raises(Exception, match="flops"):
        flops(object())
