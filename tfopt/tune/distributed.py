"""keras-tuner's chief/worker search over gRPC: the environment it reads, and a chief loop that ends promptly.

keras-tuner decides a process's role from three environment variables:

* ``KERASTUNER_TUNER_ID``: "chief" for the oracle server, any other unique id (e.g. "worker0") for a
  process that runs trials;
* ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT``: where the chief listens and workers connect.

:func:`distributed_env` sets them for one search (``search(..., role="chief", address="127.0.0.1:8000")``)
and restores them afterwards; when ``role`` is None the variables already in the environment are used
as they are (so ``KERASTUNER_*=... tfopt tune ...`` works too). All processes must share the search
directory (workers write each trial's weights and record into it; the chief writes the results).

The chief serves with :func:`serve`, which is keras-tuner's ``oracle_chief.start_server`` with a short
poll instead of its 20-second sleeps, and an optional time limit.

The oracle server speaks gRPC without authentication or encryption: whoever reaches its port can read the
search space and every trial's hyperparameters and scores, hand in made-up results, and take trials or
end the search. So the chief listens only on a loopback address by default (keras-tuner listens on
whatever ``KERASTUNER_ORACLE_IP`` says): a chief address such as ``10.0.0.5:8000`` is refused unless
``TFOPT_TUNE_BIND`` (``tfopt tune --bind``) names the interface to listen on, e.g. ``10.0.0.5`` or
``0.0.0.0`` for every interface; do that only on a network you trust (see :func:`listen_address`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time

from tfopt.errors import ConfigError, DistributeError, check_choice

__all__ = ["ROLES", "distributed_env", "role_from_env", "serve", "listen_address", "ENV_VARS", "BIND_ENV"]

ROLES = ("chief", "worker")
ENV_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")
BIND_ENV = "TFOPT_TUNE_BIND"  # the opt-in: the interface the chief listens on when that is not loopback


def _is_loopback(host: str) -> bool:
    if host.strip("[]").lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # another host name: not known to be local
        return False


def listen_address(ip: str | None = None, port=None, bind: str | None = None) -> str:
    """``"host:port"`` where the chief's oracle server listens: loopback only, unless told otherwise.

    Args:
        ip: String, the chief's address workers connect to (default ``$KERASTUNER_ORACLE_IP``).
        port: Integer or string, its port (default ``$KERASTUNER_ORACLE_PORT``).
        bind: String or None, the interface to listen on instead (default ``$TFOPT_TUNE_BIND``): the explicit
            opt-in to listening on a non-loopback interface (``"0.0.0.0"``: every interface).

    Raises:
        ConfigError: ``ip`` is not a loopback address and no ``bind`` was given.

    >>> listen_address("127.0.0.1", 8000)
    '127.0.0.1:8000'
    >>> listen_address("10.0.0.5", 8000, bind="10.0.0.5")
    '10.0.0.5:8000'
    """
    ip = ip if ip is not None else os.environ.get("KERASTUNER_ORACLE_IP", "")
    port = port if port is not None else os.environ.get("KERASTUNER_ORACLE_PORT", "")
    bind = bind if bind is not None else os.environ.get(BIND_ENV) or None
    host = bind or ip
    if not bind and not _is_loopback(ip):
        raise ConfigError(
            f"the chief's address {ip}:{port} is not a loopback address, and its oracle server has no "
            "authentication: anyone who reaches the port can read the search and hand in trial results. "
            f"The chief listens only on loopback unless {BIND_ENV} (tfopt tune --bind) names the interface, "
            f"e.g. {BIND_ENV}={ip} (0.0.0.0: every interface); do that only on a trusted network"
        )
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host  # IPv6
    return f"{host}:{port}"


def _address(address) -> tuple[str, str]:
    if address is None:
        ip, port = os.environ.get("KERASTUNER_ORACLE_IP"), os.environ.get("KERASTUNER_ORACLE_PORT")
        if not ip or not port:
            raise ConfigError(
                "a distributed search needs the chief's address: pass address='host:port' or set "
                "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT"
            )
        return ip, port
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"address={address!r} is not allowed; allowed: 'host:port' with a port in 1..65535")
    return host, port


@contextlib.contextmanager
def distributed_env(role: str | None = None, address: str | None = None, tuner_id: str | None = None):
    """Set keras-tuner's chief/worker variables for the duration of a ``with`` block (no-op when role is None).

    Args:
        role: None, "chief" or "worker".
        address: String "host:port" of the chief, or None to keep KERASTUNER_ORACLE_IP/PORT.
        tuner_id: String, a worker's unique id (default: $KERASTUNER_TUNER_ID or "worker-<pid>").

    >>> with distributed_env("worker", "127.0.0.1:9000", "worker1"):
    ...     os.environ["KERASTUNER_TUNER_ID"]
    'worker1'
    """
    if role is None:
        yield
        return
    check_choice("role", role, ROLES)
    ip, port = _address(address)
    if role == "chief":
        listen_address(ip, port)  # refused before the search starts when it would listen beyond loopback
        tid = "chief"
    else:
        tid = tuner_id or os.environ.get("KERASTUNER_TUNER_ID") or f"worker-{os.getpid()}"
        if "chief" in tid:
            raise ConfigError(f"tuner_id={tid!r} is not allowed for a worker; allowed: an id without 'chief'")
    new = {"KERASTUNER_TUNER_ID": tid, "KERASTUNER_ORACLE_IP": ip, "KERASTUNER_ORACLE_PORT": str(port)}
    old = {k: os.environ.get(k) for k in new}
    os.environ.update(new)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def role_from_env() -> str | None:
    """"chief", "worker" or None (not distributed), from keras-tuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def serve(oracle, timeout: float | None = None, poll: float = 0.2) -> None:
    """Serve ``oracle`` to workers over gRPC until every worker was told to stop (or ``timeout`` seconds).

    It listens on :func:`listen_address`: the chief's loopback address, or ``$TFOPT_TUNE_BIND``.

    Args:
        oracle: keras-tuner Oracle (the chief's).
        timeout: Float or None, seconds after which to give up (raises DistributeError).
        poll: Float, seconds between checks.
    """
    from concurrent import futures

    import grpc
    from tfopt._private import private

    protos, oracle_chief = private("kt_protos"), private("kt_oracle_chief")

    where = listen_address()  # loopback unless TFOPT_TUNE_BIND opts in (no authentication on this port)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(where)
    except RuntimeError:
        bound = 0
    if not bound:
        raise DistributeError(f"the chief could not listen on {where} (port in use or address not local)")
    server.start()
    start = time.monotonic()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            if timeout is not None and time.monotonic() - start > timeout:
                raise DistributeError(
                    f"the chief waited {timeout:g} s and the search is not finished: "
                    f"{len(oracle.ongoing_trials)} trial(s) running, workers still known: {sorted(oracle.tuner_ids)}"
                )
            time.sleep(poll)
    finally:
        server.stop(grace=1.0)
