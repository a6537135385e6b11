"""Continuous processing: the loop of an agent with async steps (agent.py).

Records are taken as they come and run per key (per partition, ``ordered``) in lanes
(lanes.py); nothing waits for a batch. Per partition the committed offset is the one after
its finished head - the contiguous prefix, as faust's consumer commits up to the first gap
in its acknowledgements - so a record still running holds back its own partition's
*offset* only. Its outputs:

- at-least-once on Kafka: sent as soon as the record finishes (a crash before its offset
  is committed redoes it: a duplicate, never a loss);
- exactly-once, and ``local://`` in every mode (outputs become visible only with their
  offsets): held until the record is at its partition's head, then sent and committed
  together - an output is never visible while its input offset is not committed.

The consumer is polled at least every POLL_TICK s whatever runs (``max.poll.interval.ms``
never runs out); holding ``max_batch`` records, the agent pauses its partitions and polls
on. Outputs go to the producer from the event loop while its queue has room, else from
the agent's I/O thread: a full producer queue does not block the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from streamflow.runtime.lanes import Lanes
from streamflow.runtime.processor import ChainProcessor
from streamflow.transport.base import Consumer, Producer, Record, TopicPartition

if TYPE_CHECKING:
    from streamflow.runtime.agent import StepAgent


def producer_congested(producer: Producer) -> bool:
    """Whether ``send`` might wait for room in the producer's queue (a Kafka producer
    more than half full; a producer without ``congested`` never waits)."""
    congested = getattr(producer, "congested", None)
    return bool(congested()) if congested is not None else False


POLL_TICK = 0.05  # s: how often the consumer is polled while records run
IDLE_WAIT = 0.5  # s: the longest wait for records when none is held
COALESCE = 0.005  # s: the shortest time between two rounds while records run
DRAIN = 30.0  # s: on stop, how long running records may still finish (then: redone)


class Continuous:
    """One run of an agent's continuous loop (its consumer and producer)."""

    def __init__(self, agent: StepAgent, consumer: Consumer, producer: Producer) -> None:
        self.agent = agent
        self.consumer = consumer
        self.producer = producer
        proc = agent.processor
        ordered = isinstance(proc, ChainProcessor) and proc.flow.doc.ordered
        self.lanes = Lanes(proc.handle, agent._contain, agent.limit, ordered=ordered)
        self.full: set[TopicPartition] = set()  # paused: max_batch records are held
        self.last_commit = time.monotonic()
        self.polled = 0.0  # when the consumer was last polled while records ran

    async def run(self, stop: asyncio.Event) -> None:
        agent, lanes = self.agent, self.lanes
        drain_until = 0.0
        try:
            while True:
                if stop.is_set():
                    drain_until = drain_until or time.monotonic() + DRAIN
                    if not lanes.count or time.monotonic() >= drain_until:
                        break
                records = await self._poll(0 if stop.is_set() else agent.max_batch - lanes.count)
                if await agent._rewind_if_aborted(self.consumer):
                    records = []
                agent._raise_broken()
                if lanes.error is not None:
                    raise lanes.error
                if records:
                    agent.metrics.consumed.inc(len(records))
                    self._admit(records)
                await self.harvest()
                agent.metrics.in_flight.set(lanes.count)
                due = time.monotonic() - self.last_commit >= agent.commit_interval
                if agent.pending and (due or not lanes.count or stop.is_set()):
                    await agent._io(agent._commit, self.consumer, self.producer)
                    self.last_commit = time.monotonic()
                await agent._check_lag(self.consumer)
            await self.harvest()
            if agent.pending:
                await agent._io(agent._commit, self.consumer, self.producer)
        finally:
            await lanes.cancel()
            agent.metrics.in_flight.set(0)

    async def _poll(self, room: int) -> list[Record]:
        """Records for up to ``room`` more: without waiting on this thread while records
        run (first a wait for one of them to finish, up to POLL_TICK s), else up to
        IDLE_WAIT s on the I/O thread. With no room the partitions are paused, and the
        consumer still polled (a live member of its group)."""
        agent, consumer, lanes = self.agent, self.consumer, self.lanes
        self._apply_deferrals()
        agent._resume_due(consumer, keep=self.full)
        if room <= 0:
            more = [
                tp
                for tp in consumer.assignment()
                if tp not in self.full and tp not in agent.paused_until
            ]
            if more:
                consumer.pause(more)
                self.full.update(more)
        elif self.full:
            held = set(consumer.assignment())
            consumer.resume([tp for tp in self.full if tp in held])
            self.full.clear()
        if not lanes.count:
            return await agent._io(consumer.poll, max(room, 1), self._wait(IDLE_WAIT))
        await lanes.wait(self._wait(POLL_TICK))
        # records finishing within COALESCE s of each other are handed on together
        gap = COALESCE - (time.monotonic() - self.polled)
        if gap > 0:
            await asyncio.sleep(gap)
        self.polled = time.monotonic()
        return consumer.poll(max(room, 1), 0.0)

    def _wait(self, longest: float) -> float:
        """Seconds to wait: at most ``longest``, until the next commit or resume."""
        agent = self.agent
        wait = longest
        if agent.pending:
            wait = min(wait, agent.commit_interval - (time.monotonic() - self.last_commit))
        if agent.paused_until:
            wait = min(wait, min(agent.paused_until.values()) - time.monotonic())
        return max(0.0, wait)

    def _admit(self, records: Sequence[Record]) -> None:
        """Hand polled records to their lanes. A record of a paused partition (fetched
        before the pause took effect) is not taken: its partition is sought back to it."""
        strays: dict[TopicPartition, int] = {}
        paused = self.agent.paused_until
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp in strays:
                continue
            if tp in paused or tp in self.full:
                strays[tp] = rec.offset
                continue
            self.lanes.add(rec)
        for tp, offset in strays.items():
            self.consumer.seek(tp, offset)

    def _apply_deferrals(self) -> None:
        """Seek each deferred partition back to its first waiting record and pause it
        (every partition, for a deferral of them all: an open circuit) until it ends."""
        if not self.lanes.deferrals:
            return
        consumer, paused = self.consumer, self.agent.paused_until
        deferrals, self.lanes.deferrals = self.lanes.deferrals, []
        held = set(consumer.assignment())
        for d in deferrals:
            parts = sorted(held) if d.all_partitions else [d.tp]
            for tp in parts:
                paused[tp] = max(paused.get(tp, 0.0), d.until)
            consumer.pause([tp for tp in parts if tp in held])
            if d.tp in held:
                consumer.seek(d.tp, d.offset)

    async def harvest(self) -> None:
        """Send what may be sent now; move the pending offsets to the finished heads."""
        agent, producer = self.agent, self.producer
        held = self.lanes.count
        send, offsets = self.lanes.harvest(contiguous_only=agent.atomic)
        if not send and not offsets:
            return
        agent.processor.flush_metrics()
        if send:
            if agent.exactly_once and not agent.in_txn:
                await agent._io(producer.begin)
                agent.in_txn = True
            recs, outs = [e.rec for e in send], [e.outs for e in send]
            if producer_congested(producer):  # a full producer queue must not block the loop
                await agent._io(agent._send, producer, recs, outs, None)
            else:  # room in the queue: no thread hop
                agent._send(producer, recs, outs, None)
        agent.pending.update(offsets)
        agent.processed += held - self.lanes.count
        agent._uncommitted += held - self.lanes.count

    def harvest_now(self) -> None:
        """``harvest`` inside a revocation (called from ``poll``: no awaiting there)."""
        agent, producer = self.agent, self.producer
        held = self.lanes.count
        send, offsets = self.lanes.harvest(contiguous_only=agent.atomic)
        if send:
            if agent.exactly_once and not agent.in_txn:
                producer.begin()
                agent.in_txn = True
            agent._send(producer, [e.rec for e in send], [e.outs for e in send], None)
        agent.pending.update(offsets)
        agent.processed += held - self.lanes.count
        agent._uncommitted += held - self.lanes.count
