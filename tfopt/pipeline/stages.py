"""The stage functions the runner calls, registered by stage type: ``STAGES["prune"](ctx, spec, stage_dir)``.

Each returns a :class:`StageOutput`: the model it made (None for export/evaluate), metrics for the
manifest, and a short note for the progress line. The runner saves the model and writes the files.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import importlib
from pathlib import Path
from typing import Callable

from tfopt import _faults, compress, export, train
from tfopt._io import as_write_error, remove_partial_files
from tfopt._keras import keras
from tfopt.pipeline.context import Context, apply_determinism, weight_count
from tfopt.pipeline.recipe import DataSpec, StageSpec

__all__ = ["STAGES", "StageOutput", "register_stage", "tune_search"]


@dataclasses.dataclass
class StageOutput:
    """What a stage made: ``model`` (or None), ``metrics`` (JSON-able), ``note`` (progress line), ``data``."""

    model: object = None
    metrics: dict = dataclasses.field(default_factory=dict)
    note: str = ""
    data: DataSpec | None = None


STAGES: dict[str, Callable] = {}


def register_stage(name: str):
    """Register a stage function ``(ctx, spec, stage_dir) -> StageOutput`` under ``name``.

    The registered function first clears what a killed or crashed earlier attempt left in the stage folder
    (temporary files, see ``tfopt._io.remove_partial_files``), and turns a full disk, a read-only folder or a
    missing permission met anywhere in the stage (Keras callbacks, TensorFlow checkpoints, h5py) into one
    :class:`tfopt.errors.WriteError` naming the file, leaving no temporary file behind.
    """

    def decorator(fn):
        @functools.wraps(fn)
        def run(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
            _clear_partial_files(ctx, stage_dir)
            try:
                return fn(ctx, spec, stage_dir)
            except BaseException as err:
                _clear_partial_files(ctx, stage_dir)
                fault = _write_fault(err, ctx, stage_dir) if isinstance(err, Exception) else None
                if fault is None:
                    raise
                raise fault from err

        STAGES[name] = run
        return run

    return decorator


def _clear_partial_files(ctx: Context, stage_dir: Path) -> None:
    # the runner holds the run directory's lock: no other process writes in these folders
    remove_partial_files(stage_dir)
    remove_partial_files(ctx.run_dir, recursive=False)


def _write_fault(err: Exception, ctx: Context, stage_dir: Path):
    """The WriteError for ``err`` (None when it is no full disk, read-only folder or missing permission)."""
    fault = as_write_error(err, near=stage_dir)
    if fault is not None and fault.errno in (errno.EACCES, errno.EPERM) and fault.filename:
        inside = Path(fault.filename).resolve().is_relative_to(Path(ctx.run_dir).resolve())
        fault = fault if inside else as_write_error(err, near=stage_dir, writing=False)  # reading, e.g. data
    return fault


def _history(stage_dir: Path, fresh: bool = True) -> list:
    """A CSVLogger writing the stage's ``history.csv`` (removed first: compression stages restart from scratch)."""
    path = Path(stage_dir) / "history.csv"
    if fresh and path.exists():
        path.unlink()
    return [keras.callbacks.CSVLogger(str(path), append=True)]


def _held_out(model, val_ds) -> dict:
    values = model.evaluate(val_ds, verbose=0, return_dict=True)
    params, nonzero = weight_count(model)
    return {"val_loss": float(values.get("loss", float("nan"))),
            "val_accuracy": float(values.get("accuracy", values.get("sparse_categorical_accuracy", float("nan")))),
            "params": params, "nonzero_params": nonzero}


def tune_search(ctx: Context, spec: StageSpec, directory: Path, **extra):
    """Run the search a ``tune`` stage describes on the recipe's data; ``extra`` goes to ``tfopt.tune.search``
    (e.g. ``role``, ``address``, ``tuner_id``, ``overwrite`` for ``tfopt tune``)."""
    search = importlib.import_module("tfopt.tune").search
    apply_determinism(ctx.recipe)
    o = spec.options
    train_ds, val_ds, info = ctx.load()
    shape = (info.seq_len,) if info.kind == "tokens" else tuple(info.input_shape)

    def fresh_data():  # each trial gets datasets made afresh (see tfopt.tune.search's data_fn)
        ctx.fresh_data()
        return ctx.load()[:2]

    result = search(o["space"], train_ds, val_ds, algorithm=o["algorithm"], objective=o["objective"],
                    max_trials=o["max_trials"], max_epochs=o["max_epochs"], constraints=o["constraints"],
                    objectives=o["objectives"], directory=str(directory), project_name=ctx.recipe.name,
                    seed=ctx.recipe.seed, input_shape=shape, num_classes=info.num_classes,
                    verbose=1 if ctx.verbose == "auto" else int(ctx.verbose), data_fn=fresh_data, **extra)
    train_ds, val_ds, _ = ctx.load()
    return result, train_ds, val_ds


