"""Execute every technique notebook in notebooks/ top to bottom, and check how they are stored.

Each notebook asserts its own key results (accuracies, sparsities, sizes...), so a silently wrong result
fails its run here. Notebooks run in a fresh temporary working directory, so they write nothing into the
repository; they must be stored without outputs (regenerate them with ``python notebooks/_make.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell
# The techniques the notebooks must cover (file name prefixes), one notebook each.
TECHNIQUES = (
    "01_build_and_train",
    "02_losses_schedules_optimizers",
    "03_data_augmentation",
    "04_pruning_and_clustering",
    "05_quantization_and_tflite",
    "06_distillation_and_transfer",
    "07_tuning",
    "08_distributed_training",
)


def test_every_technique_has_a_notebook():
    names = [p.stem for p in NOTEBOOKS]
    assert names == list(TECHNIQUES), f"notebooks/ holds {names}; expected exactly {list(TECHNIQUES)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; regenerate with `python notebooks/_make.py`"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "first cell: a title"
    assert "What it buys" in nb.cells[0].source
    assert sum(cell.cell_type == "code" and "assert" in cell.source for cell in nb.cells) >= 2
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_python3_kernel_runs_this_interpreter():
    """The "python3" kernel spec says `python`; jupyter_client swaps that for sys.executable (the venv's)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd()
    assert cmd[0] == sys.executable, f"kernel python3 would start {cmd[0]!r}, not {sys.executable!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError (with the failing cell and traceback) on any error
    errors = [o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    ran = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert ran and all(cell.get("execution_count") for cell in ran), "every code cell must have run"
