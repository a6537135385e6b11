"""The execution store: what each execution did, built from ``sf.<integration>.executions``.

Every reader (``streamflow executions``, the gateway's API and console) folds the topic's
events into one row per execution: status, times, instance, trigger, the error, the
dead-letter topic when it failed, and its timeline (the events themselves, as detailed as
the flow's ``events:`` setting makes them). The store is a SQLite file local to the
process, rebuilt from the topic each time it opens (it is a cache of the topic: nothing in
it is lost with it), and bounded: the newest ``max_executions`` rows, none older than
``max_age`` seconds. Any number of gateway replicas each keep their own.

``fold`` is the one place that knows the shape of the events: a change of events changes
only it. Costs per execution are measured by ``python -m bench.history``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamflow import exactjson
from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.transport.base import Record, Transport

log = logging.getLogger("streamflow.history")

MAX_EXECUTIONS = 100_000
MAX_AGE_S = 7 * 86400.0
MAX_PAYLOAD = 64 * 1024  # bytes of one event's payload kept; longer ones are cut
ENDED = ("completed", "filtered", "failed", "compensated", "compensation_failed")
STATUSES = ("running", "compensating", *ENDED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
  id TEXT PRIMARY KEY, flow TEXT NOT NULL, status TEXT NOT NULL, instance TEXT NOT NULL,
  trigger TEXT NOT NULL, started_ms INTEGER NOT NULL, ended_ms INTEGER, updated_ms INTEGER,
  step TEXT NOT NULL, error TEXT NOT NULL, dead_letter TEXT NOT NULL, replays INTEGER NOT NULL,
  events INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS executions_seq ON executions(seq);
CREATE INDEX IF NOT EXISTS executions_started ON executions(started_ms);
CREATE TABLE IF NOT EXISTS events (execution_id TEXT NOT NULL, n INTEGER NOT NULL,
  data BLOB NOT NULL, PRIMARY KEY (execution_id, n)) WITHOUT ROWID;
"""
_COLUMNS = (
    "id", "flow", "status", "instance", "trigger", "started_ms", "ended_ms", "updated_ms",
    "step", "error", "dead_letter", "replays", "events", "seq",
)  # fmt: skip


@dataclass
class ExecutionRow:
    """One execution as the store knows it. Times are epoch milliseconds."""

    id: str
    flow: str
    status: str = "running"
    instance: str = ""
    trigger: str = ""
    started_ms: int = 0
    ended_ms: int | None = None
    updated_ms: int = 0
    step: str = ""  # the step of its last event
    error: str = ""
    dead_letter: str = ""  # the flow's DLQ topic when a step of it was dead-lettered
    replays: int = 0
    events: int = 0
    seq: int = 0  # store-wide update counter: poll with ``after=seq``
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {c: getattr(self, c) for c in _COLUMNS}
        out["duration_ms"] = self.ended_ms - self.started_ms if self.ended_ms is not None else None
        if self.timeline:
            out["timeline"] = self.timeline
        return out


def fold(
    row: ExecutionRow | None, ev: ExecutionEvent, dlq_topics: Mapping[str, str]
) -> ExecutionRow:
    """The row after one more event (``row`` None: the first event seen of it).

    ``dlq_topics``: flow -> its dead-letter topic (for the link of a failed execution)."""
    # every event says when its execution started (``started_ms``): with `events: summary`
    # an execution that starts and ends in one agent has only its end record
    if row is None:
        row = ExecutionRow(ev.execution_id, ev.flow, started_ms=ev.started_ms or ev.ts)
    elif ev.started_ms and (not row.started_ms or ev.started_ms < row.started_ms):
        row.started_ms = ev.started_ms
    row.events += 1
    row.updated_ms = max(row.updated_ms, ev.ts)
    row.instance = row.instance or ev.instance
    if ev.step:
        row.step = ev.step
    if ev.event == "started":
        row.started_ms = min(row.started_ms, ev.ts) if row.started_ms else ev.ts
    elif ev.event == "replayed":
        row.replays += 1
        row.status, row.ended_ms, row.error = "running", None, ""
    elif ev.event == "failed":
        row.error = ev.error
        row.dead_letter = dlq_topics.get(ev.flow, "")
        if ev.note == "compensating":
            row.status = "compensating"
        else:
            row.status, row.ended_ms = "failed", ev.ts
    elif ev.event in ENDED:
        row.status, row.ended_ms = ev.event, ev.ts
        if ev.error:
            row.error = ev.error
    return row


_TEXT = ("execution_id", "flow", "event", "step", "instance", "note", "error")


def checked(ev: ExecutionEvent) -> ExecutionEvent:
    """``ev`` if its fields have their types (a hostile record is refused, not folded)."""
    if not ev.execution_id or not all(isinstance(getattr(ev, f), str) for f in _TEXT):
        raise ValueError("an execution event needs text fields and an execution id")
    if not all(type(getattr(ev, f)) is int for f in ("ts", "attempt", "started_ms")):
        raise ValueError("an execution event needs integer ts, attempt and started_ms")
    return ev


