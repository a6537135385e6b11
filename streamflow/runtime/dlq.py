"""Dead letters: list them, show one, replay them to the step where they failed.

A dead letter is the envelope as it failed plus headers (``sf-step``, ``sf-error-type``,
``sf-error``, ``sf-attempt``, ``sf-origin-*``, ``sf-execution-id``, ``sf-time``); when that
envelope could not be encoded, it is the record as the agent received it (header
``sf-dead-letter: input``) and replays to the step that record was for. Replay
sends the envelope back to its step's input topic with ``attempt`` reset, keeping the
execution id and marking ``meta.replayed``. ``replay --all`` replays each dead letter
once: the consumer group ``<dlq topic>.replay`` remembers how far it got.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from streamflow.envelope import Envelope, decode, encode
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.runtime.events import event_for
from streamflow.topology.models import Flow
from streamflow.topology.plan import Plan
from streamflow.transport.base import Record, Transport


@dataclass
class DeadLetter:
    record: Record

    def header(self, name: str) -> str:
        raw = self.record.header(f"sf-{name}")
        return raw.decode("utf-8", "replace") if raw is not None else ""

    @property
    def id(self) -> str:
        return f"{self.record.partition}:{self.record.offset}"

    @property
    def step(self) -> str:
        return self.header("step")

    @property
    def execution_id(self) -> str:
        return self.header("execution-id")

    @property
    def time_ms(self) -> int:
        raw = self.header("time")
        return int(raw) if raw.isdigit() else self.record.timestamp_ms

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time_ms / 1000)),
            "step": self.step,
            "attempt": self.header("attempt"),
            "error_type": self.header("error-type"),
            "error": self.header("error"),
            "execution_id": self.execution_id,
            "origin": f"{self.header('origin-topic')}[{self.header('origin-partition')}]"
            f"@{self.header('origin-offset')}",
            **({"holds": "the record as the agent received it"} if self.as_received else {}),
        }

    @property
    def as_received(self) -> bool:
        """The value is the input record as it arrived (its envelope could not be encoded)."""
        return self.header("dead-letter") == "input"


def read_dead_letters(transport: Transport, plan: Plan, flow: str) -> list[DeadLetter]:
    topic = plan.flows[flow].dlq_topic
    if not transport.partitions(topic):
        raise ConfigError(f"topic {topic} does not exist (run `streamflow deploy`)")
    return [DeadLetter(r) for r in transport.read_all(topic)]


def select(
    letters: Sequence[DeadLetter],
    *,
    ids: Sequence[str] = (),
    step: str | None = None,
    error: str | None = None,
    since_ms: int | None = None,
) -> list[DeadLetter]:
    out = []
    for d in letters:
        if ids and d.id not in ids and d.execution_id not in ids:
            continue
        if step and d.step != step:
            continue
        if error and error.lower() not in (d.header("error") + d.header("error-type")).lower():
            continue
        if since_ms is not None and d.time_ms < since_ms:
            continue
        out.append(d)
    return out


def unreplayed(
    transport: Transport, plan: Plan, flow: str, letters: Sequence[DeadLetter]
) -> list[DeadLetter]:
    """Dead letters past what ``replay --all`` already replayed."""
    topic = plan.flows[flow].dlq_topic
    done = transport.committed(f"{topic}.replay", topic)
    return [d for d in letters if d.record.offset >= done.get(d.record.partition, 0)]


def replay(
    transport: Transport,
    plan: Plan,
    flow: Flow,
    letters: Sequence[DeadLetter],
    *,
    edit: Callable[[Any], Any] | None = None,
    mark_all: bool = False,
    skipped: list[str] | None = None,
) -> list[str]:
    """Send each dead letter back to its step; returns the replayed execution ids.

    A letter that cannot be replayed (a raw record, a failed compensation) is an error when
    named; with ``mark_all`` it is passed over and described in ``skipped``. ``mark_all``
    records as replayed exactly the letters read, not what arrived since."""
    fplan = plan.flows[flow.name]
    producer = transport.producer()
    replayed = []
    for d in letters:
        step = d.step
        try:
            if d.as_received:  # the record before its failing step(s): replay it as it was
                with contextlib.suppress(PoisonMessageError):
                    step = decode(d.record.value, flow.doc.encoding).step
            if step not in fplan.entry_of:
                raise ConfigError(
                    f"dead letter {d.id} failed at '{d.step}', which is not a step of "
                    f"flow {flow.name} now (a raw record or a compensation): cannot replay"
                )
            try:
                env: Envelope = decode(d.record.value, flow.doc.encoding)
            except PoisonMessageError as exc:
                raise ConfigError(f"dead letter {d.id} holds no envelope ({exc})") from None
        except ConfigError as exc:
            if not mark_all or skipped is None:
                raise
            skipped.append(str(exc))
            continue
        if edit is not None:
            env.payload = edit(env.payload)
        env.step = step
        env.attempt = 1
        env.meta["replayed"] = int(env.meta.get("replayed", 0)) + 1
        producer.send(fplan.entry_of[step], encode(env, flow.doc.encoding), d.record.key)
        ev = event_for(env, "replayed", note=f"from {fplan.dlq_topic} {d.id}")
        producer.send(plan.executions_topic, ev.encode(), env.execution_id.encode())
        replayed.append(env.execution_id)
    producer.flush()
    producer.close()
    if mark_all and letters:
        topic = fplan.dlq_topic
        done: dict[tuple[str, int], int] = {}
        for d in letters:
            tp = (topic, d.record.partition)
            done[tp] = max(done.get(tp, 0), d.record.offset + 1)
        transport.commit_group(f"{topic}.replay", done)
    return replayed
