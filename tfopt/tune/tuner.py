"""The keras-tuner search layer for tf_keras models: :func:`search` and the :class:`TfoptTuner` behind it.

keras-tuner 1.4's ``Tuner`` imports Keras 3 and rejects tf_keras models, but its oracles and
``BaseTuner`` are framework-free: :class:`TfoptTuner` is a ``BaseTuner`` whose ``run_trial`` builds,
trains, compresses and measures a tf_keras model and returns its metrics. It honours Hyperband's
``tuner/epochs``, ``tuner/initial_epoch`` and ``tuner/trial_id``: a trial promoted to a higher round
resumes from its parent's saved weights and trains only epochs ``initial_epoch .. epochs``.

Each trial folder (``directory/project_name/trial_<id>``) holds keras-tuner's ``trial.json``, tfopt's
``tfopt_trial.json`` (metrics, errors, who ran it), ``model_weights.h5`` (the scored model's weights, HDF5)
and, when compression changed the model, ``trained_weights.h5`` (what a Hyperband child resumes from).
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import keras_tuner
from keras_tuner.engine import base_tuner
from keras_tuner.engine import hyperparameters as hp_module

from tfopt import _faults
from tfopt._io import atomic_path, write_json
from tfopt._private import private
from tfopt._keras import derive_seed, keras, set_seed
from tfopt._model import private_copy
from tfopt.errors import TrainingError
from tfopt.options import ANY, LIST, MAP, NONE, Field, at_least, options_from
from tfopt.techniques import StageResult, Technique, register_technique
from tfopt.tune import objectives as objs
from tfopt.tune import training
from tfopt.tune.oracles import ORACLES, is_infeasible, save_state
from tfopt.tune.results import SIDECAR

__all__ = ["TfoptTuner", "WEIGHTS", "TRAINED_WEIGHTS", "search_stage"]

WEIGHTS = "model_weights.h5"
RESHAPED_MODEL = "model.keras"  # a trial whose compression changed the architecture (prune_channels, factorize)
TRAINED_WEIGHTS = "trained_weights.h5"


def kt_objective_of(objectives: dict):
    """keras-tuner's objective: the metric itself, or its MultiObjective (a sum) for several."""
    items = [keras_tuner.Objective(name, way) for name, way in objectives.items()]
    return items[0] if len(items) == 1 else private("kt_multi_objective")(items)


def _short(values: dict, width: int = 120) -> str:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    return text if len(text) <= width else text[: width - 3] + "..."


