"""Retry -> dead letter -> ``streamflow dlq list|show|replay`` -> completed, as an operator
does it: the flow runs in process against real HTTP servers on 127.0.0.1 until its target
gives up, the ``dlq`` commands run as subprocesses on the same broker, and after the
target recovers the replayed executions complete - nothing lost, nothing twice downstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow.envelope import decode_record
from streamflow.observability.events import ExecutionEvent, decode_all, is_terminal
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.runner import RunResult, run_events
from streamflow.testing import run_flow
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.transport.local import LocalTransport

REPO = Path(__file__).resolve().parents[2]


def sf(*args: str | Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``streamflow ARGS`` as a subprocess from the repository root."""
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def json_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- servers


@dataclass
class Orders:
    """The flaky target: 503 while ``down``; 422 for a negative quantity."""

    down: bool = True
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append({"body": body, "down": self.down})
        if self.down:
            return web.json_response({"error": "maintenance"}, status=503)
        if body.get("qty", 0) < 0:
            return web.json_response({"error": "negative quantity"}, status=422)
        return web.json_response({"booking": f"BK-{body['id']}"}, status=201)


@dataclass
class Downstream:
    """The service after the failing step: must see each order once."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(await request.json())
        return web.json_response({"ok": True})


Handler = Callable[[web.Request], Awaitable[web.Response]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for r in runners:
        await r.cleanup()


@dataclass
class Setup:
    path: Path
    name: str
    orders: Orders
    downstream: Downstream
    config: dict[str, str]

    def topic(self, suffix: str) -> str:
        return f"sf.{self.name}.f.{suffix}"


def write_topology(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""\
apiVersion: streamflow/v1
kind: Integration
name: {name}
config:
  orders_url: {{type: string}}
  notify_url: {{type: string}}
flows:
  - name: f
    partitions: 2
    key: ${{payload.id}}
    trigger: {{type: manual}}
    steps:
      - id: prepare
        type: transform
        output: {{id: "${{payload.id}}", qty: "${{payload.qty}}"}}
      - id: book
        type: http
        method: POST
        url: ${{config.orders_url}}/orders/${{payload.id}}
        json: ${{payload}}
        retry: {{max_attempts: 2, backoff: fixed, delay: 20ms, jitter: false}}
      - id: notify
        type: http
        method: POST
        url: ${{config.notify_url}}/notify/${{payload.id}}
        json: {{id: "${{payload.id}}", booking: "${{steps.book.body.booking}}"}}
      - id: finish
        type: transform
        output:
          id: ${{payload.id}}
          qty: ${{payload.qty}}
          booking: ${{steps.book.body.booking}}
          replayed: ${{meta.replayed}}
"""
    )
    return path


@pytest.fixture
async def setup(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[str]], request: pytest.FixtureRequest
) -> Setup:
    name = "dlqcli"
    if "unique" in request.fixturenames:
        name = f"dlqcli-{request.getfixturevalue('unique')}"
    orders, downstream = Orders(), Downstream()
    config = {
        "orders_url": await serve(orders.handle),
        "notify_url": await serve(downstream.handle),
    }
    return Setup(write_topology(tmp_path, name), name, orders, downstream, config)


async def run_until_ended(
    setup: Setup, transport: Transport, ids: set[str], *, timeout: float = 60.0
) -> dict[str, list[ExecutionEvent]]:
    """Run every agent until each of ``ids`` ended after its replay; their events since."""
    integration = load_integration(setup.path)
    app = App(integration, transport, setup.config, AppOptions(trace_payloads=True))
    watcher = transport.consumer(f"test.watch.{uuid.uuid4().hex}", [app.plan.executions_topic])
    since_replay: dict[str, list[ExecutionEvent]] = {}
    ended: set[str] = set()
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while ended != ids:
            assert time.monotonic() < deadline, f"not ended after replay: {ids - ended}"
            assert not runner.done(), runner
            for rec in await asyncio.to_thread(watcher.poll, 500, 0.2):
                for ev in decode_all(rec.value):
                    if ev.execution_id not in ids:
                        continue
                    if ev.event == "replayed":
                        since_replay[ev.execution_id] = []
                        ended.discard(ev.execution_id)
                    if ev.execution_id in since_replay:
                        since_replay[ev.execution_id].append(ev)
                        if is_terminal(ev.event, ev.note):
                            ended.add(ev.execution_id)
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
        watcher.close()
    return since_replay


