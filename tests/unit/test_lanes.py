"""The in-flight bookkeeping of the continuous loop (runtime/lanes.py): per key in order,
the committed offset only up to the first unfinished record of a partition, outputs
held or sent at once, a deferral's records read again without running twice."""

from __future__ import annotations

import asyncio

from streamflow.runtime.contain import Out
from streamflow.runtime.lanes import Lanes
from streamflow.runtime.processor import Deferred
from streamflow.transport.base import Record


def rec(offset: int, key: bytes, partition: int = 0) -> Record:
    return Record("in", partition, offset, key, b"%d" % offset)


class Gates:
    """A processor whose records finish when the test opens their gate."""

    def __init__(self) -> None:
        self.gates: dict[int, asyncio.Event] = {}
        self.started: list[int] = []
        self.defer: set[int] = set()

    def gate(self, offset: int) -> asyncio.Event:
        return self.gates.setdefault(offset, asyncio.Event())

    async def handle(self, r: Record) -> list[Out]:
        self.started.append(r.offset)
        if r.offset in self.defer:
            self.defer.discard(r.offset)
            raise Deferred(until=0.0)
        await self.gate(r.offset).wait()
        return [Out("out", r.value)]


def lanes_for(g: Gates, *, ordered: bool = False, limit: int = 16) -> Lanes:
    def contain(r: Record, exc: Exception) -> list[Out]:
        raise AssertionError(exc)

    return Lanes(g.handle, contain, asyncio.Semaphore(limit), ordered=ordered)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_slow_record_holds_its_partitions_offset_not_the_other_keys() -> None:
    g = Gates()
    lanes = lanes_for(g)
    for r in [rec(0, b"slow"), rec(1, b"a"), rec(2, b"b"), rec(3, b"a", partition=1)]:
        lanes.add(r)
    await settle()
    assert sorted(g.started) == [0, 1, 2, 3]  # different keys run at once
    for o in (1, 2, 3):
        g.gate(o).set()
    await settle()
    # sent at once (at-least-once on Kafka), but partition 0 commits nothing past 0
    send, offsets = lanes.harvest(contiguous_only=False)
    assert sorted(e.rec.offset for e in send) == [1, 2, 3]
    assert offsets == {("in", 1): 4}
    g.gate(0).set()
    await settle()
    send, offsets = lanes.harvest(contiguous_only=False)
    assert [e.rec.offset for e in send] == [0]
    assert offsets == {("in", 0): 3}
    assert lanes.count == 0


async def test_held_outputs_go_out_with_their_contiguous_offsets() -> None:
    g = Gates()
    lanes = lanes_for(g)
    for r in [rec(0, b"slow"), rec(1, b"a"), rec(2, b"b")]:
        lanes.add(r)
    g.gate(1).set()
    g.gate(2).set()
    await settle()
    assert lanes.harvest(contiguous_only=True) == ([], {})  # exactly-once: nothing yet
    g.gate(0).set()
    await settle()
    send, offsets = lanes.harvest(contiguous_only=True)
    assert [e.rec.offset for e in send] == [0, 1, 2]
    assert offsets == {("in", 0): 3}


async def test_one_key_runs_in_order_and_ordered_runs_the_partition_in_order() -> None:
    for ordered, expect in ((False, [0, 2]), (True, [0])):
        g = Gates()
        lanes = lanes_for(g, ordered=ordered)
        for r in [rec(0, b"a"), rec(1, b"a"), rec(2, b"b")]:
            lanes.add(r)
        await settle()
        assert sorted(g.started) == expect
        for o in range(3):
            g.gate(o).set()
            await settle()
        assert sorted(g.started) == [0, 1, 2]
        await lanes.cancel()


async def test_a_deferred_record_is_read_again_and_nothing_runs_twice() -> None:
    g = Gates()
    lanes = lanes_for(g, limit=2)
    g.defer.add(1)
    for r in [rec(0, b"a"), rec(1, b"b"), rec(2, b"c"), rec(3, b"b")]:
        lanes.add(r)
    await settle()
    # 0 runs, 1 deferred; 2 was waiting for the limit: it waits for the re-read too
    assert [(d.tp, d.offset) for d in lanes.deferrals] == [(("in", 0), 1)]
    assert g.started == [0, 1]
    g.gate(0).set()
    await settle()
    assert lanes.harvest(contiguous_only=True)[1] == {("in", 0): 1}
    for r in [rec(1, b"b"), rec(2, b"c"), rec(3, b"b")]:  # the agent sought back to 1
        lanes.add(r)
    for o in (1, 2, 3):
        g.gate(o).set()
    await settle()
    send, offsets = lanes.harvest(contiguous_only=True)
    assert [e.rec.offset for e in send] == [1, 2, 3]
    assert offsets == {("in", 0): 4}
    assert sorted(g.started) == [0, 1, 1, 2, 3]  # only the deferred one ran again


async def test_a_revoked_partitions_records_are_dropped() -> None:
    g = Gates()
    lanes = lanes_for(g)
    for r in [rec(0, b"a"), rec(1, b"a"), rec(5, b"x", partition=1)]:
        lanes.add(r)
    await settle()
    lanes.drop([("in", 0)])
    assert lanes.count == 1
    for o in (0, 1):
        g.gate(o).set()
    await settle()
    send, offsets = lanes.harvest(contiguous_only=False)
    assert send == [] and offsets == {}
    assert g.started == [0, 5]  # offset 1 of the revoked partition never started
    await lanes.cancel()
