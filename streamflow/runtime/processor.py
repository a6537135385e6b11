"""Run one envelope through the steps of one agent; say what to produce.

The processor is the runtime's pure core: it takes a consumed record and returns the
messages to produce (the next step's input, execution events, dead letters). It never
produces, commits or polls itself; ``agent.py`` does that, in the order it documents.

Failures: ``PoisonMessageError`` (and any failure of a pure step, which would fail the
same way again) dead-letters at once. A retriable failure of an I/O step is tried again
after the policy's backoff, up to ``max_attempts``; then it is dead-lettered. Retries in
place (``ordered: true``) hold the failing record's partition; otherwise a retry waits on
the step's retry topic and nothing is held. ``FatalError`` propagates and
stops the agent without committing. An envelope that cannot be encoded (after a step, or
to dead-letter it) is dead-lettered as the input record arrived (``contain.py``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Encoding, Envelope, decode, encode, now_ms
from streamflow.errors import (
    CircuitOpenError,
    ConfigError,
    FatalError,
    PoisonMessageError,
    RetriableError,
)
from streamflow.errtext import describe as describe_contained
from streamflow.errtext import plain
from streamflow.observability import tracing
from streamflow.observability.events import announce, event_for
from streamflow.observability.metrics import BREAKER_STATE, StepMetrics
from streamflow.runtime.breaker import STATE_VALUE, CircuitBreaker
from streamflow.runtime.contain import Containment, Out, place
from streamflow.runtime.contain import dlq_headers as _headers
from streamflow.runtime.retry import DEFAULT_POLICY, backoff_delay
from streamflow.steps.base import NEXT, AnyStep, AsyncStep, Outcome, Step
from streamflow.topology.expressions import ExpressionEvalError
from streamflow.topology.models import Flow, RetryPolicy
from streamflow.topology.plan import AgentPlan, FlowPlan
from streamflow.transport.base import DEFAULT_MAX_MESSAGE_BYTES, Headers, Record
from streamflow.util.secrets import PROCESS

log = logging.getLogger("streamflow.runtime")


class Deferred(Exception):
    """Not now: read this record again at ``until`` (time.monotonic()). The agent pauses the
    record's partition (or, with ``all_partitions``, every partition: an open circuit)."""

    def __init__(self, until: float, *, all_partitions: bool = False) -> None:
        super().__init__(f"deferred until {until:.3f}")
        self.until = until
        self.all_partitions = all_partitions


@dataclass(frozen=True)
class ProcessorOptions:
    encoding: Encoding = "json"
    step_events: bool = True  # an execution event after every step
    trace_payloads: bool = False  # include payloads in execution events (run, tests)
    max_message_bytes: int = field(default=DEFAULT_MAX_MESSAGE_BYTES)  # the transport's
    # `events: summary`: an execution that starts and ends here writes its end record only;
    # ``started`` is written when it leaves the agent it started in (``run_sync(fresh=)``)
    summary: bool = False
    clock: Clock = SYSTEM_CLOCK  # retry due times and backoff waits (tests move a ManualClock)


class Processor(Protocol):
    """What an agent runs on each record it consumes."""

    agent: AgentPlan
    all_sync: bool
    metrics: StepMetrics

    def handle_sync(self, rec: Record) -> list[Out]: ...

    async def handle(self, rec: Record) -> list[Out]: ...

    async def close(self) -> None: ...

    def flush_metrics(self) -> None: ...


