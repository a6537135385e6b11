"""The Kafka producer of the Kafka transport (confluent-kafka / librdkafka): idempotent,
optionally transactional, failures tracked per message without a Python callback for
each delivered one. Built by ``KafkaTransport.producer`` (kafka.py)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streamflow.transport.base import Consumer as ConsumerProto
from streamflow.transport.base import (
    DeliveryError,
    Headers,
    MessageRejected,
    TransactionAborted,
    max_message_bytes,
    too_large,
    wire_size,
)
from streamflow.transport.base import TopicPartition as TP

log = logging.getLogger("streamflow.kafka")


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
        # a value this small, with a key of at most 1 KiB and no headers, always fits
        self.small = self.max_bytes // 2
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
        if len(value) > self.small or headers or (key is not None and len(key) > 1024):
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
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

        def commit() -> None:
            if parts:
                self.producer.send_offsets_to_transaction(parts, consumer.group_metadata(), 30)
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
