"""Real cloud-storage servers on loopback for the s3 / azure_blob / aws_sigv4 tests.

- ``moto_s3``: moto's server mode (``python -m moto.server``; PyPI ``moto[s3]`` + flask +
  flask-cors, dev dependencies), a subprocess on a free port. It speaks S3's REST API
  (it does not check signatures: see ``sigv4_checker`` for that).
- ``azurite``: Azurite's blob service from npm, installed once by ``scripts/azurite.sh``
  into ~/.cache/streamflow-azurite and started in memory on a free port.

Import the fixtures into a test module (``from tests.integration.cloud import moto_s3``).
A server that cannot be installed or started skips its tests with one loud line, except
under CI=true, where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import REPO, free_port

AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_ACCOUNT = "devstoreaccount1"


def _unavailable(what: str, why: str) -> None:
    msg = f"NO {what}: {why}"
    if os.environ.get("CI"):
        pytest.fail(msg + f" (CI=true: {what} tests must run)")
    print("\n" + "!" * 20 + " " + msg + f" — {what} tests skipped " + "!" * 20)
    pytest.skip(msg)


class Server:
    """A subprocess server: started, waited for, stopped by its own PID."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"sf-{name}-"))
        self.log = self.dir / "server.log"
        self.ready_path = ready_path
        self.started = time.monotonic()
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen(
                argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.dir,
            )  # fmt: skip
        self.ready_seconds = self._wait()

    def _wait(self, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=1):
                    return time.monotonic() - self.started
            except urllib.error.HTTPError:
                return time.monotonic() - self.started  # it answers: ready
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout:g}s: {self.tail()}")

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class S3Server:
    url: str
    server: Server

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip

    def bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port (one per test session)."""
    try:
        import moto.server  # noqa: F401
    except ImportError as exc:
        _unavailable("MOTO", f"moto[s3] is not installed ({exc}); make .venv/.installed")
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    try:
        server = Server("moto", argv, port, "/moto-api/")
    except (OSError, RuntimeError) as exc:
        _unavailable("MOTO", str(exc))
    try:
        yield S3Server(server.url, server)
    finally:
        server.stop()


@dataclass
class AzureServer:
    url: str  # the blob endpoint of the account
    server: Server

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={self.url};"
        )


def azurite_bin() -> Path:
    """Install Azurite once (scripts/azurite.sh) and return its azurite-blob."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "azurite.sh"), "install"],
        capture_output=True, text=True, timeout=600, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("AZURITE_BLOB=")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"scripts/azurite.sh install failed: {proc.stderr[-1500:]}")
    return Path(lines[-1].removeprefix("AZURITE_BLOB="))


@pytest.fixture(scope="session")
def azurite() -> Iterator[AzureServer]:
    """Azurite's blob service, in memory, on a free loopback port (one per session)."""
    try:
        binary = azurite_bin()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _unavailable("AZURITE", str(exc))
    port = free_port()
    argv = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--silent",
            "--inMemoryPersistence", "--skipApiVersionCheck", "--disableTelemetry"]  # fmt: skip
    try:
        server = Server("azurite", argv, port, "/")
    except (OSError, RuntimeError) as exc:
        _unavailable("AZURITE", str(exc))
    try:
        yield AzureServer(f"{server.url}/{AZURITE_ACCOUNT}", server)
    finally:
        server.stop()
