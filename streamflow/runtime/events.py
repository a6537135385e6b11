"""Execution lifecycle events, written to ``sf.<integration>.executions``.

One JSON object per event, keyed by execution id: ``started``, ``step`` (a step
finished), ``retry``, ``filtered``, ``failed`` (dead-lettered), ``completed``.
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

    def encode(self) -> bytes:
        """JSON bytes. An event is always encodable: a payload (or text) the encoder
        refuses is left out and the reason put in ``note`` (the execution goes on)."""
        try:
            return orjson.dumps(self)  # orjson serialises dataclasses natively
        except TypeError as exc:
            return self._without_payload(exc)

    def _without_payload(self, exc: TypeError) -> bytes:
        from streamflow.runtime.contain import describe

        def clean(text: str) -> str:
            return text.encode("utf-8", "replace").decode("utf-8")

        why = f"not encodable, the payload is left out of this event: {describe(exc)}"
        note = f"{clean(self.note)}; {why}" if self.note else why
        safe = ExecutionEvent(
            clean(self.execution_id),
            clean(self.flow),
            self.event,
            clean(self.step),
            clean(self.instance),
            self.attempt,
            self.ts,
            note,
            clean(self.error),
        )
        return orjson.dumps(safe)

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
    )
