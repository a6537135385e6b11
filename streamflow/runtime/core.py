"""The processing core every processor shares: one emitter, one retry executor.

``Emitter`` writes what an execution leaves behind - its execution events and its dead
letters - for every processor (chain, split, aggregate, trigger, compensation): the one
place that says where an error happened, how a dead letter's headers read, and what
happens when an envelope cannot be encoded to be dead-lettered (its input record goes
instead, ``contain.py``).

``RetryExecutor`` runs an I/O step under a retry policy: it classifies a failure (final,
fatal, retriable), keeps the circuit breaker, writes the ``retry`` event and either waits
the backoff in place or parks the envelope on the step's retry topic. The chain and the
compensation agent both run their I/O through it.
"""

from __future__ import annotations

import logging
import time
import traceback
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Histogram

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Encoding, Envelope, PayloadError, Wire, carried, encode, now_ms
from streamflow.errors import (
    CircuitOpenError,
    ConfigError,
    FatalError,
    PoisonMessageError,
    RetriableError,
)
from streamflow.errtext import describe as describe_contained
from streamflow.errtext import plain
from streamflow.observability.events import (
    SUMMARY_HEADER,
    Completion,
    announce,
    completion,
    event_for,
    summary_records,
)
from streamflow.observability.metrics import EXECUTIONS_ENDED, StepCounters
from streamflow.runtime.breaker import CircuitBreaker
from streamflow.runtime.contain import Containment, Out, place
from streamflow.runtime.contain import dlq_headers as _headers
from streamflow.runtime.retry import backoff_delay
from streamflow.steps.base import Outcome
from streamflow.topology.expressions import ExpressionEvalError
from streamflow.topology.models import RetryPolicy
from streamflow.transport.base import Headers, Record
from streamflow.util.secrets import PROCESS

log = logging.getLogger("streamflow.runtime")

FINAL: tuple[type[BaseException], ...] = (PoisonMessageError, ExpressionEvalError, ConfigError)
"""Failures that would repeat: the event, or the step's settings for it, are wrong."""


class Deferred(Exception):
    """Not now: read this record again at ``until`` (time.monotonic()). The agent pauses the
    record's partition (or, with ``all_partitions``, every partition: an open circuit)."""

    def __init__(self, until: float, *, all_partitions: bool = False) -> None:
        super().__init__(f"deferred until {until:.3f}")
        self.until = until
        self.all_partitions = all_partitions


def describe(exc: BaseException) -> str:
    """The error text of dead letters and execution events: plain words (no source paths
    or Python internals; an unexpected error keeps its kind), every secret masked."""
    text = describe_contained(exc)
    if not isinstance(exc, RetriableError | PoisonMessageError | ExpressionEvalError):
        frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        if frame:  # where, for operators: in the log, not in the message
            log.debug("%s raised at %s:%s", exc.__class__.__name__, frame[0].filename,
                      frame[0].lineno)  # fmt: skip
        text = f"{exc.__class__.__name__}: {plain(exc)}"
    return PROCESS.mask(text)


def dlq_headers(
    rec: Record, exc: BaseException, error: str, step: str, attempt: int, execution_id: str
) -> Headers:
    return _headers(rec, exc.__class__.__name__, error, step, attempt, execution_id)


