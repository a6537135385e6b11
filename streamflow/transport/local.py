"""The embedded transport: durable topics, partitions and consumer groups in SQLite.

``local://DIR`` keeps one SQLite database (WAL mode) at ``DIR/broker.db``. It gives the
runtime what Kafka gives it, on one machine and with no server:

* topics with partitions; a keyed message goes to ``murmur2(key) % partitions`` as in Kafka;
* consumer groups with committed offsets (the next offset to read);
* an atomic consume-produce transaction: produced messages and the group's offsets are
  written in one SQLite transaction, so a crash (even ``kill -9``) either keeps both or
  neither. Messages become visible to readers only when that transaction commits.

Consumers in the same process wake on new data through a condition variable; data from
another process is noticed through SQLite's ``data_version`` within 50 ms. A group is
meant to be consumed by one process at a time (Kafka is the transport for scale-out).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import orjson

from streamflow.errors import ConfigError
from streamflow.transport.base import (
    Consumer,
    Headers,
    MessageRejected,
    Record,
    RevokeHook,
    TopicChange,
    TopicPartition,
    TopicSpec,
    max_message_bytes,
    too_large,
    wire_size,
)
from streamflow.transport.partitioner import partition_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL, config TEXT);
CREATE TABLE IF NOT EXISTS logends (topic TEXT, part INTEGER, next INTEGER NOT NULL,
    PRIMARY KEY (topic, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (topic TEXT, part INTEGER, off INTEGER, key BLOB,
    value BLOB NOT NULL, headers BLOB, ts INTEGER, PRIMARY KEY (topic, part, off)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (grp TEXT, topic TEXT, part INTEGER, off INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, part)) WITHOUT ROWID;
"""

_METADATA_AGE = 5.0  # seconds a partition count is trusted
_POLL_SLICE = 0.05  # how long to sleep before looking for another process's writes
_Pending = tuple[str, int | None, bytes | None, bytes, Headers]


