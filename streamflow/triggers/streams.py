"""The stream triggers ``sse`` and ``websocket``: one connection per flow, one execution
per message.

Every gateway/serve process runs them; only the leader of ``sf.<integration>.<flow>.stream``
connects (see ``lease.py``), so there is one connection per flow across processes. A
reader task holds the connection and queues messages; ``work`` commits them in batches,
each batch in one transaction with the new state record ``last`` (the SSE id of the last
message), so a message is started once or not at all.

Reconnection: after a lost or refused connection, or ``idle_timeout`` without any byte
(SSE comments and WebSocket pings count), the reader waits ``backoff`` (doubling up to
``max_backoff``; an SSE ``retry:`` field sets the base) and connects again. SSE sends
``Last-Event-ID``: the id of the last message read, so the server resumes after it.
When a commit fails, or leadership moves, the queue is dropped and the stream resumes
from the last *committed* id, so nothing read but not committed is lost — as far as the
server honours ``Last-Event-ID``. A message that repeats the id just sent is skipped, and
an SSE message's execution id is derived from its id (``<flow>-<hash>``): a duplicate is
visible. WebSocket has no resume: messages sent while disconnected are lost.

A message that cannot be read per ``format`` (``json`` and not JSON, binary that is not
UTF-8, an SSE message over ``MAX_MESSAGE`` bytes) goes to the flow's dead-letter topic with
the reason; the stream goes on. ``streamflow_trigger_connected`` is 1 while this process
holds the connection; ``streamflow_trigger_reconnects_total`` counts lost connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson

from streamflow import exactjson
from streamflow.connectors.httpclient import safe_url
from streamflow.observability.metrics import TRIGGER_CONNECTED, TRIGGER_RECONNECTS
from streamflow.topology.expressions import compile_value
from streamflow.topology.streams import SseTrigger, WebsocketTrigger
from streamflow.transport.base import Record
from streamflow.triggers.lease import LeaderTrigger, Outgoing, envelope_messages
from streamflow.util.secrets import Masker

log = logging.getLogger("streamflow.trigger")
LAST = b"last"
MAX_MESSAGE = 1_048_576  # bytes of one SSE message's data
_LINE = re.compile(r"\r\n|\r|\n")


class StreamError(Exception):
    """This connection failed (refused, bad status, wrong content type)."""


@dataclass
class Message:
    raw: bytes
    text: str | None  # None: binary that is not UTF-8
    trigger: dict[str, Any]
    id: str | None = None  # SSE: the last event id (the resume position)
    explicit: bool = False  # SSE: the message had its own id line
    error: str | None = None  # set: the message goes to the dead-letter topic


class SseMessage(NamedTuple):
    event: str  # the type ("message" when none was given)
    data: str | None  # None: larger than MAX_MESSAGE
    id: str | None  # the last event id (it carries over to messages without an id line)
    explicit: bool  # this message had its own id line


@dataclass
class SseParser:
    """The ``text/event-stream`` format (WHATWG HTML, 9.2): feed text, get the completed
    messages; lines end in CRLF, LF or CR; ``retry`` is the server's delay in ms."""

    last_id: str | None = None
    buffer: str = ""
    data: list[str] = field(default_factory=list)
    size: int = 0
    event: str = ""
    explicit: bool = False
    retry: int | None = None
    started: bool = False

    def feed(self, chunk: str) -> list[SseMessage]:
        if not self.started:
            chunk, self.started = chunk.removeprefix("\ufeff"), bool(chunk)  # a leading BOM
        self.buffer += chunk
        out: list[SseMessage] = []
        while True:
            m = _LINE.search(self.buffer)
            if m is None or (m.group() == "\r" and m.end() == len(self.buffer)):
                break  # no full line yet (a CR at the end may be half a CRLF)
            line, self.buffer = self.buffer[: m.start()], self.buffer[m.end() :]
            done = self.line(line)
            if done is not None:
                out.append(done)
        if len(self.buffer) > MAX_MESSAGE:  # one endless line: drop it, keep the stream
            self.buffer, self.size = "", MAX_MESSAGE + 1
        return out

    def line(self, line: str) -> SseMessage | None:
        if not line:
            return self.dispatch()
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.size += len(value) + 1
            if self.size <= MAX_MESSAGE:
                self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id" and "\x00" not in value:
            self.last_id, self.explicit = value, True
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= 12:
            self.retry = int(value)  # ASCII digits only (the spec); "²" ended the stream
        return None

    def dispatch(self) -> SseMessage | None:
        data, size, event, explicit = self.data, self.size, self.event or "message", self.explicit
        self.data, self.size, self.event, self.explicit = [], 0, "", False
        if size == 0:
            return None
        text = None if size > MAX_MESSAGE else "\n".join(data)
        return SseMessage(event, text, self.last_id, explicit)


