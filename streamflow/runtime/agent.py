"""The agent loop: poll -> process -> produce -> commit. The only I/O loop there is.

Commit order (at-least-once)::

    1. poll a batch; process every record (ChainProcessor) into output messages
    2. send every output message of the batch to the producer
    3. when the commit interval has passed (or the input ran dry):
       flush the producer - wait until the broker confirmed every message
    4. only then commit, per partition, the offset after the last processed record

A crash between 3 and 4 re-delivers the batch (duplicates downstream, never loss).

Commit order (exactly-once)::

    1. begin a transaction before the first output of an interval
    2. send every output message inside it
    3. when the commit interval has passed: send_offsets_to_transaction(positions)
       and commit the transaction - outputs and input offsets become visible together
    4. on an abortable error: abort, rewind the consumer to its committed offsets, redo

Records of one partition and one key are processed in order; different keys of a batch
run concurrently (up to the flow's ``concurrency``) when the agent has async steps;
on an ``ordered: true`` flow the records of a partition run one after the other.

The lean loop: while records are waiting, an agent takes what its consumer already
fetched without leaving the event loop (a poll with no wait); only when there is nothing
does it wait for records on its I/O thread. An agent whose steps are all synchronous runs
its records one after the other with no asyncio task or coroutine per record, and yields
to the other agents once per batch. Between commits a Kafka producer sends on its own
(``linger.ms``); only a producer that buffers until flushed (``local://``) is flushed when
the input ran dry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from streamflow.runtime.processor import ChainProcessor, Deferred, Out, Processor
from streamflow.transport.base import (
    Consumer,
    DeliveryError,
    Producer,
    Record,
    TopicPartition,
    TransactionAborted,
    Transport,
)

log = logging.getLogger("streamflow.runtime")
LAG_INTERVAL = 5.0  # seconds between consumer-lag readings
R = TypeVar("R")


class StepAgent:
    def __init__(
        self,
        transport: Transport,
        processor: Processor,
        *,
        exactly_once: bool,
        commit_interval: float,
        max_batch: int,
        concurrency: int,
        transactional_id: str | None = None,
    ) -> None:
        self.transport = transport
        self.processor = processor
        self.plan = processor.agent
        self.exactly_once = exactly_once
        self.commit_interval = commit_interval
        self.max_batch = max_batch
        self.limit = asyncio.Semaphore(concurrency)
        self.transactional_id = transactional_id
        self.metrics = processor.metrics
        self.next_lag_check = 0.0
        self.processed = 0  # records processed (produced, maybe not yet committed)
        self.committed = 0  # records whose offsets are committed
        self._uncommitted = 0
        # one thread per agent for blocking broker calls: a shared pool would starve
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sf-{self.plan.name}")

    async def _io(self, fn: Callable[..., R], *args: object) -> R:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = await self._io(self.transport.consumer, self.plan.group, [self.plan.input_topic])
        producer = self.transport.producer(
            transactional_id=self.transactional_id if self.exactly_once else None
        )
        try:
            await self._loop(consumer, producer, stop)
        finally:
            await self._io(producer.close)
            await self._io(consumer.close)
            self.io.shutdown(wait=False)

    async def _loop(self, consumer: Consumer, producer: Producer, stop: asyncio.Event) -> None:
        self.pending: dict[TopicPartition, int] = {}
        self.paused_until: dict[TopicPartition, float] = {}
        self.in_txn = False
        consumer.on_revoke = lambda _parts: self._commit(consumer, producer)
        last_commit = time.monotonic()
        while not stop.is_set():
            # wait for records no longer than until the next commit or the next resume
            wait = 0.5
            if self.pending:
                wait = min(wait, self.commit_interval - (time.monotonic() - last_commit))
            if self.paused_until:
                wait = min(wait, min(self.paused_until.values()) - time.monotonic())
            # what the consumer already fetched, on this thread; else wait on the I/O thread
            records = consumer.poll(self.max_batch, 0.0) if not self.paused_until else []
            if not records:
                records = await self._io(consumer.poll, self.max_batch, max(0.0, wait))
            else:
                await asyncio.sleep(0)  # let the other agents of this loop run
            if records:
                if self.exactly_once and not self.in_txn:
                    producer.begin()
                    self.in_txn = True
                self.metrics.consumed.inc(len(records))
                self.metrics.in_flight.set(len(records))
                outs, done = await self._process(records)
                for out in outs:
                    producer.send(out.topic, out.value, out.key, out.headers)
                self.metrics.in_flight.set(0)
                self.processor.flush_metrics()
                self._advance_offsets(consumer, records, done)
                self.processed += sum(done)
                self._uncommitted += sum(done)
            self._resume_due(consumer)
            # commit when the interval is up or the input is idle; between commits an
            # at-least-once agent that drained its input flushes, so the next hop sees
            # the outputs at once (exactly-once outputs are visible only at commit)
            due = time.monotonic() - last_commit >= self.commit_interval
            if self.pending and (due or not records or stop.is_set()):
                await self._io(self._commit, consumer, producer)
                last_commit = time.monotonic()
            elif (
                records
                and len(records) < self.max_batch
                and not self.exactly_once
                and getattr(producer, "buffers_until_flush", True)
            ):
                await self._io(producer.flush)
            if time.monotonic() >= self.next_lag_check:
                self.next_lag_check = time.monotonic() + LAG_INTERVAL
                for (topic, part), lag in (await self._io(consumer.lag)).items():
                    self.metrics.lag(topic, part, lag)
        if self.pending:  # stopped right after a batch: commit it, or it is redone on restart
            await self._io(self._commit, consumer, producer)

    def _commit(self, consumer: Consumer, producer: Producer) -> None:
        """Steps 3-4 of the commit order (module docstring). Runs on the agent's I/O thread,
        also from inside ``poll`` when partitions are being revoked."""
        offsets, self.pending = self.pending, {}
        count, self._uncommitted = self._uncommitted, 0
        if not offsets:
            return
        started = time.perf_counter()
        try:
            if self.exactly_once:
                self.in_txn = False
                producer.commit_transaction(consumer, offsets)
                self.metrics.commits.inc()
            else:
                producer.flush()
                consumer.commit(offsets)
            self.committed += count
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
        except (TransactionAborted, DeliveryError) as exc:
            if self.exactly_once:
                self.metrics.aborts.inc()
            # nothing of this batch is committed: read it again from the committed offsets
            log.warning("agent %s: %s; rewinding to the committed offsets", self.plan.name, exc)
            consumer.rewind()

    async def _process(self, records: Sequence[Record]) -> tuple[list[Out], list[bool]]:
        """Outputs of the batch, and which records were handled. A record whose processor
        raised ``Deferred`` is not handled: it and every later record of its partition
        (or of every partition, for scope "all") are read again once the deferral ends."""
        proc = self.processor
        done = [False] * len(records)
        self.deferred: dict[TopicPartition, float] = {}
        self.defer_all: float | None = None
        if proc.all_sync:
            outs: list[Out] = []
            for i, rec in enumerate(records):
                tp = (rec.topic, rec.partition)
                if self.defer_all is not None or tp in self.deferred:
                    continue
                try:
                    outs.extend(proc.handle_sync(rec))
                    done[i] = True
                except Deferred as d:
                    self._defer(tp, d)
            return outs, done
        by_key: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
        # an ordered flow retries in place: the whole partition waits, not only the key
        ordered = isinstance(proc, ChainProcessor) and proc.flow.doc.ordered
        for i, rec in enumerate(records):
            by_key[(rec.partition, None if ordered else rec.key)].append(i)
        results: list[list[Out]] = [[] for _ in records]

        async def run_key(indexes: list[int]) -> None:
            async with self.limit:
                for i in indexes:
                    tp = (records[i].topic, records[i].partition)
                    if self.defer_all is not None or tp in self.deferred:
                        return
                    try:
                        results[i] = await proc.handle(records[i])
                        done[i] = True
                    except Deferred as d:
                        self._defer(tp, d)
                        return

        await asyncio.gather(*(run_key(ix) for ix in by_key.values()))
        return [o for r in results for o in r], done

    def _defer(self, tp: TopicPartition, d: Deferred) -> None:
        if d.all_partitions:
            self.defer_all = max(self.defer_all or 0.0, d.until)
        else:
            self.deferred[tp] = max(self.deferred.get(tp, 0.0), d.until)

    def _advance_offsets(
        self, consumer: Consumer, records: Sequence[Record], done: list[bool]
    ) -> None:
        """Pending offsets move to the first record not handled (per partition); deferred
        partitions are sought back to it and paused until the deferral ends."""
        first_open: dict[TopicPartition, int] = {}
        for rec, ok in zip(records, done, strict=True):
            tp = (rec.topic, rec.partition)
            if not ok:
                first_open.setdefault(tp, rec.offset)
            elif tp not in first_open:
                self.pending[tp] = rec.offset + 1
        if self.defer_all is not None:
            until = self.defer_all
            for tp in consumer.assignment():
                self.paused_until[tp] = until
            consumer.pause(consumer.assignment())
        for tp, until in self.deferred.items():
            self.paused_until[tp] = until
            consumer.pause([tp])
        for tp, offset in first_open.items():
            consumer.seek(tp, offset)

    def _resume_due(self, consumer: Consumer) -> None:
        if not self.paused_until:
            return
        now = time.monotonic()
        due = [tp for tp, until in self.paused_until.items() if until <= now]
        if due:
            for tp in due:
                del self.paused_until[tp]
            consumer.resume(due)
