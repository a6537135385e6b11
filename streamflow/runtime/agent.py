"""The agent loop: poll -> process -> produce -> commit. The only I/O loop there is.

Commit order (at-least-once)::

    1. poll a batch; process every record (ChainProcessor) into output messages
    2. send every output message of the batch to the producer
    3. when the commit interval has passed (or the input ran dry):
       flush the producer - wait until the broker confirmed every message
    4. only then commit, per partition, the offset after its highest contiguous
       finished record

A crash between 3 and 4 re-delivers the batch (duplicates downstream, never loss). On the
embedded transport (``local://``) 3 and 4 are one SQLite transaction in every mode, so a
crash there loses and doubles nothing.

Commit order (exactly-once)::

    1. begin a transaction before the first output of an interval
    2. send every output message inside it
    3. when the commit interval has passed: send_offsets_to_transaction(positions)
       and commit the transaction - outputs and input offsets become visible together
    4. on an abortable error: abort, rewind the consumer to its committed offsets, redo

Records of one partition and one key are processed in order; different keys run
concurrently (up to the flow's ``concurrency``) when the agent has async steps, with no
batch barrier (flowloop.py: a slow key holds back its own key and its partition's
offset, nothing else); on an ``ordered: true`` flow the records of a partition run one
after the other.

Containment: a record is one execution's business. Whatever goes wrong with it - its
processor raising something unexpected, an output the producer refuses (over
``message.max.bytes``) - ends that execution as failed with the record dead-lettered as it
arrived (``contain.py``), and the offset moves past it. Only ``FatalError`` (and a
``ConfigError``) leaves ``run``; ``App`` restarts an agent that stopped otherwise.

The lean loop: while records are waiting, an agent takes what its consumer already
fetched without leaving the event loop (a poll with no wait); when there is nothing it
looks again after COALESCE (3 ms, a timer on the loop), and only then waits for records
on its I/O thread. An exactly-once agent commits once its input was idle IDLE_COMMIT
(20 ms): its outputs are visible only then. An agent whose steps are all synchronous runs
its records one after the other with no asyncio task or coroutine per record, and yields
to the other agents once per batch. Between commits a Kafka producer sends on its own
(``linger.ms``); only a producer that buffers until flushed (``local://``) is flushed when
the input ran dry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar, runtime_checkable

from streamflow.errors import FatalError
from streamflow.errtext import describe
from streamflow.runtime.contain import Containment, Out
from streamflow.runtime.flowloop import Continuous, producer_congested
from streamflow.runtime.processor import ChainProcessor, Deferred, Processor
from streamflow.topology.exprfuncs import DEFAULT_MAX_VALUE, VALUE_LIMIT
from streamflow.transport.base import (
    Consumer,
    DeliveryError,
    MessageRejected,
    Producer,
    Record,
    TopicPartition,
    TransactionAborted,
    Transport,
)

log = logging.getLogger("streamflow.runtime")


class CommitFailed(Exception):
    """A commit inside a revocation failed and was aborted: the agent restarts."""


@runtime_checkable
class Stateful(Protocol):
    """A processor that keeps state between records (``aggregate``, see state.py)."""

    def tick(self, assignment: Sequence[TopicPartition]) -> list[Out]:
        """Before each batch, on the agent's I/O thread: restore newly assigned partitions,
        drop revoked ones; return what due timers produce (and their state changes)."""
        ...

    def reset(self) -> None:
        """The last batch was not committed: forget the state (restored at the next tick)."""
        ...


LAG_INTERVAL = 5.0  # seconds between consumer-lag readings
KEEPALIVE = 2.0  # a batch running longer polls (paused) this often: see _process_alive
# s without a record after which an agent whose outputs are visible only at commit
# (exactly-once) commits before its interval is up: the last outputs of a burst are not
# held back for up to commit_interval (at most one early commit per idle gap)
IDLE_COMMIT = 0.02
# s an agent that has taken every fetched record waits on the event loop (a timer, no
# thread hop) for more before it waits on its I/O thread: at a trickle, records are taken
# a few at a time instead of one hop per record (half the CPU at 2,000 events/s)
COALESCE = 0.003
R = TypeVar("R")


class StepAgent:
    def __init__(
        self,
        transport: Transport,
        processor: Processor,
        containment: Containment,
        *,
        exactly_once: bool,
        commit_interval: float,
        max_batch: int,
        concurrency: int,
        transactional_id: str | None = None,
        max_value_size: int = DEFAULT_MAX_VALUE,
    ) -> None:
        self.transport = transport
        self.processor = processor
        self.containment = containment
        self.plan = processor.agent
        self.exactly_once = exactly_once
        self.commit_interval = commit_interval
        self.max_batch = max_batch
        self.limit = asyncio.Semaphore(concurrency)
        self.transactional_id = transactional_id
        self.max_value_size = max_value_size
        self.metrics = processor.metrics
        self.next_lag_check = 0.0
        self.processed = 0  # records processed (produced, maybe not yet committed)
        self.committed = 0  # records whose offsets are committed
        self._uncommitted = 0
        self.contained = 0  # records dead-lettered by the agent itself (see contain.py)
        self.unflushed = False  # timer outputs (stateful agents) not yet flushed/committed
        self.stateful = processor if isinstance(processor, Stateful) else None
        # one thread per agent for blocking broker calls: a shared pool would starve
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sf-{self.plan.name}")

    async def _io(self, fn: Callable[..., R], *args: object) -> R:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set. May be called again after it raised (App's
        supervisor does): it starts over from the committed offsets."""
        # the flow's bound on values its expressions build, for this agent's task (and the
        # tasks it starts: they copy its context)
        VALUE_LIMIT.set(self.max_value_size)
        # one thread per agent for blocking broker calls: a shared pool would starve
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sf-{self.plan.name}")
        consumer = await self._io(self.transport.consumer, self.plan.group, [self.plan.input_topic])
        # on the I/O thread: a transactional producer's init_transactions waits for the
        # broker, and the event loop must keep serving the other agents meanwhile
        txn_id = self.transactional_id if self.exactly_once else None
        producer = await self._io(
            functools.partial(self.transport.producer, transactional_id=txn_id)
        )
        # at-least-once on a transport whose producer commits outputs and offsets in one
        # transaction anyway (local://): use it, a crash then doubles nothing
        self.atomic = self.exactly_once or producer.atomic_offsets
        try:
            await self._loop(consumer, producer, stop)
        finally:
            try:
                await self._io(producer.close)
            except Exception as exc:  # already failing: keep the first error
                log.warning("agent %s: closing its producer: %s", self.plan.name, exc)
            await self._io(consumer.close)
            self.io.shutdown(wait=False)

    async def _poll(self, consumer: Consumer, wait: float) -> list[Record]:
        """What the consumer already fetched, taken on this thread (then a yield to the other
        agents of the loop); when there is none, what it fetched after COALESCE s, and only
        then a wait of up to ``wait`` s on the I/O thread."""
        records = consumer.poll(self.max_batch, 0.0) if not self.paused_until else []
        if not records and wait > 0 and not self.paused_until:
            # caught up: let a few more records arrive (a timer on the loop, no thread hop)
            await asyncio.sleep(min(wait, COALESCE))
            records = consumer.poll(self.max_batch, 0.0)
        if records:
            await asyncio.sleep(0)
            return records
        return await self._io(consumer.poll, self.max_batch, max(0.0, wait))

    async def _loop(self, consumer: Consumer, producer: Producer, stop: asyncio.Event) -> None:
        self.pending: dict[TopicPartition, int] = {}
        self.paused_until: dict[TopicPartition, float] = {}
        self.in_txn = False
        self.broken: Exception | None = None
        self.revoke_aborted = False  # see _abort_on_revoke
        consumer.on_revoke = functools.partial(self._revoked, consumer, producer)
        self.flowing: Continuous | None = None
        if not self.processor.all_sync and self.stateful is None:
            self.flowing = Continuous(self, consumer, producer)
            await self.flowing.run(stop)
        else:
            self.processor.summarize()  # a batch's `completed` events in one record
            await self._batches(consumer, producer, stop)

    async def _batches(self, consumer: Consumer, producer: Producer, stop: asyncio.Event) -> None:
        """The batch loop: all-sync agents (the lean loop) and stateful ones (a tick
        between batches)."""
        last_commit = time.monotonic()
        while not stop.is_set():
            records = await self._poll(consumer, self._batch_wait(last_commit))
            if await self._rewind_if_aborted(consumer):
                records = []
            self._raise_broken()
            if self.stateful is not None:
                await self._tick(self.stateful, consumer, producer)
            if records:
                self.metrics.consumed.inc(len(records))
                self.metrics.in_flight.set(len(records))
                if self.processor.all_sync:  # one synchronous pass: nothing to keep alive
                    results, done = await self._process(records)
                else:
                    results, done = await self._process_alive(consumer, records)
                self.metrics.in_flight.set(0)
                self.processor.flush_metrics()
                summary = self.processor.take_summary()
                if self.revoke_aborted:  # polled (kept alive) mid-batch: read it again
                    continue
                self._advance_offsets(consumer, records, done)
                if self.exactly_once and not self.in_txn:
                    await self._io(producer.begin)
                    self.in_txn = True
                # the lean loop sends inline (no thread hop per batch) unless the
                # producer's queue fills up: a full queue must not block the event loop
                if self.processor.all_sync and not producer_congested(producer):
                    self._send(producer, records, results, done, summary)
                else:
                    await self._io(self._send, producer, records, results, done, summary)
                self.processed += sum(done)
                self._uncommitted += sum(done)
            self._resume_due(consumer)
            # commit when the interval is up or the input is idle; between commits an
            # at-least-once agent that drained its input flushes, so the next hop sees
            # the outputs at once (exactly-once outputs are visible only at commit)
            due = time.monotonic() - last_commit >= self.commit_interval
            if (self.pending or self.unflushed) and (due or not records or stop.is_set()):
                await self._io(self._commit, consumer, producer)
                last_commit = time.monotonic()
            elif records and len(records) < self.max_batch and not self.exactly_once:
                if self.atomic:  # outputs only with their offsets (local://)
                    await self._io(self._commit, consumer, producer)
                    last_commit = time.monotonic()
                elif getattr(producer, "buffers_until_flush", True):
                    await self._io(producer.flush)
            await self._check_lag(consumer)
        if self.pending or self.unflushed:  # stopped after a batch: commit it, or it is redone
            await self._io(self._commit, consumer, producer)

    def _batch_wait(self, last_commit: float) -> float:
        """Seconds to wait for records: no longer than until the next commit or the next
        resume; outputs visible only at commit (exactly-once) wait IDLE_COMMIT s at most."""
        wait = 0.5
        if self.pending:
            wait = min(wait, self.commit_interval - (time.monotonic() - last_commit))
            if self.atomic:
                wait = min(wait, IDLE_COMMIT)
        if self.paused_until:
            wait = min(wait, min(self.paused_until.values()) - time.monotonic())
        return wait

    async def _check_lag(self, consumer: Consumer) -> None:
        if time.monotonic() >= self.next_lag_check:
            self.next_lag_check = time.monotonic() + LAG_INTERVAL
            for (topic, part), lag in (await self._io(consumer.lag)).items():
                self.metrics.lag(topic, part, lag)

    async def _tick(self, stateful: Stateful, consumer: Consumer, producer: Producer) -> None:
        """Restore state of newly assigned partitions, fire due timers (state.py)."""
        timed = await self._io(stateful.tick, consumer.assignment())
        if timed:
            if self.exactly_once and not self.in_txn:
                await self._io(producer.begin)
                self.in_txn = True
            await self._io(_send_all, producer, timed)
            self.unflushed = True

    def _revoked(self, consumer: Consumer, producer: Producer, parts: list[TopicPartition]) -> None:
        """Partitions are being taken away: commit what is done. Called inside
        ``consumer.poll`` - on the I/O thread or, in the lean loop, on the event-loop
        thread - so it never raises: an exception would leave ``poll`` (and a
        ``FatalError`` would stop the process). A commit that fails here (a fenced or
        fatally failed producer, an unanswered coordinator, an offset fetch refused mid
        rebalance) is aborted instead: nothing of it is visible, the partitions' new owner
        redoes the work, and the loop restarts the agent (a new producer) after ``poll``."""
        if self.exactly_once:
            self._abort_on_revoke(producer)
            return
        try:
            if self.flowing is not None:
                self.flowing.harvest_now()
            self._commit(consumer, producer)
        except Exception as exc:
            log.warning(
                "agent %s: commit on revoking %s failed (%s); aborting, the new owner "
                "redoes the work",
                self.plan.name,
                ", ".join(f"{t}[{p}]" for t, p in parts),
                describe(exc),
            )
            if self.atomic:
                with contextlib.suppress(Exception):
                    producer.abort()
                self.in_txn = False
            if self.stateful is not None:
                self.stateful.reset()  # read again from the changelog after the restart
            self.broken = exc
        finally:
            if self.flowing is not None:  # the new owner redoes what is not committed
                self.flowing.lanes.drop(parts)

    def _abort_on_revoke(self, producer: Producer) -> None:
        """Exactly-once: partitions are being taken away, so abort the open transaction
        rather than commit it. Committing would send the input offsets to the group
        coordinator in the middle of the rebalance, which can stall until the rebalance
        gives up on this member (seen: 75 s). Aborting talks to the transaction
        coordinator only; nothing of the transaction is visible, and what it held is read
        again from the committed offsets (``_rewind_if_aborted``, after ``poll``) or by
        the partitions' new owner. The cost: the work since the last commit is redone."""
        if self.flowing is not None:
            self.flowing.lanes.drop()
        try:
            if self.in_txn or self.pending or self.unflushed:
                producer.abort()
        except Exception as exc:  # fenced or unusable: restart with a new producer
            self.broken = exc
        self.in_txn, self.pending, self._uncommitted, self.unflushed = False, {}, 0, False
        if self.stateful is not None:
            self.stateful.reset()  # read again from the changelog
        self.revoke_aborted = True

    async def _rewind_if_aborted(self, consumer: Consumer) -> bool:
        """After ``poll``: when a revocation aborted the transaction, seek the partitions
        kept to their committed offsets; True - the records of that poll are dropped (they
        are read again)."""
        if not self.revoke_aborted:
            return False
        self.revoke_aborted = False
        if self.exactly_once:
            self.metrics.aborts.inc()
        await self._io(consumer.rewind)
        if self.flowing is not None:
            self.flowing.lanes.drop()
        return True

    def _raise_broken(self) -> None:
        """Stop the agent (App's supervisor restarts it from the committed offsets) after
        a commit on revocation failed: its producer may be unusable."""
        if self.broken is not None:
            exc, self.broken = self.broken, None
            raise CommitFailed(f"agent {self.plan.name}: commit on revocation: {exc}") from exc

    def _commit(self, consumer: Consumer, producer: Producer) -> None:
        """Steps 3-4 of the commit order (module docstring). Runs on the agent's I/O thread,
        also from inside ``poll`` when partitions are being revoked."""
        offsets, self.pending = self.pending, {}
        count, self._uncommitted = self._uncommitted, 0
        unflushed, self.unflushed = self.unflushed, False
        if not offsets and not unflushed:
            return
        started = time.perf_counter()
        try:
            if self.atomic:
                self.in_txn = False
                producer.commit_transaction(consumer, offsets)
                self.metrics.commits.inc()
            else:
                producer.flush()
                if offsets:
                    consumer.commit(offsets)
            self.committed += count
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
        except (TransactionAborted, DeliveryError) as exc:
            if self.exactly_once:
                self.metrics.aborts.inc()
            # nothing of this batch is committed: read it again from the committed offsets
            log.warning("agent %s: %s; rewinding to the committed offsets", self.plan.name, exc)
            consumer.rewind()
            if self.flowing is not None:  # read again from the committed offsets
                self.flowing.lanes.drop()
            if self.stateful is not None:
                self.stateful.reset()  # its state is read again from the changelog

    def _send(
        self,
        producer: Producer,
        records: Sequence[Record],
        results: Sequence[list[Out]],
        done: list[bool] | None,
        summary: Sequence[Out] = (),
    ) -> None:
        """Queue the outputs of every handled record (I/O thread), then the batch's summary
        records. A message the producer refuses (too large ...) fails its record alone:
        dead-lettered as it arrived."""
        for rec, outs, ok in zip(records, results, done or [True] * len(records), strict=True):
            if not ok or not outs:
                continue
            try:
                for out in outs:
                    producer.send(out.topic, out.value, out.key, out.headers, out.partition)
            except MessageRejected as exc:
                # the messages of this record sent before the refused one stay (events,
                # at most a branch's output): at-least-once, the execution ends failed
                for out in self._contain(rec, exc):
                    try:
                        producer.send(out.topic, out.value, out.key, out.headers)
                    except MessageRejected as again:
                        log.error("agent %s: cannot dead-letter: %s", self.plan.name, again)
        for out in summary:
            try:
                producer.send(out.topic, out.value, out.key, out.headers)
            except MessageRejected as exc:  # the outputs went: only the record of their end
                log.error("agent %s: cannot write a summary record: %s", self.plan.name, exc)

    def _contain(self, rec: Record, exc: Exception) -> list[Out]:
        """The dead letter (and failed event) of a record that failed outside the
        processor's own handling."""
        self.contained += 1
        if not isinstance(exc, MessageRejected):
            log.error(
                "agent %s: unexpected error on record %s[%d]@%d",
                self.plan.name,
                rec.topic,
                rec.partition,
                rec.offset,
                exc_info=exc,
            )
        error = describe(exc)
        self.metrics.for_step(self.containment.step).dead_lettered.inc()
        return self.containment.dead_letter(rec, error, exc.__class__.__name__)

    async def _process_alive(
        self, consumer: Consumer, records: Sequence[Record]
    ) -> tuple[list[list[Out]], list[bool]]:
        """``_process``, keeping the consumer a live member of its group however long the
        batch takes (a slow target, an ``ordered`` retry): past KEEPALIVE seconds every
        assigned partition is paused and the consumer polled every KEEPALIVE seconds, so
        ``max.poll.interval.ms`` never runs out - no eviction, no rebalance, no redelivery.
        Paused partitions yield nothing (a stray record is sought back and read again);
        the partitions are resumed when the batch is done."""
        task = asyncio.ensure_future(self._process(records))
        paused: set[TopicPartition] = set()
        try:
            while True:
                finished, _ = await asyncio.wait({task}, timeout=KEEPALIVE)
                if finished:
                    return task.result()
                more = [
                    tp
                    for tp in consumer.assignment()
                    if tp not in paused and tp not in self.paused_until
                ]
                if more:
                    await self._io(consumer.pause, more)
                    paused.update(more)
                for rec in await self._io(consumer.poll, 1, 0.0):
                    await self._io(consumer.seek, (rec.topic, rec.partition), rec.offset)
        finally:
            if paused:
                held = set(consumer.assignment())
                await self._io(consumer.resume, [tp for tp in paused if tp in held])

    async def _process(self, records: Sequence[Record]) -> tuple[list[list[Out]], list[bool]]:
        """Outputs of each record of the batch, and which records were handled. A record
        whose processor raised ``Deferred`` is not handled: it and every later record of its
        partition (or of every partition, for scope "all") are read again once the deferral
        ends. Any other error but ``FatalError`` is contained: the record is dead-lettered."""
        proc = self.processor
        done = [False] * len(records)
        results: list[list[Out]] = [[] for _ in records]
        self.deferred: dict[TopicPartition, float] = {}
        self.defer_all: float | None = None
        if proc.all_sync:
            handle, deferred = proc.handle_sync, self.deferred
            for i, rec in enumerate(records):
                # a deferral: its partition (or every one) waits
                if self.defer_all is not None or (
                    deferred and (rec.topic, rec.partition) in deferred
                ):
                    continue
                try:
                    results[i] = handle(rec)
                    done[i] = True
                except Deferred as d:
                    self._defer((rec.topic, rec.partition), d)
                except FatalError:
                    raise
                except Exception as exc:
                    results[i] = self._contain(rec, exc)
                    done[i] = True
            return results, done
        by_key: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
        # an ordered flow retries in place: the whole partition waits, not only the key
        ordered = isinstance(proc, ChainProcessor) and proc.flow.doc.ordered
        for i, rec in enumerate(records):
            by_key[(rec.partition, None if ordered else rec.key)].append(i)

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
                    except FatalError:
                        raise
                    except Exception as exc:
                        results[i] = self._contain(records[i], exc)
                        done[i] = True

        await asyncio.gather(*(run_key(ix) for ix in by_key.values()))
        return results, done

    def _defer(self, tp: TopicPartition, d: Deferred) -> None:
        if d.all_partitions:
            self.defer_all = max(self.defer_all or 0.0, d.until)
        else:
            self.deferred[tp] = max(self.deferred.get(tp, 0.0), d.until)

    def _advance_offsets(
        self, consumer: Consumer, records: Sequence[Record], done: list[bool]
    ) -> None:
        """Pending offsets move to the first record not handled (per partition); deferred
        partitions are sought back to it and paused until the deferral ends. A record
        handled after that one (another key) is read again too: it is marked not done, so
        its outputs are not sent now (exactly-once must not produce them twice)."""
        first_open: dict[TopicPartition, int] = {}
        held = set(consumer.assignment())
        for i, rec in enumerate(records):
            tp = (rec.topic, rec.partition)
            # revoked while the batch ran (its new owner redoes it), or after an open one
            if tp not in held or tp in first_open:
                done[i] = False
            elif not done[i]:
                first_open[tp] = rec.offset
            else:
                self.pending[tp] = rec.offset + 1
        if self.defer_all is not None:
            until = self.defer_all
            for tp in consumer.assignment():
                self.paused_until[tp] = until
            consumer.pause(consumer.assignment())
        for tp, until in self.deferred.items():
            if tp in held:
                self.paused_until[tp] = until
                consumer.pause([tp])
        for tp, offset in first_open.items():
            consumer.seek(tp, offset)

    def _resume_due(self, consumer: Consumer, keep: set[TopicPartition] | None = None) -> None:
        """Resume the partitions whose deferral ended (but those in ``keep``: paused
        for another reason)."""
        if not self.paused_until:
            return
        now = time.monotonic()
        due = [tp for tp, until in self.paused_until.items() if until <= now]
        if due:
            for tp in due:
                del self.paused_until[tp]
            consumer.resume([tp for tp in due if not keep or tp not in keep])


def _send_all(producer: Producer, outs: Sequence[Out]) -> None:
    """Queue ``outs`` (a stateful agent's timer outputs; I/O thread)."""
    for out in outs:
        producer.send(out.topic, out.value, out.key, out.headers, out.partition)
