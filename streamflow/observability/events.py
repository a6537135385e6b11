"""Execution lifecycle events, written to ``sf.<integration>.executions``.

One JSON object per event, keyed by execution id: ``started``, ``step`` (a step
finished), ``retry``, ``filtered``, ``failed`` (dead-lettered), ``completed``. A child
execution of a ``split`` carries ``parent`` (the execution it came from) and ``index``.
Every event carries ``started_ms``, when its execution started (epoch ms), so one end
record alone says when it started and ended: with the flow default ``events: summary`` an
execution that starts and ends in one agent writes just that record (``started`` is
written only when it crosses to another agent); ``lifecycle`` adds ``started`` always,
``steps`` one ``step`` event per step done.

An agent of the lean (all-synchronous) loop writes the ``completed`` events of a batch
together, as one *summary record* (``summary_records``) per batch: one message for up to
``SUMMARY_MAX`` executions, instead of one per execution, carrying for each what its own
``completed`` event would (id, last step, instance, start and end times, split parent and
index). It has the header ``sf-summary``; ``decode_all`` reads both kinds back as events,
and every reader of the topic goes through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from streamflow import exactjson
from streamflow.envelope import Envelope, now_ms
from streamflow.errtext import describe
from streamflow.observability.metrics import EXECUTIONS_ENDED

RUNS = logging.getLogger("streamflow.executions")
"""One INFO line per finished execution (``serve``/``worker`` show INFO of it by default)."""
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
    started_ms: int = 0  # when the execution started (0: unknown, an older event)

    def encode(self) -> bytes:
        """JSON bytes. An event is always encodable: a payload (or text) the encoder
        refuses is left out and the reason put in ``note`` (the execution goes on)."""
        try:
            return exactjson.dumps(self)  # dataclasses natively; numbers exact
        except (TypeError, ValueError) as exc:
            return self._without_payload(exc)

    def _without_payload(self, exc: Exception) -> bytes:
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
            None,
            clean(self.parent),
            self.index,
            self.started_ms,
        )
        return exactjson.dumps(safe)

    @classmethod
    def decode(cls, data: bytes) -> ExecutionEvent:
        """One event record (a summary record raises ``ValueError``: use ``decode_all``)."""
        doc = exactjson.loads(data)
        if type(doc) is dict and "executions" in doc:
            raise ValueError("a summary record holds many events: read it with decode_all")
        return cls(**doc)


SUMMARY_HEADER = "sf-summary"
SUMMARY_MAX = 500  # executions per summary record (~100 bytes each: far below 1 MB)
Completion = tuple[str, str, str, int, int, str, int]
"""One execution of a summary record: (execution id, last step, instance, started_ms,
ended_ms, split parent, split index)."""


def completion(env: Envelope, ended_ms: int) -> Completion:
    """What a ``completed`` event of ``env`` ending at ``ended_ms`` would say, for a
    summary record."""
    split = env.meta.get("split") if env.meta else None
    parent, index = "", -1
    if type(split) is dict:
        parent, index = str(split.get("parent", "")), int(split.get("index", -1))
    return (env.execution_id, env.step, env.instance, env.created_ms, ended_ms, parent, index)


SUMMARY_BYTES = 256 * 1024  # a record above this is split in two (long ids): far below 1 MB


def summary_records(flow: str, done: list[Completion]) -> list[tuple[bytes, bytes]]:
    """(key, value) of the summary records of ``done``: at most SUMMARY_MAX executions
    and, unless one alone is larger, SUMMARY_BYTES per record; keyed by the first
    execution id of each (records spread over the topic's partitions)."""
    out: list[tuple[bytes, bytes]] = []
    todo = [done[i : i + SUMMARY_MAX] for i in range(0, len(done), SUMMARY_MAX)]
    while todo:
        chunk = todo.pop(0)
        value = exactjson.dumps({"event": "completed", "flow": flow, "executions": chunk})
        if len(value) > SUMMARY_BYTES and len(chunk) > 1:
            half = len(chunk) // 2
            todo[:0] = [chunk[:half], chunk[half:]]
            continue
        out.append((chunk[0][0].encode(), value))
    return out


def decode_all(data: bytes) -> list[ExecutionEvent]:
    """The events of one record of the executions topic: an event record gives one, a
    summary record one ``completed`` event per execution it holds. Raises ``ValueError``
    (or ``TypeError``) for a record that is neither."""
    doc = exactjson.loads(data)
    if type(doc) is not dict:
        raise ValueError("an execution event is a JSON object")
    if "executions" not in doc:
        return [ExecutionEvent(**doc)]
    flow = str(doc.get("flow", ""))
    return [
        ExecutionEvent(eid, flow, "completed", step, instance, 1, ended, started_ms=started,
                       parent=parent, index=index)
        for eid, step, instance, started, ended, parent, index in doc["executions"]
    ]  # fmt: skip


def event_for(
    env: Envelope,
    event: str,
    *,
    note: str = "",
    error: str = "",
    payload: Any = None,
    counted: bool = False,
) -> ExecutionEvent:
    """The event of ``env``; an ending one is counted in ``streamflow_executions_ended_total``
    (unless the caller counts it: ``counted``, per batch)."""
    if not counted and is_terminal(event, note):
        EXECUTIONS_ENDED.labels(env.integration, env.flow, event, env.instance).inc()
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
        env.created_ms,
    )


def announce(env: Envelope, kind: str, *, note: str = "") -> None:
    """Log one INFO line when ``kind`` ends the execution of ``env`` well (completed,
    filtered, compensated); a failure has its own WARNING line (the dead letter)."""
    if kind not in ("completed", "filtered", "compensated") or not RUNS.isEnabledFor(logging.INFO):
        return
    announce_line(env.execution_id, env.flow, kind, env.created_ms, env.step, env.instance, note)


def announce_line(
    execution_id: str, flow: str, kind: str, started_ms: int, step: str, instance: str, note: str
) -> None:
    """The INFO line of ``announce`` (the caller checked the level)."""
    took = max(0, now_ms() - started_ms)
    text = f"execution {execution_id} {flow} {kind} in {took}ms"
    if kind == "filtered":
        text += f" at {step}"
    if instance:
        text += f" (instance {instance})"
    if note:
        text += f": {note[:200]}"
    RUNS.info("%s", text, extra={"flow": flow, "execution_id": execution_id, "instance": instance})
