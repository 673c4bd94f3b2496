"""GPU check: ResNet-18 (CIFAR) trained on synthetic data under each strategy and precision; one JSON file.

For a lent machine with one or more NVIDIA GPUs, with nothing installed beyond ``pip install -e '.[gpu]'``:

    python -m benchmarks.gpu_check                       # < 5 minutes; writes benchmarks/results/gpu_check.json
    python -m benchmarks.gpu_check --output /tmp/gpu.json
    python -m benchmarks.gpu_check --cpu-smoke           # the same flow on CPU, tiny (tests run this)

What runs: ``tfopt.train.fit`` of the project's CIFAR ResNet-18 (``tfopt.models.build("resnet", depth=18,
stem="small")``, 11.2 M parameters) for ``--steps`` steps (default 200, the first ``--warmup`` of them untimed:
tracing and XLA compilation) at one global batch (default 256) under each strategy (one device; mirrored over
all GPUs when there are several) and each precision (float32; mixed_float16, whose logits tfopt keeps in
float32) with XLA (``jit_compile``) off and on. Every run starts from the same weights (seed 0) and sees the
same batches of a synthetic, learnable CIFAR-shaped task (a fixed pattern per class plus noise), prefetched by
``tfopt.distribute.device_prefetch``.

What the JSON holds (one file, rewritten atomically after each run, ``"complete": true`` at the end): the
devices seen (TensorFlow's and ``nvidia-smi``'s), versions, the model's FLOPs, and per run: images per second
over the timed steps, model FLOP utilisation (MFU = 3 x forward FLOPs per image x images/s / the peak of the
GPUs used; the peak from :data:`PEAK_TFLOPS` by GPU name: TF32 tensor peak for float32 when TensorFloat-32
is on, FP16 tensor peak for mixed_float16; null with a reason for a GPU not in the table), the logits dtype
of the model that trained, and whether the result matches the one-device float32 run within
:data:`TOLERANCE` (the loss on 512 held-out synthetic images, the mean training loss of the run, and the
fraction of equal predicted classes; held-out predictions use BatchNormalization on the batch's statistics).

Without a GPU: prints one line saying so, writes nothing, exits 0. When ``nvidia-smi`` lists GPUs that
TensorFlow cannot see (the ``[gpu]`` extra missing, a driver mismatch): one line on stderr, exit 1.
A run that errors is recorded with its error and the others go on; a run cut by the time budget
(``--budget``) is marked ``"truncated"`` (its speed stands, its match is not judged).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``benchmarks`` and ``tfopt`` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "gpu_check.json"
MODEL = {"builder": "resnet", "input_shape": (32, 32, 3), "num_classes": 10, "depth": 18, "stem": "small"}
# --cpu-smoke: the same builder, 1/8 of the channels and one block of one stage (a tiny ResNet: the code path)
SMOKE_MODEL = {"width": 0.125, "blocks": (1,)}
PRECISIONS = ("float32", "mixed_float16")
# A run matches float32 when its held-out loss and its mean training loss over the run are each within
# loss_abs + loss_rel x float32's (and finite), and its predicted classes agree with float32's on at least
# `agreement` of the held-out images.
TOLERANCE = {"loss_abs": 0.05, "loss_rel": 0.10, "agreement": 0.95}
# GPU name pattern -> dense peak TFLOP/s per GPU (vendor data sheets, no structured sparsity): "fp32" on
# CUDA cores, "tf32" and "fp16" (FP32 accumulate) on tensor cores; None where the GPU has no such unit.
PEAK_TFLOPS = {
    r"H100.*PCIe": {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0},
    r"H100 80GB HBM3|H100.*SXM": {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4},
    r"A100": {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0},
    r"\bA10\b": {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0},
    r"\bL4\b": {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0},
    r"\bT4\b": {"fp32": 8.1, "tf32": None, "fp16": 65.0},
    r"V100.*PCIE": {"fp32": 14.0, "tf32": None, "fp16": 112.0},
    r"V100": {"fp32": 15.7, "tf32": None, "fp16": 125.0},
    r"RTX 4090": {"fp32": 82.6, "tf32": 82.6, "fp16": 165.2},
    r"RTX 3090": {"fp32": 35.6, "tf32": 35.6, "fp16": 71.0},
}


# ------------------------------------------------------------------------------------------ devices
def nvidia_smi_gpus() -> list:
    """The GPUs ``nvidia-smi`` lists (name, driver, memory), or [] without it (or when it fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
    return [dict(zip(("name", "driver", "memory"), row)) for row in rows]


def tensorflow_gpus(tf) -> list:
    """The GPUs TensorFlow sees: device, name and compute capability."""
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            details = tf.config.experimental.get_device_details(gpu)
        except (RuntimeError, ValueError):
            details = {}
        found.append({"device": gpu.name, "name": details.get("device_name", "GPU"),
                      "compute_capability": list(details.get("compute_capability") or []) or None})
    return found


def peak_tflops(gpu_name: str | None, precision: str, tf32: bool = True) -> tuple:
    """``(peak TFLOP/s per GPU, which peak, reason)`` for ``precision`` on ``gpu_name``; a None peak has a reason.

    Args:
        gpu_name: String or None, the device name TensorFlow reports (e.g. "NVIDIA A100-SXM4-40GB").
        precision: String, "float32" or "mixed_float16".
        tf32: Boolean, whether TensorFloat-32 is on (TensorFlow's default): float32 then runs on TF32 tensor cores.

    >>> peak_tflops("NVIDIA A100-SXM4-40GB", "float32")
    (156.0, 'tf32', None)
    >>> peak_tflops("Tesla T4", "float32")
    (8.1, 'fp32', None)
    >>> peak_tflops("NVIDIA A10G", "mixed_float16")[2]
    "GPU 'NVIDIA A10G' is not in PEAK_TFLOPS (benchmarks/gpu_check.py): no MFU"
    """
    if not gpu_name:
        return None, None, "no GPU: no peak to compare with"
    for pattern, peaks in PEAK_TFLOPS.items():
        if re.search(pattern, gpu_name, re.IGNORECASE):
            if precision == "mixed_float16":
                return peaks["fp16"], "fp16", None
            if tf32 and peaks["tf32"] is not None:
                return peaks["tf32"], "tf32", None
            return peaks["fp32"], "fp32", None
    return None, None, f"GPU {gpu_name!r} is not in PEAK_TFLOPS (benchmarks/gpu_check.py): no MFU"


def model_flop_utilisation(forward_flops: int, images_per_s: float, peak: float | None, gpus: int) -> float | None:
    """Float or None: training FLOP/s (3 x forward: the backward pass costs about twice the forward) over the
    peak FLOP/s of the ``gpus`` used.

    >>> round(model_flop_utilisation(10**9, 1000.0, 10.0, 1), 3)
    0.3
    """
    if not peak or not images_per_s:
        return None
    return 3.0 * forward_flops * images_per_s / (peak * 1e12 * gpus)


# ------------------------------------------------------------------------------------------ data
def synthetic_cifar(n: int, seed: int, num_classes: int = 10, shape=(32, 32, 3)):
    """``(x float32 [n, 32, 32, 3] in [0, 1], y int32 [n])``: a fixed random pattern per class plus noise.

    The patterns depend only on the number of classes (the same task for every seed); ``seed`` draws the
    labels and the noise.

    >>> x, y = synthetic_cifar(4, 0)
    >>> x.shape, y.shape, str(x.dtype)
    ((4, 32, 32, 3), (4,), 'float32')
    """
    import numpy as np

    patterns = np.random.default_rng(1234).random((num_classes, *shape), dtype=np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    x = 0.6 * patterns[y] + 0.4 * rng.random((n, *shape), dtype=np.float32)
    return x.astype(np.float32), y


# ------------------------------------------------------------------------------------------ runs
def plan(gpus: int, smoke: bool) -> list:
    """The runs, reference first: (strategy, precision, jit_compile) for one device, then mirrored if > 1 device."""
    strategies = ["one_device"] + (["mirrored"] if gpus > 1 or smoke else [])
    return [(s, p, x) for s in strategies for p in PRECISIONS for x in (False, True)]


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.strip().startswith("[[")]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:400]


