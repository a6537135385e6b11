"""KafkaTransport against a real broker, through the Transport protocol only.

Topics (create, grow, unchanged, dry run, refuse to shrink), murmur2 key placement and
per-key order, consumer-group commits and resume, ``from_end`` readers, transactions
(commit makes messages and offsets visible together; abort makes nothing visible) and the
`streamflow deploy` command on top of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from streamflow.errors import ConfigError
from streamflow.transport import open_transport
from streamflow.transport.base import Consumer, Record, TopicChange, TopicSpec, Transport
from streamflow.transport.kafka import KafkaTransport
from streamflow.transport.partitioner import partition_for
from tests.integration.workers import run_cli

pytestmark = pytest.mark.kafka

TIMEOUT = 60.0  # against hangs only


@pytest.fixture
def transport(kafka_bootstrap: str) -> Iterator[Transport]:
    t = open_transport(f"kafka://{kafka_bootstrap}")
    assert isinstance(t, KafkaTransport)
    yield t
    t.close()


def poll_until(
    consumer: Consumer, done: Callable[[list[Record]], bool], timeout: float = TIMEOUT
) -> list[Record]:
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while not done(out):
        assert time.monotonic() < deadline, f"timed out with {len(out)} record(s)"
        out.extend(consumer.poll(500, 0.5))
    return out


def poll_for(consumer: Consumer, seconds: float) -> list[Record]:
    """Everything that arrives within ``seconds`` (to show that nothing more comes)."""
    out: list[Record] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.extend(consumer.poll(500, 0.3))
    return out


def count(n: int) -> Callable[[list[Record]], bool]:
    return lambda recs: len(recs) >= n


# -- topics ---------------------------------------------------------------------------------


def test_ensure_topics_create_grow_unchanged_and_dry_run(transport: Transport, unique: str) -> None:
    a, b = f"tr.{unique}.a", f"tr.{unique}.b"
    specs = [TopicSpec(a, 3), TopicSpec(b, 1, {"cleanup.policy": "compact"})]

    assert transport.ensure_topics(specs, dry_run=True) == [
        TopicChange(a, "create", 3),
        TopicChange(b, "create", 1),
    ]
    assert transport.partitions(a) == 0 and transport.partitions(b) == 0, "dry run created"

    assert [c.action for c in transport.ensure_topics(specs)] == ["create", "create"]
    assert transport.partitions(a) == 3 and transport.partitions(b) == 1
    assert transport.end_offsets(a) == {0: 0, 1: 0, 2: 0}

    assert transport.ensure_topics(specs) == [
        TopicChange(a, "unchanged", 3),
        TopicChange(b, "unchanged", 1),
    ]

    grown = [TopicSpec(a, 5), TopicSpec(b, 1)]
    assert transport.ensure_topics(grown, dry_run=True)[0] == TopicChange(a, "grow", 5, 3)
    assert transport.partitions(a) == 3, "dry run grew the topic"
    assert transport.ensure_topics(grown) == [
        TopicChange(a, "grow", 5, 3),
        TopicChange(b, "unchanged", 1),
    ]
    assert transport.partitions(a) == 5
    assert set(transport.end_offsets(a)) == {0, 1, 2, 3, 4}


def test_shrinking_is_refused(transport: Transport, unique: str) -> None:
    a, b = f"tr.{unique}.a", f"tr.{unique}.b"
    transport.ensure_topics([TopicSpec(a, 4)])
    for dry_run in (True, False):
        with pytest.raises(ConfigError, match=rf"topic {a} has 4 partitions; shrinking to 2"):
            transport.ensure_topics([TopicSpec(b, 1), TopicSpec(a, 2)], dry_run=dry_run)
    assert transport.partitions(a) == 4
    assert transport.partitions(b) == 0, "a refused change must change nothing"


# -- producing and consuming ------------------------------------------------------------------


def test_keyed_messages_land_on_murmur2_partitions_in_order(
    transport: Transport, unique: str
) -> None:
    topic = f"tr.{unique}.keys"
    transport.ensure_topics([TopicSpec(topic, 6)])
    keys = [f"customer-{i}" for i in range(24)] + ["", "ü-ñ", "x" * 300]
    producer = transport.producer()
    for seq in range(10):
        for k in keys:
            producer.send(topic, orjson.dumps({"k": k, "seq": seq}), k.encode())
    producer.flush()
    producer.close()
    total = 10 * len(keys)

    ends = transport.end_offsets(topic)
    expected_counts = dict.fromkeys(range(6), 0)
    for k in keys:
        expected_counts[partition_for(k.encode(), 6)] += 10
    assert ends == expected_counts

    consumer = transport.consumer(f"tr.{unique}.g", [topic])
    try:
        recs = poll_until(consumer, count(total))
    finally:
        consumer.close()
    assert len(recs) == total
    by_key: dict[str, list[int]] = {}
    for rec in recs:
        doc = orjson.loads(rec.value)
        key = doc["k"].encode()
        assert rec.key == key
        assert rec.partition == partition_for(key, 6), doc
        assert rec.topic == topic
        by_key.setdefault(doc["k"], []).append(doc["seq"])
    assert by_key == {k: list(range(10)) for k in keys}, "per-key order broken"


def test_explicit_partition_and_headers(transport: Transport, unique: str) -> None:
    topic = f"tr.{unique}.hdr"
    transport.ensure_topics([TopicSpec(topic, 3)])
    producer = transport.producer()
    producer.send(topic, b"v", b"some-key", [("h1", b"\x00\xff"), ("h2", b"two")], partition=2)
    producer.flush()
    consumer = transport.consumer(f"tr.{unique}.g", [topic])
    try:
        (rec,) = poll_until(consumer, count(1))
    finally:
        consumer.close()
    assert (rec.partition, rec.offset, rec.key, rec.value) == (2, 0, b"some-key", b"v")
    assert rec.header("h1") == b"\x00\xff" and rec.header("h2") == b"two"
    assert rec.timestamp_ms > 0


def test_committed_offsets_resume_in_a_new_consumer_of_the_group(
    transport: Transport, unique: str
) -> None:
    topic, group = f"tr.{unique}.resume", f"tr.{unique}.g"
    transport.ensure_topics([TopicSpec(topic, 2)])
    producer = transport.producer()
    for i in range(20):
        producer.send(topic, str(i).encode(), partition=i % 2)
    producer.flush()

    first = transport.consumer(group, [topic])
    try:
        recs = poll_until(first, count(20))
        assert sorted(first.assignment()) == [(topic, 0), (topic, 1)]
        # done: offsets 0-5 of partition 0 (next to read: 6) and 0-2 of partition 1
        first.commit({(topic, 0): 6, (topic, 1): 3})
    finally:
        first.close()
    assert sorted(int(r.value) for r in recs) == list(range(20))

    second = transport.consumer(group, [topic])
    try:
        again = poll_until(second, count(11))
        again += poll_for(second, 2.0)
        assert sorted((r.partition, r.offset) for r in again) == [
            *((0, o) for o in range(6, 10)),
            *((1, o) for o in range(3, 10)),
        ]
        # rewind goes back to the committed offsets of the group
        second.commit({(topic, 0): 8})
        second.rewind()
        redo = poll_until(second, count(9))
        redo += poll_for(second, 1.0)
        assert sorted((r.partition, r.offset) for r in redo) == [
            (0, 8),
            (0, 9),
            *((1, o) for o in range(3, 10)),
        ]
    finally:
        second.close()


def test_from_end_sees_only_later_messages_and_misses_none(
    transport: Transport, unique: str
) -> None:
    topic = f"tr.{unique}.end"
    transport.ensure_topics([TopicSpec(topic, 3)])
    producer = transport.producer()
    for i in range(30):
        producer.send(topic, f"old-{i}".encode(), str(i).encode())
    producer.flush()

    reader = transport.consumer(f"tr.{unique}.reader", [topic], from_end=True)
    try:
        # produced right after creation, before any poll: must not be missed
        for i in range(30):
            producer.send(topic, f"new-{i}".encode(), str(i).encode())
        producer.flush()
        recs = poll_until(reader, count(30))
        recs += poll_for(reader, 1.5)
    finally:
        reader.close()
        producer.close()
    assert sorted(r.value.decode() for r in recs) == sorted(f"new-{i}" for i in range(30))


# -- transactions -----------------------------------------------------------------------------


def _txn_setup(transport: Transport, unique: str, n: int) -> tuple[str, str, str]:
    source, sink, group = f"tr.{unique}.in", f"tr.{unique}.out", f"tr.{unique}.txn"
    transport.ensure_topics([TopicSpec(source, 1), TopicSpec(sink, 2)])
    producer = transport.producer()
    for i in range(n):
        producer.send(source, str(i).encode())
    producer.flush()
    producer.close()
    return source, sink, group


def test_commit_transaction_publishes_messages_and_offsets_together(
    transport: Transport, unique: str
) -> None:
    source, sink, group = _txn_setup(transport, unique, 10)
    watcher = transport.consumer(f"tr.{unique}.watch", [sink])
    consumer = transport.consumer(group, [source])
    producer = transport.producer(transactional_id=f"tr.{unique}.tx")
    try:
        recs = poll_until(consumer, count(10))
        producer.begin()
        for rec in recs:
            producer.send(sink, b"out-" + rec.value, rec.value)
        # not yet committed: a read_committed reader sees nothing
        assert poll_for(watcher, 1.5) == []
        producer.commit_transaction(consumer, {(source, 0): 7})
        out = poll_until(watcher, count(10))
        out += poll_for(watcher, 1.0)
        assert sorted(r.value for r in out) == sorted(b"out-%d" % i for i in range(10))
    finally:
        producer.close()
        consumer.close()
        watcher.close()

    # the offsets went with the transaction: the group resumes at 7
    resumed = transport.consumer(group, [source])
    try:
        rest = poll_until(resumed, count(3))
        rest += poll_for(resumed, 1.0)
    finally:
        resumed.close()
    assert [r.offset for r in rest] == [7, 8, 9]


def test_abort_makes_nothing_visible(transport: Transport, unique: str) -> None:
    source, sink, group = _txn_setup(transport, unique, 5)
    consumer = transport.consumer(group, [source])
    producer = transport.producer(transactional_id=f"tr.{unique}.tx")
    try:
        recs = poll_until(consumer, count(5))
        producer.begin()
        for rec in recs:
            producer.send(sink, b"aborted-" + rec.value, rec.value)
        producer.flush()  # the messages are in the log, inside the open transaction
        producer.abort()
        consumer.rewind()
        again = poll_until(consumer, count(5))
        assert [r.offset for r in again] == [0, 1, 2, 3, 4], "rewind after abort"
        # a committed marker after the aborted batch: the reader must reach it and see
        # nothing of the aborted transaction before it
        producer.begin()
        producer.send(sink, b"marker", partition=0)
        producer.send(sink, b"marker", partition=1)
        producer.commit_transaction(consumer, {(source, 0): 5})
    finally:
        producer.close()
        consumer.close()
    assert sum(transport.end_offsets(sink).values()) >= 7, "the aborted messages were not sent"

    watcher = transport.consumer(f"tr.{unique}.watch", [sink])
    try:
        seen = poll_until(watcher, count(2))
        seen += poll_for(watcher, 1.0)
    finally:
        watcher.close()
    assert [r.value for r in seen] == [b"marker", b"marker"]

    resumed = transport.consumer(group, [source])
    try:
        assert poll_for(resumed, 2.0) == [], "offsets of the committed transaction lost"
    finally:
        resumed.close()


def test_a_new_producer_with_the_same_transactional_id_fences_the_old_one(
    transport: Transport, unique: str
) -> None:
    """A restarted worker slot aborts its predecessor's open transaction at once."""
    source, sink, group = _txn_setup(transport, unique, 3)
    consumer = transport.consumer(group, [source])
    zombie = transport.producer(transactional_id=f"tr.{unique}.slot")
    try:
        recs = poll_until(consumer, count(3))
        zombie.begin()
        for rec in recs:
            zombie.send(sink, b"zombie-" + rec.value)
        zombie.flush()
        successor = transport.producer(transactional_id=f"tr.{unique}.slot")
        successor.begin()
        successor.send(sink, b"successor", partition=0)
        successor.commit_transaction(consumer, {(source, 0): 3})
        successor.close()
    finally:
        consumer.close()
    watcher = transport.consumer(f"tr.{unique}.watch", [sink])
    try:
        seen = poll_until(watcher, count(1)) + poll_for(watcher, 1.5)
    finally:
        watcher.close()
    assert [r.value for r in seen] == [b"successor"]