@register_stage("tune")
def run_tune(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Hyperparameter search with ``tfopt.tune.search``; the best model becomes the current model."""
    result, train_ds, val_ds = tune_search(ctx, spec, stage_dir / "search")
    model = result.best_model
    hp = result.best_hyperparameters
    hp = hp if isinstance(hp, dict) else getattr(hp, "values", {})
    if model.optimizer is None:
        ctx.compile(model, train_ds, spec.options["max_epochs"])
    metrics = {"best_hyperparameters": dict(hp or {}), **_held_out(model, val_ds)}
    return StageOutput(model, metrics, f"best {metrics['best_hyperparameters']}, accuracy {metrics['val_accuracy']:.4f}")


@register_stage("train")
def run_train(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Train the current model (or a new one from the builder) with the recipe's training settings."""
    train_ds, val_ds, info = ctx.load()
    model = ctx.build(ctx.recipe.model, info) if ctx.current is None else ctx.model(ctx.current)
    model = ctx.regularize(model)
    epochs = spec.options.get("epochs") or ctx.recipe.training["epochs"]
    ctx.compile(model, train_ds, epochs)
    t = ctx.recipe.training
    train.fit(model, train_ds, val_ds, epochs=epochs, run_dir=stage_dir, strategy=ctx.strategy, verbose=ctx.verbose,
              backup_dir=ctx.shared_dir / spec.dirname / "backup", keep_backup=True,
              mixed_precision=t["mixed_precision"], jit_compile=t["jit_compile"],
              steps_per_execution=t["steps_per_execution"])
    metrics = {"epochs": epochs, **_held_out(model, val_ds)}
    return StageOutput(model, metrics, f"held-out accuracy {metrics['val_accuracy']:.4f}, {metrics['params']:,} parameters")


@register_stage("prune")
def run_prune(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Magnitude pruning (``tfopt.compress.prune``) to ``target_sparsity``."""
    o = spec.options
    train_ds, val_ds, _ = ctx.load()
    pruned = compress.prune(ctx.model(ctx.current), train_ds, o["target_sparsity"], epochs=o["epochs"],
                            schedule=o["schedule"], initial_sparsity=o["initial_sparsity"], frequency=o["frequency"],
                            m_by_n=tuple(o["m_by_n"]) if o["m_by_n"] else None, policy=o["policy"], val_ds=val_ds,
                            callbacks=_history(stage_dir), learning_rate=o["learning_rate"], verbose=ctx.verbose)
    reached = compress.sparsity(pruned)
    metrics = {"target_sparsity": o["target_sparsity"], "sparsity": reached["overall"],
               "layer_sparsity": reached["layers"], **_held_out(pruned, val_ds)}
    return StageOutput(pruned, metrics, f"sparsity {reached['overall']:.3f}, held-out accuracy {metrics['val_accuracy']:.4f}")


@register_stage("cluster")
def run_cluster(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Weight clustering (``tfopt.compress.cluster``), keeping an earlier pruning's zeros by default."""
    o = spec.options
    train_ds, val_ds, _ = ctx.load()
    clustered = compress.cluster(ctx.model(ctx.current), train_ds, n_clusters=o["n_clusters"], init=o["init"],
                                 per_channel=o["per_channel"], preserve_sparsity=bool(o["preserve_sparsity"]),
                                 epochs=o["epochs"], val_ds=val_ds, callbacks=_history(stage_dir),
                                 learning_rate=o["learning_rate"], verbose=ctx.verbose)
    counts = compress.cluster_counts(clustered)
    metrics = {"n_clusters": o["n_clusters"], "cluster_counts": counts["layers"],
               "sparsity": compress.sparsity(clustered)["overall"], **_held_out(clustered, val_ds)}
    most = max(counts["layers"].values(), default=0)
    return StageOutput(clustered, metrics, f"<= {most} values per kernel, held-out accuracy {metrics['val_accuracy']:.4f}")


@register_stage("quantize_aware")
def run_quantize_aware(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Quantization-aware training (``tfopt.compress.quantize_aware``), keeping zeros/clusters as asked."""
    o = spec.options
    train_ds, val_ds, _ = ctx.load()
    qat, report = compress.quantize_aware(ctx.model(ctx.current), train_ds, epochs=o["epochs"],
                                          preserve_sparsity=bool(o["preserve_sparsity"]),
                                          preserve_clusters=bool(o["preserve_clusters"]), val_ds=val_ds,
                                          callbacks=_history(stage_dir), learning_rate=o["learning_rate"],
                                          verbose=ctx.verbose, return_report=True)
    metrics = {"report": report, **_held_out(qat, val_ds)}
    return StageOutput(qat, metrics, f"{len(report['quantized'])} layers quantized ({report['scheme']}), "
                                     f"held-out accuracy {metrics['val_accuracy']:.4f}")


@register_stage("distill")
def run_distill(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Knowledge distillation: the current model teaches a new student built from ``student``."""
    from tfopt.pipeline.recipe import ModelSpec

    o = spec.options
    train_ds, val_ds, info = ctx.load()
    teacher = ctx.model(ctx.current)
    student_spec = ModelSpec(o["student"]["builder"], dict(o["student"].get("args") or {}))
    student = ctx.build(student_spec, info)
    epochs = o["epochs"] or ctx.recipe.training["epochs"]
    student = compress.distill(teacher, student, train_ds, temperature=o["temperature"], alpha=o["alpha"],
                               epochs=epochs, val_ds=val_ds, learning_rate=o["learning_rate"],
                               callbacks=_history(stage_dir), verbose=ctx.verbose)
    teacher_metrics = _held_out(teacher, val_ds)
    metrics = {"epochs": epochs, "teacher_val_accuracy": teacher_metrics["val_accuracy"],
               "teacher_params": teacher_metrics["params"], **_held_out(student, val_ds)}
    return StageOutput(student, metrics, f"student accuracy {metrics['val_accuracy']:.4f} "
                                         f"({metrics['params']:,} params) vs teacher {metrics['teacher_val_accuracy']:.4f}")


@register_stage("fine_tune")
def run_fine_tune(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Transfer to a new task (its own ``data``): new head, then fine-tuning (``tfopt.compress.fine_tune``)."""
    o = spec.options
    new_data = DataSpec(**{**o["data"], "classes": tuple(o["data"]["classes"]) if o["data"].get("classes") else None})
    train_ds, val_ds, info = ctx.load(new_data)
    num_classes = o["num_classes"] or info.num_classes
    model = compress.fine_tune(ctx.model(ctx.current), num_classes, train_ds, freeze=o["freeze"],
                               epochs=tuple(o["epochs"]), lr_scale=o["lr_scale"], learning_rate=o["learning_rate"],
                               val_ds=val_ds, head_dropout=o["head_dropout"], verbose=ctx.verbose)
    metrics = {"num_classes": num_classes, "data": dataclasses.asdict(new_data), **_held_out(model, val_ds)}
    return StageOutput(model, metrics, f"{num_classes} classes, held-out accuracy {metrics['val_accuracy']:.4f}",
                       data=new_data)


@register_stage("export")
def run_export(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Convert each variant's model to TFLite and save ``<variant>.tflite`` in the stage folder."""
    rows = []
    for v in spec.options["variants"]:
        model = ctx.model(v["model"])
        data_spec = ctx.model_data[v["model"]]
        train_ds, _, _ = ctx.load(data_spec)
        quant = v["tflite_quantization"]
        tfl = export.to_tflite(model, quant, representative_data=train_ds if quant in ("int8", "int16x8") else None,
                               io_dtype=v["io_dtype"], num_samples=spec.options["num_samples"], sparse=v["sparse"])
        _faults.reached(f"export:{v['name']}")
        path = tfl.save(stage_dir / f"{v['name']}.tflite")
        params, nonzero = weight_count(model)
        rows.append({"variant": v["name"], "model": v["model"], "quantization": v["quantization"],
                     "path": str(path.relative_to(ctx.run_dir)), "bytes": tfl.bytes, "gzip_bytes": tfl.gzip_bytes,
                     "params": params, "nonzero_params": nonzero, "notes": list(tfl.notes),
                     "data": dataclasses.asdict(data_spec)})
    metrics = {"variants": rows, "baseline": spec.options["baseline"]}
    return StageOutput(None, metrics, f"{len(rows)} TFLite file(s) in {stage_dir.name}/")


@register_stage("evaluate")
def run_evaluate(ctx: Context, spec: StageSpec, stage_dir: Path) -> StageOutput:
    """Measure every exported variant with LiteRT on the held-out split of its model's data."""
    o = spec.options
    rows = []
    for row in ctx.exported:
        data_spec = DataSpec(**{**row["data"], "classes": tuple(row["data"]["classes"]) if row["data"].get("classes")
                                else None})
        _, val_ds, _ = ctx.load(data_spec)
        measured = export.evaluate(ctx.run_dir / row["path"], val_ds, threads=o["threads"], warmup=o["warmup"],
                                   runs=o["runs"], limit=o["limit"])
        rows.append({**row, **measured})
    best = max(rows, key=lambda r: r["accuracy"]) if rows else None
    note = f"best {best['variant']} accuracy {best['accuracy']:.4f}" if best else "nothing exported"
    return StageOutput(None, {"variants": rows}, note)
