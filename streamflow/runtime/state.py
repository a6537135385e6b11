"""Keyed state of a stateful agent, kept in a compacted changelog topic (as Kafka Streams
keeps a state store).

The changelog has as many partitions as the agent's input topic; the state of input
partition *p* lives in changelog partition *p* and only there, so it moves with its input
when a consumer group rebalances. Every change is a record ``key -> JSON value`` (an empty
value deletes the key), produced by the agent in the same batch as the outputs it goes
with: in an exactly-once flow inside the same transaction (state, outputs and input offsets
commit together or not at all), in an at-least-once flow flushed before the input offsets
are committed. The in-memory copy of a partition is (re)built by reading its changelog
(``read_committed``) when the partition is assigned, and thrown away when it is revoked or
when a transaction aborts.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson

from streamflow.runtime.contain import Out
from streamflow.transport.base import Transport

log = logging.getLogger("streamflow.runtime")
DELETE = b""  # the value that removes a key (the topic is compacted on its key)


class Changelog:
    """Buffered writes to, and restores from, one changelog topic."""

    def __init__(self, transport: Transport, topic: str) -> None:
        self.transport = transport
        self.topic = topic
        self._writes: list[Out] = []

    def load(self, partitions: Iterable[int]) -> dict[int, dict[str, Any]]:
        """The latest value of every key of these partitions (deleted keys left out).
        Blocking: call it on the agent's I/O thread."""
        wanted = set(partitions)
        state: dict[int, dict[str, Any]] = {p: {} for p in wanted}
        count = 0
        for rec in self.transport.read_all(self.topic):
            if rec.partition not in wanted or rec.key is None:
                continue
            count += 1
            key = rec.key.decode()
            if rec.value == DELETE:
                state[rec.partition].pop(key, None)
            else:
                state[rec.partition][key] = orjson.loads(rec.value)
        live = sum(len(v) for v in state.values())
        log.info("restored %d key(s) of %s%s from %d record(s)", live, self.topic,
                 sorted(wanted), count)  # fmt: skip
        return state

    def put(self, partition: int, key: str, value: Any) -> None:
        """Record a change (``None`` deletes the key); it goes out with the next ``drain``."""
        data = DELETE if value is None else orjson.dumps(value)
        self._writes.append(Out(self.topic, data, key.encode(), None, partition))

    def drain(self) -> list[Out]:
        """The changes recorded since the last drain, as messages for the agent to produce."""
        writes, self._writes = self._writes, []
        return writes