class Emitter:
    """Execution events and dead letters of one agent, as ``Out`` messages."""

    def __init__(
        self,
        containment: Containment,
        *,
        trace_payloads: bool = False,
        payload_on_completed: bool = False,
        counters: Mapping[str, StepCounters] | None = None,
    ) -> None:
        self.containment = containment
        self.integration = containment.integration
        self.flow = containment.flow
        self.executions = containment.executions_topic
        self.dlq = containment.dlq_topic
        self.encoding: Encoding = containment.encoding
        self.trace_payloads = trace_payloads
        # a `response: sync` webhook answers with the output carried by `completed`
        self.payload_on_completed = payload_on_completed or trace_payloads
        self.counters = counters or {}
        self.ended: dict[str, int] = {}  # completed executions per instance, this batch
        # the lean loop's agents write a batch's `completed` events as summary records
        # (``summarize``/``take_summary``): one message per batch, not one per execution
        self.per_batch = False
        self.done: list[Completion] = []

    def summarize(self) -> None:
        """From now on, ``completed`` events wait for ``take_summary`` (the batch's end);
        an execution whose end record carries its payload (a `response: sync` webhook,
        ``trace_payloads``) or a note keeps its own record."""
        self.per_batch = not self.payload_on_completed

    def take_summary(self) -> list[Out]:
        """The summary records of the executions completed since the last call."""
        if not self.done:
            return []
        done, self.done = self.done, []
        return [
            Out(self.executions, value, key, [(SUMMARY_HEADER, b"1")])
            for key, value in summary_records(self.flow, done)
        ]

    def flush_metrics(self) -> None:
        """Count the batch's completed executions (``streamflow_executions_ended_total``)."""
        for instance, n in self.ended.items():
            EXECUTIONS_ENDED.labels(self.integration, self.flow, "completed", instance).inc(n)
        self.ended.clear()

    def where(self, env: Envelope, exc: BaseException) -> str:
        """A step error as people read it (events, dead letters, ``meta.last_error``):
        its place - integration, flow, step, execution - then what went wrong."""
        return f"{place(self.integration, self.flow, env.step, env.execution_id)}: " + (
            describe(exc)
        )

    def fatal(self, env: Envelope, exc: FatalError) -> FatalError:
        """``exc`` with its place in front (once: a chain inside a trigger agent)."""
        if str(exc).startswith(f"{self.integration}/"):
            return exc
        return FatalError(self.where(env, exc))

    def event(
        self, env: Envelope, outs: list[Out], kind: str, *, note: str = "", error: str = ""
    ) -> None:
        payload = _readable(env) if self.trace_payloads else None
        ev = event_for(env, kind, note=note, error=error, payload=payload)
        outs.append(Out(self.executions, ev.encode(), env.execution_id.encode()))
        announce(env, kind, note=note)

    def completed(
        self, env: Envelope, outs: list[Out], note: str = "", *, ended_ms: int = 0
    ) -> None:
        """The execution's end record (ending at ``ended_ms``, else now); counted at
        ``flush_metrics`` (per batch)."""
        if self.per_batch and not note:
            self.ended[env.instance] = self.ended.get(env.instance, 0) + 1
            self.done.append(completion(env, ended_ms or now_ms()))
            announce(env, "completed")
            return
        payload = env.payload if self.payload_on_completed else None
        ev = event_for(env, "completed", note=note, payload=payload, counted=True)
        self.ended[env.instance] = self.ended.get(env.instance, 0) + 1
        outs.append(Out(self.executions, ev.encode(), env.execution_id.encode()))
        announce(env, "completed", note=note)

    def dead_letter(
        self,
        env: Envelope,
        rec: Record,
        exc: BaseException,
        outs: list[Out],
        error: str | None = None,
    ) -> Wire | None:
        """``env`` on the DLQ with the headers of every dead letter (and the envelope's
        own); the encoded envelope (for a compensation to follow), or None when it cannot be
        encoded: then the input record goes to the DLQ as it arrived, with both reasons, and
        its ``failed`` event. A payload never read is written back as it arrived."""
        error = error if error is not None else self.where(env, exc)
        counters = self.counters.get(env.step)
        if counters is not None:
            counters.dead_lettered.inc()
            counters.failed(exc.__class__.__name__)
        log.warning(
            "dead-lettered execution %s at step %s: %s",
            env.execution_id,
            env.step,
            error,
            extra={"flow": env.flow, "step": env.step, "execution_id": env.execution_id},
        )
        try:
            wire = encode(env, self.encoding)
        except Exception as enc:
            why = describe_contained(enc)
            why = error if why in error else f"{error}; the envelope cannot be encoded: {why}"
            why += " (the dead letter holds the record as the agent received it)"
            outs.extend(
                self.containment.dead_letter(
                    rec, why, exc.__class__.__name__, execution_id=env.execution_id, step=env.step
                )
            )
            return None
        headers = dlq_headers(rec, exc, error, env.step, env.attempt, env.execution_id)
        outs.append(Out(self.dlq, wire.value, rec.key, headers + wire.headers))
        return wire

    def raw_dead_letter(self, rec: Record, exc: BaseException, step: str) -> Out:
        """A record that is not an envelope (or an outside record that cannot be read), on
        the DLQ as it arrived (with the envelope's headers it came with)."""
        log.warning(
            "dead-lettered an undecodable record from %s[%d]@%d: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            exc,
        )
        error = f"{place(self.integration, self.flow, step)}: {describe(exc)}"
        headers = dlq_headers(rec, exc, error, step, 0, "") + carried(rec.headers)
        return Out(self.dlq, rec.value, rec.key, headers)


