"""Readable and JSON rendering of execution events for ``streamflow run``."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from streamflow import exactjson
from streamflow.cli.conventions import plural
from streamflow.observability.events import ExecutionEvent, is_terminal
from streamflow.runtime.runner import Execution, RunResult

_MARK = {
    "compensated": "↺",
    "compensation_failed": "✗",
    "started": "▶",
    "step": "✓",
    "retry": "↻",
    "filtered": "⊘",
    "failed": "✗",
    "completed": "■",
    "replayed": "⟲",
    "fallback": "↪",
}


class TraceWriter:
    """Prints each execution, in input order, once it has ended (JSON lines of every event
    as they arrive with ``json=True``). An execution a fallback carried on is marked ``↪``
    and counted apart: it did not complete the way the flow was written."""

    def __init__(self, out: TextIO = sys.stdout, *, json: bool = False, total: int = 0) -> None:
        self.out = out
        self.json = json
        self.total = total
        self.ended = 0
        self.verbose = total <= 20  # a per-step trace for small runs, progress for big ones
        self.last_progress = time.monotonic()
        self.ended_blocks: dict[int, Execution] = {}  # ended, waiting for earlier ones
        self.next_index = 0

    def __call__(self, ex: Execution, ev: ExecutionEvent) -> None:
        if self.json:
            self.out.write(exactjson.dumps(_event_dict(ev)).decode() + "\n")
        elif self.verbose and is_terminal(ev.event, ev.note):
            self.ended_blocks[ex.index] = ex
            while self.next_index in self.ended_blocks:
                self._block(self.ended_blocks.pop(self.next_index))
                self.next_index += 1
        if is_terminal(ev.event, ev.note):
            self.ended += 1
            if not self.verbose and not self.json and time.monotonic() - self.last_progress > 1.0:
                self.last_progress = time.monotonic()
                print(f"… {self.ended}/{plural(self.total, 'execution')} ended", file=sys.stderr)
        self.out.flush()

    def _block(self, ex: Execution) -> None:
        """One execution, step by step, printed when it has ended."""
        self.out.write(execution_block(ex.execution_id, ex.flow, ex.events) + "\n\n")

    def flush(self) -> None:
        """Print ended executions still waiting for an earlier one (a run cut short)."""
        for index in sorted(self.ended_blocks):
            self._block(self.ended_blocks.pop(index))

    def summary(self, result: RunResult) -> None:
        self.flush()
        counts = result.by_status()
        fallbacks = sum(1 for e in result.executions if e.via_fallback and e.status == "completed")
        parts = []
        for s, n in sorted(counts.items()):
            extra = f" ({fallbacks} via fallback)" if s == "completed" and fallbacks else ""
            parts.append(f"{n} {s}{extra}")
        text = ", ".join(parts)
        msg = f"{plural(len(result.executions), 'execution')} in {result.seconds:.2f}s: {text}"
        if self.json:
            print(
                exactjson.dumps({"summary": counts, "seconds": result.seconds}).decode(),
                file=self.out,
            )
        else:
            print(msg, file=self.out)
            for ex in result.executions:
                if ex.status in ("failed", "compensated", "compensation_failed"):
                    print(f"  ✗ {ex.execution_id} {ex.status}: {ex.error}", file=self.out)


def execution_block(execution_id: str, flow: str, events: Sequence[ExecutionEvent]) -> str:
    """An execution's events as lines: mark, step or event, ms since its first event."""
    start = events[0].ts if events else 0
    lines = [f"execution {execution_id} ({flow})"]
    via_fallback = any(_is_fallback(ev) for ev in events)
    for ev in events:
        what = ev.step if ev.event in ("step", "retry", "failed", "filtered") else ev.event
        kind = "fallback" if _is_fallback(ev) else ev.event
        if kind == "fallback" and ev.event == "step":
            what = f"{ev.step} (fallback)"
        elif ev.event == "completed" and via_fallback:
            what = "completed via fallback"
        line = f"  {_MARK.get(kind, '·')} {what:<24} +{ev.ts - start:>5}ms"
        if ev.error or ev.note:
            line += f"  {ev.error or ev.note}"
        lines.append(line)
    if events and events[-1].payload is not None:
        lines.append(f"    output: {_short(events[-1].payload)}")
    return "\n".join(lines)


def _is_fallback(ev: ExecutionEvent) -> bool:
    return ev.note == "fallback" or ev.note.startswith("fallback to")


def _event_dict(ev: ExecutionEvent) -> dict[str, Any]:
    return {k: getattr(ev, k) for k in ev.__slots__}


def _short(payload: Any, limit: int = 300) -> str:
    text = exactjson.dumps(payload).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