def _train_once(settings: dict, strategy_name: str, precision: str, jit: bool, data, deadline: float,
                prefetch_to_device: bool) -> dict:
    import numpy as np

    from tfopt import distribute, models
    from tfopt._keras import keras, set_seed, tf
    from tfopt.train import fit

    x, y, x_eval, y_eval = data
    strategy = distribute.get_strategy(strategy_name)
    steps, warmup, batch = settings["steps"], settings["warmup"], settings["batch"]
    distribute.check_batch_size(batch, strategy)
    keras.backend.clear_session()
    set_seed(0)
    kwargs = {k: v for k, v in MODEL.items() if k != "builder"}
    model = models.build(MODEL["builder"], **kwargs, **settings["model"])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True).repeat().take(steps)
    ds = distribute.device_prefetch(ds, strategy) if prefetch_to_device else ds.prefetch(tf.data.AUTOTUNE)

    class Clock(keras.callbacks.Callback):
        """Times the steps after the warm-up; stops training at the deadline."""

        def __init__(self):
            super().__init__()
            self.start = self.steps = None
            self.warm = None

        def on_train_begin(self, logs=None):
            self.begin = time.perf_counter()

        def on_train_batch_end(self, step, logs=None):
            self.steps = step + 1
            if self.steps == warmup:
                self.warm = time.perf_counter()
            if time.perf_counter() > deadline:
                self.model.stop_training = True

        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    clock = Clock()
    history = fit(model, ds, epochs=1, strategy=strategy, verbose=0, callbacks=[clock], jit_compile=jit,
                  mixed_precision=None if precision == "float32" else precision)
    trained = history.model
    timed = (clock.steps or 0) - warmup
    seconds = clock.end - clock.warm if clock.warm is not None and timed > 0 else None
    # the caller's float32 model with the trained weights, BatchNormalization on the held-out batch's own
    # statistics: after a few hundred steps its moving averages have not settled (inference-mode predictions
    # of a model that fits the task perfectly were near chance in a CPU trial)
    logits = model(x_eval, training=True).numpy()
    eval_loss = float(np.mean(keras.losses.sparse_categorical_crossentropy(y_eval, logits, from_logits=True)))
    optimizer = trained.optimizer
    return {
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": distribute.describe(strategy)["devices"],
        "global_batch": batch,
        "steps": clock.steps,
        "truncated": bool((clock.steps or 0) < steps),
        "warmup_s": round((clock.warm or clock.end) - clock.begin, 3),
        "timed_steps": max(timed, 0),
        "timed_s": None if seconds is None else round(seconds, 4),
        "images_per_s": None if seconds is None else batch * timed / seconds,
        "train_loss_mean": float(history.history["loss"][-1]),  # Keras' mean over the run's steps
        "eval_loss": eval_loss,
        "eval_accuracy": float(np.mean(np.argmax(logits, -1) == y_eval)),
        "predictions": np.argmax(logits, -1),
        "logits_dtype": trained.outputs[0].dtype.name,
        "compute_dtype": trained.layers[1].compute_dtype,
        "loss_scale": float(optimizer.loss_scale) if hasattr(optimizer, "loss_scale") else None,
    }


