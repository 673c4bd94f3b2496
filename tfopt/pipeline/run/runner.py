"""``run_recipe``: run a recipe's stages into a run directory, resumably.

Layout of a run directory::

    manifest.json        recipe hash, per-stage status, outputs, metrics, seconds, seed (atomic, after each stage)
    01_train/            model.keras, metrics.json, history.csv, checkpoints/, backup/, logs/
    02_prune/ ...        (a quantization-aware model is model.h5: tfmot's QAT layers load back only from HDF5)
    04_export/           <variant>.tflite
    results.json         every number; report.md, report.html, report/*.png

Running the same recipe again resumes at the first unfinished stage; a stage that trains (train, prune,
cluster, quantize_aware, distill, prune_channels, factorize) also resumes inside, at the start of the epoch it
was in, from the BackupAndRestore state in its ``backup/`` folder (``tfopt.train.fit``,
``tfopt.compress._fit.compression_fit``). A stage's backup is removed once the stage is recorded done, and
before the stage runs when an earlier stage ran again in this process (the backup was made from another
model). Finished stages are never re-run unless ``force`` names them (then they and every later stage re-run,
their folders, backups included, removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import time
from pathlib import Path

from tfopt import _faults, distribute
from tfopt._io import atomic_write_text, remove_partial_files, write_json
from tfopt._keras import derive_seed, set_seed
from tfopt._lock import RunLock
from tfopt.errors import ConfigError
from tfopt.pipeline.run.context import Context, apply_determinism, save_model
from tfopt.pipeline.config.recipe import load_recipe
from tfopt.pipeline.report.results import collect_results, versions
from tfopt.pipeline.report.rundir import MANIFEST, RESULTS, check_paths, model_damage, read_manifest, refuse_links_out
from tfopt.pipeline.config.specs import DataSpec, Recipe
from tfopt.pipeline.run.stages import STAGES
from tfopt.progress import Stages
from tfopt.techniques import get_technique

__all__ = ["run_recipe", "MANIFEST"]

_OUR_FILES = (MANIFEST, RESULTS, "report.md", "report.html", "report", "recipe.yaml")


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = atomic_write_text(run_dir / ".tfopt-write-test", "ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run directory {str(run_dir)!r} is not writable: {err.strerror or err}; "
                          "pass another --run-dir") from None


def _new_manifest(recipe: Recipe) -> dict:
    return {
        "recipe_hash": recipe.hash, "recipe": recipe.raw, "source": recipe.source, "seed": recipe.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions(),
        "stages": [{"name": s.name, "type": s.type, "dir": s.dirname, "status": "pending", "seed": derive_seed(recipe.seed, s.index),
                    "outputs": {}, "metrics": {}, "seconds": None} for s in recipe.stages],
    }


def _remove(path: Path) -> None:
    """Delete ``path`` without following a symlink (a symlink is removed, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)  # removes symlinks inside, never their targets


def _clear(run_dir: Path, old: dict | None) -> None:
    """Remove a previous run's files: only tfopt's own names, and only entries directly inside ``run_dir``."""
    names = set(_OUR_FILES) | {e["dir"] for e in (old or {}).get("stages", [])}
    names |= {p.name for p in run_dir.iterdir()
              if (p.is_symlink() or p.is_dir()) and p.name[:2].isdigit() and p.name[2:3] == "_"}
    for name in sorted(names):
        if name in ("", ".", "..") or Path(name).name != name:  # a manifest entry never names anything else
            continue
        _remove(run_dir / name)


def _damaged(err: ConfigError, overwrite: bool) -> None:
    """A damaged manifest is replaced with ``overwrite`` (None: start afresh), else refused with a hint."""
    if overwrite:
        return None  # its entries are not trusted: only tfopt's own names are removed
    raise ConfigError(f"{err}; pass overwrite=True (--overwrite) to start the run directory afresh, "
                      "or pick another run directory") from None


def _same_stages(manifest: dict, recipe: Recipe, run_dir: Path) -> None:
    """ConfigError unless the manifest lists the recipe's stages (a manifest of the same recipe always does)."""
    have = [(e["name"], e["type"], e["dir"]) for e in manifest["stages"]]
    want = [(s.name, s.type, s.dirname) for s in recipe.stages]
    if have != want:
        raise ConfigError(f"{MANIFEST} of the run directory {str(run_dir)!r} is damaged: it lists the stages "
                          f"{[h[0] for h in have]} (folders {[h[2] for h in have]}) but its recipe has "
                          f"{[w[0] for w in want]} (folders {[w[2] for w in want]})")