class TfoptTuner(base_tuner.BaseTuner):
    """A keras-tuner ``BaseTuner`` that runs tf_keras trials (see the module docstring).

    Args:
        oracle: keras-tuner Oracle (see :mod:`tfopt.tune.oracles`).
        space: :class:`tfopt.tune.spaces.Space`.
        settings: Dict with input_shape, num_classes, objectives, constraints, needs, strategy, verbose,
            executions, seed, max_epochs, steps_per_epoch.
        directory: String, the search directory.
        project_name: String, the project folder inside it.
        overwrite: Bool, start afresh (delete the project folder) instead of resuming.
    """

    def __init__(self, oracle, space, settings: dict, directory, project_name, overwrite=False):
        self.space = space
        self.settings = settings
        self.ran = 0
        super().__init__(oracle, hypermodel=space.fn, directory=str(directory), project_name=project_name,
                         overwrite=overwrite)
        keras.backend.clear_session()  # populating a function space built models
        gc.collect()

    def _populate_initial_space(self):
        """keras-tuner builds a function space once (per conditional scope) to declare its hyperparameters."""
        try:
            super()._populate_initial_space()
        except Exception as err:
            from tfopt.errors import ConfigError

            raise ConfigError(
                f"the space function {getattr(self.space.fn, '__name__', self.space.fn)!r} raised while "
                f"declaring its hyperparameters (built with their defaults): {type(err).__name__}: {err}"
            ) from err

    # ------------------------------------------------------------------ building

    def build(self, hp):
        """The trial's compiled tf_keras model for HyperParameters ``hp`` (in the strategy's scope)."""
        from tfopt.tune.spaces import split

        values = self.space.values(hp)
        s = self.settings
        build_cfg, train_cfg, comp_cfg = split(values)
        with training.scope(s["strategy"]):
            if self.space.fn is not None:
                model = training.check_user_model(self.space.fn(hp))
                return training.compile_model(model, train_cfg, s["steps_per_epoch"], s["max_epochs"], force=False)
            if self.space.trained is not None:  # every trial starts from a copy of the trained model
                model = private_copy(self.space.trained, "tune.search")
                # with max_epochs=0 it trains only while compressing: a schedule spans the first compression's epochs
                epochs = s["max_epochs"] or training.compression_epochs(comp_cfg)
                return training.compile_model(model, train_cfg, s["steps_per_epoch"], epochs, force=bool(train_cfg))
            model = training.build_model(build_cfg, s["input_shape"], s["num_classes"])
            return training.compile_model(model, train_cfg, s["steps_per_epoch"], s["max_epochs"])

    def load_model(self, trial):
        """The trial's model rebuilt and loaded with the weights it was scored with (or, when its compression
        changed the architecture, the model file it saved, loaded in safe mode)."""
        reshaped = os.path.join(self.get_trial_dir(trial.trial_id), RESHAPED_MODEL)
        if os.path.isfile(reshaped):
            from tfopt.saving import load_model

            return load_model(reshaped)
        model = self.build(trial.hyperparameters)
        model.load_weights(os.path.join(self.get_trial_dir(trial.trial_id), WEIGHTS))
        return model

    def resume_weights(self, model, parent_id: str) -> str:
        """Load Hyperband parent ``parent_id``'s trained weights into ``model``; returns the file used."""
        folder = Path(self.get_trial_dir(parent_id))
        path = folder / TRAINED_WEIGHTS if (folder / TRAINED_WEIGHTS).is_file() else folder / WEIGHTS
        if not path.is_file():
            raise TrainingError(f"Hyperband trial continues trial {parent_id!r} but {str(path)!r} does not exist")
        model.load_weights(str(path))
        return str(path)

    # ------------------------------------------------------------------ running

    def _seed(self, trial_id: str, execution: int) -> None:
        offset = int(trial_id) if trial_id.isdigit() else zlib.crc32(trial_id.encode()) % 100_000
        set_seed(derive_seed(self.settings["seed"], 1000 * offset + execution))

    def _execute(self, trial, train_ds, val_ds, execution: int, folder: Path, keep) -> dict:
        """One training run of a trial; saves its weights when ``keep(metrics)`` says it is the best run."""
        from tfopt.tune.spaces import split

        s = self.settings
        hp = trial.hyperparameters
        values = self.space.values(hp)
        _, train_cfg, comp_cfg = split(values)
        epochs = int(hp.values.get("tuner/epochs", s["max_epochs"]))
        initial = int(hp.values.get("tuner/initial_epoch", 0))
        parent = hp.values.get("tuner/trial_id")
        self._seed(trial.trial_id, execution)
        model = self.build(hp)
        if parent:
            self.resume_weights(model, parent)
        else:
            initial = 0
        verbose = 2 if s["verbose"] >= 2 else 0
        if epochs > initial:
            logs = training.fit(model, train_ds, val_ds, train_cfg, epochs, initial, s["input_shape"], verbose)
        else:  # max_epochs=0: a trained model's compression search
            logs = {"epochs_trained": 0}
        trained = model
        model = training.compress(model, train_ds, comp_cfg, s["strategy"], verbose)
        metrics = training.measure(model, train_ds, val_ds, comp_cfg, s["needs"])
        metrics.update({k: v for k, v in logs.items() if k != "epochs_trained" and not k.startswith("val_")})
        if keep(metrics):
            with atomic_path(folder / WEIGHTS, suffix=".h5") as tmp:  # a kill or a full disk leaves no half-written file
                model.save_weights(tmp)
            if [w.shape for w in model.weights] != [w.shape for w in trained.weights]:
                with atomic_path(folder / RESHAPED_MODEL, suffix=".keras") as tmp:
                    model.save(tmp)
            if model is not trained:
                with atomic_path(folder / TRAINED_WEIGHTS, suffix=".h5") as tmp:
                    trained.save_weights(tmp)
        return {**metrics, "epochs_trained": logs["epochs_trained"]}

    def run_trial(self, trial, train_ds, val_ds):
        """Run ``executions`` trainings of ``trial`` and return its metrics (averaged) for the oracle."""
        s = self.settings
        hp = trial.hyperparameters
        folder = Path(self.get_trial_dir(trial.trial_id))
        first, way = next(iter(s["objectives"].items()))
        side = {
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "hyperparameters": self.space.values(hp),
            "epochs": int(hp.values.get("tuner/epochs", s["max_epochs"])),
            "initial_epoch": int(hp.values.get("tuner/initial_epoch", 0)),
            "resumed_from": hp.values.get("tuner/trial_id"),
        }
        if s.get("data_fn") is not None:
            # fresh datasets (same seeds) per trial: a trial's batches do not depend on how many trials this
            # process ran before it, so a resumed search scores a trial as an uninterrupted one does
            train_ds, val_ds = s["data_fn"]()
        start = time.time()
        runs: list[dict] = []
        best = {"value": None}

        def keep(metrics):
            value = metrics.get(first)
            if best["value"] is None or (value is not None and objs.better(value, best["value"], way)):
                best["value"] = value
                return True
            return False

        try:
            for execution in range(s["executions"]):
                try:
                    runs.append(self._execute(trial, train_ds, val_ds, execution, folder, keep))
                finally:
                    keras.backend.clear_session()
                    gc.collect()
        except Exception as err:
            side.update(error=f"{type(err).__name__}: {err}", seconds=time.time() - start)
            write_json(folder / SIDECAR, side)
            raise
        metrics = {k: float(np.mean([r[k] for r in runs if k in r])) for k in runs[0] if k != "epochs_trained"}
        broken = objs.violations(metrics, s["constraints"])
        side.update(metrics=metrics, violations=broken, feasible=not broken,
                    epochs_trained=runs[0]["epochs_trained"], seconds=time.time() - start)
        if len(runs) > 1:
            side["execution_metrics"] = runs
        write_json(folder / SIDECAR, side)
        report = {k: v for k, v in metrics.items() if math.isfinite(v)}
        report[objs.FEASIBLE] = 0.0 if broken else 1.0
        objective = self.oracle.objective
        if isinstance(objective, private("kt_multi_objective")):
            report[objective.name] = objective.get_value(report)
        return report

    # ------------------------------------------------------------------ hooks

    def save(self):
        """keras-tuner's ``save`` (the oracle's state, then this tuner's ``<tuner_id>.json``), written atomically."""
        if not self._is_worker():
            self.oracle.save()
        save_state(self._get_tuner_fname(), self.get_state())

    def on_trial_end(self, trial):
        super().on_trial_end(trial)
        self.ran += 1
        if self.settings["verbose"] >= 1:
            self._progress(trial)
        _faults.reached(f"trial:{self.ran}:end")  # testing hook (off unless TFOPT_FAULT names it)

    def _progress(self, trial) -> None:
        objectives = self.settings["objectives"]
        folder = Path(self.get_trial_dir(trial.trial_id))
        try:
            from tfopt._io import read_json

            side = read_json(folder / SIDECAR)
        except (OSError, ValueError):
            side = {}
        metrics = side.get("metrics") or {}
        if side.get("error"):
            status = f"FAILED ({side['error'][:160]})"
        elif side.get("violations"):
            status = f"INFEASIBLE ({'; '.join(side['violations'])})"
        else:
            status = "done"
        scores = " ".join(f"{n}={metrics[n]:.4g}" for n in objectives if n in metrics) or "-"
        best_text = "- (no feasible trial yet)" if self.settings["constraints"] else "-"
        best = self.oracle.get_best_trials(1)  # feasible trials first, then the infeasible ones
        if best and best[0].status == "COMPLETED" and best[0].score is not None and not is_infeasible(best[0]):
            names = [n for n in objectives if best[0].metrics.exists(n)]
            best_text = " ".join(f"{n}={best[0].metrics.get_last_value(n):.4g}" for n in names)
            best_text += f" (trial {best[0].trial_id})"
        values = self.space.values(trial.hyperparameters)
        print(f"[tfopt.tune] trial #{self.ran} id={trial.trial_id} tuner={self.tuner_id} {status}: {scores} | "
              f"best so far: {best_text} | {_short(values)}", file=sys.stderr, flush=True)

    def search(self, *fit_args, **fit_kwargs):
        """keras-tuner's search loop; the chief serves the oracle with :func:`tfopt.tune.distributed.serve`."""
        if private("kt_dist_utils").is_chief_oracle():
            from tfopt.tune.distributed import serve

            self.save()
            serve(self.oracle, timeout=self.settings.get("serve_timeout"))
            return
        super().search(*fit_args, **fit_kwargs)


