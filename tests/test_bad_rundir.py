"""Damaged or edited run directories, and recipes refused before anything is written: each is one line naming
the file (exit code 2 on the command line), or is rebuilt (a done stage's damaged model, a damaged backup)."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.helpers import cli_error_line
from tfopt._io import read_json, write_json
from tfopt._keras import keras, tf
from tfopt.cli import main
from tfopt.errors import ConfigError
from tfopt.pipeline import run_recipe, write_report
from tfopt.pipeline.config.recipe import merge
from tfopt.pipeline.report.rundir import model_damage
from tfopt.train import fit

RECIPE = {
    "name": "bad_rundir", "seed": 0, "data": {"name": "digits"},
    "model": {"builder": "cnn", "args": {"filters": [4], "dense": [16]}},
    "training": {"epochs": 1, "batch_size": 64},
    "stages": ["train", {"export": {"variants": [{"name": "float32", "model": "train"}]}},
               {"evaluate": {"runs": 2, "warmup": 1}}],
}
FIXES = "pass overwrite=True (--overwrite) to start the run directory afresh"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny finished run (train, export, evaluate) on the 8x8 digits, and its recipe as a file."""
    import yaml

    base = tmp_path_factory.mktemp("bad_rundir")
    (base / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    run_recipe(base / "recipe.yaml", run_dir=base / "run", verbose=0)
    return base


@pytest.fixture
def run(made, tmp_path, monkeypatch):
    """A copy of the finished run, with the recipe beside it."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    shutil.copytree(made / "run", tmp_path / "run", symlinks=True)
    shutil.copy(made / "recipe.yaml", tmp_path / "recipe.yaml")
    return SimpleNamespace(dir=tmp_path / "run", recipe=str(tmp_path / "recipe.yaml"))


def _files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------- damaged manifest.json / results.json
def _drop(key):
    def change(m):
        m["stages"][0].pop(key)
        return m
    return change


MANIFESTS = [
    ("list", lambda m: [], "it holds a list, not an object"),
    ("empty object", lambda m: {}, "recipe_hash is missing"),
    ("stages not a list", lambda m: {**m, "stages": "train"}, "stages is a string, not a list"),
    ("stage without dir", _drop("dir"), "stages[0].dir is missing"),
    ("seed a string", lambda m: {**m, "seed": "x"}, "seed is a string, not an integer"),
    ("outputs a list", lambda m: {**m, "stages": [{**m["stages"][0], "outputs": []}] + m["stages"][1:]},
     "stages[0].outputs is a list, not an object"),
    ("variant without name", lambda m: m["stages"][1]["metrics"]["variants"][0].pop("variant") and m,
     "stages[1].metrics.variants[0].variant is missing"),
    ("truncated", None, "not valid JSON"),
    ("garbage", b"\xff\xfe\x00garbage", "not UTF-8 text"),
]


def _damage(path: Path, change) -> None:
    """Damage a run directory's JSON file: truncate it (None), replace its bytes, or edit its content."""
    if change is None:
        _truncate(path)
    elif isinstance(change, bytes):
        path.write_bytes(change)
    else:
        write_json(path, change(read_json(path)))


@pytest.mark.parametrize("change,words", [c[1:] for c in MANIFESTS], ids=[c[0] for c in MANIFESTS])
def test_damaged_manifest_is_one_line_for_run_and_report(run, capsys, change, words):
    _damage(run.dir / "manifest.json", change)
    before = _files(run.dir)
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir)])
    assert f"manifest.json of the run directory {str(run.dir)!r} is damaged: " in line and words in line
    assert FIXES in line
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert "manifest.json of the run directory" in line and words in line
    assert _files(run.dir) == before  # nothing written, nothing deleted


def test_manifest_listing_other_stages_is_refused(run, capsys):
    manifest = read_json(run.dir / "manifest.json")
    manifest["stages"][0]["dir"] = "09_train"
    write_json(run.dir / "manifest.json", manifest)
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir)])
    assert "lists the stages ['train', 'export', 'evaluate'] (folders ['09_train', '02_export', '03_evaluate'])" in line
    assert FIXES in line


