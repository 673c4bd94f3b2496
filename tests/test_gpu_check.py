"""benchmarks/gpu_check.py: the no-GPU path (exit 0, one line, nothing written), GPUs TensorFlow cannot see
(exit 1, one line), and the whole flow on CPU (``--cpu-smoke``, ~20 s); its helpers in-process.

Speeds and utilisation are never asserted: only that the JSON holds every run with its fields.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def _run(args, env_extra=None, drop=("CUDA_VISIBLE_DEVICES",), timeout=180):
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_without_a_gpu_it_says_so_in_one_line_exits_0_and_writes_nothing(tmp_path):
    out = tmp_path / "results" / "gpu.json"
    proc = _run(["--output", str(out)], {"CUDA_VISIBLE_DEVICES": ""}, drop=())
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    assert lines[0].startswith("gpu_check: no GPU visible to TensorFlow (CUDA_VISIBLE_DEVICES='')")
    assert "nothing written" in lines[0]
    assert not out.exists() and not out.parent.exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a real nvidia-smi: TensorFlow may see its GPUs")
def test_gpus_tensorflow_cannot_see_are_one_line_on_stderr_and_exit_1(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'NVIDIA A100-SXM4-40GB, 550.54.15, 40960 MiB'\n")
    fake.chmod(0o755)
    out = tmp_path / "gpu.json"
    proc = _run(["--output", str(out)], {"PATH": f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("gpu_check:")]
    assert len(lines) == 1, proc.stderr
    assert "nvidia-smi lists 1 GPU(s) (NVIDIA A100-SXM4-40GB) but TensorFlow sees none" in lines[0]
    assert "[gpu] extra" in lines[0]
    assert not out.exists()


def test_warmup_must_be_below_steps():
    proc = _run(["--steps", "5", "--warmup", "5"])
    assert proc.returncode == 2
    assert "--warmup 5 must be below --steps 5" in proc.stderr


def test_cpu_smoke_runs_every_strategy_and_precision_into_one_json(tmp_path):
    out = tmp_path / "smoke.json"
    proc = _run(["--cpu-smoke", "--output", str(out)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("gpu_check: 8 runs, ")
    result = json.loads(out.read_text())
    assert result["complete"] is True and result["cpu_smoke"] is True
    assert result["devices"]["tensorflow_gpus"] == [] and len(result["devices"]["cpus"]) == 2
    assert result["model"]["builder"] == "resnet" and result["model"]["depth"] == 18
    assert result["model"]["forward_flops_per_image"] > 0
    assert result["model"]["train_flops_per_image"] == 3 * result["model"]["forward_flops_per_image"]
    runs = {(r["strategy"], r["precision"], r["jit_compile"]): r for r in result["runs"]}
    assert set(runs) == {(s, p, x) for s in ("one_device", "mirrored") for p in ("float32", "mixed_float16")
                         for x in (False, True)}
    for (strategy, precision, jit), run in runs.items():
        assert "predictions" not in run
        if strategy == "mirrored" and jit:  # tfopt refuses XLA mirrored over logical CPUs
            assert run["status"] == "skipped"
            assert run["reason"].startswith("ConfigError: jit_compile=True does not work with a strategy mirrored")
            assert run["matches_float32"] == {"ok": None, "reason": "this run is skipped"}
            continue
        assert run["status"] == "ok", run
        assert run["replicas"] == (2 if strategy == "mirrored" else 1)
        assert run["steps"] == 2 and run["timed_steps"] == 1 and run["truncated"] is False
        assert run["images_per_s"] > 0
        assert run["logits_dtype"] == "float32"  # float32 logits under mixed_float16 too
        assert run["compute_dtype"] == ("float16" if precision == "mixed_float16" else "float32")
        assert (run["loss_scale"] is None) == (precision == "float32")
        assert run["mfu"] is None and run["mfu_reason"] == "no GPU (CPU smoke run): no peak to compare with"
        assert np.isfinite(run["eval_loss"]) and 0 <= run["eval_accuracy"] <= 1
        match = run["matches_float32"]
        assert isinstance(match["ok"], bool) and 0 <= match["prediction_agreement"] <= 1
        assert match["eval_loss_allowed"] >= gpu_check.TOLERANCE["loss_abs"]
    assert runs[("one_device", "float32", False)]["matches_float32"]["prediction_agreement"] == 1.0  # itself
    assert result["summary"]["runs"] == 8 and result["summary"]["errors"] == 0


@pytest.mark.parametrize("name, precision, tf32, want", [
    ("NVIDIA A100-SXM4-40GB", "float32", True, (156.0, "tf32", None)),
    ("NVIDIA A100-SXM4-40GB", "float32", False, (19.5, "fp32", None)),
    ("NVIDIA A100-SXM4-40GB", "mixed_float16", True, (312.0, "fp16", None)),
    ("NVIDIA H100 PCIe", "mixed_float16", True, (756.0, "fp16", None)),
    ("NVIDIA H100 80GB HBM3", "float32", True, (494.7, "tf32", None)),
    ("Tesla T4", "float32", True, (8.1, "fp32", None)),  # Turing: no TF32
    ("Tesla V100-PCIE-16GB", "mixed_float16", True, (112.0, "fp16", None)),
    ("NVIDIA A10", "float32", True, (62.5, "tf32", None)),
])
def test_peak_is_looked_up_by_gpu_name_and_precision(name, precision, tf32, want):
    assert gpu_check.peak_tflops(name, precision, tf32) == want


def test_unknown_gpu_or_none_has_no_peak_and_says_why():
    assert gpu_check.peak_tflops("NVIDIA A10G", "float32") == (
        None, None, "GPU 'NVIDIA A10G' is not in PEAK_TFLOPS (benchmarks/gpu_check.py): no MFU")
    assert gpu_check.peak_tflops(None, "float32") == (None, None, "no GPU: no peak to compare with")
    assert gpu_check.model_flop_utilisation(10**9, 1000.0, None, 1) is None
    assert gpu_check.model_flop_utilisation(10**9, 1000.0, 10.0, 2) == pytest.approx(0.15)


def test_compare_judges_only_like_for_like_runs():
    ref = {"status": "ok", "truncated": False, "eval_loss": 0.5, "train_loss_mean": 1.0,
           "predictions": np.array([0, 1, 2, 3])}
    same = {**ref, "eval_loss": 0.52, "train_loss_mean": 1.1}
    assert gpu_check.compare(same, ref)["ok"] is True
    far = {**ref, "eval_loss": 0.7}  # allowed: 0.05 + 0.10 x 0.5 = 0.1
    assert gpu_check.compare(far, ref)["ok"] is False
    other_classes = {**ref, "predictions": np.array([0, 1, 2, 0])}  # 75% agreement < 95%
    assert gpu_check.compare(other_classes, ref)["ok"] is False
    assert gpu_check.compare({**ref, "eval_loss": float("nan")}, ref)["ok"] is False
    assert gpu_check.compare({**ref, "truncated": True}, ref)["ok"] is None
    assert gpu_check.compare({"status": "error"}, ref) == {"ok": None, "reason": "this run is error"}
    assert gpu_check.compare(ref, None)["ok"] is None


def test_synthetic_cifar_is_the_same_task_for_every_seed():
    x0, y0 = gpu_check.synthetic_cifar(64, 0)
    x1, y1 = gpu_check.synthetic_cifar(64, 0)
    np.testing.assert_array_equal(x0, x1)
    np.testing.assert_array_equal(y0, y1)
    assert x0.shape == (64, 32, 32, 3) and x0.dtype == np.float32 and 0 <= x0.min() and x0.max() <= 1
    (xa, ya), (xb, yb) = gpu_check.synthetic_cifar(2000, 0), gpu_check.synthetic_cifar(2000, 1)
    for c in range(10):  # the class means of two seeds' draws are the same pattern
        assert np.abs(xa[ya == c].mean(0) - xb[yb == c].mean(0)).max() < 0.1
