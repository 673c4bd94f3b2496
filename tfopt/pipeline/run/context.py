"""What the stages of one run share: loaded datasets, models by stage name, and building/compiling from a recipe."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tfopt import data as tfdata
from tfopt import models, regularizers
from tfopt._io import atomic_path
from tfopt._keras import keras, set_seed, tf
from tfopt._model import count_steps, is_qat
from tfopt.compress.quantize import save_quantized
from tfopt.errors import ConfigError
from tfopt.pipeline.config.specs import DataSpec, ModelSpec, Recipe
from tfopt.train import compile_from_settings

__all__ = ["Context", "save_model", "load_saved", "apply_determinism"]


def apply_determinism(recipe: Recipe) -> bool:
    """Turn on TensorFlow op determinism when the recipe's ``training.deterministic`` is true.

    With it (and the per-stage seeds), a run killed and resumed ends with the same weights and metrics as
    an uninterrupted one. It is process-wide and cannot be turned off again. Returns whether it is on.

    Args:
        recipe: The validated Recipe.
    """
    if not recipe.training.get("deterministic"):
        return False
    set_seed(recipe.seed)  # op determinism refuses random ops without a seed
    tf.config.experimental.enable_op_determinism()
    return True


def save_model(model, directory: Path) -> Path:
    """Save ``model`` atomically as ``model.keras`` (``model.h5`` for a quantization-aware model, as
    ``tfopt.compress.save_quantized`` writes it). A full disk or a read-only folder raises WriteError and
    leaves no temporary file.
    """
    if is_qat(model):
        path = Path(directory) / "model.h5"
        save_quantized(model, path)  # HDF5 made in memory, then one atomic write
    else:
        path = Path(directory) / "model.keras"
        with atomic_path(path, suffix=".keras") as tmp:
            model.save(tmp)
    return path


def load_saved(path) -> keras.Model:
    """Load a model written by :func:`save_model`."""
    from tfopt.compress.quantize import load_quantized
    from tfopt.saving import load_model

    return load_quantized(path) if str(path).endswith(".h5") else load_model(path)


def _filter_classes(ds, classes, batch_size: int):
    """Keep the rows whose label is in ``classes`` and relabel them 0..len(classes)-1."""
    table = np.full(max(classes) + 1, -1, np.int32)
    table[list(classes)] = np.arange(len(classes), dtype=np.int32)
    table = tf.constant(table)

    def lookup(y):
        y = tf.cast(y, tf.int32)
        inside = tf.logical_and(y >= 0, y < tf.shape(table)[0])
        return tf.where(inside, tf.gather(table, tf.clip_by_value(y, 0, tf.shape(table)[0] - 1)), -1)

    @tf.autograph.experimental.do_not_convert
    def keep(x, y, *weight):
        return lookup(y) >= 0

    @tf.autograph.experimental.do_not_convert
    def relabel(x, y, *weight):  # a balanced train set's sample weight passes through
        return (x, lookup(y), *weight)

    ds = ds.unbatch().filter(keep).map(relabel)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class Context:
    """Datasets and models of one run, loaded once and shared by the stages.

    Args:
        recipe: The validated Recipe.
        run_dir: Path of the run directory.
        verbose: Keras verbosity.
        shared_dir: Path of the run directory all workers share (default ``run_dir``).
        strategy: The tf.distribute strategy the train stages use, or None.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, verbose="auto", shared_dir: Path | None = None,
                 strategy=None):
        self.recipe = recipe
        # made once per process, before any TensorFlow work (a multi-worker strategy must be, and cannot be
        # made twice)
        self.strategy = strategy
        self.run_dir = Path(run_dir)
        # the run directory every worker of a multi-worker run shares (the chief's); run_dir is this
        # process's own (the same, except for non-chief workers)
        self.shared_dir = Path(shared_dir or run_dir)
        self.verbose = verbose
        self._data: dict = {}
        self._models: dict = {}
        self.model_paths: dict = {}
        self.model_data: dict = {}
        self.current: str | None = None
        self.current_data: DataSpec = recipe.data
        self.exported: list = []  # rows of the export stages so far (what evaluate measures)
        self.baseline: str | None = None

    # ------------------------------------------------------------ data
    def load(self, spec: DataSpec | None = None):
        """``(train_ds, val_ds, info)`` of ``spec`` (default: the data the current model is for); its fixed
        test split is :meth:`test`."""
        spec = spec or self.current_data
        key = spec.key()
        if key not in self._data:
            # a fixed global seed while the pipelines are made: their shuffle/augment seeds do not depend
            # on what ran before, so a resumed run sees the same batches as an uninterrupted one
            set_seed(self.recipe.seed)
            t = self.recipe.training
            kw = {k: v for k, v in (("vocab_size", spec.vocab_size), ("seq_len", spec.seq_len)) if v is not None}
            train_ds, val_ds, test_ds, info = tfdata.load(
                spec.name, batch_size=t["batch_size"], val_fraction=spec.val_fraction, augment=t["augment"],
                seed=self.recipe.seed, data_dir=spec.data_dir, cache=spec.cache, balance=spec.balance, **kw)
            if spec.classes:
                train_ds, val_ds, test_ds = (_filter_classes(ds, spec.classes, t["batch_size"])
                                             for ds in (train_ds, val_ds, test_ds))
                counts = tuple(info.class_counts[c] for c in spec.classes) if info.class_counts else None
                n_train, n_val, n_test = (sum(int(b[1].shape[0]) for b in ds) for ds in (train_ds, val_ds, test_ds))
                n_train = sum(counts) if counts else n_train  # rows, not a balanced epoch's draws
                names = tuple(info.class_names[c] for c in spec.classes) if info.class_names else None
                info = dataclasses.replace(info, num_classes=len(spec.classes), n_train=n_train, n_val=n_val,
                                           n_test=n_test, class_names=names, class_counts=counts)
            self._data[key] = (train_ds, val_ds, info, test_ds)
        return self._data[key][:3]

    def test(self, spec: DataSpec | None = None):
        """The fixed test split of ``spec`` (default: the data the current model is for), batched like val:
        what reported accuracies are measured on, never what anything is chosen on."""
        spec = spec or self.current_data
        self.load(spec)
        return self._data[spec.key()][3]

    def fresh_data(self, specs=()) -> None:
        """Forget loaded datasets and load ``specs`` (plus the current data) anew, before a stage's seed is set.

        Each stage gets datasets made afresh (a tf.data shuffle reshuffles per pass, so a dataset reused
        across stages would give a resumed stage other batches than an uninterrupted run).
        """
        self._data.clear()
        for spec in (self.current_data, *specs):
            self.load(spec)

    # ------------------------------------------------------------ models
    def model(self, name: str):
        """The model stage ``name`` produced (loaded from its file when made by an earlier run)."""
        if name not in self._models:
            if name not in self.model_paths:
                raise ConfigError(f"no model from a stage named {name!r}; models: {', '.join(self.model_paths)}")
            self._models[name] = load_saved(self.model_paths[name])
        return self._models[name]

    def set_model(self, name: str, model, path, data_spec: DataSpec) -> None:
        """Record the model stage ``name`` made (``model`` may be None: loaded lazily from ``path``)."""
        if model is not None:
            self._models[name] = model
        self.model_paths[name] = str(path)
        self.model_data[name] = data_spec
        self.current, self.current_data = name, data_spec

    def build(self, spec: ModelSpec, info):
        """Build a builder model whose input shape and class count follow ``info`` unless the recipe fixes them."""
        model = models.build_for(spec.builder, info, **dict(spec.args or {}))
        self.check_fits(model, info, f"model {spec.builder!r}")
        return model

    def check_fits(self, model, info, what: str) -> None:
        """ConfigError unless ``model`` takes ``info``'s inputs and has ``info.num_classes`` outputs."""
        want = tuple(model.input_shape[1:])
        have = (info.seq_len,) if info.kind == "tokens" else tuple(info.input_shape)
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
            raise ConfigError(f"{what} takes inputs of shape {list(want)} but the data {info.name!r} gives "
                              f"{list(have)}; pick matching data or a model that follows the data")
        out = model.output_shape[-1]
        if out != info.num_classes and not (out == 1 and info.num_classes == 2):
            raise ConfigError(f"{what} outputs {out} classes but the data {info.name!r} has {info.num_classes}")

    def source_model(self):
        """The recipe's saved model (``model.path``), checked against the data."""
        model = load_saved(self.recipe.model.path)
        _, _, info = self.load(self.recipe.data)
        self.check_fits(model, info, f"model {self.recipe.model.path!r}")
        return model

    # ------------------------------------------------------------ training settings
    def compile(self, model, train_ds, epochs: int) -> None:
        """Compile ``model`` with the recipe's optimizer, learning-rate schedule and loss."""
        compile_from_settings(model, self.recipe.training, count_steps(train_ds), epochs)

    def regularize(self, model):
        """The model with the recipe's L1/L2 kernel penalties (unchanged when both are 0)."""
        t = self.recipe.training
        return regularizers.apply(model, l1=t["l1"], l2=t["l2"]) if (t["l1"] or t["l2"]) else model
