"""The runtime end to end in one process: agents on the embedded transport, real HTTP
servers on loopback, through ``streamflow.testing.run_flow``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow.clock import ManualClock
from streamflow.envelope import decode_record
from streamflow.runtime.app import AppOptions
from streamflow.runtime.runner import Execution, RunResult
from streamflow.testing import run_flow
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport.local import LocalTransport
from tests.waiting import until

Handler = Callable[["Call"], Awaitable[web.Response]]


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    n: int  # 1-based index of this call


@dataclass
class Server:
    """A real aiohttp server on 127.0.0.1 whose answers the test decides."""

    handler: Handler
    calls: list[Call] = field(default_factory=list)
    url: str = ""

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        call = Call(request.method, request.path, dict(request.headers), body, len(self.calls) + 1)
        self.calls.append(call)
        return await self.handler(call)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> Server:
        server = Server(handler)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        server.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        return server

    yield start
    for r in runners:
        await r.cleanup()


def topology(tmp_path: Path, body: str, name: str = "rt", config: str = "") -> Path:
    """An integration with one flow ``f`` (manual trigger); ``body`` is the rest of the flow."""
    text = (
        "apiVersion: streamflow/v1\n"
        "kind: Integration\n"
        f"name: {name}\n" + (f"config:\n{config}" if config else "") + "flows:\n"
        "  - name: f\n"
        "    trigger: {type: manual}\n" + body
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


HTTP_CONFIG = '  api: {type: string, default: "http://127.0.0.1:1"}\n'
FAST_RETRY = "retry: {max_attempts: 3, backoff: fixed, delay: 10ms, jitter: false}"


def by_input(result: RunResult, field_name: str = "id") -> dict[Any, Execution]:
    return {ex.input[field_name]: ex for ex in result.executions}


def events(ex: Execution, kind: str) -> list[str]:
    return [ev.step for ev in ex.events if ev.event == kind]


# --------------------------------------------------------------------------- pure steps

ROUTING = """\
    partitions: 2
    key: ${payload.id}
    steps:
      - id: only-active
        type: filter
        when: ${payload.active}
      - id: shape
        type: transform
        output: {id: "${payload.id}", amount: "${payload.amount * 2}"}
      - id: route
        type: branch
        routes:
          - when: ${payload.amount >= 100}
            steps:
              - {id: big, type: transform, merge: true, output: {tier: big}}
              - {id: big-too, type: transform, merge: true, output: {checked: true}}
        default:
          - {id: small, type: transform, merge: true, output: {tier: small}}
      - id: done
        type: transform
        merge: true
        output: {label: "${payload.tier}-${payload.id}"}
"""


async def test_transform_filter_branch_route_and_shape_outputs(tmp_path: Path) -> None:
    result = await run_flow(
        topology(tmp_path, ROUTING),
        [
            {"id": "a", "active": True, "amount": 60},
            {"id": "b", "active": True, "amount": 10},
            {"id": "c", "active": False, "amount": 999},
        ],
    )
    ex = by_input(result)
    assert ex["a"].status == "completed"
    assert ex["a"].output == {
        "id": "a",
        "amount": 120,
        "tier": "big",
        "checked": True,
        "label": "big-a",
    }
    assert events(ex["a"], "step") == ["only-active", "shape", "route", "big", "big-too", "done"]
    assert ex["b"].status == "completed"
    assert ex["b"].output == {"id": "b", "amount": 20, "tier": "small", "label": "small-b"}
    assert events(ex["b"], "step") == ["only-active", "shape", "route", "small", "done"]
    assert ex["c"].status == "filtered"
    assert events(ex["c"], "filtered") == ["only-active"]
    assert result.ok  # filtered counts as a normal end
    assert result.by_status() == {"completed": 2, "filtered": 1}


async def test_step_results_are_readable_by_later_steps(tmp_path: Path) -> None:
    body = """\
    steps:
      - id: first
        type: transform
        output: {x: "${payload.v + 1}", tag: one}
      - id: second
        type: transform
        output: {y: "${payload.x * 10}"}
      - id: third
        type: transform
        output: {from_first: "${steps.first.x}", tag: "${steps.first.tag}", now: "${payload.y}"}
