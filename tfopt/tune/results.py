"""Trial records and the :class:`SearchResult` of a search, and the files written beside them.

A trial record is a plain dict (JSON-ready):

* ``trial_id``; ``status``: "COMPLETED", "INFEASIBLE" (ran fine, broke a constraint), "FAILED" (raised),
  or keras-tuner's "RUNNING"/"IDLE" for a trial cut short;
* ``hyperparameters``: the trial's settings (decoded, keras-tuner's ``tuner/`` keys left out);
* ``metrics``: every metric measured (see :mod:`tfopt.tune.objectives`), ``score``: the oracle's score
  (the objective, or a penalty for an infeasible trial, or keras-tuner's sum for several objectives);
* ``violations``, ``error`` (the exception, for a failed trial), ``tuner_id`` (who ran it), ``epochs``,
  ``initial_epoch``, ``epochs_trained``, ``resumed_from`` (the Hyperband parent trial), ``seconds``,
  ``pareto`` (on the front, for several objectives).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

from tfopt._io import atomic_write_text, read_json, write_json
from tfopt.tune.objectives import FEASIBLE, better


__all__ = ["Trials", "SearchResult", "make_record", "best_record", "collect", "write_outputs", "SIDECAR"]

SIDECAR = "tfopt_trial.json"  # written in each trial folder by the process that ran the trial


class Trials(list):
    """A list of trial records; ``table()`` gives a pandas DataFrame (one row per trial)."""

    def table(self):
        """A DataFrame with trial_id, status, score, tuner_id, every hyperparameter and every metric."""
        import pandas as pd

        rows = []
        for rec in self:
            row = {k: rec.get(k) for k in ("trial_id", "status", "score", "tuner_id", "epochs", "initial_epoch",
                                          "epochs_trained", "resumed_from")}
            for k, v in (rec.get("hyperparameters") or {}).items():
                row[k] = str(v) if isinstance(v, (list, tuple, dict)) else v
            row.update(rec.get("metrics") or {})
            row["error"] = rec.get("error")
            rows.append(row)
        return pd.DataFrame(rows)


def _kt_metrics(kt_trial) -> dict:
    out = {}
    for name in kt_trial.metrics.metrics:
        value = kt_trial.metrics.get_last_value(name)
        if value is not None and name not in (FEASIBLE, "multi_objective"):
            out[name] = float(value)
    return out


def make_record(kt_trial, trial_dir, values_of: Callable) -> dict:
    """Merge keras-tuner's trial (status, score) with the sidecar the runner wrote (metrics, errors, who).

    Args:
        kt_trial: keras-tuner ``Trial``.
        trial_dir: Path of the trial's folder.
        values_of: Callable ``HyperParameters -> dict`` of decoded settings.
    """
    path = Path(trial_dir) / SIDECAR
    side = read_json(path) if path.is_file() else {}
    hp_values = kt_trial.hyperparameters.values
    status = kt_trial.status
    if status == "INVALID":
        status = "FAILED"
    if status == "COMPLETED" and side.get("violations"):
        status = "INFEASIBLE"
    error = side.get("error")
    if error is None and status == "FAILED" and kt_trial.message:
        error = kt_trial.message.strip().splitlines()[-1]
    metrics = side.get("metrics") or _kt_metrics(kt_trial)
    return {
        "trial_id": kt_trial.trial_id,
        "status": status,
        "hyperparameters": side.get("hyperparameters") or values_of(kt_trial.hyperparameters),
        "metrics": metrics,
        "score": None if kt_trial.score is None or math.isnan(kt_trial.score) else float(kt_trial.score),
        "violations": side.get("violations", []),
        "error": error,
        "tuner_id": side.get("tuner_id"),
        "epochs": hp_values.get("tuner/epochs", side.get("epochs")),
        "initial_epoch": hp_values.get("tuner/initial_epoch", 0),
        "epochs_trained": side.get("epochs_trained"),
        "resumed_from": hp_values.get("tuner/trial_id"),
        "seconds": side.get("seconds"),
        "pareto": False,
    }


def best_record(records, objectives: dict, front=None) -> dict | None:
    """The best completed, feasible record by the first objective (among ``front`` when given)."""
    name, way = next(iter(objectives.items()))
    pool = front if front is not None else records
    best = None
    for rec in pool:
        value = (rec.get("metrics") or {}).get(name)
        if rec.get("status") != "COMPLETED" or value is None or not math.isfinite(value):
            continue
        if best is None or better(value, best["metrics"][name], way):
            best = rec
    return best


@dataclasses.dataclass
class SearchResult:
    """What :func:`tfopt.tune.search` found.

    Attributes:
        trials: :class:`Trials`, one record per trial (``trials.table()`` -> DataFrame).
        best_hyperparameters: Dict of the best feasible trial's settings, or None.
        best_trial: The best feasible trial's record, or None.
        pareto: List of records on the Pareto front (several objectives), else [].
        directory: Path of ``directory/project_name``.
        objectives: Dict ``{name: direction}``.
        best_model: The best trial's tf_keras model, rebuilt and loaded from the weights it was scored
            with (loaded on first access; None when no trial completed).
    """

    trials: Trials
    best_hyperparameters: dict | None
    best_trial: dict | None
    pareto: list
    directory: Path
    objectives: dict
    loader: Callable | None = dataclasses.field(default=None, repr=False)
    _model: object = dataclasses.field(default=None, repr=False)

    @property
    def best_model(self):
        if self._model is None and self.best_trial is not None and self.loader is not None:
            self._model = self.loader(self.best_trial)
        return self._model

    def load_model(self, trial_id: str):
        """Any trial's model, rebuilt and loaded with the weights it was scored with.

        Args:
            trial_id: String, a record's ``trial_id``.
        """
        from tfopt.errors import ConfigError

        rec = next((r for r in self.trials if r["trial_id"] == trial_id), None)
        if rec is None or self.loader is None or rec.get("status") not in ("COMPLETED", "INFEASIBLE"):
            known = [r["trial_id"] for r in self.trials if r.get("status") in ("COMPLETED", "INFEASIBLE")]
            raise ConfigError(f"trial_id={trial_id!r} has no saved model here; allowed: {known}")
        return self.loader(rec)

    @property
    def best_score(self):
        """The best trial's value of the first objective, or None."""
        if self.best_trial is None:
            return None
        return self.best_trial["metrics"].get(next(iter(self.objectives)))

    def table(self):
        """``self.trials.table()``."""
        return self.trials.table()