class LocalBroker:
    """One SQLite store, shared by every producer and consumer of this process."""

    _instances: dict[Path, LocalBroker] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def open(cls, directory: str | Path) -> LocalBroker:
        path = Path(directory).resolve() / "broker.db"
        with cls._instances_lock:
            broker = cls._instances.get(path)
            if broker is None or broker.closed:
                broker = cls(path)
                cls._instances[path] = broker
            broker.refs += 1
            return broker

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.refs = 0
        self.closed = False
        self.lock = threading.RLock()
        self.changed = threading.Condition(threading.Lock())
        self.conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self.conn.executescript(_SCHEMA)
        self._partitions: dict[str, int] = {}
        self._partitions_read = 0.0
        self.local_version = 0  # bumped on every write of this process

    def release(self) -> None:
        with self._instances_lock:
            self.refs -= 1
            if self.refs <= 0 and not self.closed:
                self.closed = True
                with self.lock:
                    self.conn.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        with self.changed:
            self.local_version += 1
            self.changed.notify_all()

    def data_version(self) -> tuple[int, int]:
        """Changes when this process or another one wrote to the store."""
        with self.lock:
            row = self.conn.execute("PRAGMA data_version").fetchone()
        return int(row[0]), self.local_version

    def partitions(self, topic: str) -> int:
        """Partition count, cached for a few seconds (another process may grow a topic,
        as Kafka clients learn it from their next metadata refresh)."""
        n = self._partitions.get(topic)
        if n is not None and time.monotonic() - self._partitions_read > _METADATA_AGE:
            self._partitions.clear()
            n = None
        if n is None:
            with self.lock:
                row = self.conn.execute(
                    "SELECT partitions FROM topics WHERE name=?", (topic,)
                ).fetchone()
            n = int(row[0]) if row else 0
            if n:
                if not self._partitions:
                    self._partitions_read = time.monotonic()
                self._partitions[topic] = n
        return n

    def ensure_topics(self, specs: Sequence[TopicSpec], dry_run: bool) -> list[TopicChange]:
        changes: list[TopicChange] = []
        with self.write() as db:
            for spec in specs:
                row = db.execute(
                    "SELECT partitions FROM topics WHERE name=?", (spec.name,)
                ).fetchone()
                config = orjson.dumps(dict(spec.config)).decode()
                if row is None:
                    changes.append(TopicChange(spec.name, "create", spec.partitions))
                elif int(row[0]) < spec.partitions:
                    changes.append(TopicChange(spec.name, "grow", spec.partitions, int(row[0])))
                elif int(row[0]) > spec.partitions:
                    raise ConfigError(
                        f"topic {spec.name} has {row[0]} partitions; shrinking to "
                        f"{spec.partitions} is not possible (it would reorder keys)"
                    )
                else:
                    changes.append(TopicChange(spec.name, "unchanged", spec.partitions))
                    continue
                if not dry_run:
                    db.execute(
                        "INSERT INTO topics(name, partitions, config) VALUES (?,?,?) "
                        "ON CONFLICT(name) DO UPDATE SET partitions=excluded.partitions, "
                        "config=excluded.config",
                        (spec.name, spec.partitions, config),
                    )
                    self._partitions.pop(spec.name, None)
        return changes

    def append(self, db: sqlite3.Connection, pending: Sequence[_Pending]) -> None:
        """Append messages inside the caller's write transaction."""
        ends: dict[TopicPartition, int] = {}
        rows = []
        now = time.time_ns() // 1_000_000
        for topic, partition, key, value, headers in pending:
            n = self.partitions(topic)
            if n == 0:
                raise ConfigError(f"topic {topic} does not exist (run `streamflow deploy`)")
            if partition is None:
                part = partition_for(key, n) if key is not None else next(_spread) % n
            elif 0 <= partition < n:
                part = partition
            else:
                raise ConfigError(f"topic {topic} has no partition {partition} (it has {n})")
            tp = (topic, part)
            nxt = ends.get(tp)
            if nxt is None:
                row = db.execute("SELECT next FROM logends WHERE topic=? AND part=?", tp).fetchone()
                nxt = int(row[0]) if row else 0
            hdr = orjson.dumps([[k, v.decode("latin-1")] for k, v in headers]) if headers else None
            rows.append((topic, part, nxt, key, value, hdr, now))
            ends[tp] = nxt + 1
        db.executemany("INSERT INTO messages VALUES (?,?,?,?,?,?,?)", rows)
        db.executemany(
            "INSERT INTO logends(topic, part, next) VALUES (?,?,?) "
            "ON CONFLICT(topic, part) DO UPDATE SET next=excluded.next",
            [(t, p, n) for (t, p), n in ends.items()],
        )

    def commit_offsets(
        self, db: sqlite3.Connection, group: str, offsets: Mapping[TopicPartition, int]
    ) -> None:
        db.executemany(
            "INSERT INTO offsets(grp, topic, part, off) VALUES (?,?,?,?) "
            "ON CONFLICT(grp, topic, part) DO UPDATE SET off=excluded.off",
            [(group, t, p, o) for (t, p), o in offsets.items()],
        )

    def committed(self, group: str, topic: str) -> dict[int, int]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT part, off FROM offsets WHERE grp=? AND topic=?", (group, topic)
            ).fetchall()
        return {int(p): int(o) for p, o in rows}

    def end_offsets(self, topic: str) -> dict[int, int]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT part, next FROM logends WHERE topic=?", (topic,)
            ).fetchall()
        ends = dict.fromkeys(range(self.partitions(topic)), 0)
        ends.update({int(p): int(n) for p, n in rows})
        return ends

    def read(self, tp: TopicPartition, start: int, limit: int) -> list[Record]:
        with self.lock:
            rows = self.conn.execute(
                "SELECT off, key, value, headers, ts FROM messages "
                "WHERE topic=? AND part=? AND off>=? ORDER BY off LIMIT ?",
                (tp[0], tp[1], start, limit),
            ).fetchall()
        out = []
        for off, key, value, hdr, ts in rows:
            headers: Headers = (
                [(k, v.encode("latin-1")) for k, v in orjson.loads(hdr)] if hdr else []
            )
            out.append(Record(tp[0], tp[1], int(off), key, value, headers, int(ts)))
        return out


_spread = itertools.count()  # unkeyed messages go round-robin


