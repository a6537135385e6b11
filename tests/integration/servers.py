"""Throw-away servers for connector tests: MariaDB and Redis, on free loopback ports.

Each is started by its script (``scripts/mariadb.sh run``, ``scripts/redis.sh run``,
which install the Debian package when it is missing and exec the server in the
foreground), in a temp dir, and stopped with SIGTERM when the session ends. Without the
server the tests are skipped with one loud line, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # covers an apt-get install on a fresh machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: its port, folder, log file and process."""

    name: str
    port: int
    dir: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(name: str, script: str, *extra: str, log_name: str) -> Server:
    """Run ``scripts/<script> run DIR PORT *extra`` and wait until the port answers."""
    where = Path(tempfile.mkdtemp(prefix=f"sf-{name}-"))
    port = free_port()
    out = open(where / "start.log", "wb")  # noqa: SIM115 (kept open for the process)
    proc = subprocess.Popen(
        ["bash", str(REPO / "scripts" / script), "run", str(where), str(port), *extra],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    server = Server(name, port, where, where / log_name, proc)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    tail = []
    for f in (where / "start.log", server.log):
        if f.exists():
            tail += f.read_text(errors="replace").splitlines()[-15:]
    shutil.rmtree(where, ignore_errors=True)
    raise RuntimeError(f"{name} did not start on 127.0.0.1:{port}:\n" + "\n".join(tail))


_reported: set[str] = set()


def unavailable(name: str, why: str) -> None:
    """Fail under CI=true, else skip (one loud line per server)."""
    msg = f"NO {name.upper()}: {why}"
    if os.environ.get("CI"):
        pytest.fail(msg + f" (CI=true: {name} tests must run)")
    if name not in _reported:
        _reported.add(name)
        print("\n" + "!" * 20 + " " + msg + f" — {name} tests skipped " + "!" * 20)
    pytest.skip(msg)


def serve(name: str, script: str, *extra: str, log_name: str) -> Iterator[Server]:
    """Fixture body: start the server (or skip/fail), yield it, stop it."""
    try:
        server = start(name, script, *extra, log_name=log_name)
    except (OSError, RuntimeError) as exc:
        unavailable(name, str(exc))
        raise  # unreachable: unavailable() fails or skips
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


REDIS_PASSWORD = "redis-test-pw"


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Server]:
    yield from serve("mariadb", "mariadb.sh", log_name="error.log")


@pytest.fixture(scope="session")
def mysql_url(mariadb_server: Server) -> str:
    """mysql://streamflow:streamflow@127.0.0.1:PORT/streamflow of a fresh MariaDB."""
    return f"mysql://streamflow:streamflow@127.0.0.1:{mariadb_server.port}/streamflow"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Server]:
    yield from serve("redis", "redis.sh", REDIS_PASSWORD, log_name="redis.log")


@pytest.fixture(scope="session")
def redis_url(redis_server: Server) -> str:
    """redis://:PASSWORD@127.0.0.1:PORT/0 of a fresh Redis (AUTH required)."""
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
