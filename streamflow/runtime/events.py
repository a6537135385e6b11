"""Execution lifecycle events, written to ``sf.<integration>.executions``.

One JSON object per event, keyed by execution id: ``started``, ``step`` (a step
finished), ``retry``, ``filtered``, ``failed`` (dead-lettered), ``completed``. Every event
carries ``started_ms``, when its execution started (epoch ms), so one end record alone
says when it started and ended: with the flow default ``events: summary`` an execution
that starts and ends in one agent writes just that record (``started`` is written only
when it crosses to another agent); ``lifecycle`` adds ``started`` always, ``steps`` one
``step`` event per step done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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
    started_ms: int = 0  # when the execution started (0: unknown, an older event)

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively

    @classmethod
    def decode(cls, data: bytes) -> ExecutionEvent:
        return cls(**orjson.loads(data))


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
        env.created_ms,
    )