class LocalConsumer:
    def __init__(
        self, broker: LocalBroker, group: str, topics: Sequence[str], from_end: bool
    ) -> None:
        self.broker = broker
        self.group = group
        self.topics = list(topics)
        self.from_end = from_end
        self.positions: dict[TopicPartition, int] = {}
        self.on_revoke: RevokeHook | None = None  # a local group never rebalances
        self.paused: set[TopicPartition] = set()
        self._turn = 0
        self.rewind()

    def assignment(self) -> list[TopicPartition]:
        return list(self.positions)

    def rewind(self) -> None:
        self.positions = {}
        for topic in self.topics:
            n = self.broker.partitions(topic)
            if n == 0:
                raise ConfigError(f"topic {topic} does not exist (run `streamflow deploy`)")
            committed = self.broker.committed(self.group, topic)
            ends = self.broker.end_offsets(topic) if self.from_end else {}
            for p in range(n):
                self.positions[(topic, p)] = committed.get(p, ends.get(p, 0))

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    def group_metadata(self) -> object:
        return self.group

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        for topic in self.topics:
            for p, end in self.broker.end_offsets(topic).items():
                out[(topic, p)] = max(0, end - self.positions.get((topic, p), 0))
        return out

    def poll(self, max_records: int, timeout: float) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            version = self.broker.data_version()
            out: list[Record] = []
            order = list(self.positions)
            self._turn = (self._turn + 1) % max(1, len(order))  # no partition starves another
            for tp in order[self._turn :] + order[: self._turn]:
                if tp in self.paused:
                    continue
                recs = self.broker.read(tp, self.positions[tp], max_records - len(out))
                if recs:
                    self.positions[tp] = recs[-1].offset + 1
                    out.extend(recs)
                if len(out) >= max_records:
                    break
            if out:
                return out
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            with self.broker.changed:
                if self.broker.data_version() == version:
                    self.broker.changed.wait(min(remaining, _POLL_SLICE))

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        with self.broker.write() as db:
            self.broker.commit_offsets(db, self.group, offsets)

    def close(self) -> None:
        self.broker.release()


class LocalProducer:
    atomic_offsets = True
    """``commit_transaction`` works without ``transactional_id`` too: one SQLite
    transaction holds outputs and offsets, so at-least-once agents use it (no duplicates)."""

    def __init__(self, broker: LocalBroker, transactional: bool, max_bytes: int) -> None:
        self.broker = broker
        self.transactional = transactional
        self.max_bytes = max_bytes
        self.pending: list[_Pending] = []

    def send(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> None:
        size = wire_size(key, value, headers)
        if size > self.max_bytes:
            # the limit of a Kafka producer (message.max.bytes): what passes here passes there
            raise MessageRejected(too_large(topic, size, self.max_bytes))
        self.pending.append((topic, partition, key, value, headers or []))

    def flush(self, timeout: float = 30.0) -> None:
        if self.transactional:
            return  # as in Kafka: a transaction's messages appear at commit_transaction only
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        with self.broker.write() as db:
            self.broker.append(db, pending)

    def begin(self) -> None:
        self.pending = []

    def commit_transaction(self, consumer: Consumer, offsets: Mapping[TopicPartition, int]) -> None:
        pending, self.pending = self.pending, []
        with self.broker.write() as db:
            if pending:
                self.broker.append(db, pending)
            self.broker.commit_offsets(db, consumer.group, offsets)

    def abort(self) -> None:
        self.pending = []

    def close(self) -> None:
        if self.transactional:
            self.pending = []  # an open transaction is aborted, never half-published
        else:
            self.flush()
        self.broker.release()


class LocalTransport:
    """``local://DIR``: the embedded default (see the module docstring)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.url = f"local://{directory}"
        self.max_message_bytes = max_message_bytes(os.environ)
        self.broker = LocalBroker.open(self.directory)

    def ensure_topics(
        self, specs: Sequence[TopicSpec], *, dry_run: bool = False
    ) -> list[TopicChange]:
        return self.broker.ensure_topics(specs, dry_run)

    def partitions(self, topic: str) -> int:
        return self.broker.partitions(topic)

    def consumer(
        self, group: str, topics: Sequence[str], *, from_end: bool = False
    ) -> LocalConsumer:
        c = LocalConsumer(LocalBroker.open(self.directory), group, topics, from_end)
        return c

    def producer(
        self, *, transactional_id: str | None = None, delivery_timeout: float | None = None
    ) -> LocalProducer:
        # delivery_timeout: nothing to wait for, a flush writes to SQLite before it returns
        return LocalProducer(
            LocalBroker.open(self.directory), transactional_id is not None, self.max_message_bytes
        )

    def group_lock(self, group: str) -> Path | None:
        return self.directory / "locks" / f"{group}.lock"

    def end_offsets(self, topic: str) -> dict[int, int]:
        return self.broker.end_offsets(topic)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return self.broker.committed(group, topic)

    def commit_group(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        with self.broker.write() as db:
            self.broker.commit_offsets(db, group, offsets)

    def read_all(self, topic: str) -> list[Record]:
        out: list[Record] = []
        for p, end in self.broker.end_offsets(topic).items():
            pos = 0
            while pos < end:
                batch = self.broker.read((topic, p), pos, 1000)
                if not batch:
                    break
                out.extend(batch)
                pos = batch[-1].offset + 1
        return out

    def close(self) -> None:
        self.broker.release()
