"""Training throughput (examples/second) under tf.distribute strategies, XLA and mixed precision.

Models: the documents' CNN (filters (32, 64), dense (128,), 28x28x1) and ResNet-18 (small stem, 32x32x3),
on synthetic data (throughput does not depend on the values). Strategies: the default one, and Mirrored
over 2 logical CPU devices (over all GPUs on a GPU machine). Variants: float32, XLA (``jit_compile``),
mixed precision (``mixed_bfloat16`` on CPU, ``mixed_float16`` on GPU), and both. Each number is the median
of a few timed repeats after a warm-up. Each strategy runs in its own subprocess (logical devices must be
set before TensorFlow starts). On a GPU machine the table adds the fraction of the GPU's peak FLOP/s
used (model FLOPs counted per layer; peak from ``PEAK_TFLOPS`` by GPU name or ``--peak-tflops``).

Writes ``benchmarks/results/throughput.json`` and ``throughput.md``.

    python -m benchmarks.throughput --quick      # < 60 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# GPU name fragment -> dense half-precision tensor-core peak, TFLOP/s (vendor data sheets).
PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0,
               "RTX 4090": 165.0, "RTX 3090": 71.0, "A6000": 155.0}
MODELS = {
    "cnn": ("cnn", {"input_shape": (28, 28, 1), "num_classes": 10, "filters": (32, 64), "dense": (128,)}),
    "resnet18": ("resnet", {"input_shape": (32, 32, 3), "num_classes": 10, "depth": 18, "stem": "small"}),
}
VARIANTS = {"float32": (False, None), "xla": (True, None), "mixed": (False, "mixed"), "xla+mixed": (True, "mixed")}


def plan(quick: bool) -> dict:
    """How much to measure: batch, steps per repeat, repeats, and (model, variant) pairs."""
    if quick:
        pairs = [("cnn", v) for v in ("float32", "xla", "mixed")] + [("resnet18", "float32")]
        return {"batch": 16, "steps": 3, "repeats": 2, "pairs": pairs}
    pairs = [(m, v) for m in MODELS for v in VARIANTS]
    return {"batch": 64, "steps": 20, "repeats": 5, "pairs": pairs}


# ------------------------------------------------------------------------------------------- FLOPs
def forward_flops(model) -> int:
    """Integer, multiply-adds x 2 of one example's forward pass through Conv2D/Depthwise/Dense layers."""
    from tfopt._keras import keras

    total = 0
    for layer in model.layers:
        out = layer.output_shape if not isinstance(layer.output_shape, list) else layer.output_shape[0]
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * out[1] * out[2] * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input_shape[-1] // layer.groups
            total += 2 * kh * kw * cin * out[1] * out[2] * out[3]
        elif isinstance(layer, keras.layers.Dense):
            positions = 1
            for d in out[1:-1]:
                positions *= d
            total += 2 * layer.input_shape[-1] * out[-1] * positions
    return int(total)


def peak_tflops(gpu_name: str | None, override: float | None) -> float | None:
    """Float or None, the peak TFLOP/s of the GPU (``override`` wins; None when unknown or no GPU)."""
    if override:
        return float(override)
    for key, value in PEAK_TFLOPS.items():
        if gpu_name and key.lower() in gpu_name.lower():
            return value
    return None


# ------------------------------------------------------------------------------------- child process
def _measure(model_name, variant, strategy, gpu: bool, batch, steps, repeats) -> dict:
    from tfopt import distribute, models
    from tfopt._keras import keras, set_seed, tf

    jit, mixed = VARIANTS[variant]
    policy = ("mixed_float16" if gpu else "mixed_bfloat16") if mixed else "float32"
    set_seed(0)
    keras.backend.clear_session()
    distribute.set_mixed_precision(policy)
    try:
        builder, kwargs = MODELS[model_name]
        with strategy.scope():
            model = models.build(builder, **kwargs)
            optimizer = keras.optimizers.SGD(0.01)
            if policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
        global_batch = batch * strategy.num_replicas_in_sync
        shape = kwargs["input_shape"]
        x = tf.random.stateless_uniform((global_batch, *shape), seed=(1, 2))
        y = tf.random.stateless_uniform((global_batch,), seed=(3, 4), maxval=10, dtype=tf.int32)
        ds = distribute.device_prefetch(tf.data.Dataset.from_tensors((x, y)).repeat(steps), strategy)
        model.fit(ds, epochs=1, verbose=0)  # warm-up: tracing and XLA compilation
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(ds, epochs=1, verbose=0)
            times.append(time.perf_counter() - start)
        rates = [global_batch * steps / t for t in times]
        return {"model": model_name, "variant": variant, "policy": policy, "jit_compile": jit,
                "replicas": strategy.num_replicas_in_sync, "global_batch": global_batch,
                "examples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                "forward_flops": forward_flops(model)}
    except Exception as e:  # noqa: BLE001 - one failing variant (e.g. XLA unavailable) must not end the run
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().startswith("[[")]
        return {"model": model_name, "variant": variant, "policy": policy,
                "error": f"{type(e).__name__}: {lines[-1] if lines else ''}"[:300]}
    finally:
        distribute.set_mixed_precision("float32")


