"""Broker-side helpers of the harness: topics, preloading, counting outputs, latency probe.

Everything here runs in the harness process (the StreamFlow venv) with confluent-kafka.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
TS = re.compile(rb'"ts":\s*(\d+)')


def bootstrap_servers(start: bool = True) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else 127.0.0.1:9092 (started with scripts/kafka.sh if down)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
    if reachable(servers):
        return servers
    if not start or servers != DEFAULT_BOOTSTRAP:
        raise RuntimeError(f"no Kafka broker answers on {servers}")
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "kafka.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith("KAFKA_BOOTSTRAP_SERVERS="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError(f"scripts/kafka.sh start failed: {out.stderr.strip()[-2000:]}")


def reachable(servers: str) -> bool:
    try:
        AdminClient({"bootstrap.servers": servers}).list_topics(timeout=5)
    except KafkaException:
        return False
    return True


def broker_version() -> str:
    """The broker's version, from the jars scripts/kafka.sh runs (else from its POM)."""
    home = Path(
        os.environ.get("STREAMFLOW_KAFKA_HOME", Path.home() / ".cache" / "streamflow-kafka")
    )
    for jar in sorted((home / "libs").glob("kafka_2.13-*.jar")):
        return "Apache Kafka " + jar.name.removeprefix("kafka_2.13-").removesuffix(".jar")
    pom = REPO / "kafka" / "pom.xml"
    if pom.exists():
        m = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom.read_text())
        if m:
            return f"Apache Kafka {m.group(1)} (from kafka/pom.xml)"
    return "unknown"