def test_damaged_manifest_is_replaced_with_overwrite(run, capsys):
    (run.dir / "manifest.json").write_text("[]")
    (run.dir / "notes.txt").write_text("mine")
    results = run_recipe(run.recipe, run_dir=run.dir, overwrite=True, verbose=0)
    assert [s["status"] for s in results["stages"]] == ["done"] * 3
    assert read_json(run.dir / "manifest.json")["recipe"]["name"] == "bad_rundir"
    assert (run.dir / "notes.txt").read_text() == "mine"  # not a tfopt file: kept


RESULTS = [
    ("list", lambda r: [], "it holds a list, not an object"),
    ("no variants", lambda r: {k: v for k, v in r.items() if k != "variants"}, "variants is missing"),
    ("accuracy a string", lambda r: r["variants"][0].update(accuracy="high") or r,
     "variants[0].accuracy is a string, not a number"),
    ("stage a number", lambda r: {**r, "stages": [3]}, "stages[0] is an integer, not an object"),
    ("truncated", None, "not valid JSON"),
    ("garbage", b"\x00\x01\x02", "not valid JSON"),
]


@pytest.mark.parametrize("change,words", [c[1:] for c in RESULTS], ids=[c[0] for c in RESULTS])
def test_damaged_results_is_one_line_for_report(run, capsys, change, words):
    path = run.dir / "results.json"
    _damage(path, change)
    before = _files(run.dir)
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert f"results.json of the run directory {str(run.dir)!r} is damaged: " in line and words in line
    assert "delete it to report from manifest.json" in line
    assert _files(run.dir) == before
    path.unlink()  # as the message says: the report is then made from the manifest
    assert main(["report", str(run.dir)]) == 0


def test_damaged_tflite_and_history_are_one_line_for_report(run, capsys):
    _truncate(run.dir / "02_export" / "float32.tflite")
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert "02_export/float32.tflite of the run directory" in line and "(variant 'float32') is damaged" in line
    (run.dir / "01_train" / "history.csv").write_bytes(b"epoch,loss\n0,\xff\xfe\n")
    (run.dir / "02_export" / "float32.tflite").unlink()  # a missing file is skipped, as before
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert "01_train/history.csv of the run directory" in line and "is damaged" in line


# ---------------------------------------------------------------- damaged files a resumed run rebuilds
def test_truncated_model_of_a_done_stage_is_rebuilt(run, capsys):
    model = run.dir / "01_train" / "model.keras"
    _truncate(model)
    assert model_damage(model).startswith("not a complete zip archive")
    results = run_recipe(run.recipe, run_dir=run.dir, verbose=0)
    err = capsys.readouterr().err
    assert "[1/3] train: its model file 01_train/model.keras is damaged (not a complete zip archive" in err
    assert "running the stage again" in err and "finished in an earlier run, kept" not in err
    assert model_damage(model) is None and keras.models.load_model(model).count_params() > 0
    assert [s["status"] for s in results["stages"]] == ["done"] * 3


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_model_damage_of_an_h5_file(tmp_path):
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    path = tmp_path / "model.h5"
    model.save(path)
    assert model_damage(path) is None
    _truncate(path)
    assert model_damage(path).startswith("not a readable HDF5 file")
    (tmp_path / "empty.keras").write_bytes(b"")
    assert model_damage(tmp_path / "empty.keras").startswith("not a complete zip archive")


def _tiny():
    tf.random.set_seed(0)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


X = np.random.default_rng(0).random((64, 4)).astype("float32")
DS = tf.data.Dataset.from_tensor_slices((X, (X[:, 0] > 0.5).astype("int32"))).batch(16)


