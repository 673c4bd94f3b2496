"""The ``tfopt`` command: a thin shell over the public API.

Errors tfopt raises on purpose print one line to stderr and exit with code 2 (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("tfopt")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _cmd_demo(args) -> int:
    from tfopt.demo import run_demo

    run_demo(run_dir=args.run_dir, epochs=args.epochs, prune_epochs=args.prune_epochs, seed=args.seed,
             target_sparsity=args.sparsity)
    return 0


def _load_keras(path):
    from pathlib import Path

    from tfopt.errors import ConfigError
    from tfopt.saving import load_model

    if not Path(path).exists():
        raise ConfigError(f"model file {str(path)!r} does not exist")
    return load_model(path)


def _cmd_export(args) -> int:
    from pathlib import Path

    from tfopt import data, export

    model = _load_keras(args.model)
    rep = None
    if args.quantization in ("int8", "int16x8") or args.data:
        train_ds, val_ds, _ = data.load(args.data or "mnist_5k", seed=args.seed)
        rep = train_ds
    out = Path(args.output or Path(args.model).with_suffix(f".{args.quantization or 'float32'}.tflite"))
    tfl = export.to_tflite(model, quantization=args.quantization, representative_data=rep, path=out)
    line = f"wrote {out} ({tfl.bytes:,} bytes, {tfl.gzip_bytes:,} gzipped)"
    if args.data:
        res = export.evaluate(tfl, val_ds)
        line += f"; held-out accuracy {res['accuracy']:.4f}, p50 {res['latency_us_p50']:.0f} µs"
    print(line)
    return 0


def _cmd_evaluate(args) -> int:
    import json

    from tfopt import data, export

    _, val_ds, _ = data.load(args.data, seed=args.seed)
    print(json.dumps(export.evaluate(args.tflite, val_ds, threads=args.threads), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tfopt`` command."""
    p = argparse.ArgumentParser(prog="tfopt", description="Train, compress, export and measure Keras models.")
    p.add_argument("--version", action="version", version=f"tfopt {_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of tfopt errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="the embedded default pipeline on mnist_5k, end to end")
    d.add_argument("--run-dir", help="output directory (default runs/demo-<timestamp>)")
    d.add_argument("--epochs", type=int, default=8, help="baseline epochs (default 8)")
    d.add_argument("--prune-epochs", type=int, default=6, help="pruning fine-tune epochs (default 6)")
    d.add_argument("--sparsity", type=float, default=0.8, help="pruning target (default 0.8)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    e = sub.add_parser("export", help="convert a saved .keras model to TFLite")
    e.add_argument("model", help="path to a .keras model")
    e.add_argument("--quantization", choices=["dynamic", "float16", "int8", "int16x8"], default=None)
    e.add_argument("--data", help="dataset name for calibration and held-out accuracy (default mnist_5k for int8)")
    e.add_argument("--output", help="output .tflite path")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_cmd_export)

    v = sub.add_parser("evaluate", help="measure a .tflite file with LiteRT: accuracy, size, latency")
    v.add_argument("tflite", help="path to a .tflite file")
    v.add_argument("--data", default="mnist_5k", help="dataset name (held-out split)")
    v.add_argument("--threads", type=int, default=1)
    v.add_argument("--seed", type=int, default=0)
    v.set_defaults(func=_cmd_evaluate)
    return p


def main(argv=None) -> int:
    """Entry point of the ``tfopt`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from tfopt.errors import TfoptError

    try:
        return args.func(args)
    except TfoptError as e:
        if args.debug:
            raise
        print(f"tfopt: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tfopt: interrupted; run the same command again to resume where a run directory allows", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
