"""Readable logs: verbose="auto" is Keras's progress bar on a terminal and one line per epoch elsewhere."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap

import pytest

from tfopt.errors import ConfigError
from tfopt.progress import keras_verbose


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_auto_is_the_bar_on_a_terminal_and_epoch_lines_elsewhere(monkeypatch):
    assert keras_verbose("auto", stream=FakeStream(tty=True)) == 1
    assert keras_verbose("auto", stream=FakeStream(tty=False)) == 2
    assert keras_verbose("auto", stream=object()) == 2  # no isatty at all: not a terminal
    monkeypatch.setattr(sys, "stdout", FakeStream(tty=True))  # the default stream is sys.stdout, read per call
    assert keras_verbose("auto") == 1
    monkeypatch.setattr(sys, "stdout", FakeStream(tty=False))
    assert keras_verbose() == 2


@pytest.mark.parametrize("tty", [True, False])
@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_an_explicit_verbose_is_kept(verbose, tty):
    assert keras_verbose(verbose, stream=FakeStream(tty)) == verbose


@pytest.mark.parametrize("bad", ["loud", 3, -1, None])
def test_a_bad_verbose_is_refused(bad):
    with pytest.raises(ConfigError, match=rf"verbose={bad!r} is not allowed; allowed: 'auto', 0, 1, 2"):
        keras_verbose(bad)


SCRIPT = textwrap.dedent("""
    import numpy as np
    import tfopt
    from tfopt._keras import keras

    x = np.random.default_rng(0).random((64, 4)).astype("float32")
    y = (x.sum(axis=1) > 2).astype("int32")
    train_ds, val_ds = tfopt.data.from_arrays(x, y, batch_size=8, kind="features", seed=0)[:2]

    def model():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(2, name="logits")(inputs))

    print("== fit auto", flush=True)
    tfopt.train.fit(model(), train_ds, val_ds, epochs=2)
    print("== distill auto", flush=True)
    tfopt.compress.distill(model(), model(), train_ds, epochs=2)
    print("== fit 1", flush=True)
    tfopt.train.fit(model(), train_ds, val_ds, epochs=2, verbose=1)
    print("== end", flush=True)
""")


@pytest.fixture(scope="module")
def piped_output():
    """What a 2-epoch fit (and distill) prints when stdout is a pipe, split at the '== ...' markers."""
    run = subprocess.run([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=300)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    out = run.stdout.decode()
    parts = {}
    for block in out.split("== ")[1:]:
        name, _, body = block.partition("\n")
        parts[name] = body
    assert list(parts) == ["fit auto", "distill auto", "fit 1", "end"], out
    return parts


@pytest.mark.parametrize("part", ["fit auto", "distill auto"])
def test_auto_into_a_pipe_prints_one_line_per_epoch(piped_output, part):
    body = piped_output[part]
    assert not any(c in body for c in "\r\b━") and "[=" not in body, repr(body)
    lines = body.splitlines()
    assert [line for line in lines if line.startswith("Epoch ")] == ["Epoch 1/2", "Epoch 2/2"], lines
    epoch_lines = [line for line in lines if " - loss: " in line]
    assert len(epoch_lines) == 2 and all(re.match(r"(\d+)/\1 - ", line) for line in epoch_lines), lines
    assert len(lines) == 4, lines  # nothing else: "Epoch k/2" and its one summary line, twice


def test_verbose_1_keeps_the_progress_bar_even_into_a_pipe(piped_output):
    body = piped_output["fit 1"]
    assert "\r" in body and "[==============================]" in body, repr(body)
