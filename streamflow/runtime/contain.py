"""Per-record containment: whatever goes wrong with one record ends that one execution.

A step's failure is handled where it happens (retry, fallback, dead letter: processor.py).
This module is the last line behind it, used by the agent loop for anything else that can
go wrong with one record: an envelope or an event that cannot be encoded, a message over
the size limit, the producer refusing one message, a bug in a processor. The record is
dead-lettered *as it arrived* (its bytes, not a re-encoding of what failed), with headers
saying why; its execution gets a ``failed`` event; the offset moves past it. Only
``FatalError`` (and a broker-level fatal error) stops an agent.

The dead letter's headers are those of every dead letter (``sf-error``, ``sf-step`` ...;
see dlq.py) plus ``sf-dead-letter: input`` (the value is the input record as it arrived).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from streamflow.envelope import Encoding, carried, decode, now_ms
from streamflow.errors import PoisonMessageError
from streamflow.observability.events import ExecutionEvent
from streamflow.steps.base import Emit
from streamflow.transport.base import DEFAULT_MAX_MESSAGE_BYTES, Headers, Record, wire_size

log = logging.getLogger("streamflow.runtime")

INPUT_MARK: tuple[str, bytes] = ("sf-dead-letter", b"input")


def place(integration: str, flow: str, step: str, execution_id: str = "") -> str:
    """Where an error happened, in the words every step error starts with:
    ``integration/flow step <id> (execution <id>)``. The one place that writes it."""
    ex = f" (execution {execution_id})" if execution_id else ""
    return f"{integration}/{flow} step {step}{ex}"


Out = Emit
"""A message to produce: (topic, value, key, headers, partition); a step's ``Emit``."""


@dataclass(frozen=True, slots=True)
class Containment:
    """Where one agent's contained failures go."""

    integration: str
    flow: str
    step: str  # the agent's first step: reported when the failing step is unknown
    dlq_topic: str
    executions_topic: str
    encoding: Encoding = "json"
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the transport's message size limit
    trigger: bool = False  # records are outside events, not envelopes

    def where(self, rec: Record) -> tuple[str, str, str, int]:
        """(execution id, instance, step, attempt) of a record, as far as it can be read."""
        if self.trigger:  # the kafka trigger derives the id from the record's position
            return f"{rec.topic}-{rec.partition}-{rec.offset}", "", "trigger", 0
        try:
            env = decode(rec.value, rec.headers, self.encoding)  # the payload is not read
        except PoisonMessageError:
            return "", "", self.step, 0
        return env.execution_id, env.instance, env.step, env.attempt

    def dead_letter(
        self,
        rec: Record,
        error: str,
        error_type: str,
        *,
        execution_id: str | None = None,
        step: str | None = None,
    ) -> list[Out]:
        """The record as it arrived on the DLQ plus a ``failed`` event for its execution."""
        ex_id, instance, rec_step, attempt = self.where(rec)
        ex_id = execution_id if execution_id is not None else ex_id
        step = step or rec_step
        prefix = place(self.integration, self.flow, step, ex_id)
        if not error.startswith(prefix):
            error = f"{prefix}: {error}"
        log.warning(
            "dead-lettered record %s[%d]@%d (execution %s, step %s): %s",
            rec.topic,
            rec.partition,
            rec.offset,
            ex_id or "unknown",
            step,
            error,
            extra={"flow": self.flow, "step": step, "execution_id": ex_id},
        )
        headers = dlq_headers(rec, error_type, error, step, attempt, ex_id)
        headers.append(INPUT_MARK)
        headers += carried(rec.headers)  # the envelope's metadata, when in headers
        value = rec.value
        if wire_size(rec.key, value, headers) > self.max_bytes:
            # a record just under the limit plus our headers: keep the record, shorten why
            headers = [(k, v[:200] if k == "sf-error" else v) for k, v in headers]
            if wire_size(rec.key, value, headers) > self.max_bytes:
                log.error(
                    "record %s[%d]@%d is too large to dead-letter: the dead letter holds "
                    "its headers, the record stays in its topic until retention",
                    rec.topic,
                    rec.partition,
                    rec.offset,
                )
                headers.append(("sf-value-dropped", str(len(value)).encode()))
                value = b""
        outs = [Out(self.dlq_topic, value, rec.key, headers)]
        if ex_id:
            ev = ExecutionEvent(
                ex_id, self.flow, "failed", step, instance, attempt, now_ms(), "", error
            )
            outs.append(Out(self.executions_topic, ev.encode(), ex_id.encode()))
        return outs


def dlq_headers(
    rec: Record, error_type: str, error: str, step: str, attempt: int, execution_id: str
) -> Headers:
    """The headers of every dead letter (see dlq.py)."""
    return [
        ("sf-error-type", error_type.encode()),
        ("sf-error", error.encode()[:4000]),
        ("sf-step", step.encode()),
        ("sf-attempt", str(attempt).encode()),
        ("sf-origin-topic", rec.topic.encode()),
        ("sf-origin-partition", str(rec.partition).encode()),
        ("sf-origin-offset", str(rec.offset).encode()),
        ("sf-execution-id", execution_id.encode()),
        ("sf-time", str(time.time_ns() // 1_000_000).encode()),
    ]
