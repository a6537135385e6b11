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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic  # type: ignore[attr-defined]

from streamflow.errors import ConfigError, FatalError
from streamflow.transport.base import (
    Consumer as ConsumerProto,
)
from streamflow.transport.base import (
    DeliveryError,
    Headers,
    MessageRejected,
    Record,
    RevokeHook,
    TopicChange,
    TopicSpec,
    TransactionAborted,
    max_message_bytes,
    too_large,
    wire_size,
)
from streamflow.transport.base import (
    TopicPartition as TP,
)

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

    def positions(self) -> list[TopicPartition]:
        return [p for p in self.consumer.position(self.consumer.assignment()) if p.offset >= 0]

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

    def seek_to_end(self) -> None:
        for p in self.consumer.assignment():
            self.consumer.seek(TopicPartition(p.topic, p.partition, OFFSET_END))

    def close(self) -> None:
        self.consumer.close()


def message_limit(conf: Mapping[str, Any]) -> int:
    """The producer's ``message.max.bytes``: STREAMFLOW_KAFKA_MESSAGE_MAX_BYTES if set, else
    StreamFlow's limit for both transports (STREAMFLOW_MAX_MESSAGE_BYTES, default 1,000,000)."""
    raw = conf.get("message.max.bytes")
    return int(raw) if raw else max_message_bytes(os.environ)


TXN_RETRY_BUDGET = 45.0  # seconds a transactional call is retried before giving up
TXN_CALL_LIMIT = 75.0  # seconds a commit may take in all (well under max.poll.interval.ms)


class BrokerUnavailable(Exception):
    """The broker did not answer a transactional call in time: restart the agent."""


class ProducerFenced(Exception):
    """This transactional producer was fenced: restart the agent with a new one (App's
    supervisor stops the process if it keeps happening: a duplicate --worker-id)."""


_FENCED = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

# produce() errors that concern one message only: it is refused, the producer goes on
_MESSAGE_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError._INVALID_ARG,
        KafkaError._MSG_TIMED_OUT,
    }
)


