"""The embedded ``local://`` transport: topics, partitions, groups, transactions, crashes.

Every test runs against a real SQLite store under ``tmp_path``; the crash and wake-up
tests use real child processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamflow.errors import ConfigError
from streamflow.transport.base import Consumer, Producer, Record, TopicChange, TopicSpec, Transport
from streamflow.transport.local import LocalConsumer, LocalProducer, LocalTransport
from streamflow.transport.partitioner import partition_for


@pytest.fixture
def transport(tmp_path: Path) -> Iterator[LocalTransport]:
    t = LocalTransport(tmp_path / "broker")
    yield t
    t.close()


def topics(t: LocalTransport, /, **parts: int) -> None:
    t.ensure_topics([TopicSpec(name, n) for name, n in parts.items()])


def drain(consumer: Consumer, count: int, timeout: float = 3.0) -> list[Record]:
    """Poll until ``count`` records arrived (or fail after ``timeout``)."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {count} records arrived"
        out.extend(consumer.poll(count - len(out), min(left, 0.5)))
    assert len(out) == count
    return out


def produce(t: LocalTransport, topic: str, values: list[bytes], key: bytes | None = None) -> None:
    p = t.producer()
    for v in values:
        p.send(topic, v, key=key)
    p.flush()
    p.close()


# --- the protocol -------------------------------------------------------------------


def test_local_classes_satisfy_the_protocols(transport: LocalTransport) -> None:
    topics(transport, a=1)
    # assignments type-check against the Protocols under mypy --strict
    t: Transport = transport
    c: Consumer = t.consumer("g", ["a"])
    p: Producer = t.producer()
    assert isinstance(c, LocalConsumer)
    assert isinstance(p, LocalProducer)
    assert transport.url == f"local://{transport.directory}"
    assert (transport.directory / "broker.db").is_file()
    c.close()
    p.close()


# --- topics ---------------------------------------------------------------------------


def test_ensure_topics_create_unchanged_grow(transport: LocalTransport) -> None:
    assert transport.partitions("a") == 0
    assert transport.ensure_topics([TopicSpec("a", 3), TopicSpec("b", 1)]) == [
        TopicChange("a", "create", 3),
        TopicChange("b", "create", 1),
    ]
    assert transport.partitions("a") == 3
    assert transport.partitions("b") == 1
    assert transport.end_offsets("a") == {0: 0, 1: 0, 2: 0}

    assert transport.ensure_topics([TopicSpec("a", 3)]) == [TopicChange("a", "unchanged", 3)]
    assert transport.ensure_topics([TopicSpec("a", 5)]) == [TopicChange("a", "grow", 5, previous=3)]
    assert transport.partitions("a") == 5
    assert transport.end_offsets("a") == dict.fromkeys(range(5), 0)


def test_ensure_topics_dry_run_changes_nothing(transport: LocalTransport) -> None:
    assert transport.ensure_topics([TopicSpec("a", 2)], dry_run=True) == [
        TopicChange("a", "create", 2)
    ]
    assert transport.partitions("a") == 0
    topics(transport, a=2)
    assert transport.ensure_topics([TopicSpec("a", 4)], dry_run=True) == [
        TopicChange("a", "grow", 4, previous=2)
    ]
    assert transport.partitions("a") == 2
    assert transport.ensure_topics([TopicSpec("a", 2)], dry_run=True) == [
        TopicChange("a", "unchanged", 2)
    ]


def test_shrinking_a_topic_is_refused_and_nothing_is_applied(transport: LocalTransport) -> None:
    topics(transport, a=4)
    with pytest.raises(ConfigError, match=r"topic a has 4 partitions; shrinking to 2"):
        transport.ensure_topics([TopicSpec("new", 1), TopicSpec("a", 2)])
    assert transport.partitions("a") == 4
    assert transport.partitions("new") == 0  # the batch is all or nothing
    with pytest.raises(ConfigError, match="shrinking"):
        transport.ensure_topics([TopicSpec("a", 1)], dry_run=True)


def test_topics_survive_reopening(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "b")
    topics(t, a=3)
    produce(t, "a", [b"x"], key=b"k")
    t.close()
    t2 = LocalTransport(tmp_path / "b")
    assert t2.partitions("a") == 3
    assert sum(t2.end_offsets("a").values()) == 1
    t2.close()