def run_one(settings: dict, strategy_name: str, precision: str, jit: bool, data, deadline: float) -> dict:
    """One strategy x precision x XLA run: its numbers, or its error (a CPU-mirrored XLA run is "skipped")."""
    from tfopt.errors import ConfigError

    row = {"strategy": strategy_name, "precision": precision, "jit_compile": jit}
    try:
        try:
            return {**row, "status": "ok", "prefetch": "device_prefetch",
                    **_train_once(settings, strategy_name, precision, jit, data, deadline, True)}
        except ConfigError:
            raise
        except Exception as first:  # noqa: BLE001 - retried once without prefetching to the device
            result = _train_once(settings, strategy_name, precision, jit, data, deadline, False)
            return {**row, "status": "ok", "prefetch": f"plain (device_prefetch failed: {_first_line(first)})",
                    **result}
    except ConfigError as e:
        return {**row, "status": "skipped", "reason": _first_line(e)}
    except Exception as e:  # noqa: BLE001 - one failing run must not end the check
        return {**row, "status": "error", "error": _first_line(e)}


def compare(run: dict, reference: dict | None) -> dict:
    """Whether ``run`` matches the float32 ``reference`` within :data:`TOLERANCE`."""
    import numpy as np

    if reference is None or reference.get("status") != "ok":
        return {"ok": None, "reason": "no float32 one-device reference result"}
    if run.get("status") != "ok":
        return {"ok": None, "reason": f"this run is {run.get('status')}"}
    if run["truncated"] or reference["truncated"]:
        return {"ok": None, "reason": "a run was cut by the time budget: not the same number of steps"}
    out, ok = {}, True
    for key in ("eval_loss", "train_loss_mean"):
        ref, got = reference[key], run[key]
        allowed = TOLERANCE["loss_abs"] + TOLERANCE["loss_rel"] * abs(ref)
        finite = math.isfinite(got) and math.isfinite(ref)
        ok = ok and finite and abs(got - ref) <= allowed
        out[f"{key}_difference"] = abs(got - ref) if finite else None
        out[f"{key}_allowed"] = allowed
    agreement = float(np.mean(np.asarray(run["predictions"]) == np.asarray(reference["predictions"])))
    return {"ok": bool(ok and agreement >= TOLERANCE["agreement"]), **out, "prediction_agreement": agreement}


