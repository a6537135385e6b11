"""When things fail: retries with backoff, non-blocking vs ordered retries, dead letters,
poison messages, the circuit breaker and ``fallback:``.

Everything runs for real: agents on the embedded transport (``run_flow``) against aiohttp
servers on 127.0.0.1 whose answers each test programs (fail the first k calls, always
fail, answer 429 with Retry-After). Timing assertions are lower bounds only.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow.envelope import decode_record
from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.runner import Execution, RunResult
from streamflow.testing import run_flow
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport.base import Record, TopicSpec
from streamflow.transport.local import LocalTransport

# --------------------------------------------------------------------------- servers


@dataclass
class Call:
    n: int  # 1-based index among all calls
    nth: int  # 1-based index among the calls for the same payload id
    id: str
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    at: float  # time.monotonic() on arrival


Behaviour = Callable[[Call], Awaitable[web.Response]]


@dataclass
class Target:
    """A real HTTP server on loopback that records every call and answers as told."""

    behaviour: Behaviour
    url: str = ""
    calls: list[Call] = field(default_factory=list)

    def of(self, ident: str) -> list[Call]:
        return [c for c in self.calls if c.id == ident]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        ident = str(body.get("id", "")) if isinstance(body, dict) else ""
        nth = sum(1 for c in self.calls if c.id == ident) + 1
        call = Call(
            len(self.calls) + 1,
            nth,
            ident,
            request.method,
            request.path,
            dict(request.headers),
            body,
            time.monotonic(),
        )
        self.calls.append(call)
        return await self.behaviour(call)


Serve = Callable[[Behaviour], Awaitable[Target]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(behaviour: Behaviour) -> Target:
        target = Target(behaviour)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", target.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        target.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return target

    yield start
    for r in runners:
        await r.cleanup()


def ok(call: Call) -> web.Response:
    return web.json_response({"echo": call.id, "attempt": call.headers.get("X-Attempt")})


def fail_first(k: int, status: int = 503, headers: dict[str, str] | None = None) -> Behaviour:
    """Fail the first ``k`` calls of every payload id, then succeed."""

    async def behaviour(call: Call) -> web.Response:
        if call.nth <= k:
            return web.json_response({"error": "busy"}, status=status, headers=headers)
        return ok(call)

    return behaviour


def always(status: int) -> Behaviour:
    async def behaviour(call: Call) -> web.Response:
        return web.json_response({"error": "down"}, status=status)

    return behaviour


async def always_ok(call: Call) -> web.Response:
    return ok(call)


# --------------------------------------------------------------------------- topologies


def write_topology(tmp_path: Path, flow: str, name: str = "fx") -> Path:
    """An integration ``name`` with one manual flow ``f``; ``flow`` is the rest of it."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: streamflow/v1\n"
        "kind: Integration\n"
        f"name: {name}\n"
        "config:\n"
        '  api: {type: string, default: "http://127.0.0.1:1"}\n'
        "flows:\n"
        "  - name: f\n"
        "    trigger: {type: manual}\n" + flow
    )
    return path


def http_flow(
    retry: str,
    *,
    ordered: bool = False,
    partitions: int = 1,
    extra: str = "",
    after: bool = True,
) -> str:
    """A flow: ``call`` (http, sends the envelope's attempt as X-Attempt) then ``after``."""
    text = f"""\
    partitions: {partitions}
    ordered: {str(ordered).lower()}
    key: ${{payload.id}}
    steps:
      - id: call
        type: http
        method: POST
        url: ${{config.api}}/things/${{payload.id}}
        headers: {{X-Attempt: "${{meta.attempt}}"}}
        json: ${{payload}}
        retry: {retry}
{extra}"""
    if after:
        text += """\
      - id: after
        type: transform
        output:
          id: ${payload.id}
          status: ${steps.call.status}
          echo: ${steps.call.body.echo}
"""
    return text


def by_id(result: RunResult) -> dict[str, Execution]:
    return {str(ex.input["id"]): ex for ex in result.executions}


def of_kind(ex: Execution, kind: str) -> list[ExecutionEvent]:
    return [ev for ev in ex.events if ev.event == kind]


