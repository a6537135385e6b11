"""The sse and websocket triggers against real aiohttp servers on loopback: one event
per message, reconnection after a dropped connection (SSE resumes with Last-Event-ID:
nothing lost, nothing twice), resume after a restart from the committed state, one
connection across two processes' runners, dead letters for unreadable messages, and the
connection-state metric."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from streamflow.envelope import Envelope, decode_record
from streamflow.ingress import FlowIngress
from streamflow.observability.metrics import TRIGGER_CONNECTED, TRIGGER_RECONNECTS
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.triggers.streams import SseParser, StreamRunner


def integration_with(tmp_path: Path, name: str, trigger: str) -> Integration:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: live
    partitions: 1
    trigger: {trigger}
    steps:
      - {{id: keep, type: transform, output: "${{payload}}"}}
"""
    )
    return load_integration(path)


def emitted(transport: Transport, integration: Integration) -> list[Envelope]:
    topic = compile_plan(integration).flows["live"].first_topic
    return [decode_record(r) for r in transport.read_all(topic)]


def runner_for(integration: Integration, transport: Transport) -> StreamRunner:
    flow = integration.flows["live"]
    return StreamRunner(FlowIngress(integration, flow, compile_plan(integration), {}), transport)


async def run_until(
    runners: list[StreamRunner],
    transport: Transport,
    integration: Integration,
    done: Callable[[list[Envelope]], bool],
    timeout: float = 60.0,
) -> list[Envelope]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    deadline = time.monotonic() + timeout
    try:
        while True:
            envs = await asyncio.to_thread(emitted, transport, integration)
            if done(envs):
                await asyncio.sleep(0.8)  # nothing more may come
                return await asyncio.to_thread(emitted, transport, integration)
            for t in tasks:
                assert not t.done(), t.exception()
            assert time.monotonic() < deadline, f"timed out; emitted {len(envs)}"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


class SseServer:
    """Events id 1..N; resumes after Last-Event-ID; ``drop_after`` closes the first
    connection mid-stream after that many events; counts concurrent connections."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []  # (id, data)
        self.drop_after: int | None = None
        self.last_event_ids: list[str | None] = []
        self.open = 0
        self.max_open = 0
        self.url = ""
        self.more = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.last_event_ids.append(request.headers.get("Last-Event-ID"))
        after = request.headers.get("Last-Event-ID")
        start = (
            0
            if after is None
            else next(i + 1 for i, (ident, _) in enumerate(self.events) if ident == after)
        )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await resp.write(b"retry: 100\n: hello\n\n")
            sent, i = 0, start
            while True:
                while i < len(self.events):
                    ident, data = self.events[i]
                    # CRLF line ends and a multi-line data field, as the format allows
                    lines = "".join(f"data: {part}\r\n" for part in data.split("\n"))
                    await resp.write(f"id: {ident}\r\nevent: order\r\n{lines}\r\n".encode())
                    i += 1
                    sent += 1
                    if self.drop_after is not None and sent == self.drop_after:
                        self.drop_after = None
                        # half of the next message, then the connection is gone
                        await resp.write(b'id: 999\ndata: {"partial": tr')
                        request.transport.close()  # type: ignore[union-attr]
                        return resp
                self.more.clear()
                await self.more.wait()
        finally:
            self.open -= 1

    def add(self, n: int) -> None:
        base = len(self.events)
        self.events += [(f"e{base + k}", f'{{"n": {base + k}}}') for k in range(1, n + 1)]
        self.more.set()


@pytest.fixture
async def sse_server() -> AsyncIterator[SseServer]:
    server = SseServer()
    app = web.Application()
    app.router.add_get("/stream", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"http://127.0.0.1:{port}/stream"
    yield server
    server.more.set()
    await runner.cleanup()


def numbers(envs: list[Envelope]) -> list[int]:
    return [e.payload["n"] for e in envs]


async def test_sse_survives_a_dropped_connection_without_loss_or_duplicates(
    sse_server: SseServer, tmp_path: Path, unique: str
) -> None:
    integration = integration_with(
        tmp_path, f"sse-{unique}",
        f"{{type: sse, url: '{sse_server.url}', format: json, backoff: 100ms}}",
    )  # fmt: skip
    transport = open_transport(f"local://{tmp_path}/store")
    App(integration, transport, {}).deploy()
    sse_server.add(10)
    sse_server.drop_after = 4
    runner = runner_for(integration, transport)
    reconnects = TRIGGER_RECONNECTS.labels(integration.name, "live", "sse")
    before = reconnects._value.get()
    envs = await run_until([runner], transport, integration, lambda e: len(e) >= 10)
    assert numbers(envs) == list(range(1, 11))
    assert sse_server.last_event_ids[:2] == [None, "e4"]  # resumed after the 4th
    assert len({e.execution_id for e in envs}) == 10
    assert envs[0].trigger == {"type": "sse", "url": sse_server.url, "event": "order", "id": "e1"}
    assert reconnects._value.get() >= before + 1
    gauge = TRIGGER_CONNECTED.labels(integration.name, "live", "sse")
    assert gauge._value.get() == 0  # stopped: not connected

    # a restart (a new process) resumes from the committed id
    sse_server.add(3)
    envs = await run_until(
        [runner_for(integration, transport)], transport, integration, lambda e: len(e) >= 13
    )
    assert numbers(envs) == list(range(1, 14))
    assert sse_server.last_event_ids[-1] == "e10"
    transport.close()


@pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
async def test_one_connection_across_two_runners(
    sse_server: SseServer, broker_url: str, tmp_path: Path, unique: str
) -> None:
    """Two processes' runners (own consumers, own leases): one leads, one connection."""
    integration = integration_with(
        tmp_path, f"sse2-{unique}", f"{{type: sse, url: '{sse_server.url}', backoff: 100ms}}"
    )
    transport = open_transport(broker_url)
    App(integration, transport, {}).deploy()
    sse_server.add(5)
    two = [runner_for(integration, transport), runner_for(integration, transport)]
    envs = await run_until(two, transport, integration, lambda e: len(e) >= 5)
    assert numbers(envs) == [1, 2, 3, 4, 5]
    assert sse_server.max_open == 1
    transport.close()


