"""Recipes (validated YAML), a resumable pipeline that runs them, and the run report.

>>> from tfopt.pipeline import load_recipe, run_recipe, write_report
>>> recipe = load_recipe("recipes/mnist_cnn.yaml")  # doctest: +SKIP
>>> results = run_recipe(recipe_path, run_dir="runs/mnist_cnn")  # doctest: +SKIP
>>> write_report("runs/mnist_cnn")["html"]  # doctest: +SKIP
"""

from tfopt.pipeline.config.recipe import DataSpec, ModelSpec, Recipe, StageSpec, load_recipe  # noqa: I001
from tfopt.pipeline.report.report import write_report
from tfopt.pipeline.run.runner import run_recipe
from tfopt.pipeline.run.stages import STAGES, StageOutput, register_stage
from tfopt.techniques import StageInputs

__all__ = ["load_recipe", "run_recipe", "write_report", "Recipe", "StageSpec", "DataSpec", "ModelSpec", "STAGES",
           "register_stage", "StageInputs", "StageOutput"]