def read_topic(broker: Path, topic: str) -> list[Record]:
    transport = LocalTransport(broker)
    try:
        return transport.read_all(topic)
    finally:
        transport.close()


def headers_of(rec: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in rec.headers}


def gaps(calls: list[Call]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


SLACK = 0.005  # due times are whole milliseconds


# --------------------------------------------------------------------------- backoff

DELAY = 0.15
EXPECTED = {
    "fixed": [DELAY, DELAY, DELAY],
    "linear": [DELAY, 2 * DELAY, 3 * DELAY],
    "exponential": [DELAY, 2 * DELAY, 4 * DELAY],
}


@pytest.mark.parametrize("ordered", [False, True], ids=["retry-topic", "ordered"])
@pytest.mark.parametrize("backoff", ["fixed", "linear", "exponential"])
async def test_retries_follow_the_configured_backoff(
    tmp_path: Path, serve: Serve, backoff: str, ordered: bool
) -> None:
    target = await serve(fail_first(3))
    retry = f"{{max_attempts: 4, backoff: {backoff}, delay: 150ms, max_delay: 10s, jitter: false}}"
    broker = tmp_path / "broker"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, ordered=ordered)),
        [{"id": "r1"}],
        config={"api": target.url},
        directory=broker,
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    calls = target.of("r1")
    assert len(calls) == 4
    # the spacing: each attempt came at least the backoff after the one before
    expected = EXPECTED[backoff]
    for i, (gap, want) in enumerate(zip(gaps(calls), expected, strict=True)):
        assert gap >= want - SLACK, f"attempt {i + 2} came {gap:.3f}s after, wanted {want}s"
    # the planned delays, exactly (jitter off)
    retries = of_kind(ex, "retry")
    assert [ev.note for ev in retries] == [
        f"attempt {n} in {d:.2f}s" for n, d in zip((2, 3, 4), expected, strict=True)
    ]
    # attempts travel in the envelope (the step saw meta.attempt) and in the events
    assert [c.headers["X-Attempt"] for c in calls] == ["1", "2", "3", "4"]
    assert [ev.attempt for ev in retries] == [2, 3, 4]
    [call_done] = [ev for ev in of_kind(ex, "step") if ev.step == "call"]
    assert call_done.attempt == 4
    # ... and so does the last error
    assert all("503" in ev.error and ev.step == "call" for ev in retries)
    assert ex.output == {"id": "r1", "status": 200, "echo": "r1"}

    plan = compile_plan(load_integration(tmp_path / "fx.yaml")).flows["f"]
    if ordered:  # retried in place: no retry topic at all
        assert plan.retry_topic_of == {}
    else:  # each retry waited on the step's retry topic, with its due time and error
        waiting = read_topic(broker, plan.retry_topic_of["call"])
        assert len(waiting) == 3
        assert [decode_record(r).attempt for r in waiting] == [2, 3, 4]
        assert all(decode_record(r).execution_id == ex.execution_id for r in waiting)
        dues = [int(headers_of(r)["sf-due"]) for r in waiting]
        assert dues == sorted(dues)
        assert all("503" in headers_of(r)["sf-error"] for r in waiting)


@pytest.mark.parametrize("ordered", [False, True], ids=["retry-topic", "ordered"])
async def test_retry_after_is_honoured(tmp_path: Path, serve: Serve, ordered: bool) -> None:
    target = await serve(fail_first(1, status=429, headers={"Retry-After": "1"}))
    retry = "{max_attempts: 3, backoff: fixed, delay: 10ms, max_delay: 10s, jitter: false}"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, ordered=ordered)),
        [{"id": "slow-down"}],
        config={"api": target.url},
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    calls = target.of("slow-down")
    assert len(calls) == 2
    assert calls[1].at - calls[0].at >= 1.0 - SLACK  # not the policy's 10 ms
    [retry_ev] = of_kind(ex, "retry")
    assert retry_ev.note == "attempt 2 in 1.00s"
    assert "429" in retry_ev.error


async def test_retry_after_is_capped_by_max_delay(tmp_path: Path, serve: Serve) -> None:
    target = await serve(fail_first(1, status=429, headers={"Retry-After": "3600"}))
    retry = "{max_attempts: 3, backoff: fixed, delay: 10ms, max_delay: 300ms, jitter: false}"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry)), [{"id": "c"}], config={"api": target.url}
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    [retry_ev] = of_kind(ex, "retry")
    assert retry_ev.note == "attempt 2 in 0.30s"
    calls = target.of("c")
    assert calls[1].at - calls[0].at >= 0.3 - SLACK


