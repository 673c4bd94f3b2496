"""The ``tfopt`` command: a thin shell over the public API.

Every bad input prints one line to stderr and exits with code 2: errors tfopt raises on purpose, bad
arguments, and a disk that is full or a folder that is read-only or not writable (``--debug`` shows the
traceback). Ctrl-C prints one line and exits with 130, also while TensorFlow is still importing.
"""

from __future__ import annotations

import argparse
import sys

from tfopt._launch import EXIT_INTERRUPTED, INTERRUPTED

__all__ = ["main", "build_parser"]

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like tfopt's own: ``tfopt: error: <message> (see ...)``, exit 2."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"tfopt: error: {message} (see `{self.prog} --help`)\n")


def _seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2**32), checked as the API checks seeds."""
    from tfopt.errors import ConfigError, check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed={text!r} is not an integer; allowed: an integer with "
                                         "0 <= seed < 2**32") from None
    try:
        return check_seed(value)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tfopt")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _cmd_demo(args) -> int:
    from tfopt.demo import run_demo

    results = run_demo(run_dir=args.run_dir, epochs=args.epochs, seed=args.seed, target_sparsity=args.sparsity,
                       prune_epochs=args.prune_epochs, force=args.force or ())
    _print_results(results, args.run_dir)
    return 0


def _print_results(results: dict, run_dir) -> None:
    from tfopt.pipeline.report.report import SHORT_COLUMNS, TABLE_NOTE, split_sizes, variants_markdown

    rows = [r for r in results.get("variants") or [] if "accuracy" in r]
    if rows:
        print("\n" + variants_markdown(rows, SHORT_COLUMNS) + "\n")
        print(f"{split_sizes(results)}. {TABLE_NOTE.replace('**', '')}\n")
    print(f"written to {run_dir}/ (results.json, report.md, report.html, manifest.json, one folder per stage)")


def _load_keras(path):
    from pathlib import Path

    from tfopt.errors import ConfigError
    from tfopt.saving import load_model

    if not Path(path).exists():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    return load_model(path)


def _layer_bits(text: str) -> dict:
    """argparse type of ``export --layer-bits``: ``conv1=8,logits=float`` -> ``{"conv1": 8, "logits": None}``.

    >>> _layer_bits("conv1=8, dense=4,logits=float")
    {'conv1': 8, 'dense': 4, 'logits': None}
    """
    allowed = "LAYER=BITS pairs separated by commas, BITS 4, 8 or float (e.g. conv1=8,logits=float)"
    out = {}
    for pair in text.split(","):
        layer, sep, bits = (part.strip() for part in pair.partition("="))
        if not sep or not layer or bits not in ("4", "8", "float") or layer in out:
            what = f"{layer!r} twice" if layer in out and sep and layer else repr(pair.strip())
            raise argparse.ArgumentTypeError(f"--layer-bits {text!r}: {what} is not allowed; allowed: {allowed}")
        out[layer] = None if bits == "float" else int(bits)
    return out


def _cmd_export(args) -> int:
    from pathlib import Path

    from tfopt import data, export
    from tfopt.errors import ConfigError
    from tfopt._model import check_input_shape

    out = Path(args.output or Path(args.model).with_suffix(f".{args.quantization or 'float32'}.tflite"))
    if out.is_dir():
        raise ConfigError(f"--output {str(out)!r} is a directory; allowed: a file path such as "
                          f"{str(out / (Path(args.model).stem + '.tflite'))!r}")
    model = _load_keras(args.model)
    rep = None
    if args.quantization in export.CALIBRATED or args.data:
        train_ds, _, test_ds, info = data.load(args.data or "mnist_5k", seed=args.seed)
        check_input_shape(model, info.input_shape, f"--data {args.data or 'mnist_5k'}")  # before a file is written
        rep = train_ds
    tfl = export.to_tflite(model, quantization=args.quantization, representative_data=rep, path=out,
                           layer_bits=args.layer_bits)
    line = f"wrote {out} ({tfl.bytes:,} bytes, {tfl.gzip_bytes:,} gzipped)"
    if args.data:
        res = export.evaluate(tfl, test_ds)
        low, high = res["accuracy_ci95"]
        line += (f"; test accuracy {res['accuracy']:.4f} [95% CI {low:.4f}, {high:.4f}] (n={res['n']}), "
                 f"p50 {res['latency_us_p50']:.0f} µs")
    print(line)
    return 0


def _cmd_evaluate(args) -> int:
    import json

    from tfopt import data, export

    _, _, test_ds, _ = data.load(args.data, seed=args.seed)  # the fixed test split: the same for every seed
    result = export.evaluate(args.tflite, test_ds, threads=args.threads)
    print(json.dumps(result, indent=2))
    low, high = result["accuracy_ci95"]
    print(f"test accuracy {result['accuracy']:.4f} [95% CI {low:.4f}, {high:.4f}] on the {result['n']:,} examples of "
          f"the fixed test split of {args.data}", file=sys.stderr)
    return 0


def _overrides(args) -> dict | None:
    """The recipe overrides of ``--epochs`` and ``--set STAGE.OPTION=VALUE``."""
    from tfopt.pipeline.config.recipe import parse_set

    overrides = parse_set(getattr(args, "set", None) or ())
    if getattr(args, "epochs", None) is not None:
        overrides["training"] = {"epochs": args.epochs}
    return overrides or None


def _cmd_techniques(args) -> int:
    from tfopt.options import describe
    from tfopt.techniques import get_technique, list_techniques

    for name in list_techniques():
        t = get_technique(name)
        print(f"{name}: {t.summary}")
        for option, field in t.options.items():
            print(f"    {describe(option, field)}")
        where = [f"needs {', '.join(t.needs)}" if t.needs else "needs nothing before it",
                 f"leaves {', '.join(t.sets)}" if t.sets else "", "makes a model" if t.makes_model else ""]
        if t.tune_keys:
            where.append(f"search-space keys {', '.join(t.tune_keys)}")
        print(f"    ({'; '.join(w for w in where if w)})")
    return 0


def _cmd_run(args) -> int:
    import json
    import os
    from pathlib import Path

    from tfopt import distribute
    from tfopt.errors import ConfigError
    from tfopt.pipeline import run_recipe

    overrides = _overrides(args)
    if (args.workers is None) != (args.worker_index is None):
        raise ConfigError("--workers and --worker-index go together (the same --workers list on every worker)")
    if args.workers is not None:
        os.environ["TF_CONFIG"] = json.dumps(distribute.tf_config_for(args.workers, args.worker_index))
    if distribute.parse_tf_config() is not None:  # --workers, or TF_CONFIG set by the cluster
        overrides = {**(overrides or {}), "training": {**(overrides or {}).get("training", {}), "strategy": "multi_worker"}}
    results = run_recipe(args.recipe, run_dir=args.run_dir, force=args.force or (), overwrite=args.overwrite,
                         data=args.data, overrides=overrides)
    _print_results(results, args.run_dir or Path("runs") / results["recipe"])
    return 0


def _cmd_report(args) -> int:
    from pathlib import Path

    from tfopt.errors import ConfigError
    from tfopt.pipeline import write_report

    if not (Path(args.run_dir) / "manifest.json").is_file():
        raise ConfigError(f"{args.run_dir!r} is not a tfopt run directory (no manifest.json)")
    paths = write_report(args.run_dir)
    print(f"wrote {paths['md']} and {paths['html']}")
    return 0


def _cmd_tune(args) -> int:
    import os

    from tfopt.pipeline.run.search import run_search
    from tfopt.tune.distributed import BIND_ENV

    if args.bind is not None:
        os.environ[BIND_ENV] = args.bind

    result = run_search(args.recipe, directory=args.directory, data=args.data, overrides=_overrides(args),
                        role=args.role, address=args.address, tuner_id=args.tuner_id, overwrite=args.overwrite,
                        serve_timeout=args.serve_timeout)
    if args.role != "worker":
        print(f"best hyperparameters: {result.best_hyperparameters}")
    print(f"search directory: {result.directory}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfopt`` command."""
    from tfopt.export import QUANTIZATIONS

    p = _Parser(prog="tfopt", description="Train, compress, export and measure Keras models.")
    p.add_argument("--version", action="version", version=f"tfopt {_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of tfopt errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the embedded default pipeline on mnist_5k, end to end")
    d.add_argument("--run-dir", default="runs/demo", help="run directory (default runs/demo; the same one resumes)")
    d.add_argument("--epochs", type=int, help="baseline epochs (default 8)")
    d.add_argument("--prune-epochs", type=int, help="pruning fine-tune epochs (default 6)")
    d.add_argument("--sparsity", type=float, help="pruning target (default 0.8)")
    d.add_argument("--seed", type=_seed, help="seed (default 0)")
    d.add_argument("--force", nargs="+", metavar="STAGE", help="re-run these stages (and every later one)")
    d.set_defaults(func=_cmd_demo)

    r = sub.add_parser("run", help="run (or resume) a YAML recipe: train, compress, export, measure, report")
    r.add_argument("recipe", help="path to a recipe .yaml (see recipes/)")
    r.add_argument("--run-dir", help="run directory (default runs/<recipe name>); the same command resumes")
    r.add_argument("--force", nargs="+", metavar="STAGE", help="re-run these stages (and every later one)")
    r.add_argument("--overwrite", action="store_true", help="replace a run directory holding another recipe's run")
    r.add_argument("--data", help="dataset replacing the recipe's (e.g. mnist_5k when tfds has no network)")
    r.add_argument("--epochs", type=int, help="training epochs replacing the recipe's")
    r.add_argument("--set", action="append", metavar="STAGE.OPTION=VALUE",
                   help="set a stage's option (repeatable; VALUE read as YAML, e.g. prune.epochs=3; the options of "
                        "each stage: `tfopt techniques`)")
    r.add_argument("--workers", metavar="HOST:PORT,...", help="multi-worker training: every worker's address "
                   "(the same list on each; the first is the chief); or set TF_CONFIG instead")
    r.add_argument("--worker-index", type=int, help="this worker's position in --workers")
    r.set_defaults(func=_cmd_run)

    rp = sub.add_parser("report", help="(re)write report.md and report.html of a run directory")
    rp.add_argument("run_dir", help="a run directory written by `tfopt run` or `tfopt demo`")
    rp.set_defaults(func=_cmd_report)

    t = sub.add_parser("tune", help="run the search of a recipe's `tune` stage (alone, or as chief/worker)")
    t.add_argument("recipe", help="path to a recipe .yaml with a `tune` stage")
    t.add_argument("--directory", help="search directory (default runs/<recipe name>/search); resumes")
    t.add_argument("--data", help="dataset replacing the recipe's")
    t.add_argument("--epochs", type=int, help="training epochs replacing the recipe's")
    t.add_argument("--set", action="append", metavar="STAGE.OPTION=VALUE",
                   help="set a stage's option (repeatable), e.g. tune.max_trials=4")
    t.add_argument("--role", choices=["chief", "worker"], help="distributed search role (keras-tuner's gRPC oracle)")
    t.add_argument("--address", metavar="HOST:PORT", help="the chief's address, with --role")
    t.add_argument("--bind", metavar="HOST", help="the chief listens here (e.g. its LAN address, or 0.0.0.0 for "
                   "every interface) instead of only on a loopback --address: the oracle server has no "
                   "authentication, so only on a trusted network")
    t.add_argument("--tuner-id", help="this worker's id (default from KERASTUNER_TUNER_ID)")
    t.add_argument("--serve-timeout", type=float, help="seconds the chief serves at most")
    t.add_argument("--overwrite", action="store_true", help="start the search afresh")
    t.set_defaults(func=_cmd_tune)

    e = sub.add_parser("export", help="convert a saved .keras model to TFLite")
    e.add_argument("model", help="path to a .keras model")
    e.add_argument("--quantization", choices=[q for q in QUANTIZATIONS if q], default=None,
                   help="default: float32 (no quantization)")
    e.add_argument("--data", help="dataset name for calibration (its train split) and test accuracy (default "
                                  "mnist_5k for int8)")
    e.add_argument("--layer-bits", type=_layer_bits, metavar="LAYER=BITS,...",
                   help="with an int4 quantization: layers kept at other bits, BITS 4, 8 or float "
                        "(e.g. conv1=8,logits=float)")
    e.add_argument("--output", help="output .tflite path")
    e.add_argument("--seed", type=_seed, default=0)
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("evaluate", help="measure a .tflite file with LiteRT: accuracy, size, latency")
    v.add_argument("tflite", help="path to a .tflite file")
    v.add_argument("--data", default="mnist_5k", help="dataset name (its fixed test split)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--seed", type=_seed, default=0)
    v.set_defaults(func=_cmd_evaluate)

    k = sub.add_parser("techniques", help="list every technique a recipe stage can use, with its options")
    k.set_defaults(func=_cmd_techniques)
    return p


def main(argv=None) -> int:
    """Entry point of the ``tfopt`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        from tfopt.errors import TfoptError

        return args.func(args)
    except TfoptError as e:
        if args.debug:
            raise
        e = _first_write_error(e)
        print(f"tfopt: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a full disk or a read-only folder met outside tfopt's own writers
        from tfopt._io import as_write_error

        fault = None if args.debug else as_write_error(e, writing=False)
        if fault is None:
            raise
        print(f"tfopt: error: {type(fault).__name__}: {fault}", file=sys.stderr)
        return EXIT_ERROR


def _first_write_error(err):
    """The first WriteError of a chain (a failed write, then the manifest that could not record it): the cause."""
    from tfopt.errors import WriteError

    if not isinstance(err, WriteError):
        return err
    first, seen, context = err, set(), err.__context__
    while context is not None and id(context) not in seen:
        seen.add(id(context))
        first = context if isinstance(context, WriteError) else first
        context = context.__context__
    return first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
