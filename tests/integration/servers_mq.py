"""Real RabbitMQ and MongoDB-protocol servers for connector tests, on free loopback ports.

- ``rabbitmq_url``: Debian's ``rabbitmq-server`` run by ``scripts/rabbitmq.sh run`` (its own
  epmd, AMQP and distribution ports, all on 127.0.0.1, state in a temp folder); installed
  by ``scripts/rabbitmq.sh install`` when missing (root only; ``.ci/run`` does it).
- ``mongodb_url``: FerretDB v1.24.2 over SQLite, built once by ``scripts/ferretdb.sh build``
  (Go, cached in ~/.cache/streamflow-ferretdb), data in a temp folder.

Both are started once per test session and stopped (SIGTERM, then SIGKILL) at its end.
When a server cannot be installed or started its tests are skipped with one loud line,
except under CI=true, where they fail. Import the fixtures into a test module to use them.
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
_reported: set[str] = set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(name: str, why: str) -> None:
    """Skip (loudly, once) or, under CI=true, fail."""
    msg = f"NO {name}: {why}"
    if os.environ.get("CI"):
        pytest.fail(msg + f" (CI=true: {name} tests must run)")
    if name not in _reported:
        _reported.add(name)
        print("\n" + "!" * 20 + " " + msg + f" — {name} tests skipped " + "!" * 20)
    pytest.skip(msg)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    log: Path
    started: float
    ready_after: float = 0.0

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> str | None:
        """None once the port accepts connections; else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}:\n{self.tail()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                self.ready_after = time.monotonic() - self.started
                return None
            except OSError:
                time.sleep(0.1)
        return f"not ready within {timeout:g}s:\n{self.tail()}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def start(cmd: list[str], port: int, directory: Path, timeout: float) -> tuple[Server, str | None]:
    log = directory / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, port, directory, log, time.monotonic())
    why = server.wait_ready(timeout)
    if why is not None:
        server.stop()
    return server, why


def _script(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """amqp://guest:guest@127.0.0.1:PORT/ of a broker started for this session."""
    script = str(REPO / "scripts" / "rabbitmq.sh")
    try:
        done = _script([script, "install"], 900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable("RABBITMQ", str(exc))
    if done.returncode != 0:
        unavailable("RABBITMQ", done.stderr.strip()[-2000:])
    directory = Path(tempfile.mkdtemp(prefix="sf-rabbitmq-"))
    port, epmd, dist = free_port(), free_port(), free_port()
    cmd = ["bash", script, "run", str(directory), str(port), str(epmd), str(dist)]
    server, why = start(cmd, port, directory, 120.0)
    if why is not None:
        unavailable("RABBITMQ", why)
    print(f"\n[servers] RabbitMQ on 127.0.0.1:{port}, ready in {server.ready_after:.1f}s")
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongodb_url() -> Iterator[str]:
    """mongodb://127.0.0.1:PORT/ of a FerretDB (SQLite) started for this session."""
    try:
        done = _script([str(REPO / "scripts" / "ferretdb.sh"), "build"], 900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable("FERRETDB", str(exc))
    lines = [x for x in done.stdout.splitlines() if x.startswith("FERRETDB_BIN=")]
    if done.returncode != 0 or not lines:
        unavailable("FERRETDB", done.stderr.strip()[-2000:])
    binary = lines[-1].removeprefix("FERRETDB_BIN=")
    directory = Path(tempfile.mkdtemp(prefix="sf-ferretdb-"))
    (directory / "data").mkdir()
    port = free_port()
    cmd = [binary, "-listen-addr", f"127.0.0.1:{port}", "-sqlite-url", f"file:{directory}/data/"]
    server, why = start(cmd, port, directory, 30.0)
    if why is not None:
        unavailable("FERRETDB", why)
    print(f"\n[servers] FerretDB on 127.0.0.1:{port}, ready in {server.ready_after:.1f}s")
    try:
        yield f"mongodb://127.0.0.1:{port}/"
    finally:
        server.stop()
