"""Shared fixtures: every test starts from the same seeds and a fresh Keras session; the session's temporary files
(ours, TensorFlow's AutoGraph sources, those of every process a test starts) go to a folder of its own under
pytest's base temp, which pytest rotates, never to the system's temp folder."""

import os
import tempfile

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


@pytest.fixture(scope="session", autouse=True)
def _session_temp(tmp_path_factory):
    temp = tmp_path_factory.mktemp("tmp")
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(temp)
    yield temp
    if before[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before[0]
    tempfile.tempdir = before[1]