def declared_space(space) -> hp_module.HyperParameters | None:
    """keras-tuner HyperParameters declaring a dict space (None for a function space, declared by building)."""
    if space.fn is not None:
        return None
    hp = hp_module.HyperParameters()
    space.declare(hp)
    return hp


# ---------------------------------------------------------------------- the public entry point


def _check_int(name: str, value, low: int) -> int:
    from tfopt.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name}={value!r} is not allowed; allowed: an integer >= {low}")
    return int(value)


def search(space, train_ds, val_ds, algorithm: str = "hyperband", objective="val_accuracy", max_trials: int = 10,
           max_epochs: int = 3, constraints=None, objectives=None, directory="tune", project_name: str = "search",
           overwrite: bool = False, seed: int = 0, input_shape=None, num_classes=None, strategy=None,
           verbose: int = 1, executions_per_trial: int = 1, max_consecutive_failed_trials: int = 3,
           factor: int = 3, role: str | None = None, address: str | None = None, tuner_id: str | None = None,
           serve_timeout: float | None = None, data_fn=None):
    """Search a space of tf_keras models, training settings and compression settings with keras-tuner.

    Args:
        space: String (a builder name with small default ranges, see ``DEFAULT_SPACES``), dict of ranges
            (see :mod:`tfopt.tune.spaces`), or a function ``hp -> tf_keras model`` (compiled or not).
        train_ds: tf.data.Dataset of (x, y) batches.
        val_ds: tf.data.Dataset of (x, y) batches; the objective is measured on it.
        algorithm: String, "hyperband", "random", "bayesian" or "grid".
        objective: String (see :mod:`tfopt.tune.objectives`) or (name, direction) pair.
        max_trials: Integer >= 1, the number of trials (Hyperband: a cap on its brackets' trials).
        max_epochs: Integer >= 1, the epochs of a trial (Hyperband: of its longest rounds); 0 when the space's
            ``"model"`` is a trained model (its trials only compress it).
        constraints: Dict ``{metric: upper bound | {"min": a, "max": b}}``; a trial breaking one is
            INFEASIBLE (see :mod:`tfopt.tune.oracles`) and never the best.
        objectives: List of metric names for a multi-objective search: the oracle minimises keras-tuner's
            sum, the result holds the real Pareto front, and ``pareto.png`` plots it. The best trial is
            the front's best on the first objective.
        directory: String or path, the search folder; results go to ``directory/project_name``.
        project_name: String, the project folder.
        overwrite: Bool, start afresh; False resumes a search found there (completed trials are kept).
        seed: Integer, seeds the oracle and each trial (seed + 1000 * trial number + execution).
        input_shape: Tuple or None (None: from ``train_ds``).
        num_classes: Integer or None (None: the largest label + 1, or the one-hot width).
        strategy: tf.distribute strategy or None; models are built and compiled in its scope.
        verbose: Integer, 0 silent, 1 one progress line per trial on stderr, 2 also Keras' epoch lines.
        executions_per_trial: Integer >= 1, trainings per trial; metrics are averaged and the weights
            kept are those of the best execution on the first objective.
        max_consecutive_failed_trials: Integer >= 1, keras-tuner's limit; then TrainingError.
        factor: Integer >= 2, Hyperband's reduction factor.
        role: None (honour KERASTUNER_* variables as set), "chief" (serve the oracle, run no trial) or
            "worker" (run trials from the chief); see :mod:`tfopt.tune.distributed`.
        address: String "host:port" of the chief for ``role``; None keeps KERASTUNER_ORACLE_IP/PORT.
        tuner_id: String, a worker's unique id (recorded in each of its trials as ``tuner_id``).
        serve_timeout: Float or None, seconds the chief waits for the workers before DistributeError.
        data_fn: Callable or None, returns fresh ``(train_ds, val_ds)`` made with the same seeds; called
            for each trial, so that (with op determinism) a trial scores the same whether the search ran
            uninterrupted or was killed and resumed (a shared reshuffling dataset gives each later
            trial other batches).

    Returns:
        :class:`tfopt.tune.results.SearchResult`. The chief (or a single process) also writes
        ``trials.json``, ``trials.csv``, ``best_hyperparameters.json`` (and ``pareto.png``) atomically;
        a worker's result holds only the trials it ran and no best model.

    >>> result = search({"model": "cnn", "filters": [[4], [8]], "dense": {"fixed": [16]}},
    ...                 train_ds, val_ds, algorithm="random", max_trials=2, max_epochs=1)  # doctest: +SKIP
    >>> result.best_model.evaluate(val_ds, return_dict=True)["accuracy"]  # doctest: +SKIP
    """
    from tfopt._model import count_steps
    from tfopt.errors import check_choice, check_seed
    from tfopt.tune.distributed import distributed_env
    from tfopt.tune.oracles import ORACLES, make_oracle
    from tfopt.tune.results import collect, write_outputs
    from tfopt.tune.spaces import Space

    check_choice("algorithm", algorithm, tuple(ORACLES))
    seed = check_seed(seed)
    max_trials = _check_int("max_trials", max_trials, 1)
    executions = _check_int("executions_per_trial", executions_per_trial, 1)
    max_failed = _check_int("max_consecutive_failed_trials", max_consecutive_failed_trials, 1)
    factor = _check_int("factor", factor, 2)
    parsed = Space.parse(space)
    trained_only = parsed.trained is not None and algorithm != "hyperband"
    max_epochs = _check_int("max_epochs" + ("" if trained_only else " (0 only for a trained model's space, not with "
                                            "hyperband)"), max_epochs, 0 if trained_only else 1)
    custom = parsed.fn is not None
    wanted = objs.parse_objectives(objective, objectives, custom)
    bounds = objs.parse_constraints(constraints, custom)
    steps = count_steps(train_ds, "train_ds")
    count_steps(val_ds, "val_ds")
    shape, classes = training.infer_data(train_ds, val_ds, input_shape, num_classes)
    needs = objs.sources([*wanted, *bounds])
    if "quantization" in parsed.params or parsed.fixed.get("quantization"):
        needs.add("export")
    settings = dict(input_shape=shape, num_classes=classes, objectives=wanted, constraints=bounds, needs=needs,
                    strategy=strategy, verbose=int(verbose), executions=executions, seed=int(seed),
                    max_epochs=max_epochs, steps_per_epoch=steps, serve_timeout=serve_timeout, data_fn=data_fn)
    with distributed_env(role, address, tuner_id):
        dist_utils = private("kt_dist_utils")
        worker = dist_utils.has_chief_oracle() and not dist_utils.is_chief_oracle()
        oracle = make_oracle(algorithm, kt_objective_of(wanted), declared_space(parsed), max_trials, max_epochs,
                             factor, int(seed), max_failed)
        tuner = TfoptTuner(oracle, parsed, settings, directory, project_name, overwrite=overwrite and not worker)
        failure = None
        try:
            tuner.search(train_ds, val_ds)
        except RuntimeError as err:
            if "consecutive failures" not in str(err):
                raise
            failure = err
            tuner.save()
        result = collect(tuner, parsed, wanted, worker)
    if not worker:
        write_outputs(result)
    if failure is not None:
        raise TrainingError(
            f"the search stopped: {max_failed} consecutive trials failed (max_consecutive_failed_trials="
            f"{max_failed}); last error: {str(failure).strip().splitlines()[-1]}; see {result.directory}/trials.json"
        ) from failure
    return result


