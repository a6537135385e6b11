"""End to end: `streamflow run` on topologies/customers-csv-to-postgres with a real
PostgreSQL, a real SMTP server (aiosmtpd) and the example's mocks (OAuth2 token endpoint
and REST API). Also proves the secrets never reach the output, the logs or the topics."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "topologies" / "customers-csv-to-postgres"
CLIENT_SECRET = "crm-cl1ent-s3cret"
DB_PASSWORD = "db-passw0rd-s3cret"


def with_password_and_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        user = user.split(":", 1)[0]
    else:
        user, host = "postgres", netloc
    # a password the (trust-auth) test server ignores, so we can look for leaks of it
    netloc = f"{user}:{DB_PASSWORD}@{host}" if parts.hostname == "127.0.0.1" else netloc
    query = f"{parts.query}&search_path={schema}" if parts.query else f"search_path={schema}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


async def test_example_runs_end_to_end(
    postgres_url: str, pg_schema: str, smtp_server_factory: Any, tmp_path: Path
) -> None:
    smtp = smtp_server_factory()
    dsn = with_password_and_schema(postgres_url, pg_schema)
    broker = tmp_path / "broker"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streamflow.cli.main", "--log-level", "DEBUG",
        "run", str(EXAMPLE / "integration.yaml"),
        "--input", str(EXAMPLE / "events.ndjson"),
        "--mocks", str(EXAMPLE / "mocks.yaml"),
        "--config", f"db_dsn={dsn}",
        "--config", f"smtp_port={smtp.port}",
        "--config", f"crm_client_secret={CLIENT_SECRET}",
        "--config", "report_to=team@example.org",
        "--broker", f"local://{broker}",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    out_b, err_b = await asyncio.wait_for(proc.communicate(), 180)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, out + err
    assert "1 completed" in out
    assert "mock crm POST /oauth/token -> 200  x1" in out
    assert "mock crm POST /api/customers -> 201  x4" in out

    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch(
            f'SELECT id, email, first_name, country FROM "{pg_schema}".customers ORDER BY id'
        )
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [
        (1001, "ada@example.com", "Ada", "GB"),
        (1002, "grace@example.com", "Grace", "US"),
        (1003, "alan@example.com", "Alan", "GB"),
        (1004, "edsger@example.com", "Edsger", "NL"),
    ]

    [mail] = smtp.received
    assert mail.recipients == ["team@example.org"]
    subject = " ".join(str(mail.message["Subject"]).split())
    assert subject.startswith("Imported 4 customers from ")
    body = mail.text()
    assert "4 rows written to PostgreSQL." in body
    assert "4 customers posted to the CRM." in body

    # no secret in what the run printed (DEBUG logs included) or on any topic
    topics = b"".join(f.read_bytes() for f in broker.rglob("*") if f.is_file())
    assert b"grace@example.com" in topics  # the scan below looks where payloads are
    for secret in (CLIENT_SECRET, DB_PASSWORD):
        assert secret not in out
        assert secret not in err
        for f in broker.rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), f"{secret} found in {f}"