def _event_blob(ev: ExecutionEvent) -> bytes:
    data = ev.encode()
    if len(data) > MAX_PAYLOAD and ev.payload is not None:
        cut = ExecutionEvent(**{k: getattr(ev, k) for k in ev.__slots__})
        cut.payload = {"truncated": True, "bytes": len(data)}
        data = cut.encode()
    return data


class ExecutionStore:
    """A SQLite file of execution rows and their events; thread-safe (one lock).

    ``path`` None: a new file in a temporary directory, removed by ``close``. An existing
    file is emptied: the topic is the source of truth and is read again from its start."""

    def __init__(
        self,
        dlq_topics: Mapping[str, str],
        triggers: Mapping[str, str] | None = None,
        *,
        path: str | Path | None = None,
        max_executions: int = MAX_EXECUTIONS,
        max_age: float = MAX_AGE_S,
    ) -> None:
        self.dlq_topics = dict(dlq_topics)
        self.triggers = dict(triggers or {})
        self.max_executions = max_executions
        self.max_age_ms = int(max_age * 1000)
        self._tmp = path is None
        if path is None:
            import tempfile

            path = Path(tempfile.mkdtemp(prefix="sf-history-")) / "executions.sqlite"
        self.path = Path(path)
        for stale in (
            self.path,
            *(self.path.with_name(self.path.name + x) for x in ("-wal", "-shm")),
        ):
            stale.unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; " + _SCHEMA)
        self.lock = threading.Lock()
        self.seq = 0
        self._since_prune = 0
        self.applied = 0  # events folded in, ever

    # -- writing ----------------------------------------------------------------------

    def apply(self, records: Iterable[Record | ExecutionEvent]) -> int:
        """Fold events (records of the executions topic, or events) in; returns how many
        were events (an unreadable record is passed over with a warning)."""
        events: list[ExecutionEvent] = []
        for r in records:
            if isinstance(r, ExecutionEvent):
                events.append(r)
                continue
            try:
                events.extend(checked(ev) for ev in decode_all(r.value))
            except (ValueError, TypeError) as exc:
                log.warning("executions: record %s[%d]@%d passed over: %s",
                            r.topic, r.partition, r.offset, exc)  # fmt: skip
        if not events:
            return 0
        with self.lock:
            self.db.execute("BEGIN")
            try:
                self._fold_in(events)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")
            self.applied += len(events)
            if self._since_prune >= 1000:
                self._prune()
        return len(events)

    def _fold_in(self, events: Sequence[ExecutionEvent]) -> None:
        """Fold ``events`` into their rows and keep them (inside the caller's transaction)."""
        rows: dict[str, ExecutionRow | None] = {}
        for ev in events:
            if ev.execution_id not in rows:
                rows[ev.execution_id] = self._row(ev.execution_id)
            row = fold(rows[ev.execution_id], ev, self.dlq_topics)
            if not row.trigger:
                row.trigger = self.triggers.get(row.flow, "")
            rows[ev.execution_id] = row
            self.db.execute(
                "INSERT OR REPLACE INTO events VALUES (?, ?, ?)",
                (ev.execution_id, row.events, _event_blob(ev)),
            )
        for kept in rows.values():
            assert kept is not None
            self.seq += 1
            kept.seq = self.seq
            self.db.execute(
                f"INSERT OR REPLACE INTO executions VALUES ({','.join('?' * len(_COLUMNS))})",
                tuple(getattr(kept, c) for c in _COLUMNS),
            )
        self._since_prune += len(rows)

    def _prune(self) -> None:
        """Keep the newest ``max_executions`` rows, none older than ``max_age``."""
        self._since_prune = 0
        cutoff = int(time.time() * 1000) - self.max_age_ms
        self.db.execute("BEGIN")
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (id TEXT PRIMARY KEY)")
        self.db.execute("DELETE FROM gone")
        self.db.execute(
            "INSERT INTO gone SELECT id FROM executions WHERE updated_ms < ? UNION "
            "SELECT id FROM (SELECT id FROM executions ORDER BY started_ms DESC "
            "LIMIT -1 OFFSET ?)",
            (cutoff, self.max_executions),
        )
        self.db.execute("DELETE FROM executions WHERE id IN (SELECT id FROM gone)")
        self.db.execute("DELETE FROM events WHERE execution_id IN (SELECT id FROM gone)")
        self.db.execute("COMMIT")

    def prune(self) -> None:
        with self.lock:
            self._prune()

    def _row(self, execution_id: str) -> ExecutionRow | None:
        cur = self.db.execute(
            f"SELECT {','.join(_COLUMNS)} FROM executions WHERE id = ?", (execution_id,)
        )
        found = cur.fetchone()
        return ExecutionRow(*found) if found else None

    # -- reading ----------------------------------------------------------------------

    def get(self, execution_id: str) -> ExecutionRow | None:
        """The row with its timeline (every event kept, oldest first), or None."""
        with self.lock:
            row = self._row(execution_id)
            if row is None:
                return None
            cur = self.db.execute(
                "SELECT data FROM events WHERE execution_id = ? ORDER BY n", (execution_id,)
            )
            timeline = [exactjson.loads(d) for (d,) in cur.fetchall()]  # numbers exact
            # by event time, then arrival: two agents' events of one execution can reach
            # the executions topic out of order (different producers, no ordering between
            # partitions of their writes), the stamps cannot
            row.timeline = sorted(timeline, key=_event_ts)
        return row

    def events(self, execution_id: str) -> list[ExecutionEvent]:
        row = self.get(execution_id)
        return [ExecutionEvent(**e) for e in row.timeline] if row else []

    def list(
        self,
        *,
        flow: str | None = None,
        status: str | None = None,
        instance: str | None = None,
        since_ms: int | None = None,
        after_seq: int | None = None,
        limit: int = 100,
    ) -> list[ExecutionRow]:
        """Rows matching every filter given, newest first (``after_seq``: only rows
        changed since that ``seq``, oldest change first)."""
        where: list[str] = []
        args: list[Any] = []
        for col, value in (("flow", flow), ("status", status), ("instance", instance)):
            if value:
                where.append(f"{col} = ?")
                args.append(value)
        if since_ms is not None:
            where.append("started_ms >= ?")
            args.append(since_ms)
        order = "started_ms DESC, seq DESC"
        if after_seq is not None:
            where.append("seq > ?")
            args.append(after_seq)
            order = "seq"
        sql = f"SELECT {','.join(_COLUMNS)} FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ?"
        with self.lock:
            cur = self.db.execute(sql, (*args, max(1, min(limit, 10_000))))
            return [ExecutionRow(*r) for r in cur.fetchall()]

    def counts(self, since_ms: int) -> dict[str, dict[str, int]]:
        """flow -> status -> executions started since ``since_ms``."""
        with self.lock:
            cur = self.db.execute(
                "SELECT flow, status, COUNT(*) FROM executions WHERE started_ms >= ? "
                "GROUP BY flow, status",
                (since_ms,),
            )
            out: dict[str, dict[str, int]] = {}
            for flow, status, n in cur.fetchall():
                out.setdefault(flow, {})[status] = n
        return out

    def size(self) -> tuple[int, int]:
        """(executions kept, bytes of the database file and its write-ahead log)."""
        with self.lock:
            (n,) = self.db.execute("SELECT COUNT(*) FROM executions").fetchone()
        wal = self.path.with_name(self.path.name + "-wal")
        return n, self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    def close(self) -> None:
        with self.lock:
            self.db.close()
        if self._tmp:
            for p in self.path.parent.glob(self.path.name + "*"):
                p.unlink(missing_ok=True)
            self.path.parent.rmdir()


