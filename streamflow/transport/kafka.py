"""The Kafka transport (confluent-kafka / librdkafka).

``kafka://HOST:PORT[,…]``; any librdkafka setting comes from ``STREAMFLOW_KAFKA_<NAME>``
variables (``STREAMFLOW_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` sets ``security.protocol``),
so SASL and TLS pass straight through. Producers are idempotent (``acks=all``) and place
keys with ``murmur2_random`` as Java clients do. Consumers never auto-commit and read
``read_committed``; the agent commits after delivery is confirmed (see runtime/agent.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic  # type: ignore[attr-defined]

from streamflow.errors import ConfigError, FatalError
from streamflow.transport.base import (
    Record,
    RevokeHook,
    TopicChange,
    TopicSpec,
)
from streamflow.transport.base import TopicPartition as TP
from streamflow.transport.kafkaproducer import KafkaProducer, message_limit

log = logging.getLogger("streamflow.kafka")
ENV_PREFIX = "STREAMFLOW_KAFKA_"


def client_settings(bootstrap: str) -> dict[str, Any]:
    """bootstrap.servers plus every STREAMFLOW_KAFKA_* variable (never logged: may hold secrets)."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "BOOTSTRAP_SERVERS":
            conf[key.removeprefix(ENV_PREFIX).lower().replace("_", ".")] = value
    return conf