async def test_sse_dead_letters_what_is_not_json_and_filters_event_types(
    tmp_path: Path, unique: str
) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(
            b'id: 1\ndata: {"n": 1}\n\n'
            b"id: 2\ndata: not json\n\n"
            b'id: 3\nevent: ping\ndata: {"n": 3}\n\n'
            b'id: 4\ndata: {"n": 4}\n\n'
        )
        await asyncio.sleep(30)
        return resp

    app = web.Application()
    app.router.add_get("/s", handle)
    web_runner = web.AppRunner(app, shutdown_timeout=0.1)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    integration = integration_with(
        tmp_path, f"sse3-{unique}",
        f"{{type: sse, url: 'http://127.0.0.1:{port}/s', format: json, events: [message]}}",
    )  # fmt: skip
    transport = open_transport(f"local://{tmp_path}/store")
    App(integration, transport, {}).deploy()
    try:
        envs = await run_until(
            [runner_for(integration, transport)], transport, integration, lambda e: len(e) >= 2
        )
        assert numbers(envs) == [1, 4]  # 2 is not JSON, 3 is another event type
        dlq = compile_plan(integration).flows["live"].dlq_topic
        dead = transport.read_all(dlq)
        assert [r.value for r in dead] == [b"not json"]
        headers = dict(dead[0].headers or [])
        assert b"not JSON" in headers["sf-error"]
    finally:
        transport.close()
        await web_runner.cleanup()


def test_sse_parser_follows_the_format() -> None:
    p = SseParser()
    out = p.feed("\ufeffdata: a\r")
    assert out == []  # a CR at the end may be half of a CRLF
    out += p.feed("\ndata:b\rid: 7\r\n\r\n: comment\n\nevent: x\ndata\n\n")
    assert [(m.event, m.data, m.id, m.explicit) for m in out] == [
        ("message", "a\nb", "7", True),
        ("x", "", "7", False),  # `data` alone is an empty line of data; the id carries over
    ]
    p.feed("retry: 2500\nid: bad\x00id\ndata: c\n\n")
    assert p.retry == 2500 and p.last_id == "7"  # an id with NUL is ignored
    # a retry that is not ASCII digits is ignored (the spec), not a crash of the reader,
    # which then reconnected forever at the same message
    for hostile in ("\u00b2", "\u0661\u0662", "-5", "1e3", "9" * 40):
        out = p.feed(f"retry: {hostile}\ndata: d\n\n")
        assert p.retry == 2500 and [m.data for m in out] == ["d"], hostile


# --------------------------------------------------------------------------- websocket


class WsServer:
    def __init__(self) -> None:
        self.url = ""
        self.connections = 0
        self.subscribed: list[str] = []

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        first = self.connections == 1
        msg = await ws.receive()
        assert msg.type == WSMsgType.TEXT
        self.subscribed.append(msg.data)
        if first:
            await ws.send_str('{"n": 1}')
            await ws.send_bytes(b"\xff\xfe")  # binary, not UTF-8: dead-lettered
            await ws.send_bytes(b'{"n": 2}')
            request.transport.close()  # type: ignore[union-attr]  # dropped mid-stream
            return ws
        await ws.send_str('{"n": 3}')
        await ws.send_str("plain text")
        await asyncio.sleep(30)
        return ws