def _previous_run(run_dir: Path, recipe: Recipe, overwrite: bool) -> dict | None:
    """The manifest to continue (the existing one, for the same recipe), or None; refusals, nothing written."""
    path = run_dir / MANIFEST
    if not (path.exists() or path.is_symlink()):
        if any(p.name not in (".tfopt-write-test", ".lock") for p in run_dir.iterdir()) and not overwrite:
            raise ConfigError(f"run directory {str(run_dir)!r} is not empty and holds no tfopt run (no {MANIFEST}); "
                              "pass overwrite=True (--overwrite) or pick an empty or new directory")
        return None
    try:
        old = read_manifest(run_dir, paths=False)
    except ConfigError as err:
        return _damaged(err, overwrite)
    # an entry leading outside is refused even with overwrite: tfopt would delete or read what it names
    check_paths(old, run_dir, MANIFEST)
    if old["recipe_hash"] == recipe.hash:
        try:
            _same_stages(old, recipe, run_dir)
        except ConfigError as err:
            return _damaged(err, overwrite)
        refuse_links_out(run_dir)  # the run writes on into these folders
        return old
    if not overwrite:
        raise ConfigError(
            f"run directory {str(run_dir)!r} holds a run of a different recipe "
            f"({old['recipe']['name']!r}, hash {old['recipe_hash']!r}; this recipe "
            f"{recipe.name!r} has hash {recipe.hash!r}); pass overwrite=True (--overwrite) to replace it, "
            "or pick another run directory"
        )
    return None


def _start(run_dir: Path, recipe: Recipe) -> dict:
    """Clear the run directory of an earlier run's files and write a new manifest."""
    old = None
    with contextlib.suppress(ConfigError):  # a damaged or hostile manifest names nothing to remove
        old = read_manifest(run_dir) if (run_dir / MANIFEST).is_file() else None
    _clear(run_dir, old)
    manifest = _new_manifest(recipe)
    write_json(run_dir / MANIFEST, manifest)
    return manifest


def _forced(recipe: Recipe, force) -> int | None:
    """Index of the first stage ``force`` names (None: none); ConfigError for a name of no stage."""
    force = [force] if isinstance(force, str) else list(force or ())
    if not force:
        return None
    names = [s.name for s in recipe.stages]
    aliases = {**{s.dirname: s.name for s in recipe.stages}, **{n: n for n in names}}
    unknown = [f for f in force if f not in aliases]
    if unknown:
        raise ConfigError(f"force={unknown!r} names no stage of recipe {recipe.name!r}; allowed: {', '.join(names)}")
    return min(names.index(aliases[f]) for f in force)


def _apply_force(manifest: dict, recipe: Recipe, first: int | None, run_dir: Path) -> None:
    """Mark stage ``first`` and every later one pending, and delete their folders."""
    if first is None:
        return
    for spec, entry in zip(recipe.stages[first:], manifest["stages"][first:]):
        _remove(run_dir / spec.dirname)
        entry.update(status="pending", outputs={}, metrics={}, seconds=None)
    write_json(run_dir / MANIFEST, manifest)


def _sections(spec, section: str) -> list:
    """The values of ``spec``'s options that are nested sections of kind ``section`` (see Field.section)."""
    options = get_technique(spec.type).options
    return [spec.options[k] for k, field in options.items() if field.section == section and spec.options.get(k)]


def _stage_data(recipe: Recipe) -> dict:
    """``{stage name: DataSpec}``: the data each stage's model is for, from the recipe (never the manifest): a
    stage with a data section of its own (fine_tune) makes its model for that data."""
    current, out = recipe.data, {}
    for spec in recipe.stages:
        for data in _sections(spec, "data"):
            current = DataSpec.from_dict(data)
        out[spec.name] = current
    return out


