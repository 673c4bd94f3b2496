"""Shared checks, after keras-hub's test base: config round trips and save/load round trips."""

from __future__ import annotations

import numpy as np

from tfopt._keras import keras
from tfopt.saving import check_model_file


def run_serialization_test(obj):
    """``obj`` -> get_config -> from_config gives an object with the same config."""
    config = obj.get_config()
    clone = type(obj).from_config(config)
    assert clone.get_config() == config
    return clone


def run_model_saving_test(model, x, tmp_path, atol=1e-6, custom_objects=None):
    """Save ``model`` as .keras, load it back, and check it gives the same outputs on ``x``."""
    path = tmp_path / "model.keras"
    model.save(path)
    assert check_model_file(path, custom_objects=custom_objects) == "keras"  # safe mode accepts it
    loaded = keras.models.load_model(path, custom_objects=custom_objects)
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=atol)
    return loaded


def shuffled_digits(images: bool = True, seed: int = 0):
    """scikit-learn's 1,797 digits scaled to [0, 1] in a fixed shuffled order: (x, y).

    ``images``: 8x8x1 arrays, else flat 64-feature rows.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images[..., None] if images else data.data) / 16.0
    order = np.random.default_rng(seed).permutation(len(data.target))
    return x.astype("float32")[order], data.target.astype("int32")[order]


def cli_error_line(capsys, argv, kind: str = "ConfigError") -> str:
    """Run the ``tfopt`` command with ``argv``: it must exit 2 with exactly one ``tfopt: error: <kind>: ...``
    line on stderr (no traceback), which is returned."""
    from tfopt.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tfopt: error: {kind}: ") and "Traceback" not in err, err
    return lines[0]