class KafkaConsumer:
    def __init__(
        self, base: dict[str, Any], group: str, topics: Sequence[str], from_end: bool
    ) -> None:
        conf = {
            **base,
            "group.id": group or "streamflow-reader",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "latest" if from_end else "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            # agents poll at least every 2 s even mid-batch (agent.py, _process_alive)
            "max.poll.interval.ms": int(base.get("max.poll.interval.ms", 300_000)),
        }
        self.group = group
        self.on_revoke: RevokeHook | None = None
        self.consumer = Consumer(conf)
        self.assigned: set[TP] = set()
        if from_end or not group:
            self._assign(topics, at_end=from_end)
        else:
            self.consumer.subscribe(
                list(topics), on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
            )

    def _assign(self, topics: Sequence[str], *, at_end: bool) -> None:
        """A reader without group membership, from the beginning or of new events only
        (positions fixed right now, so nothing produced after this call is missed)."""
        parts = []
        for topic in topics:
            meta = self.consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                tp = TopicPartition(topic, p)
                start = OFFSET_BEGINNING
                if at_end:
                    start = _retry(
                        lambda tp=tp: self.consumer.get_watermark_offsets(tp, timeout=10)[1]
                    )
                parts.append(TopicPartition(topic, p, start))
                self.assigned.add((topic, p))
        self.consumer.assign(parts)

    def _assigned(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in parts)
        log.info("group %s: assigned %s", self.group, _fmt(parts))

    def _revoked(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        log.info("group %s: revoking %s", self.group, _fmt(parts))
        if self.on_revoke is not None:
            self.on_revoke([(p.topic, p.partition) for p in parts])
        self.assigned.difference_update((p.topic, p.partition) for p in parts)

    def _lost(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        log.warning(
            "group %s: lost %s (uncommitted work will be redone elsewhere)", self.group, _fmt(parts)
        )
        self.assigned.difference_update((p.topic, p.partition) for p in parts)

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        msgs = self.consumer.consume(max_records, 0)
        if not msgs:
            first = self.consumer.poll(timeout)
            if first is None:
                return []
            msgs = [first, *self.consumer.consume(max_records - 1, 0)]
        out = []
        for m in msgs:
            err = m.error()
            if err is not None:
                self._error(err)
                continue
            out.append(_record(m))
        return out

    def _error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise FatalError(f"consumer of group {self.group}: {err.str()}")
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise ConfigError(
                f"consumer of group {self.group}: {err.str()} (run `streamflow deploy`)"
            )
        log.warning("consumer of group %s: %s", self.group, err.str())

    def commit(self, offsets: Mapping[TP, int]) -> None:
        if not offsets:
            return
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self.consumer.commit(offsets=parts, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if err.code() in (
                KafkaError._NO_OFFSET,
                KafkaError.REBALANCE_IN_PROGRESS,
                KafkaError.ILLEGAL_GENERATION,
                KafkaError.UNKNOWN_MEMBER_ID,
            ):
                # partitions moved to another member: it will redo this work (at-least-once)
                log.warning(
                    "group %s: commit refused (%s); work will be redone", self.group, err.str()
                )
                return
            raise

    def assignment(self) -> list[TP]:
        return sorted(self.assigned)

    def rewind(self) -> None:
        parts = self.consumer.assignment()
        if not parts:
            return
        for p in self.consumer.committed(parts, timeout=30):
            if p.offset < 0:
                p.offset = -2  # OFFSET_BEGINNING: nothing committed yet
            self.consumer.seek(p)

    def pause(self, partitions: Sequence[TP]) -> None:
        self.consumer.pause([TopicPartition(t, p) for t, p in partitions])

    def resume(self, partitions: Sequence[TP]) -> None:
        self.consumer.resume([TopicPartition(t, p) for t, p in partitions])

    def seek(self, tp: TP, offset: int) -> None:
        self.consumer.seek(TopicPartition(tp[0], tp[1], offset))

    def lag(self) -> dict[TP, int]:
        out = {}
        for p in self.consumer.position(self.consumer.assignment()):
            try:  # cached: the high watermark of the last fetch response, no broker call
                _, high = self.consumer.get_watermark_offsets(p, cached=True)
            except KafkaException:
                continue
            if high < 0:
                continue
            out[(p.topic, p.partition)] = max(0, high - p.offset) if p.offset >= 0 else high
        return out

    def group_metadata(self) -> object:
        return self.consumer.consumer_group_metadata()

    def close(self) -> None:
        self.consumer.close()


class KafkaTransport:
    def __init__(self, bootstrap: str) -> None:
        if not bootstrap:
            raise ConfigError("kafka:// needs HOST:PORT[,HOST:PORT…]")
        self.url = f"kafka://{bootstrap}"
        self.base = client_settings(bootstrap)
        self.max_message_bytes = message_limit(self.base)
        self.admin = AdminClient(self.base)

    def _metadata(self) -> Any:
        try:
            return self.admin.list_topics(timeout=15)
        except KafkaException as exc:
            raise ConfigError(f"cannot reach Kafka at {self.url}: {exc.args[0].str()}") from None

    def partitions(self, topic: str) -> int:
        meta = self._metadata().topics.get(topic)
        return 0 if meta is None or meta.error is not None else len(meta.partitions)

    def ensure_topics(
        self, specs: Sequence[TopicSpec], *, dry_run: bool = False
    ) -> list[TopicChange]:
        existing = {
            name: len(t.partitions)
            for name, t in self._metadata().topics.items()
            if t.error is None
        }
        changes, new, grow = [], [], []
        for spec in specs:
            have = existing.get(spec.name)
            if have is None:
                changes.append(TopicChange(spec.name, "create", spec.partitions))
                new.append(
                    NewTopic(
                        spec.name, spec.partitions, replication_factor=-1, config=dict(spec.config)
                    )
                )
            elif have < spec.partitions:
                changes.append(TopicChange(spec.name, "grow", spec.partitions, have))
                grow.append(NewPartitions(spec.name, spec.partitions))
            elif have > spec.partitions:
                raise ConfigError(
                    f"topic {spec.name} has {have} partitions; shrinking to "
                    f"{spec.partitions} is not possible (it would reorder keys)"
                )
            else:
                changes.append(TopicChange(spec.name, "unchanged", spec.partitions))
        if dry_run:
            return changes
        futures = {
            **(self.admin.create_topics(new) if new else {}),
            **(self.admin.create_partitions(grow) if grow else {}),
        }
        for name, fut in futures.items():
            try:
                fut.result(30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise ConfigError(
                        f"cannot create or grow topic {name}: {exc.args[0].str()}"
                    ) from None
        self._wait_visible({s.name: s.partitions for s in specs})
        return changes

    def _wait_visible(self, want: dict[str, int]) -> None:
        # every topic with its partitions (a grow shows late), each with a leader
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topics = self._metadata().topics
            if all(
                n in topics
                and topics[n].error is None
                and len(topics[n].partitions) >= count
                and all(p.leader >= 0 and p.error is None for p in topics[n].partitions.values())
                for n, count in want.items()
            ):
                return
            time.sleep(0.2)

    def consumer(
        self, group: str, topics: Sequence[str], *, from_end: bool = False
    ) -> KafkaConsumer:
        return KafkaConsumer(self.base, group, topics, from_end)

    def producer(
        self, *, transactional_id: str | None = None, delivery_timeout: float | None = None
    ) -> KafkaProducer:
        base = self.base
        if delivery_timeout is not None:  # message.timeout.ms from the environment wins
            base = {"message.timeout.ms": max(1, int(delivery_timeout * 1000)), **base}
        return KafkaProducer(base, transactional_id)

    def group_lock(self, group: str) -> Path | None:
        return None  # the group coordinator gives a partition to one member only

    def end_offsets(self, topic: str) -> dict[int, int]:
        c = Consumer({**self.base, "group.id": "streamflow-admin", "enable.auto.commit": False})
        try:
            meta = c.list_topics(topic, timeout=10).topics[topic]
            return {
                p: _retry(
                    lambda p=p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                )
                for p in meta.partitions
            }
        finally:
            c.close()

    def committed(self, group: str, topic: str) -> dict[int, int]:
        c = Consumer({**self.base, "group.id": group, "enable.auto.commit": False})
        try:
            parts = [TopicPartition(topic, p) for p in self.end_offsets(topic)]
            return {
                tp.partition: tp.offset for tp in c.committed(parts, timeout=30) if tp.offset >= 0
            }
        finally:
            c.close()

    def commit_group(self, group: str, offsets: Mapping[TP, int]) -> None:
        c = Consumer({**self.base, "group.id": group, "enable.auto.commit": False})
        try:
            c.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                asynchronous=False,
            )
        finally:
            c.close()

    def read_all(self, topic: str) -> list[Record]:
        ends = self.end_offsets(topic)
        c = Consumer(
            {
                **self.base,
                "group.id": "streamflow-reader",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        try:
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
            out: list[Record] = []
            done = {p for p, end in ends.items() if end == 0}
            deadline = time.monotonic() + 60
            while len(done) < len(ends) and time.monotonic() < deadline:
                for m in c.consume(1000, 0.5):
                    if m.error() is not None:
                        continue
                    rec = _record(m)
                    out.append(rec)
                    if rec.offset + 1 >= ends[rec.partition]:
                        done.add(rec.partition)
                # transaction markers and aborted records occupy offsets too
                for p in set(ends) - done:
                    pos = c.position([TopicPartition(topic, p)])[0].offset
                    if pos >= ends[p]:
                        done.add(p)
            return out
        finally:
            c.close()

    def close(self) -> None:
        return None


def _retry(call: Any, seconds: float = 30.0) -> Any:
    """Retry a metadata call through leader elections right after topic creation."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except KafkaException as exc:
            if (
                not exc.args[0].retriable()
                and exc.args[0].code()
                not in (
                    KafkaError.NOT_LEADER_FOR_PARTITION,
                    KafkaError.LEADER_NOT_AVAILABLE,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                )
            ) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _record(m: Message) -> Record:
    headers: Any = m.headers()  # a fresh list of the message's headers, or None
    return Record(
        m.topic() or "",
        m.partition() or 0,
        m.offset() or 0,
        m.key(),
        m.value() or b"",
        headers if headers is not None else [],
        m.timestamp()[1],
    )


def _fmt(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "nothing"