def load(store: ExecutionStore, transport: Transport, topic: str) -> ExecutionStore:
    """Fill ``store`` with everything now in the executions topic (one read, no group)."""
    if not transport.partitions(topic):
        return store
    store.apply(transport.read_all(topic))
    return store


class StoreFollower:
    """A thread that folds the executions topic into a store: from its start (the
    rebuild), then every new event, until ``close``."""

    def __init__(self, store: ExecutionStore, transport: Transport, topic: str) -> None:
        self.store = store
        self.transport = transport
        self.topic = topic
        self.caught_up = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sf-history", daemon=True)

    def start(self) -> StoreFollower:
        self.thread.start()
        return self

    def _loop(self) -> None:
        consumer = None
        end: dict[int, int] = {}
        seen: dict[int, int] = {}
        while not self.stopping.is_set():
            try:
                if consumer is None:
                    end = self.transport.end_offsets(self.topic)
                    consumer = self.transport.consumer("", [self.topic])
                records = consumer.poll(2000, 0.2)
                self.store.apply(records)
                if not self.caught_up.is_set():
                    for r in records:
                        seen[r.partition] = max(seen.get(r.partition, 0), r.offset + 1)
                    done = all(seen.get(p, 0) >= e for p, e in end.items())
                    # transaction markers take offsets no record has: ask for the lag
                    if done or (not records and not any(consumer.lag().values())):
                        self.caught_up.set()
            except Exception as exc:
                log.warning("executions: reading %s failed: %s", self.topic, exc)
                time.sleep(1.0)
        if consumer is not None:
            consumer.close()

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)


def dlq_topics(plan: Any) -> dict[str, str]:
    """flow -> DLQ topic, from a compiled plan."""
    return {name: fp.dlq_topic for name, fp in plan.flows.items()}


def trigger_types(integration: Any) -> dict[str, str]:
    return {name: f.trigger.type for name, f in integration.flows.items()}


def seq_of(rows: Sequence[ExecutionRow]) -> int:
    return max((r.seq for r in rows), default=0)


def _event_ts(event: object) -> int:
    ts = event.get("ts") if isinstance(event, dict) else None
    return ts if type(ts) is int else 0
