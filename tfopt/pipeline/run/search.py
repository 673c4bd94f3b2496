"""``tfopt tune RECIPE``: run only the search of a recipe's ``tune`` stage, alone or as a chief/worker."""

from __future__ import annotations

from pathlib import Path

from tfopt.errors import ConfigError
from tfopt.pipeline.run.context import Context
from tfopt.pipeline.config.recipe import load_recipe
from tfopt.pipeline.run.stages import tune_search

__all__ = ["run_search"]


def run_search(path_or_dict, directory=None, data: str | None = None, overrides: dict | None = None,
               role: str | None = None, address: str | None = None, tuner_id: str | None = None,
               overwrite: bool = False, verbose="auto", serve_timeout: float | None = None):
    """Run the search described by the recipe's (first) ``tune`` stage and return the ``SearchResult``.

    The trials table (``trials.json``/``.csv``), the best hyperparameters and, for several objectives, the
    Pareto plot are written into ``directory/<recipe name>``. Run again with the same directory to resume.

    Args:
        path_or_dict: String or Path of a YAML recipe, or the recipe as a dict.
        directory: Search directory (default ``runs/<recipe name>/search``).
        data: Dataset name replacing the recipe's (e.g. ``"mnist_5k"`` offline).
        overrides: Dict deep-merged into the recipe first.
        role: None (one process; or whatever ``KERASTUNER_*`` variables say), "chief" (serves the oracle,
            runs no trial) or "worker" (runs trials the chief hands out).
        address: "host:port" of the chief, for a role.
        tuner_id: String, this worker's id (default from the environment).
        overwrite: Boolean, start the search afresh (never for a worker).
        verbose: Keras verbosity.
        serve_timeout: Float seconds the chief waits for workers at most (None: until the search is done).

    >>> result = run_search("recipes/tune_cnn.yaml", data="digits")  # doctest: +SKIP
    """
    recipe = load_recipe(path_or_dict, overrides=overrides, data=data)
    specs = [s for s in recipe.stages if s.type == "tune"]
    if not specs:
        raise ConfigError(f"{recipe.source}: `tfopt tune` needs a `tune` stage in the recipe's stages "
                          f"(it has: {', '.join(s.name for s in recipe.stages)})")
    directory = Path(directory) if directory is not None else Path("runs") / recipe.name / "search"
    extra = {"overwrite": overwrite}
    if role is not None:
        extra.update(role=role, address=address, tuner_id=tuner_id, serve_timeout=serve_timeout)
    result, _, _ = tune_search(Context(recipe, directory, verbose), specs[0], directory, **extra)
    return result