def run_role(role: str, space, train_ds, val_ds, address: str | None = None, tuner_id: str | None = None, **kwargs):
    """Run one process of a distributed search: ``search(..., role=role, address=..., tuner_id=...)``.

    Start one ``role="chief"`` process and any number of ``role="worker"`` processes (unique
    ``tuner_id`` each) with the same arguments and a shared ``directory``.

    >>> run_role("worker", "cnn", train_ds, val_ds, address="127.0.0.1:8000", tuner_id="worker0")  # doctest: +SKIP
    """
    return search(space, train_ds, val_ds, role=role, address=address, tuner_id=tuner_id, **kwargs)


# ---------------------------------------------------------------- the "tune" technique (a recipe stage)


def search_stage(inputs, options: dict, directory, **extra):
    """Run the search a ``tune`` stage's ``options`` describe on its data; returns ``(result, train_ds, val_ds)``.

    Args:
        inputs: :class:`tfopt.techniques.StageInputs`.
        options: Dict, the stage's options (space, algorithm, objective, max_trials, ...).
        directory: Path of the search folder.
        **extra: More arguments of :func:`search` (e.g. ``role``, ``address``, ``tuner_id``, ``overwrite``).
    """
    o = options
    train_ds, val_ds, info = inputs.load()
    shape = (info.seq_len,) if info.kind == "tokens" else tuple(info.input_shape)

    def fresh_data():  # each trial gets datasets made afresh (see search's data_fn)
        inputs.fresh_data()
        return inputs.load()[:2]

    result = search(o["space"], train_ds, val_ds, algorithm=o["algorithm"], objective=o["objective"],
                    max_trials=o["max_trials"], max_epochs=o["max_epochs"], constraints=o["constraints"],
                    objectives=o["objectives"], directory=str(directory), project_name=inputs.project,
                    seed=inputs.seed, input_shape=shape, num_classes=info.num_classes,
                    verbose=1 if inputs.verbose == "auto" else int(inputs.verbose), data_fn=fresh_data, **extra)
    train_ds, val_ds, _ = inputs.load()
    return result, train_ds, val_ds


