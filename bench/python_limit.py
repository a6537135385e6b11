"""The Python limit: the 1-step (or 3-step) pipeline as a bare loop written for the purpose.

Consume a batch, ``orjson`` decode, build the output dict, ``orjson`` encode, produce,
commit every 100 ms; no framework, no envelope, no per-message callback. The client
settings are the ceiling's (bench/ceiling.py), so the row beside the byte copy shows what
decoding and encoding cost in Python and how far a Python framework could go here:

    python -m bench.python_limit --bootstrap B --input IN --output OUT --group G --steps 1
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.ceiling import client_config
from bench.common import BATCH


def one_step(v: dict[str, Any]) -> dict[str, Any] | None:
    return {"id": v["id"], "user": v["user"], "total": v["amount"] * 1.2, "note": v["note"],
            "ts": v["ts"]}  # fmt: skip


def three_steps(v: dict[str, Any]) -> dict[str, Any] | None:
    t = one_step(v)
    assert t is not None
    if not t["total"] >= 0:
        return None
    return {"id": t["id"], "gross": t["total"], "who": t["user"].upper(), "ts": t["ts"]}


def run(bootstrap: str, source: str, sink: str, group: str, interval: float, steps: int) -> None:
    consumer_conf, producer_conf = client_config(bootstrap, group)
    consumer, producer = Consumer(consumer_conf), Producer(producer_conf)
    fn = one_step if steps == 1 else three_steps
    running = True

    def stop(*_: Any) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    consumer.subscribe([source])
    pending: dict[int, int] = {}
    last_commit = time.monotonic()
    produce, loads, dumps = producer.produce, orjson.loads, orjson.dumps
    while running:
        msgs = consumer.consume(BATCH, 0)
        if not msgs:
            first = consumer.poll(0.05)
            msgs = [] if first is None else [first, *consumer.consume(BATCH - 1, 0)]
        for m in msgs:
            if m.error() is not None:
                continue
            out = fn(loads(m.value()))  # type: ignore[arg-type]
            if out is not None:
                while True:
                    try:
                        produce(sink, dumps(out), m.key())
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
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--commit-interval", type=float, default=0.1)
    args = ap.parse_args()
    run(args.bootstrap, args.input, args.output, args.group, args.commit_interval, args.steps)


if __name__ == "__main__":
    main()