def status(events: list[ExecutionEvent]) -> str:
    return next(ev.event for ev in reversed(events) if is_terminal(ev.event, ev.note))


def output(events: list[ExecutionEvent]) -> Any:
    return next(ev.payload for ev in reversed(events) if ev.event == "completed")


ORDERS = [{"id": f"o{i}", "qty": i + 1} for i in range(6)]


def check_first_run(setup: Setup, result: RunResult) -> set[str]:
    assert result.by_status() == {"failed": len(ORDERS)}
    assert all("503" in ex.error for ex in result.executions)
    assert len(setup.orders.calls) == 2 * len(ORDERS)  # max_attempts 2
    assert setup.downstream.calls == []
    return {ex.execution_id for ex in result.executions}


async def replay_and_check(setup: Setup, broker: str, transport: Transport, ids: set[str]) -> None:
    """The part both transports share: list, show, recover, replay --all, check, again."""
    listing = sf("dlq", "list", setup.path, "--broker", broker, "--json")
    assert listing.returncode == 0, listing.stderr
    rows = json_rows(listing.stdout)
    assert {r["execution_id"] for r in rows} == ids
    for r in rows:
        assert r["step"] == "book"
        assert r["attempt"] == 2  # a number in JSON
        assert r["error_type"] == "RetriableError"
        assert "503" in r["error"]
        assert r["origin"].startswith(setup.topic("book") + "[")

    some = sorted(ids)[0]
    shown = sf("dlq", "show", setup.path, some, "--broker", broker)
    assert shown.returncode == 0, shown.stderr
    assert some in shown.stdout and '"step": "book"' in shown.stdout
    assert '"payload"' in shown.stdout

    setup.orders.down = False  # the target recovers
    before = transport.end_offsets(setup.topic("book"))
    replay = sf("dlq", "replay", setup.path, "--all", "--broker", broker)
    assert replay.returncode == 0, replay.stderr
    assert set(replay.stdout.split()) == ids  # the execution ids are kept
    n = len(ids)
    assert f"replayed {n} dead letter{'' if n == 1 else 's'}" in replay.stderr

    events = await run_until_ended(setup, transport, ids)
    by_order: dict[str, str] = {}
    for eid, evs in events.items():
        assert status(evs) == "completed", evs
        out = output(evs)
        assert out["replayed"] == 1  # the step saw meta.replayed
        assert out["booking"] == f"BK-{out['id']}"
        by_order[out["id"]] = eid
    assert set(by_order) == {o["id"] for o in ORDERS}  # nothing lost
    # the failed step ran once more per order: two failed attempts, one replayed success
    assert Counter(c["body"]["id"] for c in setup.orders.calls) == {o["id"]: 3 for o in ORDERS}
    # nothing twice downstream of the failed step
    assert Counter(c["id"] for c in setup.downstream.calls) == Counter(set(by_order))
    assert all(c["booking"] == f"BK-{c['id']}" for c in setup.downstream.calls)
    # the envelopes that went on past the failed step say they were replayed
    went_on = [decode_record(r) for r in transport.read_all(setup.topic("notify"))]
    assert {e.execution_id for e in went_on} == ids
    assert all(e.meta.get("replayed") == 1 for e in went_on)

    # a second replay --all finds nothing left to replay and sends nothing
    again = sf("dlq", "replay", setup.path, "--all", "--broker", broker)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == ""
    assert "replayed 0 dead letters" in again.stderr
    after = transport.end_offsets(setup.topic("book"))
    assert sum(after.values()) - sum(before.values()) == len(ids)


async def test_retry_dead_letter_list_show_replay(tmp_path: Path, setup: Setup) -> None:
    broker_dir = tmp_path / "broker"
    broker = f"local://{broker_dir}"
    result = await run_flow(setup.path, ORDERS, config=setup.config, directory=broker_dir)
    ids = check_first_run(setup, result)

    table = sf("dlq", "list", setup.path, "--broker", broker)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "TIME", "STEP", "ATT"]
    assert all(eid in table.stdout for eid in ids)
    filtered = sf("dlq", "list", setup.path, "--broker", broker, "--step", "notify")
    assert filtered.stdout.strip() == "no dead letters"
    by_error = sf("dlq", "list", setup.path, "--broker", broker, "--error", "503", "--json")
    assert len(json_rows(by_error.stdout)) == len(ORDERS)
    none = sf("dlq", "list", setup.path, "--broker", broker, "--error", "no-such-error")
    assert none.stdout.strip() == "no dead letters"
    recent = sf("dlq", "list", setup.path, "--broker", broker, "--since", "10m", "--json")
    assert len(json_rows(recent.stdout)) == len(ORDERS)
    unnamed = sf("dlq", "replay", setup.path, "--broker", broker)
    assert unnamed.returncode == 2  # refuses to replay everything unasked
    assert "--all" in unnamed.stderr

    transport = LocalTransport(broker_dir)
    try:
        await replay_and_check(setup, broker, transport, ids)
    finally:
        transport.close()


