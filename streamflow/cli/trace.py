"""Readable and JSON rendering of execution events for ``streamflow run``."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import orjson

from streamflow.runtime.events import ExecutionEvent
from streamflow.runtime.runner import Execution, RunResult

_MARK = {"started": "▶", "step": "✓", "retry": "↻", "filtered": "⊘", "failed": "✗", "completed": "■"}


class TraceWriter:
    """Prints each execution's events as they arrive (JSON lines with ``json=True``)."""

    def __init__(self, out: TextIO = sys.stdout, *, json: bool = False, total: int = 0) -> None:
        self.out = out
        self.json = json
        self.total = total
        self.ended = 0
        self.verbose = total <= 20  # a per-step trace for small runs, progress for big ones
        self.first: dict[str, int] = {}
        self.last_progress = time.monotonic()

    def __call__(self, ex: Execution, ev: ExecutionEvent) -> None:
        if self.json:
            self.out.write(orjson.dumps(_event_dict(ev)).decode() + "\n")
        elif self.verbose:
            start = self.first.setdefault(ev.execution_id, ev.ts)
            what = ev.step if ev.event in ("step", "retry", "failed", "filtered") else ev.event
            detail = ev.error or ev.note
            line = f"  {_MARK.get(ev.event, '·')} {ev.execution_id[:8]} {what:<24} +{ev.ts - start:>5}ms"
            if detail:
                line += f"  {detail}"
            if ev.event in ("completed", "filtered") and ev.payload is not None:
                line += "\n      " + _short(ev.payload)
            self.out.write(line + "\n")
        if ev.event in ("completed", "filtered", "failed"):
            self.ended += 1
            if not self.verbose and not self.json and time.monotonic() - self.last_progress > 1.0:
                self.last_progress = time.monotonic()
                print(f"… {self.ended}/{self.total} executions ended", file=sys.stderr)
        self.out.flush()

    def summary(self, result: RunResult) -> None:
        counts = result.by_status()
        text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        rate = len(result.executions) / result.seconds if result.seconds > 0 else 0.0
        msg = f"{len(result.executions)} executions in {result.seconds:.2f}s ({rate:,.0f}/s): {text}"
        if self.json:
            print(orjson.dumps({"summary": counts, "seconds": result.seconds}).decode(), file=self.out)
        else:
            print(msg, file=self.out)
            for ex in result.executions:
                if ex.status == "failed":
                    print(f"  ✗ {ex.execution_id} failed: {ex.error}", file=self.out)


def _event_dict(ev: ExecutionEvent) -> dict[str, Any]:
    return {k: getattr(ev, k) for k in ev.__slots__}


def _short(payload: Any, limit: int = 300) -> str:
    text = orjson.dumps(payload).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