def child(strategy_name: str, quick: bool) -> list:
    """Measure every planned pair under one strategy; runs in its own process."""
    from tfopt._keras import tf

    gpus = tf.config.list_physical_devices("GPU")
    if strategy_name == "mirrored" and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfopt import distribute

    strategy = distribute.get_strategy(strategy_name)
    p = plan(quick)
    rows = []
    for model_name, variant in p["pairs"]:
        if VARIANTS[variant][0] and strategy_name == "mirrored" and not gpus:
            rows.append({"strategy": strategy_name, "model": model_name, "variant": variant,
                         "error": "skipped: XLA cannot mirror over logical CPU devices (see tfopt.train.fit)"})
            continue
        row = _measure(model_name, variant, strategy, bool(gpus), p["batch"], p["steps"], p["repeats"])
        rows.append({"strategy": strategy_name, "devices": distribute.describe(strategy)["devices"], **row})
    return rows


# ------------------------------------------------------------------------------------------ parent
def _gpu_name() -> str | None:
    from tfopt._keras import tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")


def _run_child(strategy_name: str, quick: bool, timeout: float) -> list:
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--child", strategy_name] + (["--quick"] if quick else [])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_CONFIG", None)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return [{"strategy": strategy_name, "error": f"timed out after {timeout:g} s"}]
    if proc.returncode != 0:
        return [{"strategy": strategy_name, "error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    """The results as a Markdown table (one row per strategy, model and variant)."""
    gpu = result["gpu"]
    head = ["strategy", "replicas", "model", "variant", "global batch", "examples/s (median)", "min..max"]
    if gpu:
        head.append("% of peak FLOP/s")
    lines = [f"# Training throughput ({'quick' if result['quick'] else 'full'} run)", "",
             f"Device: {gpu or 'CPU'}; synthetic data; median of {result['plan']['repeats']} repeats of "
             f"{result['plan']['steps']} steps after a warm-up.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r.get('strategy')} | | {r.get('model', '')} | {r.get('variant', '')} | | error: {r['error']} | |"
                         + (" |" if gpu else ""))
            continue
        cells = [r["strategy"], r["replicas"], r["model"], f"{r['variant']} ({r['policy']})", r["global_batch"],
                 f"{r['examples_per_s']:.0f}", f"{r['min']:.0f}..{r['max']:.0f}"]
        if gpu:
            frac = r.get("peak_fraction")
            cells.append("n/a" if frac is None else f"{100 * frac:.1f}")
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def run(quick: bool = False, peak: float | None = None, out_dir: Path = RESULTS) -> dict:
    """Measure under the default and mirrored strategies; write throughput.json and throughput.md."""
    gpu = _gpu_name()
    timeout = 120 if quick else 1800
    rows = _run_child("default", quick, timeout) + _run_child("mirrored", quick, timeout)
    tflops = peak_tflops(gpu, peak) if gpu else (float(peak) if peak else None)
    for r in rows:
        if "examples_per_s" in r:
            achieved = 3 * r["forward_flops"] * r["examples_per_s"]  # training ~ forward + 2x backward
            r["achieved_gflops"] = achieved / 1e9
            r["peak_fraction"] = achieved / (tflops * 1e12) if tflops else None
    result = {"quick": quick, "gpu": gpu, "peak_tflops": tflops, "plan": plan(quick), "rows": rows}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "throughput.json").write_text(json.dumps(result, indent=2))
    (out_dir / "throughput.md").write_text(markdown(result))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (< 60 s on 2 CPU cores)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the accelerator's peak TFLOP/s")
    parser.add_argument("--child", choices=("default", "mirrored"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.quick)))
        return 0
    result = run(args.quick, args.peak_tflops)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