def _versions() -> dict:
    from tfopt._keras import keras, tf

    build = {}
    try:
        info = tf.sysconfig.get_build_info()
        build = {k: info.get(k) for k in ("cuda_version", "cudnn_version") if info.get(k)}
    except Exception:  # noqa: BLE001 - informative only
        pass
    return {"python": platform.python_version(), "tensorflow": tf.__version__, "tf_keras": keras.__version__,
            **build}


def check(settings: dict, output: Path, smoke: bool, gpus: list, smi: list, started: float) -> dict:
    """Run the plan and write ``output`` after each run; returns the result."""
    from tfopt import models
    from tfopt.flops import flops as multiply_adds
    from tfopt._io import write_json
    from tfopt._keras import tf

    kwargs = {k: v for k, v in MODEL.items() if k != "builder"}
    probe = models.build(MODEL["builder"], **kwargs, **settings["model"])
    flops = 2 * multiply_adds(probe)  # one multiply-add = 2 FLOPs
    n = settings["batch"] * 8  # 8 distinct batches, repeated
    x, y = synthetic_cifar(n, seed=0)
    x_eval, y_eval = synthetic_cifar(32 if smoke else 512, seed=1)
    data = (x, y, x_eval, y_eval)
    tf32 = bool(tf.config.experimental.tensor_float_32_execution_enabled())
    gpu_name = gpus[0]["name"] if gpus else None
    result = {
        "tool": "benchmarks/gpu_check.py",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "cpu_smoke": smoke,
        "devices": {"tensorflow_gpus": gpus, "nvidia_smi": smi,
                    "cpus": [d.name for d in tf.config.list_logical_devices("CPU")]},
        "versions": _versions(),
        "tensor_float_32": tf32,
        "model": {**{k: list(v) if isinstance(v, tuple) else v for k, v in {**MODEL, **settings["model"]}.items()},
                  "name": probe.name, "params": int(probe.count_params()), "forward_flops_per_image": flops,
                  "train_flops_per_image": 3 * flops,
                  "flops_source": "2 x tfopt.flops.flops (multiply-adds per image of the layers that multiply "
                                  "by weights, from layer shapes); training = 3 x forward"},
        "plan": {**settings, "data": f"synthetic CIFAR-shaped, {n} images (8 batches repeated), "
                                     "a fixed pattern per class + noise"},
        "tolerance": {**TOLERANCE, "against": "one_device float32 without XLA; held-out synthetic images"},
        "runs": [],
    }
    deadline = started + settings["budget"]
    reference = None
    for strategy_name, precision, jit in plan(len(gpus), smoke):
        if time.perf_counter() > deadline - 5:
            row = {"strategy": strategy_name, "precision": precision, "jit_compile": jit, "status": "skipped",
                   "reason": f"time budget of {settings['budget']:g} s spent"}
        else:
            row = run_one(settings, strategy_name, precision, jit, data, deadline)
        if reference is None and strategy_name == "one_device" and precision == "float32" and not jit:
            reference = row
        row["matches_float32"] = compare(row, reference)
        if row.get("images_per_s"):
            used = row["replicas"] if gpus else 0
            peak, kind, reason = peak_tflops(gpu_name, precision, tf32)
            if not gpus:
                reason = "no GPU (CPU smoke run): no peak to compare with"
            mfu = model_flop_utilisation(flops, row["images_per_s"], peak, used)
            row.update(peak_tflops=peak, peak_kind=kind, mfu=mfu, mfu_reason=reason)
        result["runs"].append(row)
        print(_line(row), flush=True)
        write_json(output, _public(result))
    result["complete"] = True
    ok = [r["matches_float32"].get("ok") for r in result["runs"]]
    result["summary"] = {"runs": len(ok), "errors": sum(r["status"] == "error" for r in result["runs"]),
                         "match": sum(v is True for v in ok), "mismatch": sum(v is False for v in ok),
                         "seconds": round(time.perf_counter() - started, 1)}
    write_json(output, _public(result))
    return result