# --------------------------------------------------------------------------- blocking


def completion_order(broker: Path, result: RunResult) -> list[str]:
    """Payload ids in the order their ``completed`` events reached the executions topic."""
    ident = {ex.execution_id: str(ex.input["id"]) for ex in result.executions}
    out = []
    for rec in read_topic(broker, "sf.fx.executions"):  # one partition: a total order
        for ev in decode_all(rec.value):
            if ev.event == "completed" and ev.execution_id in ident:
                out.append(ident[ev.execution_id])
    return out


async def only_a_fails_once(call: Call) -> web.Response:
    if call.id == "A" and call.nth == 1:
        return web.json_response({"error": "busy"}, status=503)
    return ok(call)


async def test_non_blocking_retry_lets_other_keys_of_the_partition_pass(
    tmp_path: Path, serve: Serve
) -> None:
    target = await serve(only_a_fails_once)
    broker = tmp_path / "broker"
    retry = "{max_attempts: 3, backoff: fixed, delay: 500ms, jitter: false}"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, partitions=1)),
        [{"id": "A"}, {"id": "B"}, {"id": "C"}],
        config={"api": target.url},
        directory=broker,
    )
    ex = by_id(result)
    assert result.ok, result.by_status()
    # A waited on the retry topic; B and C (same partition, other keys) went by
    assert [c.id for c in target.calls] == ["A", "B", "C", "A"]
    assert completion_order(broker, result) == ["B", "C", "A"]
    done = {k: of_kind(v, "completed")[0].ts for k, v in ex.items()}
    assert done["B"] < done["A"] and done["C"] < done["A"]
    assert done["A"] - of_kind(ex["A"], "started")[0].ts >= 500


async def test_ordered_retry_holds_the_partition(tmp_path: Path, serve: Serve) -> None:
    target = await serve(only_a_fails_once)
    broker = tmp_path / "broker"
    retry = "{max_attempts: 3, backoff: fixed, delay: 500ms, jitter: false}"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, ordered=True, partitions=1)),
        [{"id": "A"}, {"id": "B"}, {"id": "C"}],
        config={"api": target.url},
        directory=broker,
    )
    assert result.ok, result.by_status()
    # A is retried in place: B and C of the same partition wait until A is done
    assert [c.id for c in target.calls] == ["A", "A", "B", "C"]
    assert completion_order(broker, result) == ["A", "B", "C"]
    a_retry = target.calls[1].at
    assert all(c.at >= a_retry for c in target.calls[2:])


# --------------------------------------------------------------------------- dead letters