def test_sending_to_a_missing_topic_is_a_config_error(transport: LocalTransport) -> None:
    topics(transport, a=1)
    p = transport.producer()
    p.send("a", b"fine")
    p.send("nope", b"x")
    with pytest.raises(ConfigError, match=r"topic nope does not exist.*streamflow deploy"):
        p.flush()
    assert transport.end_offsets("a") == {0: 0}  # the failed batch wrote nothing
    p.close()


def test_consuming_a_missing_topic_is_a_config_error(transport: LocalTransport) -> None:
    with pytest.raises(ConfigError, match="topic ghost does not exist"):
        transport.consumer("g", ["ghost"])


# --- partitioning, order, offsets, headers --------------------------------------------


def test_keyed_messages_go_to_murmur2_partition_in_order(transport: LocalTransport) -> None:
    topics(transport, t=4)
    p = transport.producer()
    sent: list[tuple[bytes, int]] = []
    for i in range(120):
        key = f"customer-{i % 17}".encode()
        p.send("t", str(i).encode(), key=key)
        sent.append((key, i))
    p.flush()
    p.close()

    c = transport.consumer("g", ["t"])
    got = drain(c, 120)
    c.close()
    by_part: dict[int, list[Record]] = defaultdict(list)
    for r in got:
        assert r.key is not None
        assert r.partition == partition_for(r.key, 4)
        by_part[r.partition].append(r)
    assert len(by_part) > 1  # 17 keys really were spread
    for part, recs in by_part.items():
        assert [r.offset for r in recs] == list(range(len(recs)))  # contiguous from 0
        expected = [i for key, i in sent if partition_for(key, 4) == part]
        assert [int(r.value) for r in recs] == expected  # per-partition order kept
    assert transport.end_offsets("t") == {p: len(by_part.get(p, [])) for p in range(4)}


def test_key_placement_matches_kafka(transport: LocalTransport) -> None:
    # Kafka: toPositive(murmur2("foobar")) % n, murmur2("foobar") == -790332482 (UtilsTest)
    topics(transport, t=7)
    produce(transport, "t", [b"v"], key=b"foobar")
    expected = (-790332482 & 0x7FFFFFFF) % 7
    assert transport.end_offsets("t")[expected] == 1


def test_explicit_partition_wins_over_key(transport: LocalTransport) -> None:
    topics(transport, t=3)
    key = b"k"
    target = (partition_for(key, 3) + 1) % 3
    p = transport.producer()
    p.send("t", b"v", key=key, partition=target)
    p.flush()
    p.close()
    c = transport.consumer("g", ["t"])
    [rec] = drain(c, 1)
    c.close()
    assert (rec.partition, rec.offset, rec.key) == (target, 0, key)


def test_unkeyed_messages_land_in_valid_partitions(transport: LocalTransport) -> None:
    topics(transport, t=3)
    produce(transport, "t", [str(i).encode() for i in range(30)])
    ends = transport.end_offsets("t")
    assert set(ends) == {0, 1, 2}
    assert sum(ends.values()) == 30


def test_headers_keys_and_values_round_trip_as_bytes(transport: LocalTransport) -> None:
    topics(transport, t=1)
    headers = [
        ("binary", b"\x00\xff\xfe\x80\x81"),
        ("utf8", "Grüße ✓".encode()),
        ("empty", b""),
        ("dup", b"first"),
        ("dup", b"second"),
    ]
    before = time.time_ns() // 1_000_000
    p = transport.producer()
    p.send("t", b"\xff\x00value\xc3", key=b"\x80key\x00", headers=headers)
    p.send("t", b"plain")
    p.flush()
    p.close()
    c = transport.consumer("g", ["t"])
    first, second = drain(c, 2)
    c.close()
    assert first.value == b"\xff\x00value\xc3"
    assert first.key == b"\x80key\x00"
    assert first.headers == headers
    assert first.header("binary") == b"\x00\xff\xfe\x80\x81"
    assert first.header("dup") == b"first"
    assert first.header("missing") is None
    assert before <= first.timestamp_ms <= time.time_ns() // 1_000_000
    assert (second.key, second.headers, second.offset) == (None, [], 1)


