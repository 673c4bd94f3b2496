"""Nothing outside the run directory: an edited manifest.json or results.json, or a symlink in a run directory,
never makes ``--overwrite``, ``--force`` or ``tfopt report`` delete, read or write anything elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import cli_error_line
from tfopt._io import path_inside, read_json, write_json
from tfopt.errors import ConfigError
from tfopt.pipeline import run_recipe, write_report

RECIPE = """\
name: secure
seed: 0
data: {name: digits}
model: {builder: cnn, args: {filters: [4], dense: [16]}}
training: {epochs: 1, batch_size: 64}
stages:
  - train
  - export: {variants: [{name: float32, model: train}]}
  - evaluate: {runs: 2, warmup: 1}
"""
OTHER = RECIPE.replace("name: secure", "name: other").replace("  - export: {variants: [{name: float32, model: train}]}\n"
                                                              "  - evaluate: {runs: 2, warmup: 1}\n", "")
ESCAPE = "leads outside the run directory"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny finished run (train, export, evaluate) on the 8x8 digits."""
    base = tmp_path_factory.mktemp("secure")
    (base / "secure.yaml").write_text(RECIPE)
    run_recipe(base / "secure.yaml", run_dir=base / "run", verbose=0)
    return base


@pytest.fixture
def run(made, tmp_path, monkeypatch):
    """A copy of the finished run at ``runs/run`` and a victim folder (with a file) at ``victim``, both in tmp_path."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    run_dir = tmp_path / "runs" / "run"
    shutil.copytree(made / "run", run_dir, symlinks=True)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    (tmp_path / "secure.yaml").write_text(RECIPE)
    (tmp_path / "other.yaml").write_text(OTHER)
    return SimpleNamespace(dir=run_dir, victim=victim, recipe=str(tmp_path / "secure.yaml"),
                           other=str(tmp_path / "other.yaml"))


def _edit(path: Path, change) -> None:
    content = read_json(path)
    change(content)
    write_json(path, content)


def _intact(victim: Path) -> None:
    assert victim.is_dir() and (victim / "keep.txt").read_text() == "precious"


def _set_dir(value):
    return lambda m: m["stages"][0].update(dir=value)


@pytest.mark.parametrize("entry", ["../../victim", "ABS"], ids=["dotdot", "absolute"])
def test_overwrite_never_deletes_a_stage_dir_outside_the_run(run, capsys, entry):
    entry = str(run.victim) if entry == "ABS" else entry
    _edit(run.dir / "manifest.json", _set_dir(entry))
    line = cli_error_line(capsys, ["run", run.other, "--run-dir", str(run.dir), "--overwrite"])
    assert f"manifest.json stages[0].dir={entry!r} {ESCAPE} {str(run.dir)!r}" in line
    _intact(run.victim)
    assert (run.dir / "01_train" / "model.keras").is_file()  # refused before anything was deleted


@pytest.mark.parametrize("entry", ["../../victim", "ABS"], ids=["dotdot", "absolute"])
def test_force_never_deletes_a_stage_dir_outside_the_run(run, capsys, entry):
    entry = str(run.victim) if entry == "ABS" else entry
    _edit(run.dir / "manifest.json", _set_dir(entry))
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir), "--force", "train"])
    assert f"stages[0].dir={entry!r} {ESCAPE}" in line and str(run.dir) in line
    _intact(run.victim)


def test_api_refuses_the_same_with_the_entry_named(run):
    _edit(run.dir / "manifest.json", _set_dir("../../victim"))
    with pytest.raises(ConfigError, match=r"stages\[0\]\.dir='\.\./\.\./victim' leads outside"):
        run_recipe(run.recipe, run_dir=run.dir, overwrite=True, force=["train"], verbose=0)
    _intact(run.victim)


def test_model_and_variant_paths_outside_are_refused_on_resume(run, capsys):
    _edit(run.dir / "manifest.json", lambda m: m["stages"][0]["outputs"].update(model="../../victim/keep.txt"))
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir)])
    assert "stages[0].outputs.model='../../victim/keep.txt' " + ESCAPE in line
    _edit(run.dir / "manifest.json", lambda m: m["stages"][0]["outputs"].update(model="01_train/model.keras"))
    _edit(run.dir / "manifest.json", lambda m: m["stages"][1]["metrics"]["variants"][0].update(path=str(run.victim)))
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir)])
    assert "stages[1].metrics.variants[0].path=" in line and ESCAPE in line
    _intact(run.victim)


def test_symlinked_stage_dir_is_refused_for_force_and_overwrite(run, capsys):
    shutil.rmtree(run.dir / "01_train")
    (run.dir / "01_train").symlink_to(run.victim, target_is_directory=True)
    for argv in (["run", run.recipe, "--run-dir", str(run.dir), "--force", "train"],
                 ["run", run.other, "--run-dir", str(run.dir), "--overwrite"]):
        line = cli_error_line(capsys, argv)
        assert f"stages[0].dir='01_train' {ESCAPE}" in line and str(run.victim) in line
        _intact(run.victim)
    assert (run.dir / "01_train").is_symlink()


def test_symlink_deeper_in_the_run_is_refused_on_resume(run, capsys):
    (run.dir / "01_train" / "backup").symlink_to(run.victim, target_is_directory=True)
    line = cli_error_line(capsys, ["run", run.recipe, "--run-dir", str(run.dir), "--force", "train"])
    assert f"symlink='01_train/backup' {ESCAPE}" in line
    _intact(run.victim)


def test_overwrite_removes_symlinks_not_what_they_point_to(run):
    """Symlinks under tfopt's own names (not named by the manifest) are unlinked; their targets stay."""
    shutil.rmtree(run.dir / "report")
    (run.dir / "report").symlink_to(run.victim, target_is_directory=True)
    (run.dir / "07_old").symlink_to(run.victim, target_is_directory=True)
    (run.dir / "results.json").unlink()
    (run.dir / "results.json").symlink_to(run.victim / "keep.txt")
    results = run_recipe(run.other, run_dir=run.dir, overwrite=True, verbose=0)
    assert results["recipe"] == "other"
    _intact(run.victim)
    assert sorted(p.name for p in run.victim.iterdir()) == ["keep.txt"]  # nothing written there either
    assert not (run.dir / "07_old").exists() and (run.dir / "report").is_dir() and not (run.dir / "report").is_symlink()
    assert not (run.dir / "02_export").exists()


