"""Choosing a ``tf.distribute`` strategy by name, and the precision settings that go with it."""

from __future__ import annotations

import json
import os

from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, DistributeError

__all__ = ["STRATEGIES", "get_strategy", "parse_tf_config", "set_mixed_precision", "replicas", "describe"]

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "one_device")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def parse_tf_config(raw: str | None = None) -> dict | None:
    """Parse and check ``TF_CONFIG`` (the environment variable when ``raw`` is None); None when unset.

    >>> parse_tf_config('{"cluster": {"worker": ["127.0.0.1:2222"]}, "task": {"type": "worker", "index": 0}}')["task"]
    {'type': 'worker', 'index': 0}
    """
    raw = os.environ.get("TF_CONFIG") if raw is None else raw
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({e.msg} at position {e.pos}): {raw[:200]!r}") from e
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise DistributeError(f"TF_CONFIG needs a 'cluster' mapping of job name to host:port list, got {raw[:200]!r}")
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise DistributeError(f"TF_CONFIG needs a 'task' with 'type' and 'index', got task={task!r}")
    hosts = config["cluster"].get(task["type"])
    if not isinstance(hosts, list) or not hosts:
        raise DistributeError(
            f"TF_CONFIG task type {task['type']!r} has no host list in cluster (jobs: {sorted(config['cluster'])})"
        )
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(hosts):
        raise DistributeError(f"TF_CONFIG task index {task['index']!r} is out of range for {len(hosts)} {task['type']} hosts")
    for job, addrs in config["cluster"].items():
        for addr in addrs if isinstance(addrs, list) else [addrs]:
            host, _, port = str(addr).rpartition(":")
            if not host or not port.isdigit():
                raise DistributeError(f"TF_CONFIG {job} address {addr!r} is not host:port")
    return config


def _gpus():
    return tf.config.list_logical_devices("GPU")


def get_strategy(name="auto", devices=None):
    """A ``tf.distribute.Strategy`` by name.

    Args:
        name: String or Strategy. "auto" picks multi-worker when ``TF_CONFIG`` is set, mirrored over several
            GPUs, one-device for one GPU, and the default strategy on CPU. "mirrored" without GPUs mirrors
            over the logical CPU devices (how multi-device code is tested without GPUs).
        devices: Optional list of device names for "mirrored" / "one_device".

    >>> get_strategy("default").num_replicas_in_sync
    1
    """
    if isinstance(name, tf.distribute.Strategy):
        return name
    if name is None:
        name = "auto"
    if name not in STRATEGIES:
        raise ConfigError(f"strategy={name!r} is not allowed; allowed: {', '.join(STRATEGIES)}")
    if name == "auto":
        if parse_tf_config() is not None:
            name = "multi_worker"
        elif len(_gpus()) > 1:
            name = "mirrored"
        elif len(_gpus()) == 1:
            name = "one_device"
        else:
            name = "default"
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = (devices or [None])[0] or (_gpus()[0].name if _gpus() else "/cpu:0")
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        if devices is None and not _gpus():
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if parse_tf_config() is None:
        raise DistributeError("strategy='multi_worker' needs TF_CONFIG (cluster and task) to be set")
    return tf.distribute.MultiWorkerMirroredStrategy()


def replicas(strategy=None) -> int:
    """Integer, the number of replicas that train in sync under ``strategy`` (1 without one)."""
    return 1 if strategy is None else int(get_strategy(strategy).num_replicas_in_sync)


def set_mixed_precision(policy: str = "mixed_float16") -> str:
    """Set the global Keras precision policy ("float32", "mixed_float16", "mixed_bfloat16"); returns it.

    Builders keep their logits layer in float32 under a mixed policy.
    """
    if policy not in PRECISIONS:
        raise ConfigError(f"mixed_precision={policy!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def describe(strategy) -> dict:
    """A JSON-able description of a strategy, for results files."""
    strategy = get_strategy(strategy)
    return {
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": list(getattr(strategy.extended, "worker_devices", ())),
    }
