"""The gateway's side of the broker: a producer whose sends are confirmed within a
timeout, a ``Publisher`` that batches webhook events onto it, and an ``ExecutionWatcher``
that answers sync webhooks from the executions topic."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from streamflow.observability.events import ExecutionEvent, decode_all, is_terminal
from streamflow.transport.base import Consumer, Producer, Transport
from streamflow.triggers.lease import Outgoing, send_all

MAX_BATCH = 1000

log = logging.getLogger("streamflow.gateway")


def gateway_producer(transport: Transport, timeout: float) -> Producer:
    """A producer whose messages are confirmed or failed within ``timeout`` seconds."""
    return transport.producer(delivery_timeout=max(1.0, timeout - 2))


class Publisher:
    """Sends accepted events in batches, one flush per batch, on a thread of its own;
    ``publish`` returns once the broker confirmed (or raises: answer 503)."""

    def __init__(self, producer: Producer, timeout: float) -> None:
        self.producer = producer
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[list[Outgoing], asyncio.Future[None]]] = asyncio.Queue()
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-gateway-produce")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="gateway-publisher")

    async def publish(self, messages: list[Outgoing]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((messages, fut))
        await fut

    def _send(self, batch: Sequence[list[Outgoing]]) -> list[Exception | None]:
        """Queue each request's messages (one refused at once, e.g. too large for the
        broker, fails alone), then flush: a failed flush fails the whole batch."""
        results: list[Exception | None] = []
        for messages in batch:
            try:
                send_all(self.producer, messages)
                results.append(None)
            except Exception as exc:
                results.append(exc)
        self.producer.flush(self.timeout)
        return results

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self.queue.get_nowait())
            live = [(m, f) for m, f in batch if not f.done()]  # a gone client: not sent
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.io, self._send, [m for m, _ in live])
            except Exception as exc:
                log.warning("gateway: %d event(s) not confirmed by the broker: %s", len(live), exc)
                results = [exc] * len(live)
            for (_, f), error in zip(live, results, strict=True):
                if f.done():
                    continue
                if error is None:
                    f.set_result(None)
                else:
                    f.set_exception(error)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.io, self.producer.close)
        self.io.shutdown(wait=True)


class ExecutionWatcher:
    """Follows the executions topic from its end; ``response: sync`` webhooks wait here
    for their execution's terminal event."""

    def __init__(self, transport: Transport, topic: str) -> None:
        self.consumer: Consumer = transport.consumer(
            f"sf.gateway.{uuid.uuid4().hex}", [topic], from_end=True
        )
        self.waiters: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Future[ExecutionEvent]]
        ] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sf-gateway-watch", daemon=True)
        self.thread.start()

    def expect(self, execution_id: str) -> asyncio.Future[ExecutionEvent]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ExecutionEvent] = loop.create_future()
        with self.lock:
            self.waiters[execution_id] = (loop, fut)
        return fut

    def forget(self, execution_id: str) -> None:
        with self.lock:
            self.waiters.pop(execution_id, None)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                records = self.consumer.poll(500, 0.2)
            except Exception as exc:
                log.warning("gateway: reading executions failed: %s", exc)
                time.sleep(1.0)
                continue
            for rec in records:
                try:
                    events = decode_all(rec.value)
                except (ValueError, TypeError):
                    continue
                for ev in events:
                    if not is_terminal(ev.event, ev.note):
                        continue
                    with self.lock:
                        waiter = self.waiters.pop(ev.execution_id, None)
                    if waiter is not None:
                        loop, fut = waiter
                        loop.call_soon_threadsafe(_resolve, fut, ev)
        self.consumer.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def _resolve(fut: asyncio.Future[ExecutionEvent], ev: ExecutionEvent) -> None:
    if not fut.done():
        fut.set_result(ev)