def test_report_refuses_a_variant_path_outside(run, capsys):
    (run.victim / "secret.tflite").write_bytes(b"not yours")
    _edit(run.dir / "results.json", lambda r: r["variants"][0].update(path="../../victim/secret.tflite"))
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert f"results.json variants[0].path='../../victim/secret.tflite' {ESCAPE} {str(run.dir)!r}" in line
    _intact(run.victim)


def test_report_refuses_a_history_path_outside(run, capsys):
    (run.victim / "history.csv").write_text("epoch,loss\n0,1.0\n")
    _edit(run.dir / "manifest.json", lambda m: m["stages"][0]["outputs"].update(history=str(run.victim / "history.csv")))
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert "manifest.json stages[0].outputs.history=" in line and ESCAPE in line


def test_report_refuses_symlinks_leading_out(run, capsys):
    exported = run.dir / "02_export" / "float32.tflite"
    shutil.copy(exported, run.victim / "float32.tflite")
    exported.unlink()
    exported.symlink_to(run.victim / "float32.tflite")
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert "variants[0].path='02_export/float32.tflite' " + ESCAPE in line
    exported.unlink()
    shutil.copy(run.victim / "float32.tflite", exported)
    shutil.rmtree(run.dir / "report")
    (run.dir / "report").symlink_to(run.victim, target_is_directory=True)
    before = sorted(p.name for p in run.victim.iterdir())
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert f"symlink='report' {ESCAPE}" in line
    assert sorted(p.name for p in run.victim.iterdir()) == before  # no figure written into it
    with pytest.raises(ConfigError, match="symlink='report' leads outside"):
        write_report(run.dir)


def test_a_symlinked_manifest_leading_out_is_not_read(run, capsys):
    write_json(run.victim / "manifest.json", read_json(run.dir / "manifest.json"))
    (run.dir / "manifest.json").unlink()
    (run.dir / "manifest.json").symlink_to(run.victim / "manifest.json")
    line = cli_error_line(capsys, ["report", str(run.dir)])
    assert f"file='manifest.json' {ESCAPE}" in line


@pytest.mark.parametrize("relative,words", [
    ("../x", ESCAPE), ("/etc/passwd", ESCAPE), ("a/../../x", ESCAPE), (".", "names the run directory"),
    ("", "is not a path inside it"), (None, "is not a path inside it"), ("a\x00b", "is not a path inside it"),
])
def test_path_inside_refuses_anything_but_a_path_inside(tmp_path, relative, words):
    with pytest.raises(ConfigError, match=words):
        path_inside(tmp_path, relative, "entry")
    assert path_inside(tmp_path, "a/b/../c", "entry") == tmp_path / "a/b/../c"