class StreamRunner(LeaderTrigger):
    kind = "stream"

    def setup(self) -> None:
        ingress, trigger = self.ingress, self.ingress.flow.trigger
        if not isinstance(trigger, SseTrigger | WebsocketTrigger):
            raise TypeError(f"StreamRunner runs sse or websocket, not {trigger.type}")
        self.trigger = trigger
        self.url = str(compile_value(trigger.url).render(self.scope))
        rendered = compile_value(trigger.headers).render(self.scope)
        self.headers = {str(k): str(v) for k, v in rendered.items()}
        self.masker = Masker()
        self.masker.add(*self.headers.values())
        parts = urlsplit(self.url)  # a token in the query or user info stays out of logs
        self.masker.add(*(v for _, v in parse_qsl(parts.query)), parts.password or "")
        self.where = safe_url(self.url)
        self.dlq = ingress.plan.flows[self.flow].dlq_topic
        labels = (ingress.integration.name, self.flow, trigger.type)
        self.connected = TRIGGER_CONNECTED.labels(*labels)
        self.reconnects = TRIGGER_RECONNECTS.labels(*labels)
        self.connected.set(0)
        self.queue: asyncio.Queue[Message] = asyncio.Queue(maxsize=trigger.batch * 4)
        self.reader: asyncio.Task[None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.committed_id: str | None = None
        self.restart = True

    # -- state -----------------------------------------------------------------------

    def reset(self) -> None:
        self.committed_id = None

    def apply(self, rec: Record) -> None:
        if rec.key == LAST:
            self.committed_id = orjson.loads(rec.value).get("id")

    def on_term(self) -> None:
        self.restart = True  # connect again, from what the state topic says

    async def idle(self) -> None:
        await self.disconnect()

    async def aclose(self) -> None:
        await self.disconnect()
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def disconnect(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        while not self.queue.empty():
            self.queue.get_nowait()
        self.connected.set(0)
        self.restart = True

    # -- work ------------------------------------------------------------------------

    async def work(self) -> float:
        if self.restart or self.reader is None or self.reader.done():
            await self.disconnect()
            self.restart = False
            self.reader = asyncio.create_task(self.read(), name=f"stream-{self.topic}")
        try:
            first = await asyncio.wait_for(self.queue.get(), 0.5)
        except TimeoutError:
            return 0.0
        batch = [first]
        while len(batch) < self.trigger.batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        messages: list[Outgoing] = []
        last_id = self.committed_id
        for msg in batch:
            if not msg.trigger.get("skip"):
                messages.extend(self.outgoing(msg))
            if msg.id is not None:
                last_id = msg.id
        if last_id != self.committed_id:
            messages.append(self.state_record(LAST, {"id": last_id, "ts": self.clock.now_ms()}))
        if not await self.lease.commit(messages):
            log.warning("%s: commit failed; resuming from the last committed message", self.topic)
            await self.disconnect()
            return 1.0
        self.committed_id = last_id
        started = sum(1 for m in batch if m.error is None and not m.trigger.get("skip"))
        if started:
            self.firings.inc(started)
        return 0.0

    def outgoing(self, msg: Message) -> list[Outgoing]:
        payload: Any = None
        error = msg.error
        if error is None:
            payload, error = self.decode(msg)
        if error is not None:
            log.warning("%s: message dead-lettered: %s", self.topic, error)
            headers = [
                ("sf-error-type", b"StreamMessageError"),
                ("sf-error", error.encode()[:4000]),
                ("sf-step", b"trigger"),
                ("sf-origin-topic", self.where.encode()),
                ("sf-time", str(time.time_ns() // 1_000_000).encode()),
            ]
            return [Outgoing(self.dlq, msg.raw[:MAX_MESSAGE], None, headers)]
        ident = None
        if msg.explicit and msg.id:  # a repeat of the same message gets the same id
            key = f"{self.url}\x00{msg.id}\x00".encode() + msg.raw
            ident = f"{self.flow}-{hashlib.sha256(key).hexdigest()[:24]}"
        env = self.ingress.envelope(payload, trigger=msg.trigger, execution_id=ident)
        return envelope_messages(self.ingress, env)

    def decode(self, msg: Message) -> tuple[Any, str | None]:
        fmt = self.trigger.format
        if msg.text is None:
            if fmt == "json":
                try:
                    return exactjson.loads(msg.raw), None
                except orjson.JSONDecodeError:
                    pass
            return None, "a binary message that is not UTF-8 text"
        if fmt == "text":
            return msg.text, None
        try:
            return exactjson.loads(msg.text), None
        except orjson.JSONDecodeError as exc:
            if fmt == "json":
                return None, f"the message is not JSON ({exc})"
            return msg.text, None

    # -- the connection (reader task) -----------------------------------------------------

    async def read(self) -> None:
        delay = self.trigger.backoff
        base = self.trigger.backoff
        resume = self.committed_id
        if self.session is None:
            self.session = aiohttp.ClientSession()
        while True:
            opened = False
            try:
                if isinstance(self.trigger, SseTrigger):
                    first = True
                    async for event in self.sse(resume):
                        opened = True
                        if isinstance(event, int):
                            # the server's retry: field, within our own backoff ceiling
                            base = min(max(0.001, event / 1000), self.trigger.max_backoff)
                            continue
                        if first and resume and event.explicit and event.id == resume:
                            first = False
                            continue  # the message Last-Event-ID named, sent again
                        first = False
                        resume = event.id if event.id is not None else resume
                        await self.queue.put(event)
                else:
                    async for event in self.websocket():
                        opened = True
                        await self.queue.put(event)
                log.info("%s: %s closed the stream", self.topic, self.where)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever the server sends, the trigger reconnects
                reason = self.masker.mask(str(exc) or exc.__class__.__name__)
                log.warning("%s: %s: %s", self.topic, self.where, reason)
            finally:
                self.connected.set(0)
            self.reconnects.inc()
            if opened:
                delay = base
            await self.clock.asleep(delay)  # reconnect backoff
            delay = min(delay * 2, self.trigger.max_backoff)

    async def sse(self, resume: str | None) -> Any:
        assert isinstance(self.trigger, SseTrigger) and self.session is not None
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **self.headers}
        if resume:
            headers["Last-Event-ID"] = resume
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=30, sock_read=self.trigger.idle_timeout
        )
        wanted = set(self.trigger.events) if self.trigger.events else None
        async with self.session.get(self.url, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise StreamError(f"answered {resp.status}")
            if resp.content_type != "text/event-stream":
                raise StreamError(f"answered {resp.content_type}, not text/event-stream")
            self.connected.set(1)
            log.info("%s: connected to %s (Last-Event-ID %s)", self.topic, self.where, resume)
            parser = SseParser(last_id=resume)
            decoder = _utf8()
            async for chunk in resp.content.iter_any():
                retry = parser.retry
                for m in parser.feed(decoder.decode(chunk)):
                    trigger: dict[str, Any] = {
                        "type": "sse",
                        "url": self.where,
                        "event": m.event,
                        "id": m.id,
                    }
                    if wanted is not None and m.event not in wanted:
                        trigger["skip"] = True  # not taken, but its id is the resume point
                    if m.data is None:
                        big = f"larger than {MAX_MESSAGE} bytes"
                        yield Message(b"", "", trigger, m.id, m.explicit, big)
                    else:
                        yield Message(m.data.encode(), m.data, trigger, m.id, m.explicit)
                if parser.retry is not None and parser.retry != retry:
                    yield parser.retry

    async def websocket(self) -> Any:
        assert isinstance(self.trigger, WebsocketTrigger) and self.session is not None
        async with self.session.ws_connect(
            self.url,
            headers=self.headers,
            heartbeat=self.trigger.heartbeat,
            timeout=aiohttp.ClientWSTimeout(ws_receive=self.trigger.idle_timeout, ws_close=10),
            max_msg_size=MAX_MESSAGE * 4,
        ) as ws:
            self.connected.set(1)
            log.info("%s: connected to %s", self.topic, self.where)
            sub = self.trigger.subscribe
            if sub is not None:
                rendered = compile_value(sub).render(self.scope)
                for item in rendered if isinstance(rendered, list) else [rendered]:
                    await ws.send_str(item if isinstance(item, str) else exactjson.dumps_text(item))
            async for frame in ws:
                trigger = {"type": "websocket", "url": self.where}
                if frame.type == aiohttp.WSMsgType.TEXT:
                    text = str(frame.data)
                    yield Message(text.encode(), text, {**trigger, "binary": False})
                elif frame.type == aiohttp.WSMsgType.BINARY:
                    raw = bytes(frame.data)
                    try:
                        text_or_none: str | None = raw.decode()
                    except UnicodeDecodeError:
                        text_or_none = None
                    yield Message(raw, text_or_none, {**trigger, "binary": True})
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    raise StreamError(f"websocket error: {ws.exception()}")


def _utf8() -> Any:
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace")