async def test_websocket_reconnects_and_subscribes_again(tmp_path: Path, unique: str) -> None:
    server = WsServer()
    app = web.Application()
    app.router.add_get("/ws", server.handle)
    web_runner = web.AppRunner(app, shutdown_timeout=0.1)
    await web_runner.setup()
    site = web.TCPSite(web_runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    integration = integration_with(
        tmp_path, f"ws-{unique}",
        f"{{type: websocket, url: 'ws://127.0.0.1:{port}/ws', backoff: 100ms, "
        "subscribe: {op: subscribe, channel: trades}}",
    )  # fmt: skip
    transport = open_transport(f"local://{tmp_path}/store")
    App(integration, transport, {}).deploy()
    try:
        envs = await run_until(
            [runner_for(integration, transport)], transport, integration, lambda e: len(e) >= 4
        )
        assert [e.payload for e in envs] == [{"n": 1}, {"n": 2}, {"n": 3}, "plain text"]
        assert [e.trigger["binary"] for e in envs] == [False, True, False, False]
        assert server.connections == 2
        assert len(server.subscribed) == 2 and '"op":"subscribe"' in server.subscribed[0]
        dlq = compile_plan(integration).flows["live"].dlq_topic
        assert [r.value for r in transport.read_all(dlq)] == [b"\xff\xfe"]
    finally:
        transport.close()
        await web_runner.cleanup()


@pytest.mark.parametrize(
    ("trigger", "error"),
    [
        ("{type: sse, url: 'ws://x'}", "starts with http"),
        ("{type: websocket, url: 'http://x'}", "starts with ws"),
        ("{type: sse, url: 'http://x', backoff: 10s, max_backoff: 1s}", "max_backoff"),
        ("{type: sse, url: 'http://x', reconnect: true}", "reconnect"),
    ],
)
def test_bad_stream_triggers_are_refused(tmp_path: Path, trigger: str, error: str) -> None:
    from streamflow.errors import ValidationFailed

    with pytest.raises(ValidationFailed, match=error):
        integration_with(tmp_path, "bad", trigger)


@pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
async def test_a_hand_over_resumes_from_the_committed_id(
    sse_server: SseServer, broker_url: str, tmp_path: Path, unique: str
) -> None:
    integration = integration_with(
        tmp_path, f"sse4-{unique}", f"{{type: sse, url: '{sse_server.url}', backoff: 100ms}}"
    )
    transport = open_transport(broker_url)
    App(integration, transport, {}).deploy()
    sse_server.add(5)
    a, b = runner_for(integration, transport), runner_for(integration, transport)
    stops = {a: asyncio.Event(), b: asyncio.Event()}
    tasks = {r: asyncio.create_task(r.run(stops[r])) for r in (a, b)}
    try:
        deadline = time.monotonic() + 60
        while len(await asyncio.to_thread(emitted, transport, integration)) < 5:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        leader = a if a.reader is not None else b
        other = b if leader is a else a
        stops[leader].set()
        await tasks[leader]  # a clean stop hands over
        sse_server.add(3)
        while len(await asyncio.to_thread(emitted, transport, integration)) < 8:
            assert time.monotonic() < deadline + 60
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.8)
        envs = await asyncio.to_thread(emitted, transport, integration)
        assert numbers(envs) == list(range(1, 9))
        assert other.reader is not None
        assert sse_server.last_event_ids[-1] == "e5"  # the new leader resumed after e5
        assert sse_server.max_open == 1
    finally:
        for r in (a, b):
            stops[r].set()
        await asyncio.gather(*tasks.values())
        transport.close()


async def test_two_gateway_processes_one_connection_and_a_kill(
    sse_server: SseServer, tmp_path: Path, unique: str
) -> None:
    """Two real `streamflow gateway` processes on one store: one connects; kill -9 of it
    hands the stream to the other, which resumes after the last committed message."""
    import os
    import signal
    import subprocess
    import sys

    integration = integration_with(
        tmp_path, f"sse5-{unique}", f"{{type: sse, url: '{sse_server.url}', backoff: 100ms}}"
    )
    broker = f"local://{tmp_path}/store"
    transport = open_transport(broker)
    App(integration, transport, {}).deploy()
    assert integration.file is not None
    procs: list[subprocess.Popen[bytes]] = []

    def gateway(n: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"gw{n}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli.main", "gateway", str(integration.file),
             "--broker", broker, "--port", "0"],
            stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        return proc

    async def wait_for(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.1)

    def count() -> int:
        return len(emitted(transport, integration))

    try:
        first = gateway(1)
        await wait_for(lambda: sse_server.open == 1, "the first connection")
        gateway(2)
        sse_server.add(5)
        await wait_for(lambda: count() >= 5, "5 events")
        await wait_for(  # the second gateway is up and waiting
            lambda: "streamflow: gateway of" in (tmp_path / "gw2.log").read_text(), "gateway 2"
        )
        assert sse_server.max_open == 1
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        await wait_for(lambda: len(sse_server.last_event_ids) >= 2, "the second connection")
        sse_server.add(5)
        await wait_for(lambda: count() >= 10, "10 events")
        await asyncio.sleep(0.8)
        assert numbers(emitted(transport, integration)) == list(range(1, 11))
        assert sse_server.last_event_ids == [None, "e5"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        transport.close()