async def test_exhausted_and_rejected_events_are_dead_lettered_with_headers(
    tmp_path: Path, serve: Serve
) -> None:
    async def behaviour(call: Call) -> web.Response:
        if call.id.startswith("down"):
            return web.json_response({"error": "down"}, status=500)
        if call.id == "rejected":
            return web.json_response({"error": "bad order"}, status=422)
        return ok(call)

    target = await serve(behaviour)
    broker = tmp_path / "broker"
    retry = "{max_attempts: 3, backoff: fixed, delay: 20ms, jitter: false}"
    started_ms = time.time_ns() // 1_000_000
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, partitions=2)),
        [{"id": "down-1"}, {"id": "fine"}, {"id": "down-2"}, {"id": "rejected"}],
        config={"api": target.url},
        directory=broker,
    )
    ended_ms = time.time_ns() // 1_000_000
    ex = by_id(result)
    assert ex["fine"].status == "completed"
    for ident in ("down-1", "down-2", "rejected"):
        assert ex[ident].status == "failed"
        assert [ev.step for ev in of_kind(ex[ident], "failed")] == ["call"]
    assert "500" in ex["down-1"].error and "422" in ex["rejected"].error
    assert len(of_kind(ex["down-1"], "retry")) == 2
    assert of_kind(ex["rejected"], "retry") == []  # a 422 is not retried
    assert len(target.of("down-1")) == 3 and len(target.of("rejected")) == 1

    letters = read_topic(broker, "sf.fx.f.dlq")
    assert len(letters) == 3
    seen = {}
    for rec in letters:
        h = headers_of(rec)
        env = decode_record(rec)
        seen[env.payload["id"]] = h
        assert h["sf-execution-id"] == env.execution_id == ex[env.payload["id"]].execution_id
        assert h["sf-step"] == "call" and env.step == "call"
        assert h["sf-attempt"] == str(env.attempt)
        assert started_ms <= int(h["sf-time"]) <= ended_ms
        # the origin is where the failing envelope was read: the step's input topic
        assert h["sf-origin-topic"] == "sf.fx.f.call"
        origin = [
            r
            for r in read_topic(broker, "sf.fx.f.call")
            if r.partition == int(h["sf-origin-partition"])
            and r.offset == int(h["sf-origin-offset"])
        ]
        assert len(origin) == 1
        assert decode_record(origin[0]).execution_id == env.execution_id
        assert decode_record(origin[0]).attempt == env.attempt
        assert rec.key == origin[0].key  # stays on its key
    assert set(seen) == {"down-1", "down-2", "rejected"}
    for ident in ("down-1", "down-2"):
        assert seen[ident]["sf-error-type"] == "RetriableError"
        assert "500" in seen[ident]["sf-error"]
        assert seen[ident]["sf-attempt"] == "3"
    assert seen["rejected"]["sf-error-type"] == "PoisonMessageError"
    assert "422" in seen["rejected"]["sf-error"]
    assert seen["rejected"]["sf-attempt"] == "1"


async def test_poison_envelope_is_dead_lettered_raw_and_the_next_one_runs(
    tmp_path: Path, serve: Serve
) -> None:
    target = await serve(always_ok)
    # unfused: `after` has a topic of its own (fused, it runs in the agent of `call`)
    flow = http_flow("{max_attempts: 2, delay: 10ms}", partitions=1)
    flow = flow.replace("    steps:\n", "    fuse: false\n    steps:\n", 1)
    path = write_topology(tmp_path, flow)
    integration = load_integration(path)
    broker = tmp_path / "broker"
    poison_first = b'{"execution_id": "oops", '  # truncated JSON
    poison_after = b"\xff\xfe not json at all"
    transport = LocalTransport(broker)
    try:
        App(integration, transport, {"api": target.url}).deploy()
        producer = transport.producer()
        producer.send("sf.fx.f.call", poison_first, b"p1")  # the flow's first topic
        producer.send("sf.fx.f.after", poison_after, b"p2")  # a topic in the middle
        producer.flush()
        producer.close()
    finally:
        transport.close()

    result = await run_flow(
        integration, [{"id": "next"}], config={"api": target.url}, directory=broker
    )
    [ex] = result.executions
    assert ex.status == "completed", ex.error
    assert ex.output == {"id": "next", "status": 200, "echo": "next"}
    assert [c.id for c in target.calls] == ["next"]

    letters = {r.value: headers_of(r) for r in read_topic(broker, "sf.fx.f.dlq")}
    assert set(letters) == {poison_first, poison_after}  # raw, byte for byte
    first, after = letters[poison_first], letters[poison_after]
    assert first["sf-error-type"] == after["sf-error-type"] == "PoisonMessageError"
    assert (first["sf-step"], first["sf-origin-topic"]) == ("call", "sf.fx.f.call")
    assert (after["sf-step"], after["sf-origin-topic"]) == ("after", "sf.fx.f.after")
    assert first["sf-origin-offset"] == after["sf-origin-offset"] == "0"
    assert first["sf-execution-id"] == ""


