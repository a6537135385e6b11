"""Shared fixtures: a real Kafka broker (never a mock) and transports to run flows on.

Kafka comes from KAFKA_BOOTSTRAP_SERVERS, else a broker on 127.0.0.1:9092, else the local
jars (`scripts/kafka.sh`, needs java + mvn), else testcontainers. Without any, Kafka tests
are skipped with one loud line — except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kafka_broker import bootstrap_servers

REPO = Path(__file__).resolve().parent.parent
_missing_reported = False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """host:port of a real Kafka broker."""
    global _missing_reported
    servers = bootstrap_servers()
    if servers is None:
        msg = (
            "NO KAFKA BROKER: set KAFKA_BOOTSTRAP_SERVERS, install java+maven for "
            "scripts/kafka.sh, or run a Docker engine for testcontainers"
        )
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI=true: Kafka tests must run)")
        if not _missing_reported:
            _missing_reported = True
            print("\n" + "!" * 20 + " " + msg + " — Kafka tests skipped " + "!" * 20)
        pytest.skip(msg)
    return servers


@pytest.fixture(params=["local", "kafka"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The conformance parameter: the same test on the embedded and the Kafka transport."""
    if request.param == "local":
        return f"local://{tmp_path / 'broker'}"
    servers = request.getfixturevalue("kafka_bootstrap")
    return f"kafka://{servers}"


@pytest.fixture
def unique() -> str:
    """A short unique suffix for integration names, topics and groups."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("STREAMFLOW_"):
            monkeypatch.delenv(key)
    yield
