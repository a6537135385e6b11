"""The ceiling: a bare confluent-kafka consume -> produce loop copying bytes, no decoding.

The same client settings as StreamFlow's Kafka transport (idempotent producer, acks=all,
lz4, linger 5 ms, murmur2_random; read_committed consumer, no auto-commit), the same batch
size, and an at-least-once commit every 100 ms (flush, then commit the offsets). It is
the most this client and broker do on this machine; run as a child by bench.run:

    python -m bench.ceiling --bootstrap 127.0.0.1:9092 --input IN --output OUT --group G
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.common import BATCH


def client_config(bootstrap: str, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(consumer, producer) settings: StreamFlow's Kafka transport's, shared by the limit row."""
    consumer = {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
    }
    producer = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "partitioner": "murmur2_random",
        "compression.type": "lz4",
    }
    return consumer, producer


def run(bootstrap: str, source: str, sink: str, group: str, interval: float) -> None:
    consumer_conf, producer_conf = client_config(bootstrap, group)
    consumer, producer = Consumer(consumer_conf), Producer(producer_conf)
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([source])
    pending: dict[int, int] = {}
    last_commit = time.monotonic()
    produce = producer.produce
    while running:
        # what is already fetched, else wait for the first record only (as StreamFlow's
        # transport does): consume(BATCH, timeout) would hold a partial batch until timeout
        msgs = consumer.consume(BATCH, 0)
        if not msgs:
            first = consumer.poll(0.05)
            msgs = [] if first is None else [first, *consumer.consume(BATCH - 1, 0)]
        for m in msgs:
            if m.error() is not None:
                continue
            while True:
                try:
                    produce(sink, m.value(), m.key())
                    break
                except BufferError:
                    producer.poll(0.01)
            pending[m.partition() or 0] = (m.offset() or 0) + 1
        producer.poll(0)
        if pending and (not msgs or time.monotonic() - last_commit >= interval):
            producer.flush(30)
            consumer.commit(
                offsets=[TopicPartition(source, p, o) for p, o in pending.items()],
                asynchronous=False,
            )
            pending = {}
            last_commit = time.monotonic()
    producer.flush(30)
    consumer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--commit-interval", type=float, default=0.1)
    args = ap.parse_args()
    run(args.bootstrap, args.input, args.output, args.group, args.commit_interval)


if __name__ == "__main__":
    main()