def _readable(env: Envelope) -> Any:
    """The payload for an event that shows it; None when it is not JSON (poison)."""
    try:
        return env.payload
    except PayloadError:
        return None


class BatchedHistogram:
    """Observations of one batch added to a Prometheus histogram child at once: buckets
    counted here, one increment per bucket touched instead of two per observation."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self.values: list[float] = []
        # the child's bucket bounds and values (prometheus_client's layout); without them
        # each value is observed one by one
        self._bounds: list[float] | None = getattr(histogram, "_upper_bounds", None)
        self._buckets: list[Any] | None = getattr(histogram, "_buckets", None)
        self._sum: Any = getattr(histogram, "_sum", None)

    def flush(self) -> None:
        values = self.values
        if not values:
            return
        self.values = []
        if self._bounds is None or self._buckets is None or self._sum is None:
            for v in values:
                self.histogram.observe(v)
            return
        for i, n in Counter(bisect_left(self._bounds, v) for v in values).items():
            self._buckets[i].inc(n)
        self._sum.inc(sum(values))


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The step failed for good: retries ran out, or the failure would repeat."""

    exc: BaseException


class RetryExecutor:
    """Runs one I/O step's call under its retry policy (and circuit breaker).

    ``run`` returns the step's ``Outcome``; ``GaveUp`` when it failed for good; None when
    the envelope was parked on ``retry_topic`` (its ``retry`` event and the message are in
    ``outs``). Without a retry topic it waits the backoff here (holding the partition) and
    tries again. An open circuit raises ``Deferred`` for the whole agent, or - when the step
    has a fallback (``defer_open=False``) - gives up at once. ``FatalError`` propagates.
    """

    def __init__(
        self,
        emitter: Emitter,
        policy: RetryPolicy,
        *,
        counters: StepCounters | None = None,
        breaker: CircuitBreaker | None = None,
        retry_topic: str | None = None,
        final: tuple[type[BaseException], ...] = FINAL,
        defer_open: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.clock = clock  # retry due times and in-place backoff (tests move a ManualClock)
        self.emitter = emitter
        self.policy = policy
        self.counters = counters
        self.breaker = breaker
        self.retry_topic = retry_topic
        self.final = final
        self.defer_open = defer_open

    async def run(
        self,
        call: Callable[[], Awaitable[Outcome]],
        env: Envelope,
        rec: Record,
        outs: list[Out],
    ) -> Outcome | GaveUp | None:
        breaker = self.breaker
        while True:
            try:
                if breaker is not None and (wait := breaker.before_call()) is not None:
                    raise CircuitOpenError(f"circuit of step {env.step} is open", wait)
                outcome = await call()
                if breaker is not None:
                    breaker.success()
                return outcome
            except FatalError as exc:
                raise self.emitter.fatal(env, exc) from exc
            except CircuitOpenError as exc:
                if not self.defer_open:
                    return GaveUp(exc)
                raise Deferred(
                    time.monotonic() + (exc.retry_after or 1.0), all_partitions=True
                ) from exc
            except self.final as exc:
                if breaker is not None:
                    breaker.success()  # the target answered; the event is what's wrong
                return GaveUp(exc)
            except Exception as exc:
                if breaker is not None:
                    breaker.failure()
                if env.attempt >= self.policy.max_attempts:
                    return GaveUp(exc)
                delay = self._retry(env, rec, exc, outs)
                if delay is None:
                    return None
                await self.clock.asleep(delay)

    def _retry(self, env: Envelope, rec: Record, exc: Exception, outs: list[Out]) -> float | None:
        """Count the attempt, write its ``retry`` event; park the envelope on the retry
        topic (None) or say how long to wait here."""
        retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
        delay = backoff_delay(self.policy, env.attempt, retry_after)
        if self.counters is not None:
            self.counters.retried.inc()
            self.counters.failed(exc.__class__.__name__)
        error = self.emitter.where(env, exc)
        env.attempt += 1
        env.meta["last_error"] = error  # the next attempt can read ${meta.last_error}
        note = f"attempt {env.attempt} in {delay:.2f}s"
        self.emitter.event(env, outs, "retry", error=error, note=note)
        if self.retry_topic is None:
            return delay
        due = self.clock.now_ms() + int(delay * 1000)
        value, headers = encode(env, self.emitter.encoding)
        headers += [("sf-due", str(due).encode()), ("sf-error", error.encode()[:2000])]
        outs.append(Out(self.retry_topic, value, rec.key, headers))
        return None