# --- consumer groups --------------------------------------------------------------------


def test_committed_offsets_resume_a_new_consumer_of_the_group(transport: LocalTransport) -> None:
    topics(transport, t=1)
    produce(transport, "t", [str(i).encode() for i in range(10)])
    c1 = transport.consumer("g", ["t"])
    recs = drain(c1, 4)
    assert [r.offset for r in recs] == [0, 1, 2, 3]
    c1.commit({("t", 0): 4})
    c1.close()

    c2 = transport.consumer("g", ["t"])
    assert [r.offset for r in drain(c2, 6)] == [4, 5, 6, 7, 8, 9]
    assert c2.poll(10, 0.05) == []
    c2.close()

    other = transport.consumer("other", ["t"])
    assert [r.offset for r in drain(other, 10)] == list(range(10))
    other.close()


def test_assignment_covers_every_partition_of_every_topic(transport: LocalTransport) -> None:
    topics(transport, a=2, b=3)
    c = transport.consumer("g", ["a", "b"])
    assert sorted(c.assignment()) == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    produce(transport, "a", [b"1"], key=b"x")
    produce(transport, "b", [b"2"], key=b"y")
    assert sorted(r.value for r in drain(c, 2)) == [b"1", b"2"]
    c.close()


def send_to(t: LocalTransport, topic: str, partition: int, values: list[bytes]) -> None:
    p = t.producer()
    for v in values:
        p.send(topic, v, partition=partition)
    p.flush()
    p.close()


def test_from_end_starts_at_the_end_unless_the_group_committed(transport: LocalTransport) -> None:
    topics(transport, t=2)
    send_to(transport, "t", 0, [b"old1", b"old2"])
    send_to(transport, "t", 1, [b"old3"])
    tail = transport.consumer("tail", ["t"], from_end=True)
    assert tail.poll(10, 0.05) == []
    send_to(transport, "t", 0, [b"new"])
    assert [r.value for r in drain(tail, 1)] == [b"new"]
    tail.commit({("t", 0): 1})
    tail.close()

    # a committed offset wins over from_end (like auto.offset.reset in Kafka)
    again = transport.consumer("tail", ["t"], from_end=True)
    assert sorted(r.value for r in drain(again, 2)) == [b"new", b"old2"]
    assert again.poll(10, 0.05) == []
    again.close()


def test_rewind_goes_back_to_committed(transport: LocalTransport) -> None:
    topics(transport, t=1)
    produce(transport, "t", [str(i).encode() for i in range(6)])
    c = transport.consumer("g", ["t"])
    drain(c, 6)
    c.rewind()  # nothing committed yet: back to the start
    assert [r.offset for r in drain(c, 6)] == list(range(6))
    c.commit({("t", 0): 3})
    c.rewind()
    assert [r.offset for r in drain(c, 3)] == [3, 4, 5]
    assert c.poll(10, 0.05) == []
    c.close()


def test_poll_respects_max_records_and_timeout(transport: LocalTransport) -> None:
    topics(transport, t=1)
    c = transport.consumer("g", ["t"])
    start = time.monotonic()
    assert c.poll(5, 0.2) == []
    waited = time.monotonic() - start
    assert 0.15 <= waited < 1.5
    produce(transport, "t", [str(i).encode() for i in range(7)])
    assert len(c.poll(5, 1.0)) == 5
    assert [r.offset for r in c.poll(5, 1.0)] == [5, 6]
    c.close()


# --- producing and transactions ------------------------------------------------------------


def test_unflushed_messages_are_invisible(transport: LocalTransport) -> None:
    topics(transport, t=1)
    watcher = transport.consumer("w", ["t"])
    p = transport.producer()
    p.send("t", b"queued")
    assert watcher.poll(10, 0.1) == []
    assert transport.end_offsets("t") == {0: 0}
    p.flush()
    assert [r.value for r in drain(watcher, 1)] == [b"queued"]
    p.flush()  # nothing queued: no duplicate
    assert transport.end_offsets("t") == {0: 1}
    watcher.close()
    p.close()


