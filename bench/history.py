"""Cost of the execution store (``streamflow/observability/history.py``) per execution.

    .venv/bin/python -m bench.history [--executions 20000] [--batch 500]

Folds synthetic executions into a fresh SQLite store the way a console replica does
(``apply`` per polled batch) and prints, per shape of events, the microseconds of CPU
per execution and the bytes on disk per execution (after a WAL checkpoint), plus how
many executions fit in 1 GiB. The shapes:

- ``lifecycle``: ``events: lifecycle`` (started, completed), no payloads (serve's default)
- ``steps``: ``events: steps`` with 4 steps (started, 4 x step, completed), no payloads
- ``steps+payloads``: the same with ~500-byte payloads in every event (``run``'s trace)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import event
from streamflow.observability import history
from streamflow.observability.events import ExecutionEvent

STEPS = ("validate", "enrich", "push", "notify")


def events_of(i: int, shape: str, payload: object) -> list[ExecutionEvent]:
    eid = f"{i:032x}"
    ts = 1_800_000_000_000 + i * 10
    body = payload if shape == "steps+payloads" else None
    out = [ExecutionEvent(eid, "orders", "started", STEPS[0], "", 1, ts, payload=body)]
    if shape != "lifecycle":
        for n, step in enumerate(STEPS):
            out.append(ExecutionEvent(eid, "orders", "step", step, "", 1, ts + n + 1, "201",
                                      payload=body))  # fmt: skip
    out.append(ExecutionEvent(eid, "orders", "completed", STEPS[-1], "", 1, ts + 9, payload=body))
    return out


def measure(shape: str, n: int, batch: int) -> dict[str, float]:
    import random

    payload = event(1, random.Random(1))
    with tempfile.TemporaryDirectory() as tmp:
        store = history.ExecutionStore(
            {"orders": "sf.bench.orders.dlq"}, path=Path(tmp) / "h.sqlite", max_age=1e12,
            max_executions=n,
        )  # fmt: skip
        pending: list[ExecutionEvent] = []
        cpu = wall = 0.0
        for i in range(n):
            pending.extend(events_of(i, shape, payload))
            if len(pending) >= batch or i == n - 1:
                t0, w0 = time.process_time(), time.perf_counter()
                store.apply(pending)
                cpu += time.process_time() - t0
                wall += time.perf_counter() - w0
                pending = []
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        kept, size = store.size()
        store.close()
    return {
        "executions": kept,
        "us_per_execution": cpu / n * 1e6,
        "wall_us_per_execution": wall / n * 1e6,
        "bytes_per_execution": size / kept,
        "per_gib": (1 << 30) / (size / kept),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--executions", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=500, help="events per apply (a poll)")
    args = ap.parse_args()
    print(f"{'shape':<16} {'events':>6} {'CPU µs/exec':>12} {'wall µs/exec':>13} "
          f"{'bytes/exec':>11} {'executions/GiB':>15}")  # fmt: skip
    for shape in ("lifecycle", "steps", "steps+payloads"):
        r = measure(shape, args.executions, args.batch)
        n_events = len(events_of(0, shape, None))
        print(f"{shape:<16} {n_events:>6} {r['us_per_execution']:>12.0f} "
              f"{r['wall_us_per_execution']:>13.0f} {r['bytes_per_execution']:>11.0f} "
              f"{r['per_gib']:>15,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
