"""keras-tuner's oracles (framework-free), taught that a trial breaking a constraint is infeasible.

An infeasible trial ran fine, so it stays COMPLETED for keras-tuner (it is neither retried nor counted
as a failure towards ``max_consecutive_failed_trials``), and its metrics are all recorded. Two things
keep the oracle from picking it:

* its score is replaced by a *finite* penalty: the worst score among the feasible completed trials so
  far (and its own), worsened by ``max(1, |worst|)``. Finite, because the Bayesian oracle turns
  infinities into 0 before fitting its Gaussian process; relative, so the process's normalised targets
  keep a sensible scale. Hyperband therefore promotes it only when no feasible candidate is left.
* :meth:`get_best_trials` ranks every feasible completed trial before any other, whatever its score.

Their state files (``oracle.json``, each ``trial_<id>/trial.json``) are written atomically (:func:`save_state`):
keras-tuner writes them in place, so a kill or a full disk in the middle of a write left a truncated file that
the next run could not reload.
"""

from __future__ import annotations

import json
import math
import os

from keras_tuner.engine import trial as trial_module
from keras_tuner.oracles import BayesianOptimizationOracle, GridSearchOracle, HyperbandOracle, RandomSearchOracle

from tfopt._io import atomic_write_text
from tfopt.tune.objectives import FEASIBLE

__all__ = ["ORACLES", "make_oracle", "is_infeasible", "save_state"]

COMPLETED = trial_module.TrialStatus.COMPLETED
RUNNING = trial_module.TrialStatus.RUNNING


def is_infeasible(trial) -> bool:
    """True when a keras-tuner trial reported ``tfopt_feasible`` = 0."""
    return trial.metrics.exists(FEASIBLE) and trial.metrics.get_last_value(FEASIBLE) < 0.5


def save_state(path, state) -> None:
    """Write a keras-tuner object's state (``get_state()``) as keras-tuner's ``utils.save_json`` does, but to a
    temporary file renamed into place: a kill leaves the previous state, a full disk a WriteError naming the file.

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     save_state(Path(folder) / "oracle.json", {"trials": []})
    ...     print((Path(folder) / "oracle.json").read_text())
    {"trials": []}
    """
    atomic_write_text(path, json.dumps(state))


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


class _FeasibilityMixin:
    """Penalises infeasible trials' scores and ranks feasible trials first; saves its state atomically."""

    def save(self):
        save_state(self._get_oracle_fname(), self.get_state())  # trials are in their own files, as upstream

    def _save_trial(self, trial):
        save_state(os.path.join(self._get_trial_dir(trial.trial_id), "trial.json"), trial.get_state())

    def reload(self):
        super().reload()
        # A trial is written (RUNNING) before the oracle's state that lists it as ongoing: a kill or a failed write
        # between the two left a RUNNING trial no one runs, which keras-tuner would count and never finish. Retry
        # it, as keras-tuner retries the trials its state lists as ongoing.
        queued = set(self._retry_queue)
        for trial_id, trial in self.trials.items():
            if trial.status == RUNNING and trial_id not in queued:
                self._retry_queue.append(trial_id)

    def score_trial(self, trial):
        super().score_trial(trial)
        if is_infeasible(trial) and _finite(trial.score):
            trial.score = self.penalty(trial.score, exclude=trial)

    def penalty(self, own: float, exclude=None) -> float:
        """The score given to an infeasible trial whose real score is ``own``."""
        scores = [
            t.score for t in self.trials.values()
            if t is not exclude and t.status == COMPLETED and _finite(t.score) and not is_infeasible(t)
        ]
        maximize = self.objective.direction == "max"
        worst = min([*scores, own]) if maximize else max([*scores, own])
        margin = max(1.0, abs(worst))
        return worst - margin if maximize else worst + margin

    def get_best_trials(self, num_trials=1):
        ranked = super().get_best_trials(max(num_trials, len(self.trials)))
        good = [t for t in ranked if t.status == COMPLETED and not is_infeasible(t)]
        rest = [t for t in ranked if t not in good]
        return (good + rest)[:num_trials]


class TfoptRandomSearchOracle(_FeasibilityMixin, RandomSearchOracle):
    """RandomSearchOracle with infeasible-trial handling."""


class TfoptHyperbandOracle(_FeasibilityMixin, HyperbandOracle):
    """HyperbandOracle with infeasible-trial handling (and ``max_trials``, which upstream lacks)."""


class TfoptBayesianOptimizationOracle(_FeasibilityMixin, BayesianOptimizationOracle):
    """BayesianOptimizationOracle with infeasible-trial handling."""


class TfoptGridSearchOracle(_FeasibilityMixin, GridSearchOracle):
    """GridSearchOracle with infeasible-trial handling."""


# algorithm name -> oracle class
ORACLES = {
    "random": TfoptRandomSearchOracle,
    "hyperband": TfoptHyperbandOracle,
    "bayesian": TfoptBayesianOptimizationOracle,
    "grid": TfoptGridSearchOracle,
}


def make_oracle(algorithm: str, objective, hyperparameters, max_trials: int, max_epochs: int, factor: int,
                seed: int, max_consecutive_failed_trials: int):
    """An oracle for ``algorithm`` (a key of :data:`ORACLES`), silent (tfopt prints its own progress)."""
    common = dict(objective=objective, hyperparameters=hyperparameters, seed=seed,
                  max_consecutive_failed_trials=max_consecutive_failed_trials)
    if algorithm == "hyperband":
        oracle = TfoptHyperbandOracle(max_epochs=max_epochs, factor=factor, **common)
        oracle.max_trials = max_trials  # Oracle.create_trial honours it; Hyperband's __init__ does not take it
    else:
        oracle = ORACLES[algorithm](max_trials=max_trials, **common)
    oracle.verbose = 0
    return oracle