# -- streamflow deploy --------------------------------------------------------------------------

DEPLOY_YAML = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: orders
    partitions: {partitions}
    trigger: {{type: manual}}
    steps:
      - {{id: shape, type: transform, output: {{id: "${{payload.id}}"}}}}
      - {{id: keep, type: filter, when: "${{payload.id != ''}}"}}
"""


def _deploy(path: Path, broker: str, *extra: str) -> tuple[int, str, str]:
    """`streamflow deploy` as a subprocess (in-process, main() would reconfigure logging)."""
    res = run_cli("deploy", str(path), "--broker", broker, *extra)
    return res.returncode, res.stdout, res.stderr


def test_deploy_command(
    transport: Transport, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    name = f"deploy-{unique}"
    topics = [  # `keep` (a filter) runs in the agent of `shape`: no topic of its own
        f"sf.{name}.orders.shape",
        f"sf.{name}.orders.dlq",
        f"sf.{name}.executions",
    ]
    path = tmp_path / "integration.yaml"
    broker = f"kafka://{kafka_bootstrap}"

    def write(partitions: int) -> None:
        path.write_text(DEPLOY_YAML.format(name=name, partitions=partitions))

    write(2)
    code, out, _ = _deploy(path, broker, "--dry-run")
    assert code == 0
    assert out.splitlines() == [f"would create {t} (2 partitions)" for t in topics]
    assert [transport.partitions(t) for t in topics] == [0, 0, 0], "dry run created topics"

    code, out, _ = _deploy(path, broker)
    assert code == 0
    assert out.splitlines() == [f"create {t} (2 partitions)" for t in topics]
    assert [transport.partitions(t) for t in topics] == [2, 2, 2]

    code, out, _ = _deploy(path, broker)
    assert (code, out) == (0, "all 3 topics up to date; nothing to change\n")

    write(5)
    code, out, _ = _deploy(path, broker, "--dry-run")
    assert code == 0
    assert out.splitlines() == [f"would grow {t} (5 partitions from 2)" for t in topics]
    assert [transport.partitions(t) for t in topics] == [2, 2, 2], "dry run grew topics"
    code, out, _ = _deploy(path, broker)
    assert code == 0
    assert out.splitlines() == [f"grow {t} (5 partitions from 2)" for t in topics]
    assert [transport.partitions(t) for t in topics] == [5, 5, 5]

    write(3)
    code, out, err = _deploy(path, broker)
    assert code == 2
    assert out == ""
    assert f"error: topic {topics[0]} has 5 partitions; shrinking to 3 is not possible" in err
    assert [transport.partitions(t) for t in topics] == [5, 5, 5]