class ChainProcessor:
    def __init__(
        self,
        flow: Flow,
        flow_plan: FlowPlan,
        agent: AgentPlan,
        steps: Mapping[str, AnyStep],
        executions_topic: str,
        options: ProcessorOptions,
        store_results: frozenset[str],
    ) -> None:
        self.flow = flow
        self.plan = flow_plan
        self.agent = agent
        self.steps = steps
        self.executions = executions_topic
        self.opts = options
        self.store = store_results
        self.chain = frozenset(agent.steps)
        self.all_sync = not any(s.is_async for s in steps.values())
        self.policy: RetryPolicy = flow.doc.retry or DEFAULT_POLICY
        self.metrics = StepMetrics(flow_plan.integration, flow.name, agent.steps[0])
        self.counters = {sid: self.metrics.for_step(sid) for sid in steps}
        self.traced = tracing.enabled()
        self.produced = self.completed = 0  # counted per event, exported per batch
        # a `response: sync` webhook answers with the output carried by `completed`
        self.output_on_completed = getattr(flow.trigger, "response", None) == "sync"
        self.breakers = {
            sid: CircuitBreaker(cfg, self._breaker_logger(sid), options.clock)
            for sid in steps
            if (cfg := flow.nodes[sid].config.breaker) is not None
        }
        self.containment = Containment(
            flow_plan.integration,
            flow.name,
            agent.steps[0],
            flow_plan.dlq_topic,
            executions_topic,
            options.encoding,
            options.max_message_bytes,
        )

    def _breaker_logger(self, sid: str) -> Callable[[str, str], None]:
        gauge = BREAKER_STATE.labels(self.plan.integration, self.flow.name, sid, sid)
        gauge.set(0)

        def on_change(old: str, new: str) -> None:
            gauge.set(STATE_VALUE[new])
            level = logging.WARNING if new == "open" else logging.INFO
            log.log(
                level,
                "circuit breaker of step %s: %s -> %s",
                sid,
                old,
                new,
                extra={"flow": self.flow.name, "step": sid},
            )

        return on_change

    def flush_metrics(self) -> None:
        """Export the per-event counts of the last batch (cheaper than a counter per event)."""
        if self.produced:
            self.metrics.produced.inc(self.produced)
            self.produced = 0
        if self.completed:
            self.metrics.completed.inc(self.completed)
            self.completed = 0

    async def close(self) -> None:
        for step in self.steps.values():
            await step.close()

    # -- drivers -------------------------------------------------------------------------
    def handle_sync(self, rec: Record) -> list[Out]:
        """Fast path for agents whose steps are all synchronous."""
        outs: list[Out] = []
        env = self._decode(rec, outs)
        if env is not None:
            self.run_sync(env, rec, outs)
        return outs

    async def handle(self, rec: Record) -> list[Out]:
        outs: list[Out] = []
        env = self._decode(rec, outs)
        if env is not None:
            await self.run(env, rec, outs)
        return outs

    def run_sync(
        self, env: Envelope | None, rec: Record, outs: list[Out], fresh: bool = False
    ) -> None:
        """Run ``env`` from its step through this agent's chain (all steps synchronous);
        ``rec`` is the record it came from (its key places the outputs). ``fresh``: the
        execution starts here (a fused trigger) and no ``started`` record was written."""
        while env is not None:
            before = env.payload
            outcome = self._sync_step(env, rec, outs)
            if outcome is None:
                break
            env = self._advance(env, outcome, rec, outs, before, fresh)

    async def run(
        self, env: Envelope | None, rec: Record, outs: list[Out], fresh: bool = False
    ) -> None:
        while env is not None:
            before = env.payload
            if isinstance(self.steps[env.step], Step):
                outcome = self._sync_step(env, rec, outs)
            else:  # I/O steps are timed: their duration is what operators watch
                started = time.perf_counter()
                outcome = await self._with_retry(env, rec, outs)
                self.counters[env.step].duration.observe(time.perf_counter() - started)
            if outcome is None:
                break
            env = self._advance(env, outcome, rec, outs, before, fresh)

    def _sync_step(self, env: Envelope, rec: Record, outs: list[Out]) -> Outcome | None:
        """Run a pure step: a failure would repeat, so it goes to the fallback or the DLQ."""
        step = self.steps[env.step]
        assert isinstance(step, Step)
        try:
            return self._call(step, env)
        except FatalError as exc:
            raise self._fatal(env, exc) from exc
        except Exception as exc:
            return self._give_up(env, rec, exc, outs)

    def _where(self, env: Envelope, exc: BaseException) -> str:
        """A step error as people read it (events, dead letters, ``meta.last_error``):
        its place - integration, flow, step, execution - then what went wrong."""
        return f"{place(self.plan.integration, self.flow.name, env.step, env.execution_id)}: " + (
            describe(exc)
        )

    def _fatal(self, env: Envelope, exc: FatalError) -> FatalError:
        if str(exc).startswith(f"{self.plan.integration}/"):
            return exc  # already placed (a chain inside a trigger agent)
        return FatalError(self._where(env, exc))

    def _call(self, step: Step, env: Envelope) -> Outcome:
        if not self.traced:
            return step.process(env)
        with tracing.step_span(env, self.plan.integration):
            return step.process(env)

    # -- pieces ----------------------------------------------------------------------------
    def _decode(self, rec: Record, outs: list[Out]) -> Envelope | None:
        try:
            env = decode(rec.value, self.opts.encoding)
        except PoisonMessageError as exc:
            outs.append(self._raw_dead_letter(rec, exc))
            return None
        if env.step not in self.chain:
            self._dead_letter(
                env,
                rec,
                PoisonMessageError(
                    f"envelope is for step '{env.step}', which agent {self.agent.name} does not run"
                ),
                outs,
            )
            return None
        return env

    async def _with_retry(self, env: Envelope, rec: Record, outs: list[Out]) -> Outcome | None:
        """Run an I/O step. A retriable failure goes to the step's retry topic (the
        partition keeps flowing) or, on an `ordered` flow, is retried here after the
        backoff (holding this key). An open circuit defers the whole agent."""
        node = self.flow.nodes[env.step]
        policy = node.config.retry or self.policy
        retry_topic = self.plan.retry_topic_of.get(env.step)
        step = self.steps[env.step]
        assert isinstance(step, AsyncStep)
        breaker = self.breakers.get(env.step)
        while True:
            try:
                if breaker is not None and (wait := breaker.before_call()) is not None:
                    raise CircuitOpenError(f"circuit of step {env.step} is open", wait)
                if self.traced:
                    with tracing.step_span(env, self.plan.integration):
                        outcome = await step.process(env)
                else:
                    outcome = await step.process(env)
                if breaker is not None:
                    breaker.success()
                return outcome
            except FatalError as exc:
                raise self._fatal(env, exc) from exc
            except CircuitOpenError as exc:
                if node.config.fallback is not None:
                    return self._give_up(env, rec, exc, outs)
                raise Deferred(
                    time.monotonic() + (exc.retry_after or 1.0), all_partitions=True
                ) from exc
            except (PoisonMessageError, ExpressionEvalError, ConfigError) as exc:
                # the event, or the step's settings for it, are wrong: trying again won't help
                if breaker is not None:
                    breaker.success()  # the target answered; the event is what's wrong
                return self._give_up(env, rec, exc, outs)
            except Exception as exc:
                if breaker is not None:
                    breaker.failure()
                if env.attempt >= policy.max_attempts:
                    return self._give_up(env, rec, exc, outs)
                retry_after = exc.retry_after if isinstance(exc, RetriableError) else None
                delay = backoff_delay(policy, env.attempt, retry_after)
                self.counters[env.step].retried.inc()
                self.counters[env.step].failed(exc.__class__.__name__)
                error = self._where(env, exc)
                env.attempt += 1
                env.meta["last_error"] = error  # the next attempt can read ${meta.last_error}
                if retry_topic is not None:
                    due = self.opts.clock.now_ms() + int(delay * 1000)
                    headers = [("sf-due", str(due).encode()), ("sf-error", error.encode()[:2000])]
                    self._event(
                        env,
                        outs,
                        "retry",
                        error=error,
                        note=f"attempt {env.attempt} in {delay:.2f}s",
                    )
                    outs.append(Out(retry_topic, encode(env, self.opts.encoding), rec.key, headers))
                    return None
                self._event(
                    env, outs, "retry", error=error, note=f"attempt {env.attempt} in {delay:.2f}s"
                )
                await self.opts.clock.asleep(delay)

    def _give_up(
        self, env: Envelope, rec: Record, exc: BaseException, outs: list[Out]
    ) -> Outcome | None:
        """Retries ran out or the failure is final: the step's fallback, else the DLQ."""
        fallback = self.flow.nodes[env.step].config.fallback
        if fallback is None:
            self._dead_letter(env, rec, exc, outs)
            return None
        error = self._where(env, exc)
        self.counters[env.step].failed(exc.__class__.__name__)
        self._event(env, outs, "retry", error=error, note=f"fallback to {fallback}")
        return Outcome(
            env.payload, {"error": error, "fallback": True}, goto=fallback, note="fallback"
        )

    def _advance(
        self,
        env: Envelope,
        outcome: Outcome,
        rec: Record,
        outs: list[Out],
        before: Any,
        fresh: bool = False,
    ) -> Envelope | None:
        sid = env.step
        env.payload = outcome.payload
        if self.flow.nodes[sid].compensation is not None and outcome.note != "fallback":
            env.saga.append({"step": sid, "payload": before})
        if outcome.emit:
            outs.extend(Out(e.topic, e.value, e.key, e.headers) for e in outcome.emit)
        if sid in self.store and outcome.result is not None:
            env.steps[sid] = outcome.result
        if outcome.filtered:
            self.counters[sid].filtered.inc()
            self._event(env, outs, "filtered", note=outcome.note)
            return None
        if self.opts.step_events:
            self._event(env, outs, "step", note=outcome.note)
        nxt = self.flow.nodes[sid].next if outcome.goto == NEXT else outcome.goto
        if nxt is None:
            self.completed += 1
            self.metrics.latency.observe(max(0, now_ms() - env.created_ms) / 1000)
            self._completed(env, outs)
            return None
        env.step = nxt
        env.attempt = 1
        if nxt in self.chain:
            return env
        try:
            value = encode(env, self.opts.encoding)
        except Exception as exc:  # any encoder refusal: this execution fails, not the agent
            env.step = sid  # the step whose result cannot travel
            error = PoisonMessageError(f"its result cannot be encoded: {describe_contained(exc)}")
            self._dead_letter(env, rec, error, outs)
            return None
        headers = [("traceparent", env.trace.encode())] if self.traced and env.trace else None
        if fresh and self.opts.summary:  # it goes on in another agent: it is running
            self._event(env, outs, "started")
        outs.append(Out(self.plan.entry_of[nxt], value, rec.key, headers))
        self.produced += 1
        return None

    def _completed(self, env: Envelope, outs: list[Out]) -> None:
        payload = env.payload if self.opts.trace_payloads or self.output_on_completed else None
        ev = event_for(env, "completed", payload=payload)
        outs.append(Out(self.executions, ev.encode(), env.execution_id.encode()))
        announce(env, "completed")

    def _event(
        self, env: Envelope, outs: list[Out], kind: str, *, note: str = "", error: str = ""
    ) -> None:
        payload = env.payload if self.opts.trace_payloads else None
        ev = event_for(env, kind, note=note, error=error, payload=payload)
        outs.append(Out(self.executions, ev.encode(), env.execution_id.encode()))
        announce(env, kind, note=note)

    def _dead_letter(self, env: Envelope, rec: Record, exc: BaseException, outs: list[Out]) -> None:
        error = self._where(env, exc)
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
            value = encode(env, self.opts.encoding)
        except Exception as enc:
            # the envelope as it failed cannot be written (too deep, unencodable value):
            # dead-letter the input record as it arrived, with both reasons
            why = describe_contained(enc)
            why = error if why in error else f"{error}; the envelope cannot be encoded: {why}"
            why += " (the dead letter holds the record as the agent received it)"
            outs.extend(
                self.containment.dead_letter(
                    rec,
                    why,
                    exc.__class__.__name__,
                    execution_id=env.execution_id,
                    step=env.step,
                )
            )
            return
        headers = dlq_headers(rec, exc, error, env.step, env.attempt, env.execution_id)
        outs.append(Out(self.plan.dlq_topic, value, rec.key, headers))
        if self.plan.state_topic_of and type(env.meta.get("split")) is dict:
            from streamflow.runtime.split import failed_child  # (split.py imports this module)

            outs.extend(failed_child(self.flow, self.plan, env, error, self.opts.encoding))
        if env.saga and self.plan.compensate_topic is not None:
            # the execution failed for good: undo its completed compensable steps
            self._event(env, outs, "failed", error=error, note="compensating")
            outs.append(Out(self.plan.compensate_topic, value, rec.key))
        else:
            self._event(env, outs, "failed", error=error)

    def _raw_dead_letter(self, rec: Record, exc: BaseException) -> Out:
        log.warning(
            "dead-lettered an undecodable record from %s[%d]@%d: %s",
            rec.topic,
            rec.partition,
            rec.offset,
            exc,
        )
        step = self.agent.steps[0]
        error = f"{place(self.plan.integration, self.flow.name, step)}: {describe(exc)}"
        headers = dlq_headers(rec, exc, error, step, 0, "")
        return Out(self.plan.dlq_topic, rec.value, rec.key, headers)


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