def _run_stage(inputs, o: dict):
    """The tune stage: a hyperparameter search; its best model becomes the current model."""
    result, train_ds, val_ds = search_stage(inputs, o, Path(inputs.stage_dir) / "search")
    model = result.best_model
    hp = result.best_hyperparameters
    hp = hp if isinstance(hp, dict) else getattr(hp, "values", {})
    if model.optimizer is None:
        inputs.compile(model, train_ds, o["max_epochs"])
    metrics = {"best_hyperparameters": dict(hp or {}), **inputs.held_out(model, val_ds)}
    return StageResult(model, metrics, f"best {metrics['best_hyperparameters']}, accuracy "
                                       f"{metrics['val_accuracy']:.4f}")


_PRUNED = "'tune' must come before the compression stages"
TECHNIQUE = register_technique(Technique(
    "tune",
    options_from(search, ["space", "algorithm", "objective", "max_trials", "max_epochs", "constraints", "objectives"],
                 space=Field((ANY,), required=True, section="space",
                             help="a builder name, a dict of ranges, see tfopt.tune.spaces"),
                 algorithm={"choices": tuple(ORACLES)},
                 max_trials={"check": at_least(1)},
                 max_epochs={"check": at_least(1)},
                 constraints={"kinds": (MAP, NONE)},
                 objectives={"kinds": (LIST, NONE)}),
    _run_stage, summary="hyperparameter search (keras-tuner oracles); the best model becomes the current one",
    function=search, needs=(), sets=("trained",), refuses_after={"pruned": _PRUNED, "clustered": _PRUNED}))