class KafkaProducer:
    atomic_offsets = False  # outputs and offsets are atomic only in a transaction
    buffers_until_flush = False  # librdkafka sends within linger.ms on its own

    def __init__(self, base: dict[str, Any], transactional_id: str | None) -> None:
        conf = {
            **base,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            # a missing topic is an error, as on the embedded transport: `streamflow deploy`
            "allow.auto.create.topics": False,
            # a delivery report only for a message that failed: no Python call per message
            # delivered, and every failure still counted (``flush`` raises on it)
            "on_delivery": self._on_delivery,
            "delivery.report.only.error": True,
        }
        if transactional_id is not None:
            conf["transactional.id"] = transactional_id
            conf["transaction.timeout.ms"] = 30_000
        self.transactional_id = transactional_id
        self.max_bytes = message_limit(conf)
        conf["message.max.bytes"] = self.max_bytes
        self.producer = Producer(conf)
        # half of librdkafka's local queue (queue.buffering.max.messages, 100,000 by
        # default): above it ``send`` may soon wait for room (see ``congested``)
        self.queue_half = int(conf.get("queue.buffering.max.messages", 100_000)) // 2
        self.failed: list[str] = []
        if transactional_id is not None:
            self._txn(lambda: self.producer.init_transactions(60))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # a message purged by abort_transaction belongs to an aborted transaction: it was
        # meant not to be delivered (its report may come during a later transaction)
        if err is not None and err.code() not in _PURGED:
            self.failed.append(f"{msg.topic()}: {err.str()}")

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        size = wire_size(key, value, headers)
        if size > self.max_bytes:  # the same check and words as the embedded transport
            raise MessageRejected(too_large(topic, size, self.max_bytes))
        while True:
            try:
                if partition is not None:
                    self.producer.produce(topic, value, key, partition, headers=headers or None)  # type: ignore[arg-type]
                elif headers:
                    self.producer.produce(topic, value, key, headers=headers)  # type: ignore[arg-type]
                else:
                    self.producer.produce(topic, value, key)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: serve delivery reports, retry
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in _MESSAGE_ERRORS and not err.fatal():
                    raise MessageRejected(f"message to {topic} refused: {err.str()}") from None
                raise

    def congested(self) -> bool:
        """More than half the local queue is taken: ``send`` may soon wait for room, so
        the agent sends from its I/O thread rather than from the event loop."""
        return len(self.producer) > self.queue_half

    def flush(self, timeout: float = 30.0) -> None:
        left = self.producer.flush(timeout)
        if left:
            raise DeliveryError(f"{left} message(s) not confirmed within {timeout:g}s")
        if self.failed:
            failed, self.failed = self.failed, []
            raise DeliveryError(f"{len(failed)} message(s) failed: {failed[0]}")

    def begin(self) -> None:
        # reports still queued belong to an earlier, aborted transaction: not this one's
        self.producer.poll(0)
        self.failed = []
        self._txn(self.producer.begin_transaction)

    def commit_transaction(self, consumer: ConsumerProto, offsets: Mapping[TP, int]) -> None:
        assert isinstance(consumer, KafkaConsumer)
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

        def commit() -> None:
            if parts:
                self.producer.send_offsets_to_transaction(
                    parts, consumer.consumer.consumer_group_metadata(), 30
                )
            self.producer.commit_transaction(60)

        self._bounded(lambda: self._txn(commit), "committing the transaction")
        if self.failed:
            # a committed transaction delivered all its messages (a failed one makes
            # commit_transaction fail): these reports are left over from an aborted one
            failed, self.failed = self.failed, []
            log.warning("producer %s: stale delivery errors: %s", self.transactional_id, failed[0])

    def _bounded(self, call: Callable[[], None], what: str) -> None:
        """Run ``call`` on a thread and wait at most TXN_CALL_LIMIT seconds: librdkafka's
        send_offsets_to_transaction can block past its timeout when the group coordinator
        went away (librdkafka #5456). Past the limit this producer is given up
        (BrokerUnavailable: the agent restarts; its new producer fences this one)."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                call()
            except BaseException as exc:  # handed to the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=run, name=f"sf-txn-{self.transactional_id}", daemon=True)
        worker.start()
        worker.join(TXN_CALL_LIMIT)
        if worker.is_alive():
            raise BrokerUnavailable(
                f"transactional producer {self.transactional_id}: {what} did not return "
                f"within {TXN_CALL_LIMIT:g}s; giving this producer up"
            )
        if errors:
            raise errors[0]

    def abort(self) -> None:
        self._txn(lambda: self.producer.abort_transaction(60))

    def _txn(self, call: Any) -> None:
        """Run a transactional call: retry retriable errors for up to TXN_RETRY_BUDGET
        seconds, abort on abortable ones (raising TransactionAborted), stop on fatal ones
        (fenced by a newer worker). Still failing after the budget (the broker is away):
        BrokerUnavailable - the agent is restarted, and its new producer's
        ``init_transactions`` settles this transaction (the consumer must poll again well
        within ``max.poll.interval.ms``, so nothing here may wait longer)."""
        deadline = time.monotonic() + TXN_RETRY_BUDGET
        attempt = 0
        while True:
            try:
                call()
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() in _FENCED:
                    # a newer producer with our transactional id, or the broker aborted
                    # our transaction after transaction.timeout.ms (an outage): this
                    # producer is done; a new one (agent restart) fences any zombie
                    raise ProducerFenced(
                        f"transactional producer {self.transactional_id}: {err.str()}"
                    ) from exc
                if err.fatal():
                    # this producer instance is unusable (librdkafka's fatal state, e.g. an
                    # invalid producer id mapping after a rebalance); a new one - the
                    # agent restarted by App's supervisor - starts clean and fences this
                    # one; the supervisor stops the process if it keeps happening
                    raise ProducerFenced(
                        f"transactional producer {self.transactional_id}: fatal error {err.str()}"
                    ) from exc
                if err.txn_requires_abort():
                    try:
                        self.producer.abort_transaction(60)
                    except KafkaException as again:  # cannot even abort: a new producer
                        raise ProducerFenced(
                            f"transactional producer {self.transactional_id}: aborting "
                            f"after {err.str()}: {again.args[0].str()}"
                        ) from exc
                    self.failed = []
                    raise TransactionAborted(err.str()) from exc
                if err.retriable() and time.monotonic() < deadline:
                    attempt += 1
                    time.sleep(min(0.1 * attempt, 1.0))
                    continue
                raise BrokerUnavailable(
                    f"transactional producer {self.transactional_id}: {err.str()}"
                ) from exc

    def close(self) -> None:
        if self.transactional_id is None:
            self.producer.flush(30)


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
        self._wait_visible([s.name for s in specs])
        return changes

    def _wait_visible(self, names: list[str]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topics = self._metadata().topics
            if all(
                n in topics
                and topics[n].error is None
                and all(p.leader >= 0 and p.error is None for p in topics[n].partitions.values())
                for n in names
            ):
                return
            time.sleep(0.2)

    def consumer(
        self, group: str, topics: Sequence[str], *, from_end: bool = False
    ) -> KafkaConsumer:
        return KafkaConsumer(self.base, group, topics, from_end)

    def producer(self, *, transactional_id: str | None = None) -> KafkaProducer:
        return KafkaProducer(self.base, transactional_id)

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
    _, ts = m.timestamp()
    headers: Any = m.headers() or []
    return Record(
        m.topic() or "",
        m.partition() or 0,
        m.offset() or 0,
        m.key(),
        m.value() or b"",
        list(headers),
        ts,
    )


def _fmt(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "nothing"