@pytest.mark.parametrize("victim", ["checkpoint", "ckpt-2.index", "ckpt-2.data-00000-of-00001"])
def test_damaged_backup_is_discarded_and_training_starts_afresh(tmp_path, caplog, victim):
    fit(_tiny(), DS, epochs=2, run_dir=tmp_path, keep_backup=True, verbose=0)
    _truncate(tmp_path / "backup" / "chief" / victim)
    with caplog.at_level(logging.WARNING, logger="tfopt.checkpoints"):
        history = fit(_tiny(), DS, epochs=3, run_dir=tmp_path, keep_backup=True, verbose=0)
    warnings = [r.getMessage() for r in caplog.records if r.name == "tfopt.checkpoints"]
    assert len(warnings) == 1 and "is damaged" in warnings[0] and "training starts again from epoch 1" in warnings[0]
    assert history.epoch == [0, 1, 2]
    rows = (tmp_path / "history.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]  # the discarded epochs are not listed twice
    from tfopt.checkpoints import backup_damage

    assert backup_damage(tmp_path / "backup") is None  # the new backup is whole


def test_damaged_backup_of_a_running_train_stage_is_rebuilt(run, caplog):
    manifest = read_json(run.dir / "manifest.json")
    for entry in manifest["stages"]:
        entry.update(status="pending", outputs={}, metrics={}, seconds=None)
    manifest["stages"][0]["status"] = "running"
    write_json(run.dir / "manifest.json", manifest)
    chief = run.dir / "01_train" / "backup" / "chief"
    chief.mkdir(parents=True)
    (chief / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    (chief / "ckpt-1.index").write_bytes(b"\x00" * 10)
    (chief / "ckpt-1.data-00000-of-00001").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="tfopt.checkpoints"):
        results = run_recipe(run.recipe, run_dir=run.dir, verbose=0)
    assert any("is damaged" in r.getMessage() for r in caplog.records if r.name == "tfopt.checkpoints")
    assert [s["status"] for s in results["stages"]] == ["done"] * 3
    assert not (run.dir / "01_train" / "backup").exists()  # removed once the stage was recorded done


# ---------------------------------------------------------------- fit(run_dir=<a file>)
@pytest.mark.parametrize("arg", ["run_dir", "backup_dir"])
def test_fit_refuses_a_file_as_its_directory(tmp_path, arg):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path in (afile, afile / "sub"):
        with pytest.raises(ConfigError, match=rf"{arg}='{path}' cannot be a directory: '{afile}' is a file"):
            fit(_tiny(), DS, epochs=1, verbose=0, **({"run_dir": tmp_path / "run"} if arg == "backup_dir" else {}),
                **{arg: path})
    assert afile.read_text() == "x" and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- validated before anything is written
@pytest.mark.parametrize("args,words", [
    ({"filters": [4], "dropout": 5.0}, "dropout=5.0 is out of range"),
    ({"filters": [-4]}, "filters=(-4,) contains -4"),
    ({"filters": [4], "pool": "zzz"}, "pool='zzz' is not allowed"),
    ({"filterz": [4]}, "model 'cnn' has no argument 'filterz'"),
], ids=["dropout", "filters", "pool", "unknown argument"])
def test_a_refused_recipe_writes_nothing_and_the_corrected_one_runs(tmp_path, args, words):
    run_dir = tmp_path / "run"
    bad = merge(RECIPE, {"model": {"args": args}, "stages": ["train"]})
    bad["model"]["args"] = args
    with pytest.raises(ConfigError, match=re.escape(words)):
        run_recipe(bad, run_dir=run_dir, verbose=0)
    assert not run_dir.exists() or sorted(p.name for p in run_dir.iterdir()) in ([], [".lock"])
    good = merge(RECIPE, {"stages": ["train"]})
    results = run_recipe(good, run_dir=run_dir, verbose=0)  # no "different recipe" refusal, no --overwrite
    assert results["stages"][0]["status"] == "done"


def test_a_source_model_that_does_not_fit_is_refused_before_writing(tmp_path):
    source = tmp_path / "source.keras"
    keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(10)]).save(source)
    recipe = {**RECIPE, "model": {"path": str(source)}, "stages": [{"export": {"variants": [{"name": "f"}]}}]}
    with pytest.raises(ConfigError, match=re.escape(f"model {str(source)!r} takes inputs of shape [4]")):
        run_recipe(recipe, run_dir=tmp_path / "run", verbose=0)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]


def test_a_bad_force_name_changes_nothing(run):
    before = _files(run.dir)
    with pytest.raises(ConfigError, match=r"force=\['trian'\] names no stage of recipe 'bad_rundir'"):
        run_recipe(run.recipe, run_dir=run.dir, force=["trian"], verbose=0)
    assert _files(run.dir) == before


def test_report_of_a_good_run_still_works(run, capsys):
    assert main(["report", str(run.dir)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert write_report(run.dir)["md"].is_file()
