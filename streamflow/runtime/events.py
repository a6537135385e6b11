"""Execution lifecycle events, written to ``sf.<integration>.executions``.

One JSON object per event, keyed by execution id: ``started``, ``step`` (a step
finished), ``retry``, ``filtered``, ``failed`` (dead-lettered), ``completed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamflow import exactjson
from streamflow.envelope import Envelope, now_ms

TERMINAL = frozenset({"completed", "filtered", "failed", "compensated", "compensation_failed"})


def is_terminal(kind: str, note: str) -> bool:
    """Has the execution ended? A failure followed by compensations has not, yet."""
    return kind in TERMINAL and not (kind == "failed" and note == "compensating")


@dataclass(slots=True)
class ExecutionEvent:
    execution_id: str
    flow: str
    event: str
    step: str = ""
    instance: str = ""
    attempt: int = 1
    ts: int = 0
    note: str = ""
    error: str = ""
    payload: Any = None

    def encode(self) -> bytes:
        return exactjson.dumps(self)  # dataclasses natively; numbers exact

    @classmethod
    def decode(cls, data: bytes) -> ExecutionEvent:
        return cls(**exactjson.loads(data))


def event_for(
    env: Envelope, event: str, *, note: str = "", error: str = "", payload: Any = None
) -> ExecutionEvent:
    return ExecutionEvent(
        env.execution_id,
        env.flow,
        event,
        env.step,
        env.instance,
        env.attempt,
        now_ms(),
        note,
        error,
        payload,
    )
