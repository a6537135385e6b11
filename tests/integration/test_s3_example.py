"""topologies/s3-csv-to-postgres end to end on real servers: moto's S3 and PostgreSQL.

The s3 trigger (two runners, as two gateway processes) watches incoming/; the App's
agents fetch each CSV, upsert its rows into PostgreSQL and move the object to
processed/. A non-CSV drop and a key outside the prefix are left alone."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streamflow.envelope import decode_record
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.topology.values import resolve_config
from streamflow.transport import open_transport
from streamflow.triggers.s3watch import S3Runner
from tests.integration.cloud import S3Server, moto_s3  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "topologies" / "s3-csv-to-postgres" / "integration.yaml"


def with_search_path(url: str, schema: str) -> str:
    """The DSN with ``search_path`` set (asyncpg passes unknown query keys as settings)."""
    parts = urlsplit(url)
    query = f"{parts.query}&search_path={schema}" if parts.query else f"search_path={schema}"
    return urlunsplit(parts._replace(query=query))


async def test_csv_drops_land_in_postgresql_once_and_move_to_processed(
    moto_s3: S3Server,  # noqa: F811
    postgres_url: str,
    pg_schema: str,
    pg: Any,
    tmp_path: Path,
) -> None:
    bucket = moto_s3.bucket()
    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="incoming/day-1.csv", Body=(
        b"order_id,customer,amount,currency\nA-1,ada@example.com,19.90,EUR\n"
        b"A-2,grace@example.com,5,USD\n"))  # fmt: skip
    s3.put_object(Bucket=bucket, Key="incoming/readme.txt", Body=b"not a drop")
    s3.put_object(Bucket=bucket, Key="elsewhere/x.csv", Body=b"order_id\nZ\n")
    integration = load_integration(TOPOLOGY)
    config = resolve_config(integration.config, {
        "bucket": bucket, "s3_endpoint": moto_s3.url, "aws_key_id": "testing",
        "aws_secret": "testing", "db_dsn": with_search_path(postgres_url, pg_schema),
    })  # fmt: skip
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    app = App(integration, transport, config, AppOptions())
    app.deploy()
    flow = integration.flows["load-drops"]
    stop, stop_triggers = asyncio.Event(), asyncio.Event()

    def start_triggers() -> list[asyncio.Task[None]]:
        """Two trigger runners, as two gateway processes (a fresh start lists at once)."""
        runners = [S3Runner(FlowIngress(integration, flow, app.plan, config), transport)
                   for _ in range(2)]  # fmt: skip
        return [asyncio.create_task(r.run(stop_triggers)) for r in runners]

    tasks = [asyncio.create_task(app.run(stop)), *start_triggers()]

    async def rows() -> list[tuple[Any, ...]]:
        exists = await pg.fetchval(f"SELECT to_regclass('{pg_schema}.orders') IS NOT NULL")
        if not exists:
            return []
        got = await pg.fetch(f"SELECT order_id, customer, amount, currency FROM "
                             f"{pg_schema}.orders ORDER BY order_id")  # fmt: skip
        return [tuple(r) for r in got]

    def keys() -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    async def until(check: Any, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            for t in tasks:
                assert not t.done(), t.exception()
            assert time.monotonic() < deadline, f"timed out: {await rows()} {keys()}"
            await asyncio.sleep(0.2)

    async def moved(*names: str) -> bool:
        return all(f"processed/{n}" in keys() and f"incoming/{n}" not in keys() for n in names)

    try:
        await until(lambda: moved("day-1.csv"))
        assert [r[:2] for r in await rows()] == [("A-1", "ada@example.com"),
                                                 ("A-2", "grace@example.com")]  # fmt: skip
        # the gateways restart; meanwhile a second drop updates one order, adds another
        stop_triggers.set()
        await asyncio.gather(*tasks[1:])
        stop_triggers.clear()
        s3.put_object(Bucket=bucket, Key="incoming/day-2.csv", Body=(
            b"order_id,customer,amount,currency\nA-2,grace@example.com,7.5,USD\n"
            b"A-3,alan@example.com,1,GBP\n"))  # fmt: skip
        tasks[1:] = start_triggers()
        await until(lambda: moved("day-1.csv", "day-2.csv"))
        await asyncio.sleep(1.5)  # nothing is taken twice meanwhile
    finally:
        stop_triggers.set()
        stop.set()
        await asyncio.gather(*tasks)
    first_topic = app.plan.flows["load-drops"].first_topic
    emitted = [decode_record(r).payload["key"] for r in transport.read_all(first_topic)]
    transport.close()
    assert sorted(emitted) == ["incoming/day-1.csv", "incoming/day-2.csv"]
    table = await rows()
    assert [(r[0], str(r[2])) for r in table] == [("A-1", "19.90"), ("A-2", "7.5"), ("A-3", "1")]
    assert keys() == ["elsewhere/x.csv", "incoming/readme.txt", "processed/day-1.csv",
                      "processed/day-2.csv"]  # fmt: skip