EDITOR = """\
import json, sys
path = sys.argv[1]
with open(path) as f:
    payload = json.load(f)
payload["qty"] = abs(payload["qty"])
payload["edited"] = True
with open(path, "w") as f:
    json.dump(payload, f)
"""


async def test_replay_with_edit_fixes_the_payload(tmp_path: Path, setup: Setup) -> None:
    setup.orders.down = False
    broker_dir = tmp_path / "broker"
    broker = f"local://{broker_dir}"
    result = await run_flow(
        setup.path,
        [{"id": "neg", "qty": -4}, {"id": "fine", "qty": 2}],
        config=setup.config,
        directory=broker_dir,
    )
    ex = {e.input["id"]: e for e in result.executions}
    assert ex["fine"].status == "completed"
    assert ex["neg"].status == "failed" and "422" in ex["neg"].error
    neg = ex["neg"].execution_id
    [row] = json_rows(sf("dlq", "list", setup.path, "--broker", broker, "--json").stdout)
    assert (row["execution_id"], row["attempt"], row["error_type"]) == (
        neg,
        1,
        "PoisonMessageError",
    )  # a 422 is not retried

    script = tmp_path / "fix_payload.py"
    script.write_text(EDITOR)
    editor = f"{sys.executable} {script}"
    # by its partition:offset id this time
    replay = sf(
        "dlq", "replay", setup.path, row["id"], "--edit", "--broker", broker,
        env={"EDITOR": editor},
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.split() == [neg]

    transport = LocalTransport(broker_dir)
    try:
        events = await run_until_ended(setup, transport, {neg})
    finally:
        transport.close()
    assert status(events[neg]) == "completed"
    assert output(events[neg]) == {"id": "neg", "qty": 4, "booking": "BK-neg", "replayed": 1}
    booked = [c["body"] for c in setup.orders.calls if c["body"]["id"] == "neg"]
    assert booked == [{"id": "neg", "qty": -4}, {"id": "neg", "qty": 4, "edited": True}]
    assert Counter(c["id"] for c in setup.downstream.calls) == {"neg": 1, "fine": 1}


async def test_show_a_raw_dead_letter(tmp_path: Path, setup: Setup) -> None:
    """An undecodable record on a step topic is kept raw; ``dlq show`` says so."""
    setup.orders.down = False
    broker_dir = tmp_path / "broker"
    transport = LocalTransport(broker_dir)
    try:
        App(load_integration(setup.path), transport, setup.config).deploy()
        producer = transport.producer()
        producer.send(setup.topic("book"), b"<order>not json</order>", b"x")
        producer.flush()
        producer.close()
    finally:
        transport.close()
    result = await run_flow(
        setup.path, [{"id": "next", "qty": 1}], config=setup.config, directory=broker_dir
    )
    assert result.ok
    broker = f"local://{broker_dir}"
    [row] = json_rows(sf("dlq", "list", setup.path, "--broker", broker, "--json").stdout)
    assert row["error_type"] == "PoisonMessageError"
    assert row["step"] == "book" and row["execution_id"] == ""
    shown = sf("dlq", "show", setup.path, row["id"], "--broker", broker)
    assert shown.returncode == 0
    assert "raw record (not an envelope)" in shown.stdout
    assert "<order>not json</order>" in shown.stdout


@pytest.mark.kafka
async def test_retry_dead_letter_replay_on_kafka(
    tmp_path: Path, setup: Setup, kafka_bootstrap: str, unique: str
) -> None:
    assert setup.name.endswith(unique)
    broker = f"kafka://{kafka_bootstrap}"
    transport = open_transport(broker)
    try:
        integration = load_integration(setup.path)
        result = await run_events(
            integration, transport, setup.config, ORDERS, timeout=90,
            options=AppOptions(trace_payloads=True),
        )  # fmt: skip
        ids = check_first_run(setup, result)
        await replay_and_check(setup, broker, transport, ids)
    finally:
        transport.close()