def _records(tuner, space) -> Trials:
    def order(tid):
        return (0, int(tid), "") if tid.isdigit() else (1, 0, tid)

    trials = sorted(tuner.oracle.trials.values(), key=lambda t: order(t.trial_id))
    return Trials(make_record(t, tuner.get_trial_dir(t.trial_id), space.values) for t in trials)


def _worker_records(tuner) -> Trials:
    """A worker's own trials, from the records it wrote (its oracle lives in the chief)."""
    out = Trials()
    for path in sorted(Path(tuner.project_dir).glob(f"trial_*/{SIDECAR}")):
        side = read_json(path)
        if side.get("tuner_id") != tuner.tuner_id:
            continue
        status = "FAILED" if side.get("error") else "INFEASIBLE" if side.get("violations") else "COMPLETED"
        out.append({**side, "status": status, "score": None, "pareto": False})
    return out


def collect(tuner, space, objectives: dict, worker: bool) -> SearchResult:
    """The SearchResult of a finished search: every trial from the oracle (a worker: its own trials)."""
    from tfopt.tune.pareto import pareto_front

    records = _worker_records(tuner) if worker else _records(tuner, space)
    front = pareto_front(records, objectives) if len(objectives) > 1 else []
    for rec in front:
        rec["pareto"] = True
    best = best_record(records, objectives, front if front else None)
    oracle_trials = None if worker else tuner.oracle.trials

    def loader(rec):
        if oracle_trials is not None:
            return tuner.load_model(oracle_trials[rec["trial_id"]])
        return None

    return SearchResult(
        trials=records,
        best_hyperparameters=None if best is None else dict(best["hyperparameters"]),
        best_trial=best,
        pareto=front,
        directory=Path(tuner.project_dir),
        objectives=dict(objectives),
        loader=None if worker else loader,
    )


def write_outputs(result: SearchResult) -> None:
    """Write trials.json, trials.csv, best_hyperparameters.json (and pareto.png) into ``result.directory``."""
    folder = Path(result.directory)
    write_json(folder / "trials.json", {"objectives": result.objectives, "trials": list(result.trials)})
    atomic_write_text(folder / "trials.csv", result.trials.table().to_csv(index=False))
    write_json(folder / "best_hyperparameters.json", {
        "trial_id": None if result.best_trial is None else result.best_trial["trial_id"],
        "hyperparameters": result.best_hyperparameters,
        "metrics": None if result.best_trial is None else result.best_trial["metrics"],
    })
    if len(result.objectives) > 1:
        from tfopt.tune.pareto import plot_pareto

        plot_pareto(result.trials, result.objectives, folder / "pareto.png")
