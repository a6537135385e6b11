"""The execution store: folding events into rows, retention, the rebuild from the topic."""

from __future__ import annotations

import time
from pathlib import Path

from streamflow.observability import history
from streamflow.observability.events import ExecutionEvent
from streamflow.transport.base import TopicSpec
from streamflow.transport.local import LocalTransport
from tests.waiting import wait_until

DLQ = {"orders": "sf.shop.orders.dlq"}


def ev(eid: str, kind: str, step: str = "", ts: int = 1000, **kw: object) -> ExecutionEvent:
    return ExecutionEvent(eid, "orders", kind, step, kw.pop("instance", ""), 1, ts, **kw)  # type: ignore[arg-type]


def store(tmp_path: Path, **kw: object) -> history.ExecutionStore:
    return history.ExecutionStore(DLQ, {"orders": "webhook"}, path=tmp_path / "h.sqlite", **kw)  # type: ignore[arg-type]


def test_fold_follows_a_saga_then_a_replay() -> None:
    row = None
    for e in (
        ev("x", "started", "reserve", 1000, instance="acme"),
        ev("x", "step", "reserve", 1010),
        ev("x", "failed", "ship", 1020, error="503", note="compensating"),
    ):
        row = history.fold(row, e, DLQ)
    assert row is not None
    assert (row.status, row.ended_ms, row.error) == ("compensating", None, "503")
    assert row.dead_letter == "sf.shop.orders.dlq" and row.instance == "acme"
    row = history.fold(row, ev("x", "compensated", "release", 1030), DLQ)
    assert (row.status, row.ended_ms, row.events) == ("compensated", 1030, 4)
    row = history.fold(row, ev("x", "replayed", "ship", 1040, note="from dlq 0:1"), DLQ)
    assert (row.status, row.ended_ms, row.replays, row.error) == ("running", None, 1, "")
    row = history.fold(row, ev("x", "completed", "ship", 1050), DLQ)
    assert row.status == "completed" and row.to_json()["duration_ms"] == 50


def test_fold_of_a_summary_record_alone() -> None:
    """`events: summary`: one end record per execution, carrying its start time."""
    row = history.fold(None, ev("s", "completed", "out", 1500, started_ms=1200), DLQ)
    assert (row.status, row.started_ms, row.ended_ms) == ("completed", 1200, 1500)
    assert row.to_json()["duration_ms"] == 300
    failed = history.fold(None, ev("f", "failed", "call", 900, error="boom", started_ms=850), DLQ)
    assert (failed.status, failed.step, failed.error, failed.started_ms) == (
        "failed", "call", "boom", 850
    )  # fmt: skip
    # a `started` written when the execution left its first agent, then its end elsewhere
    row = history.fold(None, ev("c", "completed", "out", 2000, started_ms=1000), DLQ)
    row = history.fold(row, ev("c", "started", "even", 1100, started_ms=1000), DLQ)
    assert (row.started_ms, row.ended_ms, row.status) == (1000, 2000, "completed")
    # an event of before started_ms (0) keeps the old rule: the first event's time
    assert history.fold(None, ev("o", "completed", ts=700), DLQ).started_ms == 700


def test_rows_filters_timeline_and_changes(tmp_path: Path) -> None:
    s = store(tmp_path)
    try:
        s.apply([ev("a", "started", ts=1), ev("a", "step", "one", 2, payload={"n": 1}),
                 ev("a", "completed", "one", 3), ev("b", "started", ts=5, instance="acme"),
                 ev("b", "failed", "one", 6, error="boom")])  # fmt: skip
        assert [r.id for r in s.list()] == ["b", "a"]  # newest first
        assert [r.id for r in s.list(status="failed")] == ["b"]
        assert [r.id for r in s.list(instance="acme")] == ["b"]
        assert [r.id for r in s.list(since_ms=4)] == ["b"]
        a = s.get("a")
        assert a is not None and a.trigger == "webhook"
        assert [e["event"] for e in a.timeline] == ["started", "step", "completed"]
        assert a.timeline[1]["payload"] == {"n": 1}
        seq = s.seq
        s.apply([ev("a", "replayed", "one", 9)])
        assert [r.id for r in s.list(after_seq=seq)] == ["a"]
        assert s.list(after_seq=s.seq) == []
        assert s.counts(0) == {"orders": {"running": 1, "failed": 1}}
        big = ev("c", "started", ts=10, payload="x" * (history.MAX_PAYLOAD + 10))
        s.apply([big])
        c = s.get("c")
        assert c is not None and c.timeline[0]["payload"]["truncated"] is True
    finally:
        s.close()


def test_retention_keeps_the_newest_and_the_recent(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    s = store(tmp_path, max_executions=50, max_age=3600)
    try:
        s.apply([ev("old", "started", ts=now - 7_200_000)])
        s.apply([ev(f"e{i:04d}", "started", ts=now + i) for i in range(1200)])  # prunes at 1000
        assert s.get("old") is None
        s.prune()
        kept = s.list(limit=10_000)
        assert len(kept) == 50 and kept[0].id == "e1199" and kept[-1].id == "e1150"
        assert s.size()[0] == 50
        (n_events,) = s.db.execute("SELECT COUNT(*) FROM events").fetchone()
        assert n_events == 50  # the timelines went with their rows
    finally:
        s.close()


def test_unreadable_records_are_passed_over(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "broker")
    t.ensure_topics([TopicSpec("sf.shop.executions", 2)])
    p = t.producer()
    p.send("sf.shop.executions", b"\xff not json", b"k")
    p.send("sf.shop.executions", b'{"unexpected": 1}', b"k")
    p.send("sf.shop.executions", b"[1, 2]", b"k")
    hostile = b'{"execution_id": "h", "flow": "orders", "event": "started", "ts": "abc"}'
    p.send("sf.shop.executions", hostile, b"h")
    p.send("sf.shop.executions", b'{"execution_id": 7, "flow": "o", "event": "x"}', b"h")
    p.send("sf.shop.executions", ev("a", "started", ts=1).encode(), b"a")
    p.flush()
    s = store(tmp_path)
    try:
        history.load(s, t, "sf.shop.executions")
        assert [r.id for r in s.list()] == ["a"]
    finally:
        s.close()
        t.close()


def test_follower_rebuilds_from_the_topic_then_follows(tmp_path: Path) -> None:
    t = LocalTransport(tmp_path / "broker")
    topic = "sf.shop.executions"
    t.ensure_topics([TopicSpec(topic, 3)])
    p = t.producer()
    for i in range(30):
        eid = f"e{i}"
        p.send(topic, ev(eid, "started", ts=i).encode(), eid.encode())
        p.send(topic, ev(eid, "completed", "s", ts=i + 1).encode(), eid.encode())
    p.flush()
    path = tmp_path / "replica.sqlite"
    path.write_bytes(b"stale: a store is rebuilt, never trusted")
    s = history.ExecutionStore(DLQ, path=path)
    f = history.StoreFollower(s, t, topic).start()
    try:
        assert f.caught_up.wait(10)
        assert len(s.list(limit=100, status="completed")) == 30
        p.send(topic, ev("late", "started", ts=99).encode(), b"late")
        p.flush()
        wait_until(lambda: s.get("late") is not None, what="the late event in the store")
    finally:
        f.close()
        s.close()
        t.close()
