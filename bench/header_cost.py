"""What one ``sf-env`` header costs in the Kafka client, per message, with StreamFlow's
producer settings (idempotent, acks=all, lz4, linger 5 ms, errors-only delivery reports).

    python -m bench.header_cost [--messages 50000] [--rounds 2]

Produces the same ~500-byte values to a fresh 6-partition topic without and with one
~240-byte header (the metadata of a kafka-triggered envelope), then consumes them and
reads ``headers()`` as the agents do; prints CPU µs per message of this process (client
threads included) for each. The broker is the harness's (KAFKA_BOOTSTRAP_SERVERS or
127.0.0.1:9092); its topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import resource
import uuid

from confluent_kafka import Consumer, Producer

from bench.broker import Admin, bootstrap_servers

VALUE = b'{"id":"k-000123","seq":123456,"x":"' + b"y" * 440 + b'"}'
HEADER = [
    (
        "sf-env",
        b'{"v":2,"execution_id":"bench-in-3-12345","integration":"bench","flow":"f",'
        b'"step":"transform","created_ms":1764500000000,"trigger":{"type":"kafka",'
        b'"topic":"bench-in","partition":3,"offset":12345,"key":"k-000123",'
        b'"timestamp_ms":1764500000000}}',
    )
]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(bootstrap: str, topic: str, n: int, with_header: bool) -> tuple[float, float]:
    """(produce, consume) CPU µs per message."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "partitioner": "murmur2_random",
            "on_delivery": lambda err, msg: None,
            "delivery.report.only.error": True,
        }
    )
    t = cpu()
    for i in range(n):
        if with_header:
            producer.produce(topic, VALUE, f"k{i}".encode(), headers=HEADER)
        else:
            producer.produce(topic, VALUE, f"k{i}".encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()
    produced = cpu() - t
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got, t = 0, cpu()
    while got < n:
        for m in consumer.consume(1000, 1.0):
            if m.error() is None:
                m.headers()
                m.value()
                got += 1
    consumed = cpu() - t
    consumer.close()
    return produced / n * 1e6, consumed / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.header_cost")
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    bootstrap = bootstrap_servers()
    tag = f"hdrcost{uuid.uuid4().hex[:6]}"
    admin = Admin(bootstrap)
    try:
        for r in range(args.rounds):
            for with_header in (False, True):
                topic = f"{tag}.{r}.{int(with_header)}"
                admin.create([topic], 6)
                p, c = one(bootstrap, topic, args.messages, with_header)
                what = "one sf-env header" if with_header else "no header        "
                print(f"{what}  produce {p:5.2f} µs/msg  consume {c:5.2f} µs/msg")
    finally:
        admin.delete_matching(tag)


if __name__ == "__main__":
    main()