async def test_poison_record_on_a_kafka_trigger_topic(tmp_path: Path) -> None:
    path = tmp_path / "kt.yaml"
    path.write_text(
        """\
apiVersion: streamflow/v1
kind: Integration
name: kt
flows:
  - name: f
    partitions: 1
    trigger: {type: kafka, topic: ext.orders}
    steps:
      - {id: shape, type: transform, output: {order: "${payload.id}"}}
"""
    )
    integration = load_integration(path)
    broker = tmp_path / "broker"
    transport = LocalTransport(broker)
    app = App(integration, transport, {}, AppOptions(trace_payloads=True))
    app.deploy()
    transport.ensure_topics([TopicSpec("ext.orders", 1)])
    producer = transport.producer()
    producer.send("ext.orders", b"{this is not json", b"k")
    producer.send("ext.orders", b'{"id": "after-poison"}', b"k")
    producer.flush()
    producer.close()
    completed: list[ExecutionEvent] = []
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    watcher = transport.consumer(f"test.{uuid.uuid4().hex}", ["sf.kt.executions"])
    try:
        deadline = time.monotonic() + 30
        while not completed:
            assert time.monotonic() < deadline, "the record after the poison never completed"
            assert not runner.done(), runner
            for rec in await asyncio.to_thread(watcher.poll, 100, 0.2):
                for ev in decode_all(rec.value):
                    if ev.event == "completed":
                        completed.append(ev)
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
        watcher.close()
        transport.close()
    [done] = completed
    assert done.execution_id == "ext.orders-0-1"  # the record at offset 1
    assert done.payload == {"order": "after-poison"}
    [letter] = read_topic(broker, "sf.kt.f.dlq")
    assert letter.value == b"{this is not json"
    h = headers_of(letter)
    assert h["sf-error-type"] == "PoisonMessageError"
    assert "JSON" in h["sf-error"]
    assert (h["sf-origin-topic"], h["sf-origin-offset"]) == ("ext.orders", "0")


# --------------------------------------------------------------------------- breaker

DOWN_FOR = 3.0
EVENTS = 20


class Outage:
    """Answers 503 for DOWN_FOR seconds from the first call, then 200."""

    def __init__(self) -> None:
        self.first: float | None = None

    def down(self, call: Call) -> bool:
        if self.first is None:
            self.first = call.at
        return call.at - self.first < DOWN_FOR

    async def __call__(self, call: Call) -> web.Response:
        if self.down(call):
            return web.json_response({"error": "maintenance"}, status=503)
        return ok(call)


async def run_outage(tmp_path: Path, serve: Serve, breaker: bool) -> tuple[int, RunResult, Target]:
    outage = Outage()
    target = await serve(outage)
    extra = "        breaker: {failure_threshold: 3, reset_timeout: 1s}\n" if breaker else ""
    name = "brk" if breaker else "nobrk"
    path = write_topology(
        tmp_path,
        http_flow(
            "{max_attempts: 100, backoff: fixed, delay: 200ms, jitter: false}",
            partitions=3,
            extra=extra,
        ),
        name=name,
    )
    result = await run_flow(
        path,
        [{"id": f"e{i:02d}"} for i in range(EVENTS)],
        config={"api": target.url},
        directory=tmp_path / name,
        timeout=60,
    )
    assert outage.first is not None
    while_down = sum(1 for c in target.calls if c.at - outage.first < DOWN_FOR)
    return while_down, result, target


