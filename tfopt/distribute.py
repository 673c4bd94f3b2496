"""Choosing a ``tf.distribute`` strategy by name, cluster settings (TF_CONFIG), batch/rate scaling, precision.

* ``get_strategy``: a strategy by name ("auto", "default", "mirrored", "multi_worker", "one_device").
* ``tf_config_for`` / ``parse_tf_config`` / ``wait_for_peers`` / ``is_chief``: multi-worker clusters.
  Every wait on a peer has a deadline and the error names the peer that did not answer.
* ``scale_batch_size`` / ``check_batch_size`` / ``scale_learning_rate``: the global batch is the
  per-replica batch times the number of replicas; the rate may follow it (Goyal et al. 2017, "Accurate,
  Large Minibatch SGD": linear scaling, or the square-root rule).
* ``even_batches``: every global batch (a partial last one too) split evenly over the replicas and weighted,
  so a step's gradient under N replicas is the one-device gradient of the same batch.
* ``set_mixed_precision`` / ``device_prefetch``: settings that keep an accelerator busy.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import time

from tfopt._keras import keras, tf
from tfopt.errors import ConfigError, DistributeError, check_range

__all__ = [
    "STRATEGIES",
    "PRECISIONS",
    "LR_RULES",
    "get_strategy",
    "parse_tf_config",
    "tf_config_for",
    "wait_for_peers",
    "is_chief",
    "task_index",
    "set_mixed_precision",
    "replicas",
    "scale_batch_size",
    "check_batch_size",
    "scale_learning_rate",
    "even_batches",
    "device_prefetch",
    "describe",
]

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "one_device")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# rule -> factor applied to the learning rate for n replicas (Goyal et al. 2017; "sqrt" keeps the noise scale).
LR_RULES = {None: lambda n: 1.0, "linear": lambda n: float(n), "sqrt": math.sqrt}
DEFAULT_TIMEOUT = 120.0
_MIRRORED: dict = {}  # device names -> the process's one MirroredStrategy over them (see get_strategy)


# ------------------------------------------------------------------------------------------ TF_CONFIG
def _split_address(addr, where: str) -> tuple[str, int]:
    host, _, port = str(addr).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributeError(f"{where} address {addr!r} is not host:port (e.g. '127.0.0.1:2222')")
    return host.strip("[]"), int(port)


def parse_tf_config(raw: str | None = None) -> dict | None:
    """Parse and check ``TF_CONFIG`` (the environment variable when ``raw`` is None); None when unset.

    Args:
        raw: String or None, the JSON text (None reads ``os.environ["TF_CONFIG"]``).

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
            _split_address(addr, f"TF_CONFIG {job}")
    return config


def _bind_probe(host: str, port: int = 0, label: str | None = None) -> socket.socket:
    """A socket bound to ``(host, port)``; DistributeError when ``host`` is not an address of this machine."""
    label = label or f"{host}:{port}"
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise DistributeError(f"worker host {host!r} does not resolve: {e}") from e
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRNOTAVAIL:
            raise DistributeError(
                f"worker {label} is not an address of this machine: this host is missing from the "
                "worker list, or --worker-index points at another machine's entry"
            ) from e
        raise DistributeError(f"cannot use {label} on this machine: {e.strerror}") from e
    return sock


def tf_config_for(workers, index: int, check_local: bool = True) -> dict:
    """The ``TF_CONFIG`` dict for worker ``index`` of ``workers`` (worker 0 is the chief).

    Args:
        workers: List of "host:port" strings (or one comma-separated string), the same on every worker.
        index: Integer, this process's position in ``workers``.
        check_local: Boolean, check that ``workers[index]`` is an address of this machine.

    >>> tf_config_for(["127.0.0.1:2222", "127.0.0.1:2223"], 1)["task"]
    {'type': 'worker', 'index': 1}
    """
    if isinstance(workers, str):
        workers = [w.strip() for w in workers.split(",") if w.strip()]
    if not isinstance(workers, (list, tuple)) or not workers:
        raise DistributeError(f"workers={workers!r} must be a non-empty list of 'host:port' strings")
    workers = [str(w) for w in workers]
    for w in workers:
        _split_address(w, "worker")
    duplicates = sorted({w for w in workers if workers.count(w) > 1})
    if duplicates:
        raise DistributeError(f"workers lists {duplicates} more than once; each worker needs its own host:port")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise DistributeError(f"worker index={index!r} is out of range; allowed: 0..{len(workers) - 1} for workers={workers}")
    if check_local:
        _bind_probe(_split_address(workers[index], "worker")[0], 0, workers[index]).close()
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def _peers(config: dict) -> tuple[str, list[str]]:
    task = config["task"]
    me = config["cluster"][task["type"]][task["index"]]
    everyone = [a for addrs in config["cluster"].values() for a in (addrs if isinstance(addrs, list) else [addrs])]
    return me, [a for a in everyone if a != me]