"""
    result = await run_flow(topology(tmp_path, body), [{"v": 4}])
    [ex] = result.executions
    assert ex.status == "completed"
    assert ex.output == {"from_first": 5, "tag": "one", "now": 50}


async def test_pure_step_failure_is_dead_lettered_and_others_complete(tmp_path: Path) -> None:
    body = """\
    key: ${payload.id}
    steps:
      - id: ratio
        type: transform
        output: {id: "${payload.id}", r: "${1 / payload.zero}"}
      - id: after
        type: transform
        merge: true
        output: {ok: true}
"""
    result = await run_flow(
        topology(tmp_path, body),
        [{"id": "bad", "zero": 0}, {"id": "good", "zero": 4}, {"id": "bad2", "zero": 0}],
    )
    ex = by_input(result)
    assert ex["good"].status == "completed"
    assert ex["good"].output == {"id": "good", "r": 0.25, "ok": True}
    for bad in ("bad", "bad2"):
        assert ex[bad].status == "failed"
        assert "division" in ex[bad].error.lower()
        assert events(ex[bad], "failed") == ["ratio"]
        assert events(ex[bad], "retry") == []  # a pure step would fail the same way again
    assert not result.ok


# --------------------------------------------------------------------------- http


def http_flow(
    retry: str = FAST_RETRY,
    key: str = "${payload.id}",
    encoding: str = "json",
    ordered: bool = False,
) -> str:
    return f"""\
    key: {key}
    encoding: {encoding}
    ordered: {str(ordered).lower()}
    steps:
      - id: call
        type: http
        method: POST
        url: ${{config.api}}/things/${{payload.id}}
        json: ${{payload}}
        {retry}
      - id: after
        type: transform
        output:
          id: ${{payload.id}}
          status: ${{steps.call.status}}
          echo: ${{steps.call.body.echo}}
