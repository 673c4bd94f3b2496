"""Shared fixtures: every test starts from the same seeds and a fresh Keras session."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import tfopt  # noqa: E402
from tfopt._keras import keras  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    keras.backend.clear_session()
    tfopt.set_seed(0)
    yield
