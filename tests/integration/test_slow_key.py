"""A key whose HTTP target hangs longer than ``max.poll.interval.ms`` (set to Kafka's
minimum here, 10 s) does not get the agent evicted from its group: no rebalance, no
redelivery - every call is made once - and every execution completes; meanwhile the other
keys keep flowing: their executions complete (their outputs are sent and, where outputs
are visible only with their offsets, committed) while the slow one still hangs (issue #12).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path

import pytest
from aiohttp import web

from streamflow.observability.events import ExecutionEvent
from streamflow.runtime.app import AppOptions
from streamflow.runtime.runner import Execution, run_events
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport
from streamflow.transport.kafka import KafkaTransport
from streamflow.transport.partitioner import partition_for

HANG = 14.0  # seconds: past the 10 s poll interval

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: slow{unique}
config:
  api: {{type: string}}
flows:
  - name: f
    trigger: {{type: manual}}
    partitions: 1
    key: ${{payload.k}}
    steps:
      - id: call
        type: http
        url: ${{config.api}}/k/${{payload.k}}
        timeout: 60s
"""


@pytest.mark.kafka
async def test_a_key_hanging_past_the_poll_interval_is_not_redelivered(
    kafka_bootstrap: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        calls[key] += 1
        if key == "slow":
            await asyncio.sleep(HANG)
        return web.json_response({"key": key})

    app = web.Application()
    app.router.add_get("/k/{key}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    monkeypatch.setenv("STREAMFLOW_KAFKA_MAX_POLL_INTERVAL_MS", "10000")
    path = tmp_path / "slow.yaml"
    path.write_text(TOPOLOGY.format(unique=unique))
    transport = KafkaTransport(kafka_bootstrap)
    payloads = [{"k": "slow"}, *({"k": f"fast{i}"} for i in range(20))]
    caplog.set_level(logging.INFO, logger="streamflow.kafka")
    try:
        result = await run_events(
            load_integration(path),
            transport,
            {"api": f"http://127.0.0.1:{port}"},
            payloads,
            timeout=120,
            options=AppOptions(trace_payloads=True),
        )
    finally:
        transport.close()
        await runner.cleanup()
    assert result.by_status() == {"completed": len(payloads)}
    assert calls == Counter({p["k"]: 1 for p in payloads}), calls  # nothing redone
    # never evicted: each group was assigned its partition once and never lost it (the
    # only revocation is the one of the shutdown at the end)
    assigned = Counter(r.message.split(":")[0] for r in caplog.records if "assigned" in r.message)
    assert assigned and set(assigned.values()) == {1}, assigned
    assert not [r.message for r in caplog.records if ": lost " in r.message]


FLOWING = """\
apiVersion: streamflow/v1
kind: Integration
name: flowing{unique}
config:
  api: {{type: string}}
flows:
  - name: f
    guarantee: {guarantee}
    trigger: {{type: manual}}
    partitions: {partitions}
    key: ${{payload.k}}
    steps:
      - id: call
        type: http
        url: ${{config.api}}/k/${{payload.k}}
        timeout: 90s
"""
PARTITIONS = 3
RELEASE_AFTER = 60.0  # s: the slow answer comes at the latest then (the test then fails)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"], ids=["alo", "eos"])
async def test_other_keys_complete_while_one_key_hangs(
    broker_url: str,
    guarantee: str,
    unique: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The slow key's answer waits until the other keys' executions have completed (or
    RELEASE_AFTER s, and at least past the poll interval): under a batch barrier they
    could not, and the test fails. Which keys must finish first: those of the other
    partitions always; with outputs sent as they finish (at-least-once on Kafka) every
    other key, its own partition's too (only the committed offset waits for the slow
    one)."""
    kafka = broker_url.startswith("kafka://")
    slow = b"slow"
    fast = [f"fast{i}" for i in range(24)]
    slow_part = partition_for(slow, PARTITIONS)
    sent_early = kafka and guarantee == "at_least_once"
    awaited = {k for k in fast if sent_early or partition_for(k.encode(), PARTITIONS) != slow_part}
    assert (awaited and len(awaited) < len(fast)) or sent_early  # both kinds of key exist
    calls: Counter[str] = Counter()
    completed: set[str] = set()
    before_slow: set[str] = set()  # keys completed while the slow call was still open
    others_done = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        calls[key] += 1
        if key == "slow":
            await asyncio.sleep(HANG)  # past the poll interval in any case
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(others_done.wait(), RELEASE_AFTER)
            before_slow.update(completed)
        return web.json_response({"key": key})

    def on_event(ex: Execution, ev: ExecutionEvent) -> None:
        if ev.event == "completed":
            completed.add(ex.input["k"])
            if awaited <= completed:
                others_done.set()

    app = web.Application()
    app.router.add_get("/k/{key}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    monkeypatch.setenv("STREAMFLOW_KAFKA_MAX_POLL_INTERVAL_MS", "10000")
    path = tmp_path / "flowing.yaml"
    path.write_text(FLOWING.format(unique=unique, guarantee=guarantee, partitions=PARTITIONS))
    transport = open_transport(broker_url)
    # the slow key first: under a barrier every later record would wait for it
    payloads = [{"k": "slow"}, *({"k": k} for k in fast)]
    caplog.set_level(logging.INFO, logger="streamflow.kafka")
    try:
        result = await run_events(
            load_integration(path),
            transport,
            {"api": f"http://127.0.0.1:{port}"},
            payloads,
            timeout=180,
            on_event=on_event,
            options=AppOptions(trace_payloads=True),
        )
    finally:
        transport.close()
        await runner.cleanup()
    assert result.by_status() == {"completed": len(payloads)}
    assert calls == Counter({p["k"]: 1 for p in payloads}), calls  # nothing redone
    assert awaited <= before_slow, f"waited for the slow key: {sorted(awaited - before_slow)}"
    if kafka:
        assert not [r.message for r in caplog.records if ": lost " in r.message]
        assigned = Counter(
            r.message.split(":")[0] for r in caplog.records if "assigned" in r.message
        )
        assert set(assigned.values()) == {1}, assigned  # never evicted, never rebalanced
