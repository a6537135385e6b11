"""Envelopes between agents (``fuse: false``) on the embedded transport: what a hop writes
(the payload as the value, the metadata in ``sf-env``), records of the format before the
header still on step, retry and DLQ topics after an upgrade, and a payload that is not
JSON: dead-lettered as it arrived while the agent goes on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamflow import exactjson
from streamflow.envelope import HEADER, Envelope, decode_record, encode, header_of
from streamflow.observability.events import ExecutionEvent, decode_all, is_terminal
from streamflow.runtime import dlq
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.contain import dlq_headers
from streamflow.topology.loader import load_integration
from streamflow.transport.base import Headers, Record
from streamflow.transport.local import LocalTransport

HOPS = """\
apiVersion: streamflow/v1
kind: Integration
name: hops
config:
  api: {type: string, default: "http://127.0.0.1:1"}
flows:
  - name: f
    trigger: {type: manual}
    fuse: false
    key: ${payload.id}
    steps:
      - id: shape
        type: transform
        output: {id: "${payload.id}", n: "${payload.n + 1}"}
      - id: done
        type: transform
        merge: true
        output: {ok: true}
  - name: g
    trigger: {type: manual}
    key: ${payload.id}
    steps:
      - id: call
        type: http
        method: POST
        url: ${config.api}/things/${payload.id}
        json: ${payload}
        retry: {max_attempts: 2, backoff: fixed, delay: 10ms, jitter: false}