def _reachable(addr: str, timeout: float) -> bool:
    host, port = _split_address(addr, "peer")
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_peers(timeout: float = DEFAULT_TIMEOUT, config: dict | None = None, interval: float = 0.2) -> list[str]:
    """Wait until every other task of the cluster accepts TCP connections; returns their addresses.

    This task listens on its own host:port while it waits, so workers that all wait for each other
    before starting TensorFlow's server meet instead of deadlocking; the port is released on return.

    Args:
        timeout: Float, seconds to wait in total.
        config: Dict or None, a TF_CONFIG dict (None reads the ``TF_CONFIG`` variable).
        interval: Float, seconds between probes.

    Raises:
        DistributeError: naming each host:port that did not answer within ``timeout``.

    >>> wait_for_peers(5, tf_config_for(["127.0.0.1:0"], 0, check_local=False))  # doctest: +SKIP
    []
    """
    check_range("timeout", timeout, 0, low_open=True)
    config = parse_tf_config(json.dumps(config)) if config is not None else parse_tf_config()
    if config is None:
        return []
    me, peers = _peers(config)
    listener = _bind_probe(*_split_address(me, "this task"))
    listener.listen(16)
    deadline = time.monotonic() + timeout
    waiting = list(peers)
    try:
        while waiting:
            waiting = [p for p in waiting if not _reachable(p, min(1.0, max(0.05, deadline - time.monotonic())))]
            if not waiting:
                break
            if time.monotonic() >= deadline:
                raise DistributeError(
                    f"peer(s) {', '.join(waiting)} did not answer within {timeout:g} s (this task: {me}); "
                    "start every worker with the same --workers list, or check the host, port and firewall"
                )
            time.sleep(interval)
    finally:
        listener.close()
    return peers


def task_index(strategy=None) -> int:
    """Integer, this task's index in the cluster (0 without multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and resolver.task_id is not None:
        return int(resolver.task_id)
    config = parse_tf_config()
    return int(config["task"]["index"]) if config else 0


def is_chief(strategy=None) -> bool:
    """True when this task writes the run's files: the "chief" task, or worker 0 when there is no chief.

    Args:
        strategy: Strategy or None (None: decided from ``TF_CONFIG``; True without it).

    >>> is_chief(get_strategy("default"))
    True
    """
    if strategy is not None:
        strategy = get_strategy(strategy)
        if not strategy.extended._in_multi_worker_mode():
            return True
        return bool(strategy.extended.should_checkpoint)
    config = parse_tf_config()
    if config is None:
        return True
    task = config["task"]
    if task["type"] == "chief":
        return True
    return task["type"] == "worker" and task["index"] == 0 and "chief" not in config["cluster"]


# ------------------------------------------------------------------------------------------ strategies
def _gpus():
    return tf.config.list_logical_devices("GPU")


def _multi_worker(timeout: float):
    """MultiWorkerMirroredStrategy whose registration, heartbeats and collectives all have deadlines."""
    config = parse_tf_config()
    if config is None:
        raise DistributeError("strategy='multi_worker' needs TF_CONFIG (cluster and task) to be set")
    wait_for_peers(timeout, config)
    from tfopt._private import private

    context = private("tf_eager_context")  # the public API has no knob for these deadlines

    if context.context().coordination_service is None:
        coordination_config_pb2 = private("tf_coordination_config")

        jobs = [
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(config["cluster"][job]))
            for job in ("chief", "worker")
            if job in config["cluster"]
        ]
        leader = "chief" if "chief" in config["cluster"] else "worker"
        context.context().configure_coordination_service(
            service_type="standalone",
            service_leader=f"/job:{leader}/replica:0/task:0",
            cluster_register_timeout_in_ms=int(timeout * 1000),
            heartbeat_timeout_in_ms=10_000,
            shutdown_barrier_timeout_in_ms=int(timeout * 1000),
            coordinated_jobs=jobs,
        )
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError, tf.errors.OpError) as e:
        raise DistributeError(f"could not join the cluster {config['cluster']} as {config['task']}: {e}") from e


def get_strategy(name="auto", devices=None, timeout: float = DEFAULT_TIMEOUT):
    """A ``tf.distribute.Strategy`` by name.

    Args:
        name: String or Strategy. "auto" picks multi-worker when ``TF_CONFIG`` is set, mirrored over several
            GPUs, one-device for one GPU, and the default strategy on CPU. "mirrored" without GPUs mirrors
            over the logical CPU devices (how multi-device code is tested without GPUs). "multi_worker"
            reads ``TF_CONFIG`` (see ``tf_config_for``).
        devices: Optional list of device names for "mirrored" / "one_device". "mirrored" gives the same
            strategy object for the same devices within a process: every new MirroredStrategy numbers its
            all-reduces from the same start, so a second one's collectives can meet the first one's and abort
            ("Shape mismatch in the collective instance 100").
        timeout: Float, seconds multi-worker training waits for a peer (TCP reachability, registration,
            and each collective: ``CommunicationOptions(timeout_seconds=timeout)``) before failing.

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
        if devices is None:
            devices = [d.name for d in (_gpus() or tf.config.list_logical_devices("CPU"))]
        key = tuple(devices)
        if key not in _MIRRORED:
            _MIRRORED[key] = tf.distribute.MirroredStrategy(devices=list(key))
        return _MIRRORED[key]
    return _multi_worker(timeout)