def test_close_flushes_a_plain_producer(transport: LocalTransport) -> None:
    topics(transport, t=1)
    p = transport.producer()
    p.send("t", b"last words")
    p.close()
    assert transport.end_offsets("t") == {0: 1}


def _copy_setup(transport: LocalTransport) -> tuple[LocalConsumer, LocalConsumer]:
    topics(transport, src=1, dst=2)
    produce(transport, "src", [str(i).encode() for i in range(5)])
    source = transport.consumer("copier", ["src"])
    watcher = transport.consumer("watch", ["dst"])
    return source, watcher


def test_commit_transaction_publishes_and_commits_atomically(transport: LocalTransport) -> None:
    source, watcher = _copy_setup(transport)
    recs = drain(source, 5)
    tp = transport.producer(transactional_id="copier-0")
    tp.begin()
    for r in recs:
        tp.send("dst", r.value + b"!", key=r.value)
    # inside the transaction nothing is visible and nothing is committed
    assert watcher.poll(10, 0.1) == []
    assert sum(transport.end_offsets("dst").values()) == 0
    assert transport.broker.committed("copier", "src") == {}

    tp.commit_transaction(source, {("src", 0): 5})
    assert sorted(r.value for r in drain(watcher, 5)) == [b"0!", b"1!", b"2!", b"3!", b"4!"]
    assert transport.broker.committed("copier", "src") == {0: 5}
    resumed = transport.consumer("copier", ["src"])
    assert resumed.poll(10, 0.05) == []
    for c in (source, watcher, resumed):
        c.close()
    tp.close()


def test_abort_makes_nothing_visible(transport: LocalTransport) -> None:
    source, watcher = _copy_setup(transport)
    recs = drain(source, 5)
    tp = transport.producer(transactional_id="copier-0")
    tp.begin()
    for r in recs:
        tp.send("dst", r.value)
    tp.abort()
    tp.flush()
    assert watcher.poll(10, 0.1) == []
    assert sum(transport.end_offsets("dst").values()) == 0
    assert transport.broker.committed("copier", "src") == {}

    # after the abort the consumer goes back and the next transaction carries only its own
    source.rewind()
    again = drain(source, 5)
    assert [r.offset for r in again] == list(range(5))
    tp.begin()
    tp.send("dst", b"only-this", key=b"k")
    tp.commit_transaction(source, {("src", 0): 2})
    assert [r.value for r in drain(watcher, 1)] == [b"only-this"]
    assert watcher.poll(10, 0.1) == []
    assert transport.broker.committed("copier", "src") == {0: 2}
    source.rewind()
    assert [r.offset for r in drain(source, 3)] == [2, 3, 4]
    for c in (source, watcher):
        c.close()
    tp.close()


def test_begin_discards_what_was_queued_before(transport: LocalTransport) -> None:
    source, watcher = _copy_setup(transport)
    drain(source, 5)
    tp = transport.producer(transactional_id="copier-0")
    tp.send("dst", b"stray")
    tp.begin()
    tp.send("dst", b"kept")
    tp.commit_transaction(source, {("src", 0): 5})
    assert [r.value for r in drain(watcher, 1)] == [b"kept"]
    assert watcher.poll(10, 0.1) == []
    for c in (source, watcher):
        c.close()
    tp.close()


def test_closing_a_transactional_producer_mid_transaction_publishes_nothing(
    transport: LocalTransport,
) -> None:
    source, watcher = _copy_setup(transport)
    drain(source, 5)
    tp = transport.producer(transactional_id="copier-0")
    tp.begin()
    tp.send("dst", b"never committed")
    tp.close()  # e.g. the agent stopped on an error before commit_transaction
    try:
        assert sum(transport.end_offsets("dst").values()) == 0
        assert watcher.poll(10, 0.1) == []
    finally:
        source.close()
        watcher.close()


# --- crash safety -------------------------------------------------------------------------