"""


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    path = tmp_path / "hops.yaml"
    path.write_text(HOPS)
    transport = LocalTransport(tmp_path / "broker")
    application = App(load_integration(path), transport, {}, AppOptions(trace_payloads=True))
    application.deploy()
    yield application
    transport.close()


def old_format(env: Envelope) -> bytes:
    """A record value as StreamFlow wrote it before the sf-env header: the whole envelope."""
    return exactjson.dumps(env.to_dict())


def new_env(ex: str, flow: str, step: str, payload: Any, **fields: Any) -> Envelope:
    return Envelope(ex, "hops", flow, step, payload, **fields)


def send(app: App, topic: str, key: bytes, value: bytes, headers: Headers | None = None) -> None:
    producer = app.transport.producer()
    producer.send(topic, value, key, headers)
    producer.flush()
    producer.close()


async def drive(
    app: App, wanted: set[str], timeout: float = 30, until: str = ""
) -> dict[str, list[ExecutionEvent]]:
    """Run the app until every execution in ``wanted`` ended (with an ``until`` event when
    given: the topic holds the ends of earlier runs too); their events."""
    reader = app.transport.consumer(f"test.{time.monotonic_ns()}", [app.plan.executions_topic])
    events: dict[str, list[ExecutionEvent]] = {ex: [] for ex in wanted}
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    deadline = time.monotonic() + timeout
    open_ids = set(wanted)
    try:
        while open_ids:
            assert not runner.done(), runner.exception()
            assert time.monotonic() < deadline, f"{open_ids} did not end"
            for rec in await asyncio.to_thread(reader.poll, 500, 0.2):
                for ev in decode_all(rec.value):
                    if ev.execution_id in events:
                        events[ev.execution_id].append(ev)
                        if is_terminal(ev.event, ev.note) and ev.event == (until or ev.event):
                            open_ids.discard(ev.execution_id)
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
        reader.close()
    return events


def last(events: list[ExecutionEvent]) -> ExecutionEvent:
    return next(ev for ev in reversed(events) if is_terminal(ev.event, ev.note))


def topic(app: App, flow: str, step: str) -> str:
    return app.plan.flows[flow].entry_of[step]


async def test_a_hop_carries_the_payload_as_value_and_the_metadata_in_a_header(app: App) -> None:
    env = new_env("x1", "f", "shape", {"id": "a", "n": 1})
    send(app, topic(app, "f", "shape"), b"a", *encode(env))
    events = await drive(app, {"x1"})
    end = last(events["x1"])
    assert end.event == "completed"
    assert end.payload == {"id": "a", "n": 2, "ok": True}
    [hop] = app.transport.read_all(topic(app, "f", "done"))
    assert orjson.loads(hop.value) == {"id": "a", "n": 2}  # the user's data, nothing else
    assert [k for k, _ in hop.headers] == [HEADER]  # tracing off: no traceparent
    head = orjson.loads(header_of(hop.headers) or b"")
    assert (head["execution_id"], head["step"], head["flow"]) == ("x1", "done", "f")
    assert "payload" not in head and "trace" not in head


async def test_records_of_the_format_before_the_header_still_run(app: App) -> None:
    """An upgrade loses no in-flight event: old-format records on a first and a middle
    step topic decode, run, and travel on in the new format."""
    first = new_env("old1", "f", "shape", {"id": "b", "n": 10}, attempt=1)
    middle = new_env("old2", "f", "done", {"id": "c", "n": 5}, steps={"shape": {"k": 1}})
    send(app, topic(app, "f", "shape"), b"b", old_format(first))
    send(app, topic(app, "f", "done"), b"c", old_format(middle))
    events = await drive(app, {"old1", "old2"})
    assert last(events["old1"]).payload == {"id": "b", "n": 11, "ok": True}
    assert last(events["old2"]).payload == {"id": "c", "n": 5, "ok": True}
    hops = {
        decode_record(r).execution_id: r for r in app.transport.read_all(topic(app, "f", "done"))
    }
    assert header_of(hops["old1"].headers) is not None  # re-written in the new format


async def test_a_payload_that_is_not_json_is_dead_lettered_and_the_agent_goes_on(
    app: App,
) -> None:
    done = topic(app, "f", "done")
    bad = new_env("bad1", "f", "done", {"id": "d"})
    _, headers = encode(bad)
    send(app, done, b"d", b'{"id": "d", oops', headers)  # same key, same partition: in order
    send(app, done, b"d", *encode(new_env("good1", "f", "done", {"id": "d"})))
    events = await drive(app, {"bad1", "good1"})
    assert last(events["good1"]).event == "completed"
    failed = last(events["bad1"])
    assert failed.event == "failed"
    assert "the payload is not valid JSON" in failed.error
    [letter] = app.transport.read_all(app.plan.flows["f"].dlq_topic)
    assert letter.value == b'{"id": "d", oops'  # as it arrived
    assert letter.header("sf-step") == b"done"
    assert b"the payload is not valid JSON" in (letter.header("sf-error") or b"")
    assert decode_record(letter).execution_id == "bad1"  # its sf-env header came along
    row = dlq.DeadLetter(letter)
    assert row.execution_id == "bad1"


async def test_dead_letters_of_both_formats_replay(app: App) -> None:
    """A letter written before the header (the whole envelope as its value) and one in
    the new format replay to their step; an unread payload goes back byte for byte."""
    fplan = app.plan.flows["f"]
    old = new_env("r-old", "f", "done", {"id": "e", "n": 1}, attempt=3)
    origin = Record(fplan.entry_of["done"], 0, 0, b"e", b"")
    headers = dlq_headers(origin, "ValueError", "boom", "done", 3, "r-old")
    send(app, fplan.dlq_topic, b"e", old_format(old), headers)
    raw = b'{"id":"f",  "n": 2}'
    _, env_headers = encode(new_env("r-new", "f", "done", None))
    headers = dlq_headers(origin, "ValueError", "boom", "done", 1, "r-new")
    send(app, fplan.dlq_topic, b"f", raw, headers + env_headers)
    letters = dlq.read_dead_letters(app.transport, app.plan, "f")
    assert {d.execution_id for d in letters} == {"r-old", "r-new"}
    replayed = dlq.replay(app.transport, app.plan, app.integration.flows["f"], letters)
    assert sorted(replayed) == ["r-new", "r-old"]
    sent = {
        decode_record(r).execution_id: r for r in app.transport.read_all(fplan.entry_of["done"])
    }
    assert sent["r-new"].value == raw  # never parsed, never encoded again
    assert decode_record(sent["r-old"]).attempt == 1
    assert decode_record(sent["r-old"]).meta["replayed"] == 1
    events = await drive(app, {"r-old", "r-new"})
    assert last(events["r-old"]).payload == {"id": "e", "n": 1, "ok": True}
    assert last(events["r-new"]).payload == {"id": "f", "n": 2, "ok": True}


async def test_the_retry_topic_relays_both_formats(app: App) -> None:
    """Envelopes waiting on a retry topic when the upgrade happens (old format) and new
    ones: the relay forwards them with their own headers, not sf-due/sf-error."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"ok": True})

    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    app.config = {"api": f"http://127.0.0.1:{port}"}
    try:
        fplan = app.plan.flows["g"]
        retry = fplan.retry_topic_of["call"]
        due = [("sf-due", b"0"), ("sf-error", b"earlier failure")]
        old = new_env("t-old", "g", "call", {"id": "o"}, attempt=2)
        send(app, retry, b"o", old_format(old), due)
        value, headers = encode(new_env("t-new", "g", "call", {"id": "n"}, attempt=2))
        send(app, retry, b"n", value, headers + due)
        events = await drive(app, {"t-old", "t-new"})
    finally:
        await runner.cleanup()
    assert last(events["t-old"]).event == "completed"
    assert last(events["t-new"]).event == "completed"
    assert sorted(calls) == ["/things/n", "/things/o"]
    relayed = app.transport.read_all(fplan.entry_of["call"])
    assert all(r.header("sf-due") is None for r in relayed)
    new = next(r for r in relayed if r.key == b"n")
    assert decode_record(new).attempt == 2  # the metadata came along in its header


async def test_a_payload_that_is_not_json_can_be_fixed_and_replayed(app: App) -> None:
    """Its dead letter keeps the bytes; ``replay`` with an edit gets them (not a parse
    error) and the fixed payload runs on."""
    done = topic(app, "f", "done")
    _, headers = encode(new_env("fix1", "f", "done", None))
    send(app, done, b"g", b'{"id": "g", n: 1}', headers)
    events = await drive(app, {"fix1"})
    assert last(events["fix1"]).event == "failed"
    letters = dlq.read_dead_letters(app.transport, app.plan, "f")
    shown = decode_record(letters[0].record).shown()
    assert shown["payload_raw"] == '{"id": "g", n: 1}'
    seen: list[Any] = []

    def fix(old: Any) -> Any:
        seen.append(old)
        return {"id": "g", "n": 1}

    dlq.replay(app.transport, app.plan, app.integration.flows["f"], letters, edit=fix)
    assert seen == [b'{"id": "g", n: 1}']
    events = await drive(app, {"fix1"}, until="completed")
    assert last(events["fix1"]).payload == {"id": "g", "n": 1, "ok": True}