def _public(result: dict) -> dict:
    """``result`` without the per-image predictions (kept in memory for the comparisons only)."""
    return {**result, "runs": [{k: v for k, v in r.items() if k != "predictions"} for r in result["runs"]]}


def _line(row: dict) -> str:
    what = f"{row['strategy']:<10} {row['precision']:<13} xla={'on ' if row['jit_compile'] else 'off'}"
    if row["status"] != "ok":
        return f"gpu_check: {what} {row['status']}: {row.get('reason') or row.get('error')}"
    speed = "n/a" if row.get("images_per_s") is None else f"{row['images_per_s']:.0f} images/s"
    mfu = "" if row.get("mfu") is None else f", MFU {100 * row['mfu']:.1f}%"
    match = {True: "matches float32", False: "DIFFERS from float32", None: "match not judged"}[
        row["matches_float32"].get("ok")]
    return f"gpu_check: {what} {speed}{mfu}, eval loss {row['eval_loss']:.4f}, {match}"


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 200; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 20; smoke 1)")
    parser.add_argument("--batch", type=int, default=None, help="global batch (default 256; smoke 8)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for all runs (default 240)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the whole flow on CPU (one device and mirrored over 2 logical CPUs), tiny")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    smoke = args.cpu_smoke
    settings = {"steps": args.steps or (2 if smoke else 200), "warmup": args.warmup or (1 if smoke else 20),
                "batch": args.batch or (8 if smoke else 256), "model": SMOKE_MODEL if smoke else {},
                "budget": args.budget}
    if settings["warmup"] >= settings["steps"]:
        parser.error(f"--warmup {settings['warmup']} must be below --steps {settings['steps']}")
    if smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before TensorFlow starts: the CPU flow even on a GPU machine
    from tfopt._keras import tf

    tf.get_logger().setLevel("ERROR")  # retracing warnings: each run builds a new model on purpose
    gpus = [] if smoke else tensorflow_gpus(tf)
    if not gpus and not smoke:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        smi = [] if hidden in ("", "-1") else nvidia_smi_gpus()
        if smi:
            print(f"gpu_check: nvidia-smi lists {len(smi)} GPU(s) ({smi[0]['name']}) but TensorFlow sees none: "
                  "install the [gpu] extra (pip install -e '.[gpu]') and check the driver; nothing written",
                  file=sys.stderr)
            return 1
        why = f"CUDA_VISIBLE_DEVICES={hidden!r}" if hidden in ("", "-1") else "no NVIDIA GPU on this machine"
        print(f"gpu_check: no GPU visible to TensorFlow ({why}); nothing measured, nothing written "
              "(--cpu-smoke runs the flow on CPU)")
        return 0
    if smoke:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    result = check(settings, args.output, smoke, gpus, [] if smoke else nvidia_smi_gpus(), started)
    summary = result["summary"]
    print(f"gpu_check: {summary['runs']} runs, {summary['match']} match float32, {summary['mismatch']} differ, "
          f"{summary['errors']} errors in {summary['seconds']:g} s; wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