_COPY_WORKER = r"""
import sys, time
from streamflow.transport.local import LocalTransport

t = LocalTransport(sys.argv[1])
c = t.consumer("copy", ["in"])
p = t.producer(transactional_id="copy-0")
done = 0
while True:
    recs = c.poll(7, 0.3)
    if not recs:
        break
    p.begin()
    offsets = {}
    for r in recs:
        p.send("out", r.value, key=r.key)
        time.sleep(0.001)  # widen the window between send and commit
        offsets[(r.topic, r.partition)] = r.offset + 1
    p.commit_transaction(c, offsets)
    done += len(recs)
    print(done, flush=True)
c.close()
p.close()
t.close()
print("finished", flush=True)
"""


def test_kill_9_mid_stream_loses_and_doubles_nothing(tmp_path: Path) -> None:
    n = 400
    where = tmp_path / "broker"
    t = LocalTransport(where)
    topics(t, **{"in": 3, "out": 2})
    p = t.producer()
    for i in range(n):
        p.send("in", str(i).encode(), key=f"k{i}".encode())
    p.flush()
    p.close()

    first = subprocess.Popen(
        [sys.executable, "-c", _COPY_WORKER, str(where)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert first.stdout is not None
    for line in first.stdout:
        if line.strip() == "finished" or int(line) >= 100:
            break
    time.sleep(0.004)  # land inside the next batch, not between two
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    assert first.returncode == -signal.SIGKILL
    partial = sum(t.end_offsets("out").values())
    assert 100 <= partial < n, f"the kill did not land mid-way ({partial} of {n} copied)"

    second = subprocess.run(
        [sys.executable, "-c", _COPY_WORKER, str(where)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines()[-1] == "finished"

    reader = t.consumer("check", ["out"])
    got = drain(reader, n, timeout=5)
    assert reader.poll(100, 0.1) == []
    reader.close()
    counts = Counter(int(r.value) for r in got)
    assert sorted(counts) == list(range(n))  # nothing lost
    assert set(counts.values()) == {1}  # nothing doubled
    assert t.broker.committed("copy", "in") == t.end_offsets("in")
    t.close()


# --- wake-up ------------------------------------------------------------------------------


class _Poller(threading.Thread):
    """Blocks in ``poll(10, timeout=5)`` and records when it returned."""

    def __init__(self, consumer: Consumer) -> None:
        super().__init__(daemon=True)
        self.consumer = consumer
        self.records: list[Record] = []
        self.returned_at = 0.0

    def run(self) -> None:
        self.records = self.consumer.poll(10, 5.0)
        self.returned_at = time.monotonic()


def test_poll_wakes_when_another_thread_flushes(transport: LocalTransport) -> None:
    topics(transport, t=1)
    c = transport.consumer("g", ["t"])
    poller = _Poller(c)
    poller.start()
    time.sleep(0.3)
    assert poller.is_alive()  # really blocked, waiting
    p = transport.producer()
    p.send("t", b"wake up")
    written = time.monotonic()
    p.flush()
    poller.join(6)
    assert not poller.is_alive()
    assert [r.value for r in poller.records] == [b"wake up"]
    assert poller.returned_at - written < 2.0
    c.close()
    p.close()


_WRITER = r"""
import sys
from streamflow.transport.local import LocalTransport

t = LocalTransport(sys.argv[1])
p = t.producer()
print("ready", flush=True)
sys.stdin.readline()
p.send("t", b"from another process")
p.flush()
p.close()
t.close()
"""


def test_poll_wakes_when_another_process_writes(tmp_path: Path) -> None:
    where = tmp_path / "broker"
    t = LocalTransport(where)
    topics(t, t=1)
    c = t.consumer("g", ["t"])
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(where)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        poller = _Poller(c)
        poller.start()
        time.sleep(0.3)
        assert poller.is_alive()
        go = time.monotonic()
        child.stdin.write("go\n")
        child.stdin.flush()
        poller.join(6)
        assert not poller.is_alive()
        assert [r.value for r in poller.records] == [b"from another process"]
        assert poller.returned_at - go < 2.0
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stdout.close()
        c.close()
        t.close()


def test_explicit_partition_out_of_range_is_refused(transport: LocalTransport) -> None:
    transport.ensure_topics([TopicSpec("two", 2)])
    producer = transport.producer()
    producer.send("two", b"v", partition=2)
    with pytest.raises(ConfigError, match="no partition 2"):
        producer.flush()