"""


def ok(call: Call) -> web.Response:
    return web.json_response({"echo": call.json["id"] if call.json else None})


async def always_ok(call: Call) -> web.Response:
    return ok(call)


async def test_http_retries_503_then_completes(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    async def handler(call: Call) -> web.Response:
        if call.n <= 2:
            return web.json_response({"error": "busy"}, status=503)
        return ok(call)

    server = await serve(handler)
    result = await run_flow(
        topology(tmp_path, http_flow(), config=HTTP_CONFIG),
        [{"id": "x1"}],
        config={"api": server.url},
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    assert len(server.calls) == 3
    assert all(c.path == "/things/x1" and c.method == "POST" for c in server.calls)
    retries = [ev for ev in ex.events if ev.event == "retry"]
    assert [ev.step for ev in retries] == ["call", "call"]
    assert all("503" in ev.error for ev in retries)
    assert ex.output == {"id": "x1", "status": 200, "echo": "x1"}


async def test_http_429_with_retry_after_zero_is_retried(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    async def handler(call: Call) -> web.Response:
        if call.n == 1:
            return web.json_response({}, status=429, headers={"Retry-After": "0"})
        return ok(call)

    server = await serve(handler)
    result = await run_flow(
        topology(tmp_path, http_flow(), config=HTTP_CONFIG),
        [{"id": "t"}],
        config={"api": server.url},
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    assert len(server.calls) == 2
    assert len(events(ex, "retry")) == 1


async def test_http_400_is_not_retried(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    async def handler(call: Call) -> web.Response:
        return web.json_response({"error": "bad request"}, status=400)

    server = await serve(handler)
    result = await run_flow(
        topology(tmp_path, http_flow(), config=HTTP_CONFIG),
        [{"id": "b"}],
        config={"api": server.url},
    )
    [ex] = result.executions
    assert ex.status == "failed"
    assert "400" in ex.error
    assert len(server.calls) == 1
    assert events(ex, "retry") == []
    assert events(ex, "failed") == ["call"]


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "non-blocking"])
async def test_exhausted_retries_fail_and_same_key_goes_on(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]], ordered: bool
) -> None:
    async def handler(call: Call) -> web.Response:
        if call.json["fail"]:
            return web.json_response({"error": "down"}, status=500)
        return ok(call)

    server = await serve(handler)
    result = await run_flow(
        topology(
            tmp_path, http_flow(key="${payload.customer}", ordered=ordered), config=HTTP_CONFIG
        ),
        [
            {"id": "first", "customer": "c1", "fail": True},
            {"id": "second", "customer": "c1", "fail": False},
        ],
        config={"api": server.url},
    )
    ex = by_input(result)
    assert ex["first"].status == "failed"
    assert "500" in ex["first"].error
    assert len(events(ex["first"], "retry")) == 2  # max_attempts 3 -> two retries
    assert ex["second"].status == "completed", ex["second"].error
    assert ex["second"].output == {"id": "second", "status": 200, "echo": "second"}
    paths = [c.path for c in server.calls]
    if ordered:  # retries in place: the same key waits, in order
        assert paths == ["/things/first"] * 3 + ["/things/second"]
    else:  # retries wait on the retry topic: the partition keeps flowing
        assert paths == ["/things/first", "/things/second", "/things/first", "/things/first"]


async def test_dead_letters_carry_error_headers(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    async def handler(call: Call) -> web.Response:
        return web.json_response({"error": "nope"}, status=500)

    server = await serve(handler)
    path = topology(
        tmp_path,
        http_flow(retry="retry: {max_attempts: 2, delay: 10ms, jitter: false}"),
        config=HTTP_CONFIG,
    )
    broker = tmp_path / "broker"
    result = await run_flow(path, [{"id": "d1"}], config={"api": server.url}, directory=broker)
    [ex] = result.executions
    assert ex.status == "failed"
    assert len(server.calls) == 2

    transport = LocalTransport(broker)
    try:
        consumer = transport.consumer("test-dlq-reader", ["sf.rt.f.dlq"])
        records = consumer.poll(100, 1.0)
        consumer.close()
    finally:
        transport.close()
    assert len(records) == 1
    rec = records[0]
    headers = {k: v.decode() for k, v in rec.headers}
    assert "500" in headers["sf-error"]
    assert headers["sf-step"] == "call"
    assert headers["sf-attempt"] == "2"
    assert headers["sf-origin-topic"] == "sf.rt.f.call"
    assert int(headers["sf-origin-partition"]) >= 0
    # the last attempt read the envelope re-delivered from the retry topic: offset 1
    assert int(headers["sf-origin-offset"]) == 1
    assert headers["sf-execution-id"] == ex.execution_id
    env = decode_record(rec)
    assert env.execution_id == ex.execution_id
    assert env.step == "call"
    assert env.payload == {"id": "d1"}


async def test_idempotency_key_is_execution_and_step(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    async def handler(call: Call) -> web.Response:
        if call.n == 1:  # a retry must send the same key again
            return web.json_response({}, status=503)
        return ok(call)

    server = await serve(handler)
    result = await run_flow(
        topology(tmp_path, http_flow(), config=HTTP_CONFIG),
        [{"id": "k"}],
        config={"api": server.url},
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    keys = [c.headers.get("Idempotency-Key") for c in server.calls]
    assert keys == [f"{ex.execution_id}-call"] * 2


# --------------------------------------------------------------------------- flow options

FUSABLE = """\
    fuse: {fuse}
    key: ${{payload.id}}
    steps:
      - id: clean
        type: transform
        output: {{id: "${{payload.id}}", name: "${{trim(payload.name)}}", n: "${{payload.n}}"}}
      - id: keep
        type: filter
        when: ${{payload.n > 0}}
      - id: grow
        type: transform
        merge: true
        output: {{n: "${{payload.n * 3}}", first: "${{steps.clean.name}}"}}
      - id: label
        type: transform
        merge: true
        output: {{label: "${{upper(payload.name)}}-${{payload.n}}"}}
