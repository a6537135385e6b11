"""The records an agent has in flight when it processes continuously (agent.py).

Each partition keeps its records in offset order until they are finished and at the head
(the contiguous prefix: what may be committed, as faust's consumer commits only up to the
first gap in its acks). Each key of a partition (each partition, for an ``ordered`` flow)
is a lane: its records run one after the other on one task, while other lanes go on.

A record whose processor raises ``Deferred`` stops its partition from that offset on:
the records there not yet started wait (``WAITING``) to be read again when the deferral
ends; those already running or finished keep their place and are not run twice.
Everything here runs on the event loop; the agent alone talks to the broker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from streamflow.errors import FatalError
from streamflow.runtime.contain import Out
from streamflow.runtime.processor import Deferred
from streamflow.transport.base import Record, TopicPartition

QUEUED, RUNNING, DONE, WAITING = range(4)
LaneKey = tuple[TopicPartition, bytes | None]


@dataclass(slots=True, eq=False)
class Entry:
    rec: Record
    state: int = QUEUED
    outs: list[Out] = field(default_factory=list)
    sent: bool = False  # its outputs are with the producer
    gone: bool = False  # its partition was revoked or rewound: the result is dropped
    turn: int = 0  # bumped when a WAITING record is queued again (stale lane slots skip)


@dataclass(slots=True)
class Deferral:
    tp: TopicPartition
    offset: int  # read the partition again from here
    until: float  # time.monotonic()
    all_partitions: bool


class Lanes:
    """In-flight records: ``add`` them as polled, ``harvest`` what finished."""

    def __init__(
        self,
        handle: Callable[[Record], Awaitable[list[Out]]],
        contain: Callable[[Record, Exception], list[Out]],
        limit: asyncio.Semaphore,
        *,
        ordered: bool,
    ) -> None:
        self.handle = handle
        self.contain = contain
        self.limit = limit  # records running at once (the flow's ``concurrency``)
        self.ordered = ordered
        self.parts: dict[TopicPartition, deque[Entry]] = {}
        self.index: dict[TopicPartition, dict[int, Entry]] = {}
        self.lanes: dict[LaneKey, deque[tuple[Entry, int]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.finished: list[Entry] = []  # finished since the last harvest
        self.deferrals: list[Deferral] = []  # for the agent to seek and pause
        self.error: FatalError | None = None
        self.woken = False  # a record finished or was deferred since the last ``wait``
        self._waiter: asyncio.Future[None] | None = None
        self.count = 0  # records held (running, finished or waiting), not yet harvested

    def add(self, rec: Record) -> None:
        """Take a polled record; one already held (read again after a deferral's seek) is
        queued again if it was waiting, else skipped."""
        tp = (rec.topic, rec.partition)
        index = self.index.setdefault(tp, {})
        entry = index.get(rec.offset)
        if entry is not None:
            if entry.state != WAITING:
                return
            entry.state = QUEUED
            entry.turn += 1
        else:
            queue = self.parts.setdefault(tp, deque())
            if queue and rec.offset < queue[-1].rec.offset:
                return  # before what is held: handed on already (a stray re-read)
            entry = index[rec.offset] = Entry(rec)
            queue.append(entry)
            self.count += 1
        key: LaneKey = (tp, None if self.ordered else rec.key)
        lane = self.lanes.get(key)
        if lane is not None:
            lane.append((entry, entry.turn))
            return
        lane = self.lanes[key] = deque([(entry, entry.turn)])
        task = asyncio.ensure_future(self._run(key, lane))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, key: LaneKey, lane: deque[tuple[Entry, int]]) -> None:
        try:
            while lane:
                entry, turn = lane[0]
                if entry.state == QUEUED and entry.turn == turn and not entry.gone:
                    await self._one(entry)
                lane.popleft()
        finally:
            if self.lanes.get(key) is lane:
                del self.lanes[key]

    async def _one(self, entry: Entry) -> None:
        async with self.limit:
            if entry.state != QUEUED or entry.gone:  # deferred or dropped meanwhile
                return
            entry.state = RUNNING
            try:
                entry.outs = await self.handle(entry.rec)
            except Deferred as d:
                entry.state = QUEUED
                self._defer(entry, d)
                self._wake()
                return
            except FatalError as exc:
                self.error = exc
                entry.state = WAITING
                self._wake()
                return
            except Exception as exc:
                entry.outs = self.contain(entry.rec, exc)
        entry.state = DONE
        self.finished.append(entry)
        self._wake()

    def _wake(self) -> None:
        self.woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until a record finishes or is deferred (or was since the last call), at most
        ``timeout`` s (cheaper than ``asyncio.wait_for``: no task per wait)."""
        if not self.woken and timeout > 0:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        self.woken = False

    def _defer(self, entry: Entry, d: Deferred) -> None:
        """Records not yet started wait, from ``entry`` on (every partition's, for
        ``all_partitions``): the agent seeks back to the first of each and pauses."""
        tp = (entry.rec.topic, entry.rec.partition)
        parts = list(self.parts) if d.all_partitions else [tp]
        for part in parts:
            first = None
            for e in self.parts.get(part, ()):
                if e.state == QUEUED and (part != tp or e.rec.offset >= entry.rec.offset):
                    e.state = WAITING
                    first = e.rec.offset if first is None else first
            if part == tp or first is not None:
                offset = entry.rec.offset if part == tp else first
                assert offset is not None
                self.deferrals.append(Deferral(part, offset, d.until, d.all_partitions))

    def harvest(self, *, contiguous_only: bool) -> tuple[list[Entry], dict[TopicPartition, int]]:
        """Records to send now and the offsets to commit: the finished head of each
        partition (its next offset to read). With ``contiguous_only`` (outputs must be
        committed with their offsets) only those heads are sent; else every record that
        finished since the last harvest."""
        send: list[Entry] = []
        if not contiguous_only:
            send = [e for e in self.finished if not e.gone and not e.sent]
            for e in send:
                e.sent = True
        self.finished.clear()
        offsets: dict[TopicPartition, int] = {}
        for tp, queue in self.parts.items():
            index = self.index[tp]
            while queue and queue[0].state == DONE:
                e = queue.popleft()
                del index[e.rec.offset]
                self.count -= 1
                if not e.sent:
                    e.sent = True
                    send.append(e)
                offsets[tp] = e.rec.offset + 1
        return send, offsets

    def drop(self, parts: list[TopicPartition] | None = None) -> None:
        """Forget the records of ``parts`` (revoked; None: every partition, rewound after
        an abort): running ones finish, their results unused; the partitions' next owner
        (or this agent, reading again) redoes them."""
        for tp in list(self.parts) if parts is None else parts:
            for e in self.parts.pop(tp, ()):
                e.gone = True
                if e.state != DONE:
                    e.state = WAITING  # never started again
                self.count -= 1
            self.index.pop(tp, None)
            # lanes stay: what they hold is skipped, and a record read again later
            # queues behind a running one of its key (never two at once)
        self.deferrals = [d for d in self.deferrals if d.tp in self.parts]

    async def cancel(self) -> None:
        """Stop every running record (the agent stops; they are redone from the offsets)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
