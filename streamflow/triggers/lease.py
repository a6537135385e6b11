"""Leadership and durable state for triggers that must fire once across processes.

Schedule, poll and file triggers run in every gateway (and ``serve``) process, but only
one process — the leader — fires each of them. Each such trigger owns a state topic
``sf.<integration>.<flow>.<kind>`` (``schedule``, ``cursor``, ``files``): one partition,
compacted, holding its state as keyed records (last tick, poll cursor, files done).

Leader election:

* Kafka: every process joins the consumer group named after the state topic; the group
  coordinator gives its single partition to exactly one member, and that member leads. A
  clean stop hands over at once; a crashed leader's partition moves after the session
  timeout (10 s).
* ``local://``: one machine; an exclusive ``flock`` on ``DIR/locks/<topic>.lock``.

Term start (fencing, then catch-up)::

    1. the partition is assigned (or the lock taken): a new term; the state is reset
    2. create the transactional producer "<topic>.leader": on Kafka this fences any
       earlier leader that still thinks it leads, and ends its open transaction
    3. commit a term marker (key "\\0term", a fresh id) to the state topic
    4. read the state topic from its start, applying every record, until the marker comes
       back: the state now holds everything any earlier leader committed
    5. lead

Firing (commit order)::

    one transaction holds the envelopes, their `started` events and the new state
    records; commit it. All of it becomes visible, or none. The in-memory state moves
    only after the commit. A fenced producer ends the term: that process fires nothing
    until it leads again (and has read the state again).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from streamflow import exactjson
from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Envelope
from streamflow.errors import FatalError
from streamflow.ingress import FlowIngress
from streamflow.observability.metrics import TRIGGER_FIRINGS
from streamflow.topology.models import TriggerConfig
from streamflow.topology.plan import COMPACTED, topic_prefix
from streamflow.transport.base import (
    Consumer,
    Headers,
    Producer,
    Record,
    TopicPartition,
    TopicSpec,
    TransactionAborted,
    Transport,
)

log = logging.getLogger("streamflow.trigger")
TERM_KEY = b"\x00term"
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    value: bytes
    key: bytes | None = None
    headers: Headers | None = None
    partition: int | None = None


class Collector:
    """A Producer that only records what is sent (to send it later, in one batch or
    transaction): ``FlowIngress.send(collector, env)`` gives an envelope's messages."""

    atomic_offsets = False

    def __init__(self) -> None:
        self.messages: list[Outgoing] = []

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        self.messages.append(Outgoing(topic, value, key, headers, partition))

    def flush(self, timeout: float = 30.0) -> None:
        return None

    def begin(self) -> None:
        raise NotImplementedError

    def commit_transaction(self, consumer: Consumer, offsets: Mapping[TopicPartition, int]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self.messages = []

    def close(self) -> None:
        return None


def envelope_messages(ingress: FlowIngress, env: Envelope) -> list[Outgoing]:
    """The envelope on the flow's first topic plus its ``started`` event."""
    collector = Collector()
    ingress.send(collector, env)
    return collector.messages


def send_all(producer: Producer, messages: Sequence[Outgoing]) -> None:
    for m in messages:
        producer.send(m.topic, m.value, m.key, m.headers, m.partition)


class TriggerLease:
    """Leadership of one state topic, and transactions on it (see the module docstring).

    Every method runs its broker calls on one thread of its own, so a lease may be used
    from the event loop; ``apply``/``reset`` are called on that thread.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        *,
        apply: Callable[[Record], None],
        reset: Callable[[], None],
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.apply = apply
        self.reset = reset
        self.term = 0  # bumped when a term starts: the caller re-reads its state then
        self.leading = False
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._marker: str | None = None
        self._revoked = False
        self._lock_fd: int | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sf-lease-{topic}")
        self._lock_path = transport.group_lock(topic)  # the group is named after the topic

    async def _call(self, fn: Callable[..., R], *args: Any) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def ensure_topic(self) -> None:
        spec = TopicSpec(self.topic, 1, dict(COMPACTED))
        await self._call(self.transport.ensure_topics, [spec])

    async def poll(self, timeout: float) -> bool:
        """Keep the membership alive, follow the state; True while this process leads."""
        return await self._call(self._poll, timeout)

    async def commit(self, messages: Sequence[Outgoing]) -> bool:
        """Send ``messages`` in one transaction; False (logged) if it did not commit."""
        return await self._call(self._commit, messages)

    async def close(self) -> None:
        await self._call(self._close)
        self._io.shutdown(wait=True)

    # -- on the lease's thread ------------------------------------------------------

    def _poll(self, timeout: float) -> bool:
        if self._lock_path is not None and self._lock_fd is None and not self._try_lock():
            time.sleep(timeout)
            return False
        if self._consumer is None:
            self._consumer = self.transport.consumer(self.topic, [self.topic])
            self._consumer.on_revoke = self._on_revoke
        records = self._consumer.poll(500, timeout)
        assigned = bool(self._consumer.assignment())
        if self._revoked or not assigned:
            self._revoked = False
            if self._marker is not None:
                self._end_term("the state partition moved to another process")
            if not assigned:
                return False
        if self._marker is None and not self._begin_term():
            return False
        for rec in records:
            if self.leading:
                continue  # our own writes: the in-memory state is already ahead
            if rec.key == TERM_KEY:
                if orjson.loads(rec.value).get("term") == self._marker:
                    self.leading = True
                    log.info("%s: leading (term %d)", self.topic, self.term)
                continue
            self.apply(rec)
        return self.leading

    def _on_revoke(self, parts: list[TopicPartition]) -> None:
        self._revoked = True

    def _try_lock(self) -> bool:
        assert self._lock_path is not None
        self._lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _begin_term(self) -> bool:
        assert self._consumer is not None
        self.term += 1
        self.leading = False
        self.reset()
        marker = uuid.uuid4().hex
        try:
            self._producer = self.transport.producer(transactional_id=f"{self.topic}.leader")
            self._producer.begin()
            value = {"term": marker, "host": socket.gethostname(), "pid": os.getpid()}
            self._producer.send(self.topic, orjson.dumps(value), TERM_KEY, partition=0)
            self._producer.commit_transaction(self._consumer, {})
        except Exception as exc:
            log.warning("%s: could not start a term: %s", self.topic, exc)
            self._end_term("")
            return False
        self._marker = marker
        return True

    def _end_term(self, why: str) -> None:
        if why and self.leading:
            log.info("%s: no longer leading: %s", self.topic, why)
        self.leading = False
        self._marker = None
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close()

    def _commit(self, messages: Sequence[Outgoing]) -> bool:
        producer, consumer = self._producer, self._consumer
        if not self.leading or producer is None or consumer is None:
            return False
        try:
            producer.begin()
            send_all(producer, messages)
            producer.commit_transaction(consumer, {})
            return True
        except TransactionAborted as exc:
            log.warning("%s: transaction aborted (%s); will try again", self.topic, exc)
            return False
        except FatalError as exc:
            self._end_term(f"fenced by another process ({exc})")
            return False
        except Exception as exc:
            log.warning("%s: transaction failed (%s); re-reading the state", self.topic, exc)
            with contextlib.suppress(Exception):
                producer.abort()
            self._end_term("transaction failed")
            return False

    def _close(self) -> None:
        self._end_term("stopping")
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                self._consumer.close()
            self._consumer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


C = TypeVar("C", bound=TriggerConfig)


class LeaderTrigger(ABC):
    """A trigger run by the leader of its state topic: subclasses keep their state with
    ``reset``/``apply`` and do their work in ``work`` (returning seconds until more)."""

    kind = "trigger"  # the state topic's suffix

    def __init__(
        self,
        ingress: FlowIngress,
        transport: Transport,
        env: Mapping[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ingress = ingress
        self.clock = clock  # when work is due (ticks, poll intervals); the lease's own
        # waits (broker polls, another process's lock) are on real time
        self.flow = ingress.flow.name
        self.env = dict(env or {})
        prefix = topic_prefix(ingress.integration.name, self.flow)
        self.topic = f"{prefix}.{self.kind}"
        self.lease = TriggerLease(transport, self.topic, apply=self.apply, reset=self.reset)
        self.firings = TRIGGER_FIRINGS.labels(
            ingress.integration.name, self.flow, ingress.flow.trigger.type
        )
        self._term = 0
        self.rounds = 0  # ``work`` calls done: a test moving a ManualClock waits on it
        self.setup()

    def setup(self) -> None:  # noqa: B027 (optional hook)
        """The subclass's own set-up, after the lease's (read ``self.ingress``; a bad
        configuration raises here, before the trigger starts)."""

    def config(self, kind: type[C]) -> C:
        """The flow's trigger configuration, which must be a ``kind``."""
        trigger = self.ingress.flow.trigger
        if not isinstance(trigger, kind):
            raise TypeError(f"{type(self).__name__} runs {kind.__name__}, not {trigger.type}")
        return trigger

    @property
    def scope(self) -> dict[str, Any]:
        return {"config": self.ingress.config, "env": self.env}

    @abstractmethod
    def reset(self) -> None:
        """Forget the state (a term starts; the state topic is read again)."""

    @abstractmethod
    def apply(self, rec: Record) -> None:
        """One record of the state topic, in order (last write per key wins)."""

    def on_term(self) -> None:  # noqa: B027 (optional hook)
        """Called once when this process starts leading, before the first ``work``."""

    @abstractmethod
    async def work(self) -> float:
        """Fire what is due; return how many seconds until there may be more to do."""

    async def aclose(self) -> None:  # noqa: B027 (optional hook)
        """Release what ``work`` opened (sessions, pools)."""

    async def idle(self) -> None:  # noqa: B027 (optional hook)
        """Called while this process does not lead (e.g. to drop a connection)."""

    async def run(self, stop: asyncio.Event) -> None:
        wait = 0.0  # how long the lease's poll may block (real time: it waits on others)
        try:
            await self.lease.ensure_topic()
            while not stop.is_set():
                if not await self.lease.poll(wait):
                    await self.idle()
                    wait = 0.5
                    continue
                wait = 0.0
                if self.lease.term != self._term:
                    self._term = self.lease.term
                    self.on_term()
                delay = await self.work()
                self.rounds += 1
                await self._pause(delay, stop)
        finally:
            await self.aclose()
            await self.lease.close()

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Wait ``seconds`` on the clock (the work falls due), or until ``stop``; at most
        half a second of real time, so the lease is polled (and kept) that often."""
        if seconds <= 0:
            return
        waits = [
            asyncio.ensure_future(self.clock.asleep(seconds)),
            asyncio.ensure_future(stop.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def state_record(self, key: bytes, value: Any) -> Outgoing:
        return Outgoing(self.topic, exactjson.dumps(value), key, partition=0)  # cursors exact