"""


async def test_fused_flow_gives_the_same_outputs(tmp_path: Path) -> None:
    payloads = [{"id": f"p{i}", "name": f" n{i} ", "n": i - 1} for i in range(6)]
    fused_path = topology(tmp_path, FUSABLE.format(fuse="true"), name="fused")
    plain_path = topology(tmp_path, FUSABLE.format(fuse="false"), name="plain")
    # the option really changes the plan
    assert len(compile_plan(load_integration(fused_path)).flows["f"].agents) == 1
    assert len(compile_plan(load_integration(plain_path)).flows["f"].agents) == 4

    fused, plain = await asyncio.gather(
        run_flow(fused_path, payloads), run_flow(plain_path, payloads)
    )

    def outcome(result: RunResult) -> dict[str, tuple[str, Any]]:
        return {ex.input["id"]: (ex.status, ex.output) for ex in result.executions}

    assert outcome(fused) == outcome(plain)
    out = outcome(fused)
    assert [out["p0"][0], out["p1"][0]] == ["filtered", "filtered"]  # n = -1, 0
    assert out["p3"] == (
        "completed",
        {"id": "p3", "name": "n3", "n": 6, "first": "n3", "label": "N3-6"},
    )
    assert sum(1 for s, _ in out.values() if s == "completed") == 4


async def test_avro_encoded_flow_completes(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    server = await serve(always_ok)
    path = topology(tmp_path, http_flow(encoding="avro"), config=HTTP_CONFIG)
    broker = tmp_path / "broker"
    result = await run_flow(
        path,
        [{"id": "a1", "nested": {"list": [1, 2.5, None]}}, {"id": "a2"}],
        config={"api": server.url},
        directory=broker,
    )
    ex = by_input(result)
    assert result.ok, [e.error for e in result.executions]
    assert ex["a1"].output == {"id": "a1", "status": 200, "echo": "a1"}
    assert ex["a2"].output == {"id": "a2", "status": 200, "echo": "a2"}
    assert server.calls[0].json in ({"id": "a1", "nested": {"list": [1, 2.5, None]}}, {"id": "a2"})

    # the envelopes on the step topics really are Avro (not JSON)
    transport = LocalTransport(broker)
    try:
        consumer = transport.consumer("test-avro-reader", ["sf.rt.f.call"])
        records = consumer.poll(100, 1.0)
        consumer.close()
    finally:
        transport.close()
    assert len(records) == 2
    assert not records[0].value.startswith(b"{")
    assert {decode_record(r, "avro").payload["id"] for r in records} == {"a1", "a2"}
    # (the envelopes the trigger wrote for the http step: `after` runs in its agent)


def test_dead_letter_headers_with_non_ascii_digits_do_not_break_dlq_list() -> None:
    """`'²'.isdigit()` is true but int('²') raises: `dlq list --json` and the console's
    dead letters crashed on such a header; an id made of digits stays text."""
    from streamflow.cli.dlqcmd import _typed
    from streamflow.runtime.dlq import DeadLetter
    from streamflow.transport.base import Record

    headers = [("sf-time", "²".encode()), ("sf-attempt", b"3"), ("sf-execution-id", b"0123")]
    letter = DeadLetter(Record("t.dlq", 0, 7, None, b"{}", headers, timestamp_ms=1000))
    assert letter.time_ms == 1000  # the record's own time
    row = _typed({**letter.summary(), "replays": 2})
    assert row["attempt"] == 3 and row["execution_id"] == "0123" and row["replays"] == 2
    assert _typed({"attempt": "²"})["attempt"] == "²"


# --------------------------------------------------------------------------- the clock


async def test_delay_steps_and_backoff_wait_on_the_apps_clock(
    tmp_path: Path, serve: Callable[[Handler], Awaitable[Server]]
) -> None:
    """An hour's delay and ten minutes' backoff pass in no real time on a ManualClock:
    the flow waits exactly as long as the clock is moved, not a moment less."""

    async def handler(call: Call) -> web.Response:
        if call.n == 1:
            return web.json_response({"error": "busy"}, status=503)
        return ok(call)

    server = await serve(handler)
    retry = "retry: {max_attempts: 2, backoff: fixed, delay: 10m, max_delay: 1h, jitter: false}"
    body = http_flow(retry, ordered=True).replace(
        "    steps:\n", "    steps:\n      - {id: settle, type: delay, duration: 1h}\n", 1
    )
    clock = ManualClock()
    run = asyncio.create_task(
        run_flow(
            topology(tmp_path, body, config=HTTP_CONFIG),
            [{"id": "c1"}],
            config={"api": server.url},
            options=AppOptions(trace_payloads=True, clock=clock),
        )
    )
    await until(lambda: clock.sleepers == 1 or run.done(), what="the delay step to wait")
    assert clock.next_wake() == 3600 and server.calls == []
    await clock.advance(3599.999)
    assert server.calls == [] and clock.sleepers == 1  # a millisecond early: still waiting
    await clock.advance(0.001)
    await until(lambda: len(server.calls) == 1 and clock.sleepers == 1, what="the backoff")
    assert clock.next_wake() == pytest.approx(600)  # the retry waits in place, on the clock
    await clock.advance(600)
    result = await run
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    assert len(server.calls) == 2
    assert [ev.note for ev in ex.events if ev.event == "retry"] == ["attempt 2 in 600.00s"]
    assert ex.output == {"id": "c1", "status": 200, "echo": "c1"}