def _restore(ctx: Context, spec, entry: dict, stages: Stages) -> bool:
    """Re-attach a finished stage's outputs to the context; False when they are missing or damaged on disk."""
    outputs = entry.get("outputs") or {}
    technique = get_technique(spec.type)
    if technique.makes_model:
        path = outputs.get("model")
        if not path or not (ctx.run_dir / path).exists():
            return False
        damage = model_damage(ctx.run_dir / path)
        if damage:
            print(f"[{stages.done + 1}/{stages.total}] {spec.name}: its model file {path} is damaged ({damage}); "
                  "running the stage again", file=stages.stream, flush=True)
            return False
        ctx.set_model(spec.name, None, ctx.run_dir / path, _stage_data(ctx.recipe)[spec.name])
    if "exported" in technique.sets:
        rows = entry["metrics"].get("variants", [])
        if not all((ctx.run_dir / r["path"]).exists() and r.get("model") in ctx.model_data for r in rows):
            return False
        # each variant's data is the data of the model it came from (as at export), not what the file says
        ctx.exported += [{**r, "data": dataclasses.asdict(ctx.model_data[r["model"]])} for r in rows]
        ctx.baseline = ctx.baseline or entry["metrics"].get("baseline")
    return True


def _data_needed(ctx: Context, spec) -> list:
    """The datasets a stage reads besides the current one: a fine_tune's new task, the exported models' data."""
    needed = [DataSpec.from_dict(data) for data in _sections(spec, "data")]
    for variants in _sections(spec, "variants"):
        needed += [ctx.model_data[v["model"]] for v in variants if v["model"] in ctx.model_data]
    return needed


def _remove_backup(stage_dir: Path) -> None:
    """Delete a stage's ``backup/`` folder (never following a symlink out of the run directory)."""
    backup = Path(stage_dir) / "backup"
    if backup.is_symlink():
        backup.unlink()
    else:
        shutil.rmtree(backup, ignore_errors=True)


def _run_stage(ctx: Context, spec, entry: dict, manifest: dict, stages: Stages) -> None:
    _faults.reached(f"stage:{spec.name}:before")
    stage_dir = ctx.run_dir / spec.dirname
    stage_dir.mkdir(parents=True, exist_ok=True)
    entry.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(ctx.run_dir / MANIFEST, manifest)
    start = time.perf_counter()
    ctx.fresh_data(_data_needed(ctx, spec))
    set_seed(entry["seed"])
    sections = {k for k, field in get_technique(spec.type).options.items() if field.section not in (None, "stage")}
    what = "(implicit) " * spec.implicit + ", ".join(f"{k}={v}" for k, v in spec.options.items()
                                                     if v is not None and k not in sections)
    try:
        with stages(spec.name, what[:100]) as note:
            out = STAGES[spec.type](ctx, spec, stage_dir)
            note(out.note)
    except BaseException as err:
        entry.update(status="interrupted" if isinstance(err, KeyboardInterrupt) else "failed",
                     error=f"{type(err).__name__}: {err}"[:500], seconds=time.perf_counter() - start)
        write_json(ctx.run_dir / MANIFEST, manifest)
        raise
    outputs = {}
    if out.model is not None:
        model_path = save_model(out.model, stage_dir)
        data = DataSpec.from_dict(out.data) if isinstance(out.data, dict) else (out.data or ctx.current_data)
        outputs = {"model": str(model_path.relative_to(ctx.run_dir)), "data": dataclasses.asdict(data)}
        ctx.set_model(spec.name, out.model, model_path, data)
    if "exported" in get_technique(spec.type).sets:
        ctx.exported += out.metrics["variants"]
        ctx.baseline = ctx.baseline or out.metrics.get("baseline")
    if (stage_dir / "history.csv").exists():
        outputs["history"] = str((stage_dir / "history.csv").relative_to(ctx.run_dir))
    write_json(stage_dir / "metrics.json", out.metrics)
    _faults.reached(f"stage:{spec.name}:after")
    entry.pop("error", None)
    entry.update(status="done", outputs=outputs, metrics=out.metrics, seconds=time.perf_counter() - start)
    write_json(ctx.run_dir / MANIFEST, manifest)
    # a training stage kept its BackupAndRestore state (keep_backup=True) until the stage was recorded done: a kill
    # between the end of training and here resumes with the trained weights, not training again. The folder is this
    # process's own (a non-chief worker's is beside the chief's run directory; the chief removes the shared one)
    _remove_backup(stage_dir)