def replicas(strategy=None) -> int:
    """Integer, the number of replicas that train in sync under ``strategy`` (1 without one).

    Args:
        strategy: Strategy, strategy name, an integer replica count (for planning), or None.

    >>> replicas(4)
    4
    """
    if strategy is None:
        return 1
    if isinstance(strategy, int) and not isinstance(strategy, bool):
        if strategy < 1:
            raise ConfigError(f"replicas={strategy!r} is not allowed; allowed: an integer >= 1 or a strategy")
        return strategy
    return int(get_strategy(strategy).num_replicas_in_sync)


# ------------------------------------------------------------------------------------ batch and rate
def scale_batch_size(batch_size: int, strategy=None) -> int:
    """Integer, the global batch size: ``batch_size`` per replica times the number of replicas.

    Args:
        batch_size: Integer >= 1, the batch each replica sees.
        strategy: Strategy, name, replica count or None.

    >>> scale_batch_size(64, None)
    64
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is not allowed; allowed: an integer >= 1")
    return batch_size * replicas(strategy)


def check_batch_size(batch_size: int, strategy=None) -> int:
    """Return the per-replica batch; ConfigError when the global ``batch_size`` does not split evenly.

    >>> check_batch_size(64, None)
    64
    """
    n = replicas(strategy)
    if batch_size is not None and batch_size % n:
        raise ConfigError(
            f"batch_size={batch_size} is not divisible by the {n} replicas of the strategy; "
            f"use a multiple of {n} (e.g. {max(1, round(batch_size / n)) * n})"
        )
    return batch_size // n


def scale_learning_rate(learning_rate: float, strategy=None, rule: str | None = "linear") -> float:
    """The learning rate for training on ``replicas(strategy)`` times the single-replica batch.

    "linear" multiplies by the replica count (Goyal et al. 2017; pair it with a warm-up), "sqrt" by its
    square root, None leaves the rate unchanged (opt-in: tfopt never scales a rate on its own).

    Args:
        learning_rate: Float > 0, the rate tuned for one replica's batch.
        strategy: Strategy, name, replica count or None.
        rule: String or None, one of ``LR_RULES``.

    >>> scale_learning_rate(0.1, None, "linear")
    0.1
    """
    if rule not in LR_RULES:
        raise ConfigError(f"rule={rule!r} is not allowed; allowed: {', '.join(map(repr, LR_RULES))}")
    check_range("learning_rate", learning_rate, 0, low_open=True)
    return float(learning_rate) * LR_RULES[rule](replicas(strategy))


def _batch_rows(element):
    """The row count of a batch: the first dimension of its first tensor."""
    first = tf.nest.flatten(element)[0]
    return tf.shape(first, out_type=tf.int64)[0] if not isinstance(first, tf.RaggedTensor) else first.nrows()


def even_batches(dataset, strategy=None):
    """``dataset`` whose every batch splits evenly over the replicas of ``strategy``, weighted so that a training
    step's gradient is the one-device gradient of the same global batch (a partial last batch included).

    Keras averages the loss over each replica's own rows, divides it by the number of replicas ``n`` and sums
    the replicas' gradients: the one-device mean only when every replica gets the same number of rows. So a
    batch of ``b`` rows is padded to ``t``, the smallest multiple of ``n`` that is at least the epoch's largest
    batch so far, by repeating its rows with sample weight 0, and its real rows get weight ``t / b`` (times their
    own weight, e.g. ``balance="class_weight"``): each replica's weighted mean over ``t / n`` rows, divided by
    ``n`` and summed, is the mean over the ``b`` real rows. A batch of ``t`` rows (every full batch when the
    global batch is a multiple of ``n``) is unchanged and gets weight 1: exactly the one-device loss. The
    batches keep their order and nothing iterates ``dataset`` ahead. Equality holds for losses that average
    over the batch (Keras' default reduction). Not equal: BatchNormalization (each replica's statistics, the
    repeated rows included), dropout (other masks per replica), and an epoch's train metrics, which count the
    repeated rows of a padded batch (Keras' ``metrics`` ignore sample weights).

    Args:
        dataset: tf.data.Dataset of ``(x, y)`` or ``(x, y, sample_weight)`` batches (dense or ragged tensors).
        strategy: Strategy, name, replica count or None; one replica returns ``dataset`` unchanged.

    Returns:
        A tf.data.Dataset of ``(x, y, sample_weight)`` batches, or ``dataset`` itself when there is one replica
        or its elements are not such tuples (logged: partial batches then weigh their rows unevenly).

    >>> ds = tf.data.Dataset.from_tensor_slices(([1.0, 2.0, 3.0], [0, 1, 0])).batch(2)
    >>> [w.numpy().tolist() for _, _, w in even_batches(ds, 2)]
    [[1.0, 1.0], [2.0, 0.0]]
    """
    n = replicas(strategy)
    if n == 1:
        return dataset
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigError(f"even_batches needs a tf.data.Dataset, got {type(dataset).__name__}")
    spec = dataset.element_spec
    dense = all(isinstance(s, (tf.TensorSpec, tf.RaggedTensorSpec)) for s in tf.nest.flatten(spec))
    if not (isinstance(spec, tuple) and len(spec) in (2, 3) and dense):
        log.warning("even_batches: elements are not (x, y[, sample_weight]) tuples of dense tensors (%s); a batch "
                    "that does not split evenly over the %d replicas weighs its rows unevenly", spec, n)
        return dataset

    def scaled(weights, scale):
        shape = tf.concat([[-1], tf.ones([tf.rank(weights) - 1], tf.int32)], 0)
        return weights * tf.reshape(tf.cast(scale, weights.dtype), shape)

    def pad(largest, element):
        rows = _batch_rows(element[1])
        largest = tf.maximum(largest, rows)
        target = (largest + n - 1) // n * n
        scale = tf.where(tf.range(target) < rows, tf.cast(target, tf.float32) / tf.cast(rows, tf.float32), 0.0)
        index = tf.range(target) % rows
        element = tf.cond(tf.equal(rows, target), lambda: element,
                          lambda: tf.nest.map_structure(lambda t: tf.gather(t, index), element))
        if len(element) == 2:
            return largest, (*element, scale)
        x, y, weights = element
        return largest, (x, y, tf.nest.map_structure(lambda w: scaled(w, scale), weights))

    return dataset.scan(tf.constant(0, tf.int64), pad)


# ------------------------------------------------------------------------------------ accelerators
def set_mixed_precision(policy: str = "mixed_float16") -> str:
    """Set the global Keras precision policy ("float32", "mixed_float16", "mixed_bfloat16"); returns it.

    Builders keep their logits layer in float32 under a mixed policy.

    >>> set_mixed_precision("float32")
    'float32'
    """
    if policy not in PRECISIONS:
        raise ConfigError(f"mixed_precision={policy!r} is not allowed; allowed: {', '.join(PRECISIONS)}")
    keras.mixed_precision.set_global_policy(policy)
    return policy


def device_prefetch(dataset, strategy=None, buffer_size=tf.data.AUTOTUNE):
    """``dataset`` tuned to keep an accelerator fed: parallel map/batch, prefetch (to the GPU when there is one).

    Multi-replica strategies distribute (and prefetch to each device) inside Keras ``fit``, so they get the
    tuned host pipeline; a single GPU gets ``prefetch_to_device``.

    Args:
        dataset: tf.data.Dataset.
        strategy: Strategy, name or None.
        buffer_size: Integer or AUTOTUNE, batches to prefetch.

    >>> device_prefetch(tf.data.Dataset.range(4).batch(2)).options().experimental_optimization.map_parallelization
    True
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ConfigError(f"device_prefetch needs a tf.data.Dataset, got {type(dataset).__name__}")
    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = True
    options.experimental_optimization.parallel_batch = True
    options.autotune.enabled = True
    dataset = dataset.with_options(options)
    gpus = _gpus()
    if len(gpus) == 1 and replicas(strategy) == 1:
        return dataset.apply(tf.data.experimental.prefetch_to_device(gpus[0].name, buffer_size=1))
    return dataset.prefetch(buffer_size)


def describe(strategy) -> dict:
    """A JSON-able description of a strategy, for results files.

    >>> describe("default")["replicas"]
    1
    """
    strategy = get_strategy(strategy)
    try:
        devices = list(strategy.extended.worker_devices)
    except (AttributeError, RuntimeError):  # the default strategy has no worker_devices
        devices = []
    return {
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "devices": devices,
        "chief": is_chief(strategy),
    }
