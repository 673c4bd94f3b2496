"""tfopt.compress.cluster and tfopt.compress.inspect.cluster_counts on a tiny CNN trained on 8x8 digits."""

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights

from tests.helpers import run_model_saving_test
from tests.test_prune import accuracy, build_cnn, digits, trained_cnn
import tfopt
from tfopt._keras import keras
from tfopt.compress.cluster import cluster
from tfopt.compress.inspect import cluster_counts, sparsity
from tfopt.compress.prune import prune
from tfopt.errors import ConfigError, UnsupportedLayerError

KERNELS = ("conv1", "conv2", "dense_x", "logits")


def _kernel(model, name):
    return model.get_layer(name).kernel.numpy()


def test_cluster_limits_distinct_values_and_keeps_accuracy(tmp_path):
    train, _, x_val, y_val = digits()
    model = trained_cnn()
    before = [w.copy() for w in model.get_weights()]
    clustered = cluster(model, train, n_clusters=8, verbose=0)

    counts = cluster_counts(clustered)["layers"]
    for name in KERNELS:
        distinct = np.unique(_kernel(clustered, name)).size
        assert counts[name] == distinct and 2 <= distinct <= 8, (name, distinct)
        assert np.unique(_kernel(model, name)).size > 8  # the original had many more values
    assert accuracy(clustered, x_val, y_val) > 0.5
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert not any(isinstance(layer, ClusterWeights) for layer in clustered.layers)
    loaded = run_model_saving_test(clustered, x_val[:16], tmp_path)
    assert cluster_counts(loaded)["layers"] == counts


def test_per_channel_clustering_limits_each_output_channel():
    train, *_ = digits()
    clustered = cluster(trained_cnn(), train, n_clusters=4, init="linear", per_channel=True, verbose=0)
    counts = cluster_counts(clustered)
    for name in ("conv1", "conv2"):
        kernel = _kernel(clustered, name)
        per_channel = [np.unique(kernel[..., c]).size for c in range(kernel.shape[-1])]
        assert max(per_channel) <= 4 and counts["per_channel"][name] == max(per_channel)
        assert np.unique(kernel).size > 4  # different centroids in different channels
    for name in ("dense_x", "logits"):  # per_channel only applies to Conv2D
        assert np.unique(_kernel(clustered, name)).size <= 4


def test_preserve_sparsity_keeps_the_zeros_of_a_pruned_model():
    train, _, x_val, y_val = digits()
    pruned = prune(trained_cnn(), train, 0.7, verbose=0)
    zeros_before = {name: _kernel(pruned, name) == 0 for name in KERNELS}
    clustered = cluster(pruned, train, n_clusters=8, preserve_sparsity=True, verbose=0)
    after = sparsity(clustered)["layers"]
    for name in KERNELS:
        assert np.all(_kernel(clustered, name)[zeros_before[name]] == 0), name  # every pruned weight stays 0
        assert after[name] >= sparsity(pruned)["layers"][name] - 0.005
        assert np.unique(_kernel(clustered, name)).size <= 8
    assert accuracy(clustered, x_val, y_val) > 0.4  # chance is 0.1; 0.68-0.80 over seeds


def test_layers_selection_clusters_only_the_chosen_layer():
    train, *_ = digits()
    model = trained_cnn()
    clustered = cluster(model, train, n_clusters=4, layers=["dense_x"], verbose=0)
    counts = cluster_counts(clustered)["layers"]
    assert counts["dense_x"] <= 4
    assert counts["conv2"] > 100 and counts["logits"] > 100


