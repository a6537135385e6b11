"""Find (or start) a real Kafka broker for integration and end-to-end tests.

Policy of :func:`bootstrap_servers`, first match wins:

1. ``KAFKA_BOOTSTRAP_SERVERS`` from the environment (CI, or a broker you run yourself);
2. a broker already listening on ``127.0.0.1:$KAFKA_PORT`` (default 9092), for example
   one left running by ``scripts/kafka.sh start``;
3. ``java`` and ``mvn`` on PATH: run ``bash scripts/kafka.sh start`` (Apache Kafka jars
   from Maven Central, single-node KRaft, cached under ``~/.cache/streamflow-kafka``);
4. testcontainers with a reachable Docker engine: a KRaft ``KafkaContainer``;
5. otherwise ``None`` -- the caller decides whether to skip (it must not when CI asks
   for Kafka).

The answer (or the error of a failed start) is cached for the life of the process.
This module has no pytest dependency; a fixture can be as small as::

    servers = kafka_broker.bootstrap_servers()
    if servers is None:
        pytest.skip("no Kafka broker available")
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

__all__ = ["KafkaBrokerError", "bootstrap_servers"]

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_SCRIPT = REPO_ROOT / "scripts" / "kafka.sh"
LOCAL_HOST = "127.0.0.1"
ENV_VAR = "KAFKA_BOOTSTRAP_SERVERS"
# Cold start (jar download + format + start + warm-up) is ~15 s here; the script itself
# gives up after KAFKA_START_TIMEOUT (120 s) of readiness waiting.
SCRIPT_TIMEOUT_S = 600.0

# One broker, so replication factor 1 for the internal topics, or transactions hang.
_CONTAINER_ENV = {
    "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
    "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "3",
    "KAFKA_TRANSACTION_STATE_LOG_NUM_PARTITIONS": "3",
    "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
}


class KafkaBrokerError(RuntimeError):
    """A broker should have been available (local jars or Docker) but did not start."""


class _Cache:
    """The process-wide answer of :func:`bootstrap_servers` (a value or a failure)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.resolved = False
        self.servers: str | None = None
        self.error: KafkaBrokerError | None = None


_cache = _Cache()


def bootstrap_servers() -> str | None:
    """Bootstrap servers of a usable Kafka broker, or ``None`` if none can be had.

    Raises :class:`KafkaBrokerError` (on every call: the failure is cached too) when
    ``scripts/kafka.sh`` or the testcontainer was the chosen way but failed to start: a
    broken local setup should fail loudly, not skip.
    """
    with _cache.lock:
        if not _cache.resolved:
            try:
                _cache.servers = _resolve()
            except KafkaBrokerError as exc:
                _cache.error = exc
            _cache.resolved = True
        if _cache.error is not None:
            raise _cache.error
        return _cache.servers


def _resolve() -> str | None:
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return from_env

    port = int(os.environ.get("KAFKA_PORT", "9092"))
    if _port_open(LOCAL_HOST, port):
        return f"{LOCAL_HOST}:{port}"

    if shutil.which("java") and shutil.which("mvn"):
        return _start_with_script()

    return _start_testcontainer()


def _port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _start_with_script() -> str:
    """Run ``scripts/kafka.sh start`` and return the address it prints on stdout."""
    try:
        proc = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "start"],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaBrokerError(f"{KAFKA_SCRIPT} start failed: {exc}") from exc

    prefix = f"{ENV_VAR}="
    printed = [
        line.removeprefix(prefix).strip()
        for line in proc.stdout.splitlines()
        if line.startswith(prefix)
    ]
    if proc.returncode == 0 and printed and printed[-1]:
        return printed[-1]
    tail = "\n".join(proc.stderr.splitlines()[-60:])
    raise KafkaBrokerError(
        f"{KAFKA_SCRIPT} start exited with {proc.returncode}; its output ends with:\n{tail}"
    )


def _start_testcontainer() -> str | None:
    """A KRaft Kafka container, when testcontainers and a Docker engine are available."""
    try:
        import docker  # type: ignore[import-not-found, import-untyped, unused-ignore]
        from testcontainers.kafka import (  # type: ignore[import-not-found, unused-ignore]
            KafkaContainer,
        )
    except ImportError:
        return None

    try:
        docker.from_env().ping()
    except Exception:  # no engine, no permission, bad DOCKER_HOST: all mean "no Docker"
        return None

    try:
        container = KafkaContainer().with_kraft()
        for key, value in _CONTAINER_ENV.items():
            container = container.with_env(key, value)
        container.start()
    except Exception as exc:
        raise KafkaBrokerError(f"Kafka testcontainer did not start: {exc}") from exc
    atexit.register(container.stop)
    return str(container.get_bootstrap_server())
