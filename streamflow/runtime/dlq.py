"""Dead letters: list them, show one, replay them to the step where they failed.

A dead letter is the envelope as it failed (``encoding: json``: its payload as the value,
its metadata in the ``sf-env`` header, as on every topic) plus headers (``sf-step``,
``sf-error-type``, ``sf-error``, ``sf-attempt``, ``sf-origin-*``, ``sf-execution-id``,
``sf-time``); when that envelope could not be encoded, it is the record as the agent
received it, with its ``sf-env`` header (header ``sf-dead-letter: input``), and replays to
the step that record was for. Letters written before the header existed (the whole
envelope as the value) read and replay the same. Replay
sends the envelope back to its step's input topic with ``attempt`` reset, keeping the
execution id and marking ``meta.replayed``; a ``replayed`` execution event (note
``from <dlq topic> <id>``) records it. ``replay --all`` replays each dead letter once: the
consumer group ``<dlq topic>.replay`` remembers how far it got.

Replay is refused, unless overridden, for a letter already replayed (``again``) and for a
letter of an execution that its saga compensated (``allow_compensated``): re-running the
failed step after its predecessors were undone would, e.g., ship a refunded order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamflow.envelope import HEADER, Envelope, PayloadError, decode_record, encode
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.observability.events import SUMMARY_HEADER, ExecutionEvent, decode_all, event_for
from streamflow.observability.history import checked
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
        return int(raw) if raw.isascii() and raw.isdigit() else self.record.timestamp_ms

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


@dataclass
class LetterState:
    """What happened to a dead letter since: ``compensated`` holds the saga outcome of its
    execution (``compensating``, ``compensated``, ``compensation_failed``) or is empty;
    ``replayed`` how many times it was sent back."""

    compensated: str = ""
    replayed: int = 0
    replays: list[str] = field(default_factory=list)  # times of each replay (ISO 8601)

    def columns(self) -> dict[str, Any]:
        return {"compensated": self.compensated, "replayed": self.replayed}


def letter_states(
    transport: Transport,
    plan: Plan,
    flow: str,
    letters: Sequence[DeadLetter],
    events_of: Callable[[str], Sequence[ExecutionEvent]] | None = None,
) -> dict[str, LetterState]:
    """letter id -> its state, from the executions topic (its ``replayed`` events, the
    saga's outcome) and the letter's own envelope (a saga to undo). ``events_of``
    (execution id -> its events, e.g. from the execution store) spares reading the topic."""
    topic = plan.flows[flow].dlq_topic
    by_execution: dict[str, list[DeadLetter]] = {}
    states: dict[str, LetterState] = {}
    for d in letters:
        states[d.id] = LetterState()
        by_execution.setdefault(d.execution_id, []).append(d)
        if plan.flows[flow].compensate_topic is not None and _has_saga(d):
            states[d.id].compensated = "compensating"
    for ev in _events(transport, plan, by_execution, events_of):
        for d in by_execution.get(ev.execution_id, ()):
            st = states[d.id]
            if ev.event == "replayed" and ev.note == f"from {topic} {d.id}":
                st.replays.append(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ev.ts / 1000)))
                st.replayed = max(st.replayed, len(st.replays))
            elif ev.event in ("compensated", "compensation_failed"):
                st.compensated = ev.event
            elif ev.event == "failed" and ev.note == "compensating" and not st.compensated:
                st.compensated = "compensating"
    return states


def _events(
    transport: Transport,
    plan: Plan,
    wanted: Mapping[str, Any],
    events_of: Callable[[str], Sequence[ExecutionEvent]] | None,
) -> Iterator[ExecutionEvent]:
    """The events of the executions in ``wanted``, in order per execution."""
    if events_of is not None:
        for execution_id in wanted:
            yield from events_of(execution_id)
        return
    if not wanted or not transport.partitions(plan.executions_topic):
        return
    for rec in transport.read_all(plan.executions_topic):
        summary = rec.header(SUMMARY_HEADER) is not None  # many executions, any key
        if not summary and (rec.key or b"").decode("utf-8", "replace") not in wanted:
            continue
        try:
            events = decode_all(rec.value)
        except (ValueError, TypeError):
            continue
        for ev in events:
            if ev.execution_id in wanted:
                yield checked(ev)


def _has_saga(d: DeadLetter) -> bool:
    head = d.record.header(HEADER)  # the envelope's metadata, else (before it) the value
    try:
        return bool(orjson.loads(head if head is not None else d.record.value).get("saga"))
    except (ValueError, TypeError, AttributeError):
        return False  # not a JSON envelope (Avro, raw): the executions topic decides


def refusal(d: DeadLetter, state: LetterState | None, *, allow_compensated: bool,
            again: bool) -> str | None:  # fmt: skip
    """Why ``d`` must not be replayed without an override, or None."""
    if state is None:
        return None
    if state.compensated and not allow_compensated:
        return (
            f"dead letter {d.id}: execution {d.execution_id} was {state.compensated} (its saga "
            "undid the steps before the failed one); replaying would run the failed step "
            "again after that. Override with --allow-compensated (the console asks to "
            "confirm) if that is what you want"
        )
    if state.replayed and not again:
        return (
            f"dead letter {d.id} was already replayed ({state.replayed}x); replay it once "
            "more with --again"
        )
    return None


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


def backlog(transport: Transport, plan: Plan, flow: str) -> int:
    """How many dead letters of ``flow`` lie past what ``replay --all`` replayed (offsets
    only, nothing is read). Letters replayed by id are still counted; on Kafka, letters
    deleted by retention before being replayed are counted until the next ``--all``."""
    topic = plan.flows[flow].dlq_topic
    done = transport.committed(f"{topic}.replay", topic)
    return sum(max(0, end - done.get(p, 0)) for p, end in transport.end_offsets(topic).items())


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
    states: dict[str, LetterState] | None = None,
    allow_compensated: bool = False,
    again: bool = False,
) -> list[str]:
    """Send each dead letter back to its step; returns the replayed execution ids.

    A letter that cannot be replayed (a raw record, a failed compensation) is an error when
    named; with ``mark_all`` it is passed over and described in ``skipped``. ``edit``
    gets the payload (its bytes, when they are not JSON) and returns the one to replay. ``mark_all``
    records as replayed exactly the letters read, not what arrived since. Given
    ``states`` (``letter_states``), letters of compensated executions and letters already
    replayed are refused the same way unless ``allow_compensated``/``again``."""
    fplan = plan.flows[flow.name]
    producer = transport.producer()
    replayed = []
    for d in letters:
        step = d.step
        try:
            why = refusal(
                d,
                (states or {}).get(d.id),
                allow_compensated=allow_compensated,
                again=again,
            )
            if why is not None:
                raise ConfigError(why)
            if d.as_received:  # the record before its failing step(s): replay it as it was
                with contextlib.suppress(PoisonMessageError):
                    step = decode_record(d.record, flow.doc.encoding).step
            if step not in fplan.entry_of:
                raise ConfigError(
                    f"dead letter {d.id} failed at '{d.step}', which is not a step of "
                    f"flow {flow.name} now (a raw record or a compensation): cannot replay"
                )
            try:
                env: Envelope = decode_record(d.record, flow.doc.encoding)
            except PoisonMessageError as exc:
                raise ConfigError(f"dead letter {d.id} holds no envelope ({exc})") from None
        except ConfigError as exc:
            if not mark_all or skipped is None:
                raise
            skipped.append(str(exc))
            continue
        if edit is not None:  # given the payload, or its bytes when they are not JSON
            try:
                current: Any = env.payload
            except PayloadError:
                current = env.raw_payload
            env.payload = edit(current)
        env.step = step
        env.attempt = 1
        env.meta["replayed"] = int(env.meta.get("replayed", 0)) + 1
        # the payload as it was (not parsed) unless edited; the dead letter's own headers stay
        value, headers = encode(env, flow.doc.encoding)
        producer.send(fplan.entry_of[step], value, d.record.key, headers)
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