def run_recipe(path_or_dict, run_dir=None, force=(), overwrite: bool = False, data: str | None = None,
               verbose="auto", overrides: dict | None = None) -> dict:
    """Run (or resume) a recipe and return its results (also written to ``run_dir/results.json``).

    Args:
        path_or_dict: String or Path of a YAML recipe, or the recipe as a dict.
        run_dir: String, Path or None, the run directory (default ``runs/<recipe name>``).
        force: Sequence of stage names (or folder names such as ``02_prune``) to re-run, with every later stage.
        overwrite: Boolean, replace a run directory that holds a different recipe's run.
        data: String or None, a dataset name replacing the recipe's (e.g. ``"mnist_5k"`` offline).
        verbose: Keras verbosity of training ("auto", 0, 1, 2).
        overrides: Dict or None, deep-merged into the recipe first (e.g. ``{"training": {"epochs": 1}}``).

    Returns:
        Dict, the results: per-stage metrics and the measured variants with their ratios to the baseline.

    Raises:
        ConfigError: the recipe is invalid (every problem listed), the run directory is unwritable or holds
            another recipe's run, or the model cannot be fed by the data.

    >>> results = run_recipe("recipes/mnist_cnn.yaml", run_dir="runs/mnist")  # doctest: +SKIP
    >>> [(v["variant"], round(v["accuracy"], 3)) for v in results["variants"]]  # doctest: +SKIP
    """
    recipe = load_recipe(path_or_dict, overrides=overrides, data=data)
    run_dir = shared_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    # the strategy first: a multi-worker one must exist before TensorFlow's runtime starts
    strategy = distribute.get_strategy(recipe.training["strategy"]) if recipe.training["strategy"] else None
    if distribute.parse_tf_config() is not None and not distribute.is_chief():
        # A non-chief worker of a multi-worker run: it trains with the chief (sharing the chief's
        # BackupAndRestore state) and keeps every other file of its own beside the chief's run directory.
        run_dir = shared_dir.parent / f"{shared_dir.name}.worker-{distribute.task_index()}"
    _check_writable(run_dir)
    with RunLock(run_dir):  # a second run on the same directory gets a clear error, not a mixed-up run
        return _run_locked(recipe, run_dir, force, overwrite, data, overrides, verbose, shared_dir, strategy)


def _run_locked(recipe, run_dir: Path, force, overwrite: bool, data, overrides, verbose, shared_dir: Path,
                strategy) -> dict:
    apply_determinism(recipe)
    # everything is checked before anything is written: a refused recipe leaves the run directory as it was
    manifest = _previous_run(run_dir, recipe, overwrite)
    first_forced = _forced(recipe, force)
    ctx = Context(recipe, run_dir, verbose, shared_dir=shared_dir, strategy=strategy)
    _, _, info = ctx.load(recipe.data)  # the data must load and fit the model
    source = None
    if recipe.model.path is not None:
        source = ctx.source_model()
    elif recipe.model.builder is not None:
        ctx.check_fits(ctx.build(recipe.model, info), info, f"model {recipe.model.builder!r}")

    # checked: from here on the run directory is written. First clear what a killed writer left at its top
    # (results.json or the report being written when every stage was already done; stages clear their own)
    remove_partial_files(run_dir, recursive=False)
    if manifest is None:
        manifest = _start(run_dir, recipe)
    _apply_force(manifest, recipe, first_forced, run_dir)
    if recipe.source != "<dict>" and not data and not overrides:
        with contextlib.suppress(OSError):
            atomic_write_text(run_dir / "recipe.yaml", Path(recipe.source).read_text(encoding="utf-8"))
    manifest["data"] = info.to_dict()
    if source is not None:
        ctx.set_model("model", source, recipe.model.path, recipe.data)

    stages = Stages(len(recipe.stages))
    resuming, ran = True, False
    for spec, entry in zip(recipe.stages, manifest["stages"]):
        if resuming and entry["status"] == "done" and _restore(ctx, spec, entry, stages):
            stages.done += 1
            print(f"[{stages.done}/{stages.total}] {spec.name}: finished in an earlier run, kept "
                  f"({entry.get('seconds') or 0:.1f} s then)", file=stages.stream, flush=True)
            continue
        resuming = False  # everything after a re-run stage depends on it: re-run it too
        if ran:  # an earlier stage ran again here: this stage's backup (if a kill left one) is of another model
            _remove_backup(run_dir / spec.dirname)
        _run_stage(ctx, spec, entry, manifest, stages)
        ran = True

    results = collect_results(manifest)
    write_json(run_dir / RESULTS, results)
    from tfopt.pipeline.report.report import write_report

    write_report(run_dir)
    return results