def test_cluster_counts_matches_numpy_on_known_kernels():
    model = keras.Sequential(
        [keras.layers.Conv2D(2, 1, input_shape=(3, 3, 2), name="c"), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    kernel = np.array([1.0, 2.0, 3.0, 3.0], "float32").reshape(1, 1, 2, 2)  # channel 0: {1, 3}, 1: {2, 3}
    model.get_layer("c").set_weights([kernel, np.zeros(2, "float32")])
    counts = cluster_counts(model)
    assert counts["layers"]["c"] == 3 and counts["per_channel"] == {"c": 2}


@pytest.mark.parametrize(
    "kwargs,error,named",
    [
        ({"n_clusters": 1}, ConfigError, "n_clusters=1"),
        ({"n_clusters": 2, "preserve_sparsity": True}, ConfigError, "n_clusters=2"),
        ({"n_clusters": 8.0}, ConfigError, "n_clusters=8.0"),
        ({"init": "kmeans"}, ConfigError, "'kmeans++'"),
        ({"epochs": 0}, ConfigError, "epochs=0"),
        ({"layers": ["nope"]}, ConfigError, "'nope'"),
        ({"layers": ["flat"]}, UnsupportedLayerError, "flat"),
    ],
)
def test_bad_arguments_raise_with_the_value_named(kwargs, error, named):
    train, *_ = digits()
    with pytest.raises(error) as err:
        cluster(build_cnn(), train, verbose=0, **kwargs)
    assert named in str(err.value)
    if kwargs.get("init"):
        assert "init='kmeans'" in str(err.value)


def test_model_without_clusterable_layer_raises():
    train, *_ = digits()
    flat_only = keras.Sequential([keras.layers.Flatten(input_shape=(8, 8, 1)), keras.layers.Activation("relu")])
    with pytest.raises(UnsupportedLayerError, match="no clusterable layer"):
        cluster(flat_only, train, verbose=0)


def test_a_clustered_nested_model_saves_and_loads_back_as_keras_and_h5(tmp_path):
    """strip_clustering leaves the layers of nested sub-models with weights named "kernel:0": two in one sub-model
    made .h5 saving fail ("name already exists"); cluster returns a model whose weights have their layers' names."""
    from tfopt.saving import load_model

    train, _, x_val, _ = digits()
    backbone_in = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(backbone_in)
    h = keras.layers.Conv2D(8, 3, activation="relu", name="conv2")(h)
    backbone = keras.Model(backbone_in, keras.layers.Flatten(name="flat")(h), name="backbone")
    head = keras.Sequential([keras.layers.Dense(16, activation="relu", name="dense_a"),
                             keras.layers.Dense(16, activation="relu", name="dense_b")], name="head")
    inp = keras.Input((8, 8, 1))
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(head(backbone(inp))))
    clustered = cluster(model, train, n_clusters=4, init="linear", verbose=0)

    names = [w.name for w in clustered.weights]
    assert len(set(names)) == len(names) and "conv2/kernel:0" in names and "dense_b/kernel:0" in names
    counts = cluster_counts(clustered)["layers"]
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"clustered{suffix}"
        clustered.save(path)
        loaded = load_model(path)
        np.testing.assert_allclose(loaded.predict(x_val[:16], verbose=0), clustered.predict(x_val[:16], verbose=0),
                                   atol=1e-6)
        assert cluster_counts(loaded)["layers"] == counts


def test_the_cluster_stage_names_the_layers_tfmot_cannot_cluster(tmp_path):
    """tfmot clusters no weight of a position embedding (nor of a DepthwiseConv2D): the cluster stage's metrics (and
    its progress line) name such a layer (it was left unclustered without a word); a Bidirectional LSTM's four kernels are
    clustered and counted (cluster_counts once read its unbuilt template layer and counted none)."""
    from tfopt.pipeline import run_recipe

    recipe = {"name": "small", "seed": 0, "data": {"name": "mnist_rows"},
              "model": {"builder": "transformer", "args": {"num_layers": 1, "num_heads": 2, "embed_dim": 16,
                                                          "mlp_dim": 16}},
              "training": {"epochs": 1, "batch_size": 256},
              "stages": ["train", {"cluster": {"n_clusters": 4, "epochs": 1}}]}
    stage = run_recipe(recipe, run_dir=tmp_path / "t", verbose=0)["stages"][1]
    left = stage["metrics"]["left_unclustered"]
    assert list(left.values()) == ["tfmot clusters no weight of AddPositionEmbedding layers"]
    assert "logits" in stage["metrics"]["cluster_counts"]
    keras.utils.set_random_seed(0)
    model = tfopt.models.build("lstm", input_shape=(28, 28), num_classes=10, units=[8], bidirectional=True)
    train_ds = tfopt.data.load("mnist_rows", batch_size=256)[0]
    counts = cluster_counts(cluster(model, train_ds, n_clusters=4, epochs=1, verbose=0))["layers"]
    assert sum(name.startswith("bilstm1/") for name in counts) == 4 and max(counts.values()) <= 4
