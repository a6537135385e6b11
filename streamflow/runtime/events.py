"""Execution lifecycle events, written to ``sf.<integration>.executions``.

One JSON object per event, keyed by execution id: ``started``, ``step`` (a step
finished), ``retry``, ``filtered``, ``failed`` (dead-lettered), ``completed``. A child
execution of a ``split`` carries ``parent`` (the execution it came from) and ``index``.
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
    parent: str = ""  # a split's child: the execution it was split from
    index: int = -1  # a split's child: its item's index

    def encode(self) -> bytes:
        return orjson.dumps(self)  # orjson serialises dataclasses natively

    @classmethod
    def decode(cls, data: bytes) -> ExecutionEvent:
        return cls(**orjson.loads(data))


def event_for(
    env: Envelope, event: str, *, note: str = "", error: str = "", payload: Any = None
) -> ExecutionEvent:
    split = env.meta.get("split") if env.meta else None
    parent, index = "", -1
    if type(split) is dict:  # a child of a split step links to its parent
        parent, index = str(split.get("parent", "")), int(split.get("index", -1))
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
        parent,
        index,
    )