class Admin:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.client = AdminClient({"bootstrap.servers": bootstrap})

    def create(self, names: Sequence[str], partitions: int) -> None:
        futures = self.client.create_topics(
            [NewTopic(n, partitions, replication_factor=1) for n in names]
        )
        for fut in futures.values():
            fut.result(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            topics = self.client.list_topics(timeout=10).topics
            if all(
                n in topics
                and topics[n].error is None
                and len(topics[n].partitions) == partitions
                and all(p.leader >= 0 for p in topics[n].partitions.values())
                for n in names
            ):
                return
            time.sleep(0.1)
        raise RuntimeError(f"topics {names} not ready after 30 s")

    def records_matching(self, needles: Sequence[str]) -> int:
        """Sum of the end offsets of every partition of every topic whose name contains one
        of ``needles``: how many messages (and transaction markers) were written to them."""
        topics = self.client.list_topics(timeout=10).topics
        meta = _consumer(self.bootstrap)
        try:
            return sum(
                meta.get_watermark_offsets(TopicPartition(name, p), timeout=10, cached=False)[1]
                for name, topic in topics.items()
                if any(n in name for n in needles)
                for p in topic.partitions
            )
        finally:
            meta.close()

    def delete_matching(self, needle: str) -> None:
        """Delete every topic and consumer group whose name contains ``needle`` (best effort)."""
        try:
            names = [t for t in self.client.list_topics(timeout=10).topics if needle in t]
            if names:
                for fut in self.client.delete_topics(names).values():
                    with contextlib.suppress(KafkaException):
                        fut.result(30)
            groups = self.client.list_consumer_groups().result(30)
            ids = [g.group_id for g in groups.valid if needle in g.group_id]
            if ids:
                for fut in self.client.delete_consumer_groups(ids).values():
                    with contextlib.suppress(KafkaException):
                        fut.result(30)
        except KafkaException:
            pass


def produce_all(bootstrap: str, topic: str, data: Iterable[tuple[bytes, bytes]]) -> float:
    """Produce keyed records as fast as possible; seconds until all are acknowledged."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "partitioner": "murmur2_random",
        }
    )
    started = time.perf_counter()
    for key, value in data:
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.01)
    if producer.flush(120):
        raise RuntimeError(f"preload of {topic} not acknowledged within 120 s")
    return time.perf_counter() - started


def _consumer(bootstrap: str, **extra: Any) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            **extra,
        }
    )


class OutputWatch:
    """How many records an output topic holds. ``ends()`` sums the read_committed end
    offsets (the last stable offsets: cheap, exact for non-transactional writers);
    ``committed_count()`` counts committed records with a consumer (exact also for
    transactional writers, whose commit markers occupy offsets too)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.parts = [TopicPartition(topic, p) for p in range(partitions)]
        self.meta = _consumer(bootstrap)
        self.reader = _consumer(bootstrap, **{"fetch.wait.max.ms": 10})
        self.reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        self.counted = 0

    def ends(self) -> list[int]:
        return [
            self.meta.get_watermark_offsets(tp, timeout=10, cached=False)[1] for tp in self.parts
        ]

    def committed_count(self) -> int:
        """Committed records so far, read on from the last call without waiting (what
        the reader already fetched; ``fetch.wait.max.ms`` 10): called every few ms during
        a transactional writer's drain, so the count - and the drain's end - is never
        late by more than a fetch, and the reading is spread over the drain."""
        while True:
            msgs = self.reader.consume(10_000, 0)
            if not msgs:
                return self.counted
            self.counted += sum(1 for m in msgs if m.error() is None)

    def sample(self, k: int = 3) -> list[bytes]:
        """Up to k values from the topic's start (for a check of the output's shape)."""
        c = _consumer(self.bootstrap)
        try:
            c.assign(
                [TopicPartition(self.topic, tp.partition, OFFSET_BEGINNING) for tp in self.parts]
            )
            out: list[bytes] = []
            deadline = time.monotonic() + 10
            while len(out) < k and time.monotonic() < deadline:
                for m in c.consume(k, 0.5):
                    value = m.value()
                    if m.error() is None and value:
                        out.append(value)
            return out[:k]
        finally:
            c.close()

    def close(self) -> None:
        self.meta.close()
        self.reader.close()


def latency_templates(data: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """(key, value before the ts digits, value after them) of backlog events (ts = 0)."""
    out = []
    for key, value in data:
        head, sep, tail = value.partition(b'"ts":0')
        if not sep:
            raise ValueError('event without a "ts":0 field')
        out.append((key, head + b'"ts":', tail))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[rank]


class LatencyReader:
    """Reads an output topic from its current end in a thread; keeps receive - ``ts`` (ms)
    of every event whose ``ts`` (send time, ns) is at least ``counted_from``."""

    def __init__(self, bootstrap: str, sink: str, partitions: int, counted_from: int) -> None:
        watch = OutputWatch(bootstrap, sink, partitions)
        ends = watch.ends()
        watch.close()
        self.consumer = _consumer(bootstrap, **{"fetch.wait.max.ms": 5})
        self.consumer.assign([TopicPartition(sink, p, ends[p]) for p in range(partitions)])
        self.counted_from = counted_from
        self.latencies: list[float] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._read, name="bench-latency", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        consumer = self.consumer
        while not self.stopping.is_set():
            # what is fetched now, else a wait for the first record only: consume(n,
            # timeout) would hold the first records until n arrived or the timeout passed,
            # and every one of them would read as late as the last
            msgs = consumer.consume(1000, 0)
            if not msgs:
                first = consumer.poll(0.05)
                msgs = [] if first is None else [first, *consumer.consume(999, 0)]
            now = time.time_ns()
            for m in msgs:
                value = m.value()
                if m.error() is not None or not value:
                    continue
                found = TS.search(value)
                if found is not None and int(found.group(1)) >= self.counted_from:
                    self.latencies.append((now - int(found.group(1))) / 1e6)

    def close(self) -> list[float]:
        self.stopping.set()
        self.thread.join(5)
        self.consumer.close()
        return sorted(self.latencies)


def paced_send(
    bootstrap: str,
    source: str,
    templates: Sequence[tuple[bytes, bytes, bytes]],
    rate: float,
    seconds: float,
    counted_from: int,
) -> tuple[int, int, float]:
    """Send ``rate`` events/s for ``seconds``, each stamped with its send time in ``ts``:
    (events sent, events sent at or after ``counted_from``, seconds it took)."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,
            "partitioner": "murmur2_random",
        }
    )
    total = max(1, int(rate * seconds))
    counted = i = 0
    pool = len(templates)
    t0 = time.perf_counter()
    while i < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            key, head, tail = templates[i % pool]
            ts = time.time_ns()
            counted += ts >= counted_from
            while True:
                try:
                    producer.produce(source, head + str(ts).encode() + tail, key)
                    break
                except BufferError:
                    producer.poll(0.001)
            i += 1
        producer.poll(0)
        time.sleep(0.0005)
    took = time.perf_counter() - t0
    producer.flush(30)
    return total, counted, took


def measure_latency(
    bootstrap: str,
    source: str,
    sink: str,
    partitions: int,
    templates: Sequence[tuple[bytes, bytes, bytes]],
    rate: float,
    seconds: float,
    warmup: float,
    settle: float,
) -> dict[str, Any]:
    """End-to-end latency at a fixed rate: a paced producer stamps the send time (ns, wall
    clock) into each event's ``ts``; a reader of the output topic, started at its current
    end, takes receive time minus ``ts``. Events sent in the first ``warmup`` seconds are
    not counted; after the last send the reader waits up to ``settle`` seconds."""
    reader = LatencyReader(bootstrap, sink, partitions, 0)
    counted_from = reader.counted_from = time.time_ns() + int(warmup * 1e9)
    try:
        total, counted, took = paced_send(bootstrap, source, templates, rate, seconds, counted_from)
        deadline = time.monotonic() + settle
        while len(reader.latencies) < counted and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        latencies = reader.close()
    return {
        "rate": round(rate),
        "achieved_rate": round(total / took) if took > 0 else None,
        "seconds": round(took, 2),
        "warmup_s": warmup,
        "sent": counted,
        "received": len(latencies),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "max_ms": round(latencies[-1], 2) if latencies else None,
    }
