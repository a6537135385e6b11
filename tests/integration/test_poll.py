"""The poll trigger against real sources: an aiohttp server, an SQLite file and a
PostgreSQL table. Each new (or changed) record must be emitted once, across a restart
of the poller (a new process reads the cursor back from the state topic)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow.clock import ManualClock
from streamflow.envelope import Envelope, decode_record
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.triggers.poller import PollRunner
from tests.waiting import next_round


def poll_integration(tmp_path: Path, name: str, trigger: str) -> Integration:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: sync
    partitions: 1  # topic order is emission order
    trigger: {trigger}
    steps:
      - {{id: keep, type: transform, output: "${{payload}}"}}
"""
    )
    return load_integration(path)


def emitted(transport: Transport, integration: Integration) -> list[Envelope]:
    topic = compile_plan(integration).flows["sync"].first_topic
    return [decode_record(r) for r in transport.read_all(topic)]


async def poll_until(
    integration: Integration,
    transport: Transport,
    done: Callable[[list[Envelope]], bool],
    polls: int = 200,
    timeout: float = 60.0,
) -> list[Envelope]:
    """Run one poller (a fresh one: as after a restart) poll by poll on a ManualClock until
    ``done``; then three more polls (nothing more may come), then stop it. AssertionError
    "timed out" if ``done`` does not hold after ``polls`` polls or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    flow = integration.flows["sync"]
    clock = ManualClock()
    ingress = FlowIngress(integration, flow, compile_plan(integration), {})
    runner = PollRunner(ingress, transport, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        for _ in range(polls):
            await next_round(clock, runner, task, lambda: runner.next_poll, timeout)
            assert time.monotonic() < deadline, f"timed out after {timeout:g}s"
            envs = await asyncio.to_thread(emitted, transport, integration)
            if done(envs):
                for _ in range(3):
                    await next_round(clock, runner, task, lambda: runner.next_poll, timeout)
                return await asyncio.to_thread(emitted, transport, integration)
        raise AssertionError(f"timed out after {polls} polls; emitted {len(envs)}")
    finally:
        stop.set()
        await task


def ids(envs: list[Envelope]) -> list[Any]:
    return [e.payload["id"] for e in envs]


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[dict[str, str]]]]:
    """A real HTTP API on loopback: GET /orders -> {"data": {"items": [...]}}."""
    items: list[dict[str, Any]] = []
    queries: list[dict[str, str]] = []

    async def orders(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        since = request.query.get("since")
        rows = [i for i in items if since is None or i["updated"] >= since]
        return web.json_response({"data": {"items": rows}})

    app = web.Application()
    app.router.add_get("/orders", orders)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/orders", items, queries
    await runner.cleanup()


@pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
async def test_http_cursor_poll_emits_each_record_once_across_a_restart(
    api: tuple[str, list[dict[str, Any]], list[dict[str, str]]],
    broker_url: str,
    tmp_path: Path,
    unique: str,
) -> None:
    url, items, queries = api
    integration = poll_integration(
        tmp_path,
        f"poll-{unique}",
        f"{{type: poll, every: 200ms, http: {{url: '{url}', items: data.items}}, "
        "cursor: {field: updated, param: since}}",
    )
    transport = open_transport(broker_url)
    App(integration, transport, {}).deploy()
    items += [
        {"id": 1, "updated": "2024-01-01T10:00:00"},
        {"id": 2, "updated": "2024-01-01T10:05:00"},
        {"id": 3, "updated": "2024-01-01T10:05:00"},
    ]
    first = await poll_until(integration, transport, lambda e: len(e) >= 3)
    assert sorted(ids(first)) == [1, 2, 3]
    assert queries[-1]["since"] == "2024-01-01T10:05:00"  # the cursor is sent back

    # while the poller is down: a row with the cursor's own timestamp, and a newer one
    items += [
        {"id": 4, "updated": "2024-01-01T10:05:00"},
        {"id": 5, "updated": "2024-01-01T11:00:00"},
    ]
    second = await poll_until(integration, transport, lambda e: len(e) >= 5)
    assert sorted(ids(second)) == [1, 2, 3, 4, 5]  # each once, none skipped
    assert len({e.execution_id for e in second}) == 5
    assert all(e.trigger["type"] == "poll" and e.trigger["source"] == "http" for e in second)
    transport.close()


async def test_sqlite_query_with_a_cursor_parameter(tmp_path: Path) -> None:
    db = tmp_path / "shop.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL)")
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [(1, 9.5), (2, 20.0)])
    conn.commit()
    integration = poll_integration(
        tmp_path,
        "poll-sqlite",
        f"{{type: poll, every: 200ms, sql: {{dsn: 'sqlite:///{db}', "
        "query: 'SELECT id, total FROM orders WHERE id > :cursor ORDER BY id'}, "
        "cursor: {field: id, initial: 0}}",
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    first = await poll_until(integration, transport, lambda e: len(e) >= 2)
    assert ids(first) == [1, 2]
    conn.executemany("INSERT INTO orders VALUES (?, ?)", [(3, 1.0), (4, 2.0)])
    conn.commit()
    second = await poll_until(integration, transport, lambda e: len(e) >= 4)
    assert ids(second) == [1, 2, 3, 4]
    assert second[2].payload == {"id": 3, "total": 1.0}
    conn.close()
    transport.close()


async def test_hash_mode_emits_new_and_changed_rows_of_a_postgresql_table(
    tmp_path: Path, postgres_url: str, pg_schema: str, pg: Any
) -> None:
    table = f"{pg_schema}.customers"
    await pg.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text)")
    await pg.execute(f"INSERT INTO {table} VALUES (1, 'Ada'), (2, 'Grace')")
    integration = poll_integration(
        tmp_path,
        "poll-pg",
        f"{{type: poll, every: 200ms, mode: hash, key: id, sql: {{dsn: '{postgres_url}', "
        f"query: 'SELECT id, name FROM {table} ORDER BY id'}}}}",
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    first = await poll_until(integration, transport, lambda e: len(e) >= 2)
    assert [e.payload for e in first] == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Grace"}]

    await pg.execute(f"UPDATE {table} SET name = 'Ada L.' WHERE id = 1")
    await pg.execute(f"INSERT INTO {table} VALUES (3, 'Edsger')")
    second = await poll_until(integration, transport, lambda e: len(e) >= 4)
    assert [e.payload for e in second[2:]] == [
        {"id": 1, "name": "Ada L."},
        {"id": 3, "name": "Edsger"},
    ]
    assert [e.trigger["changed"] for e in second[2:]] == [True, False]
    third = await poll_until(integration, transport, lambda e: len(e) >= 4)
    assert len(third) == 4  # a restart with nothing new emits nothing
    transport.close()


async def test_a_failing_source_is_retried_without_moving_the_cursor(
    tmp_path: Path, api: tuple[str, list[dict[str, Any]], list[dict[str, str]]]
) -> None:
    url, items, _ = api
    integration = poll_integration(
        tmp_path,
        "poll-fail",
        f"{{type: poll, every: 200ms, http: {{url: '{url}-missing'}}, cursor: {{field: id}}}}",
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    items.append({"id": 1, "updated": "x"})
    with pytest.raises(AssertionError, match="timed out"):
        await poll_until(integration, transport, lambda e: len(e) >= 1, polls=7)
    assert emitted(transport, integration) == []
    transport.close()


@pytest.fixture
async def paged_api() -> AsyncIterator[tuple[str, list[dict[str, Any]], list[dict[str, str]]]]:
    """GET /orders?page=N -> a list of 2 records with a Link rel="next" while more remain."""
    items: list[dict[str, Any]] = []
    queries: list[dict[str, str]] = []

    async def orders(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        page = int(request.query.get("page", "1"))
        rows = items[(page - 1) * 2 : page * 2]
        headers = (
            {"Link": f'</orders?page={page + 1}>; rel="next"'} if page * 2 < len(items) else {}
        )
        return web.json_response(rows, headers=headers)

    app = web.Application()
    app.router.add_get("/orders", orders)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/orders", items, queries
    await runner.cleanup()


async def test_http_poll_reads_every_page(
    paged_api: tuple[str, list[dict[str, Any]], list[dict[str, str]]],
    tmp_path: Path,
    unique: str,
) -> None:
    url, items, queries = paged_api
    integration = poll_integration(
        tmp_path,
        f"pages-{unique}",
        f"{{type: poll, every: 200ms, http: {{url: '{url}', paginate: {{max_pages: 50}}}}, "
        "key: id}",
    )
    transport = open_transport(f"local://{tmp_path}/store")
    App(integration, transport, {}).deploy()
    items += [{"id": i} for i in range(1, 6)]  # 3 pages
    first = await poll_until(integration, transport, lambda e: len(e) >= 5)
    assert sorted(ids(first)) == [1, 2, 3, 4, 5]
    assert {q.get("page") for q in queries} == {None, "2", "3"}
    items.append({"id": 6})  # page 3 gets its second record
    second = await poll_until(integration, transport, lambda e: len(e) >= 6)
    assert sorted(ids(second)) == [1, 2, 3, 4, 5, 6]
    transport.close()


async def test_http_poll_emits_one_event_per_page(
    paged_api: tuple[str, list[dict[str, Any]], list[dict[str, str]]],
    tmp_path: Path,
    unique: str,
) -> None:
    url, items, _ = paged_api
    integration = poll_integration(
        tmp_path,
        f"perpage-{unique}",
        f"{{type: poll, every: 200ms, http: {{url: '{url}', paginate: {{}}, emit: page}}, "
        "key: id}",
    )
    transport = open_transport(f"local://{tmp_path}/store")
    App(integration, transport, {}).deploy()
    items += [{"id": i} for i in range(1, 6)]
    first = await poll_until(integration, transport, lambda e: len(e) >= 3)
    assert [e.payload["page"] for e in first] == [1, 2, 3]
    assert [[r["id"] for r in e.payload["items"]] for e in first] == [[1, 2], [3, 4], [5]]
    assert all(e.trigger["page"] == e.payload["page"] for e in first)
    items.append({"id": 6})  # only the new record's page is emitted, with only it
    second = await poll_until(integration, transport, lambda e: len(e) >= 4)
    assert len(second) == 4
    assert second[-1].payload == {"page": 3, "items": [{"id": 6}]}
    transport.close()