async def test_circuit_breaker_spares_a_target_that_is_down(
    tmp_path: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamflow.runtime")
    with_breaker, result, target = await run_outage(tmp_path, serve, breaker=True)
    transitions = [
        r.getMessage() for r in caplog.records if "circuit breaker of step call" in r.getMessage()
    ]
    without_breaker, plain, plain_target = await run_outage(tmp_path, serve, breaker=False)
    print(
        f"\ncalls while the target was down ({EVENTS} events, {DOWN_FOR:g}s outage): "
        f"with breaker {with_breaker}, without breaker {without_breaker}"
    )
    for res, tgt in ((result, target), (plain, plain_target)):
        assert res.ok, res.by_status()
        assert len(res.executions) == EVENTS
        # after the recovery each event went through exactly once: nothing redelivered
        ok_calls = Counter(c.id for c in tgt.calls if c.at - tgt.calls[0].at >= DOWN_FOR)
        assert ok_calls == Counter({f"e{i:02d}": 1 for i in range(EVENTS)})
        for ex in res.executions:
            assert ex.output == {"id": ex.input["id"], "status": 200, "echo": ex.input["id"]}
    assert with_breaker < without_breaker
    assert with_breaker * 3 < without_breaker  # far fewer, not a few fewer
    # the breaker opened, probed while half-open, and closed once the target was back
    assert transitions[0] == "circuit breaker of step call: closed -> open"
    assert "circuit breaker of step call: open -> half_open" in transitions
    assert transitions[-1] == "circuit breaker of step call: half_open -> closed"


async def test_open_breaker_pauses_instead_of_burning_attempts(
    tmp_path: Path, serve: Serve
) -> None:
    """While open, waiting events do not use up their attempts: a policy of only 4
    attempts outlives a 3 s outage because the paused time does not count."""
    outage = Outage()
    target = await serve(outage)
    extra = "        breaker: {failure_threshold: 2, reset_timeout: 1500ms}\n"
    path = write_topology(
        tmp_path,
        http_flow("{max_attempts: 4, backoff: fixed, delay: 100ms, jitter: false}", extra=extra),
    )
    result = await run_flow(
        path, [{"id": f"p{i}"} for i in range(5)], config={"api": target.url}, timeout=60
    )
    assert result.ok, [(ex.input, ex.error) for ex in result.executions]
    for ex in result.executions:
        assert len(target.of(ex.input["id"])) <= 4


# --------------------------------------------------------------------------- fallback

FALLBACK = """\
      - id: degraded
        type: transform
        output:
          id: ${payload.id}
          error: ${steps.call.error}
          fallback: ${steps.call.fallback}
"""


async def test_fallback_when_retries_run_out(tmp_path: Path, serve: Serve) -> None:
    target = await serve(always(503))
    retry = "{max_attempts: 2, backoff: fixed, delay: 20ms, jitter: false}"
    retry += "\n        fallback: degraded"
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, after=False) + FALLBACK),
        [{"id": "f1"}, {"id": "f2"}],
        config={"api": target.url},
    )
    for ex in result.executions:
        assert ex.status == "completed", ex.error
        ident = ex.input["id"]
        assert len(target.of(ident)) == 2  # the retries ran out first
        assert ex.output["id"] == ident
        assert ex.output["fallback"] is True
        assert "503" in ex.output["error"]  # steps.call.error
        assert [ev.step for ev in of_kind(ex, "step")] == ["call", "degraded"]
        notes = [ev.note for ev in of_kind(ex, "retry")]
        assert notes[-1] == "fallback to degraded"
        assert of_kind(ex, "failed") == []


async def test_fallback_when_the_circuit_is_open(tmp_path: Path, serve: Serve) -> None:
    target = await serve(always(503))
    retry = (
        "{max_attempts: 1}\n"
        "        fallback: degraded\n"
        "        breaker: {failure_threshold: 1, reset_timeout: 60s}"
    )
    result = await run_flow(
        write_topology(tmp_path, http_flow(retry, after=False) + FALLBACK),
        [{"id": "same", "n": i} for i in range(3)],  # one key: one after the other
        config={"api": target.url},
    )
    assert result.ok, result.by_status()
    assert len(target.calls) == 1  # the first call opened the circuit: no more calls
    errors = sorted(ex.output["error"] for ex in result.executions)
    assert sum("503" in e for e in errors) == 1
    assert sum(bool(re.search("circuit .* open", e)) for e in errors) == 2


# --------------------------------------------------------------------------- shutdown


async def test_a_stopped_run_has_committed_everything_it_processed(
    tmp_path: Path, serve: Serve
) -> None:
    """Stopping the agents right after the last execution ended must not leave processed
    records uncommitted: a restart (e.g. to drain replayed dead letters) would run them
    again and call the targets twice."""
    target = await serve(always_ok)
    retry = "{max_attempts: 2, delay: 10ms}"
    path = write_topology(tmp_path, http_flow(retry, partitions=2))
    for run in range(3):  # the window is short: give it a few chances
        broker = tmp_path / f"broker-{run}"
        result = await run_flow(
            path, [{"id": f"s{i}"} for i in range(4)], config={"api": target.url}, directory=broker
        )
        assert result.ok
        transport = LocalTransport(broker)
        try:
            for topic in ("sf.fx.f.call", "sf.fx.f.after"):
                ends = {p: e for p, e in transport.end_offsets(topic).items() if e}
                committed = transport.committed(topic, topic)  # the agent's group
                assert {p: committed.get(p, 0) for p in ends} == ends, (run, topic)
        finally:
            transport.close()
