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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Encoding, Envelope, PayloadError, decode, encode, now_ms
from streamflow.errors import FatalError, PoisonMessageError
from streamflow.errtext import describe as describe_contained
from streamflow.observability import tracing
from streamflow.observability.metrics import BREAKER_STATE, StepMetrics
from streamflow.runtime.breaker import STATE_VALUE, CircuitBreaker
from streamflow.runtime.compose import compose
from streamflow.runtime.contain import Containment, Out
from streamflow.runtime.core import (
    BatchedHistogram,
    Deferred,
    Emitter,
    GaveUp,
    RetryExecutor,
    describe,
    dlq_headers,
)
from streamflow.runtime.retry import DEFAULT_POLICY
from streamflow.steps.base import AnyStep, AsyncStep, Fallback, GoTo, Outcome, Step
from streamflow.topology.models import Flow, RetryPolicy
from streamflow.topology.plan import AgentPlan, FlowPlan
from streamflow.transport.base import DEFAULT_MAX_MESSAGE_BYTES, Record

__all__ = ["ChainProcessor", "Deferred", "Processor", "ProcessorOptions", "describe", "dlq_headers"]

log = logging.getLogger("streamflow.runtime")


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

    def summarize(self) -> None:
        """Write the ``completed`` events of a batch as summary records (the lean loop)."""
        ...

    def take_summary(self) -> list[Out]:
        """The summary records of the batch just handled (sent with its outputs)."""
        ...


class ChainProcessor:
    """The runner: one envelope through this agent's steps, pure steps called inline and
    I/O steps through their ``RetryExecutor``; everything an execution leaves behind is
    written by the ``Emitter``. Split and aggregate agents extend it (``_advance``)."""

    INPUT_KEPT_BY: frozenset[str] = frozenset()
    """Step types whose input payload ``_advance`` uses besides compensable steps'."""

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
        # steps whose input payload ``_advance`` gets (``before``): the saga keeps it for a
        # compensable step; for others it is not read (an unread payload stays unparsed)
        self.keeps_input = frozenset(
            s
            for s in agent.steps
            if flow.nodes[s].compensation is not None
            or flow.nodes[s].config.type in self.INPUT_KEPT_BY
        )
        self.all_sync = not any(s.is_async for s in steps.values())
        self.policy: RetryPolicy = flow.doc.retry or DEFAULT_POLICY
        self.metrics = StepMetrics(flow_plan.integration, flow.name, agent.steps[0])
        self.counters = {sid: self.metrics.for_step(sid) for sid in steps}
        self.traced = tracing.enabled()
        self.produced = self.completed = 0  # counted per event, exported per batch
        self.containment = Containment(
            flow_plan.integration,
            flow.name,
            agent.steps[0],
            flow_plan.dlq_topic,
            executions_topic,
            options.encoding,
            options.max_message_bytes,
        )
        self.emitter = Emitter(
            self.containment,
            trace_payloads=options.trace_payloads,
            payload_on_completed=getattr(flow.trigger, "response", None) == "sync",
            counters=self.counters,
        )
        self.executors = {
            sid: self._executor(sid) for sid, step in steps.items() if isinstance(step, AsyncStep)
        }
        self.latencies = BatchedHistogram(self.metrics.latency)  # observed per batch
        self.entry = agent.steps[0]
        # a subclass that handles records or outcomes its own way (split, aggregate) is not
        # composed
        kind = type(self)
        self.composable = (
            kind._advance is ChainProcessor._advance
            and kind.handle_sync is ChainProcessor.handle_sync
        )
        self.composed = compose(self)

    def _executor(self, sid: str) -> RetryExecutor:
        config = self.flow.nodes[sid].config
        breaker = None
        if config.breaker is not None:
            breaker = CircuitBreaker(config.breaker, self._breaker_logger(sid), self.opts.clock)
        return RetryExecutor(
            self.emitter,
            config.retry or self.policy,
            counters=self.counters[sid],
            breaker=breaker,
            retry_topic=self.plan.retry_topic_of.get(sid),
            defer_open=config.fallback is None,
            clock=self.opts.clock,
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
        self.latencies.flush()
        self.emitter.flush_metrics()

    def summarize(self) -> None:
        self.emitter.summarize()

    def take_summary(self) -> list[Out]:
        return self.emitter.take_summary()

    async def close(self) -> None:
        for step in self.steps.values():
            await step.close()

    # -- drivers -------------------------------------------------------------------------
    def handle_sync(self, rec: Record) -> list[Out]:
        """Fast path for agents whose steps are all synchronous."""
        outs: list[Out] = []
        env = self._decode(rec, outs)
        if env is not None:
            try:
                self.run_sync(env, rec, outs)
            except PayloadError as exc:  # read outside a step (payload not JSON): poison
                self._dead_letter(env, rec, exc, outs)
        return outs

    async def handle(self, rec: Record) -> list[Out]:
        outs: list[Out] = []
        env = self._decode(rec, outs)
        if env is not None:
            try:
                await self.run(env, rec, outs)
            except PayloadError as exc:
                self._dead_letter(env, rec, exc, outs)
        return outs

    def run_sync(self, env: Envelope, rec: Record, outs: list[Out], fresh: bool = False) -> None:
        """Run ``env`` from its step through this agent's chain (all steps synchronous);
        ``rec`` is the record it came from (its key places the outputs). ``fresh``: the
        execution starts here (a fused trigger) and no ``started`` record was written.
        From the chain's first step it runs the composed chain (``compose.py``)."""
        if self.composed is not None and env.step == self.entry:
            self.composed(env, rec, outs, fresh)
        else:
            self.interpret_sync(env, rec, outs, fresh)

    def interpret_sync(
        self, env: Envelope | None, rec: Record, outs: list[Out], fresh: bool = False
    ) -> None:
        """The step loop: each outcome interpreted by ``_advance``."""
        while env is not None:
            before = env.payload if env.step in self.keeps_input else None
            outcome = self._sync_step(env, rec, outs)
            if outcome is None:
                break
            env = self._advance(env, outcome, rec, outs, before, fresh)

    async def run(
        self, env: Envelope | None, rec: Record, outs: list[Out], fresh: bool = False
    ) -> None:
        while env is not None:
            before = env.payload if env.step in self.keeps_input else None
            step = self.steps[env.step]
            if isinstance(step, Step):
                outcome = self._sync_step(env, rec, outs)
            else:  # I/O steps are timed: their duration is what operators watch
                started = time.perf_counter()
                outcome = await self._io_step(step, env, rec, outs)
                self.counters[env.step].duration.observe(time.perf_counter() - started)
            if outcome is None:
                break
            env = self._advance(env, outcome, rec, outs, before, fresh)

    def _sync_step(self, env: Envelope, rec: Record, outs: list[Out]) -> Outcome | None:
        """Run a pure step: a failure would repeat, so it goes to the fallback or the DLQ."""
        step = self.steps[env.step]
        assert isinstance(step, Step)
        try:
            if not self.traced:
                return step.process(env)
            with tracing.step_span(env, self.plan.integration):
                return step.process(env)
        except FatalError as exc:
            raise self.emitter.fatal(env, exc) from exc
        except Exception as exc:
            return self._give_up(env, rec, exc, outs)

    async def _io_step(
        self, step: AsyncStep, env: Envelope, rec: Record, outs: list[Out]
    ) -> Outcome | None:
        """Run an I/O step. A retriable failure goes to the step's retry topic (the
        partition keeps flowing) or, on an `ordered` flow, is retried here after the
        backoff (holding this key). An open circuit defers the whole agent."""

        async def call() -> Outcome:
            if not self.traced:
                return await step.process(env)
            with tracing.step_span(env, self.plan.integration):
                return await step.process(env)

        result = await self.executors[env.step].run(call, env, rec, outs)
        if isinstance(result, GaveUp):
            return self._give_up(env, rec, result.exc, outs)
        return result

    # -- pieces ----------------------------------------------------------------------------
    def _decode(self, rec: Record, outs: list[Out]) -> Envelope | None:
        try:
            env = decode(rec.value, rec.headers, self.opts.encoding)
        except PoisonMessageError as exc:
            outs.append(self.emitter.raw_dead_letter(rec, exc, self.agent.steps[0]))
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

    def _give_up(
        self, env: Envelope, rec: Record, exc: BaseException, outs: list[Out]
    ) -> Outcome | None:
        """Retries ran out or the failure is final: the step's fallback, else the DLQ."""
        fallback = self.flow.nodes[env.step].config.fallback
        if fallback is None or isinstance(exc, PayloadError):  # no payload to fall back with
            self._dead_letter(env, rec, exc, outs)
            return None
        error = self.emitter.where(env, exc)
        self.counters[env.step].failed(exc.__class__.__name__)
        self._event(env, outs, "retry", error=error, note=f"fallback to {fallback}")
        result = {"error": error, "fallback": True}
        return Outcome(env.payload, result, route=Fallback(fallback), note="fallback")

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
        route = outcome.route
        if self.flow.nodes[sid].compensation is not None and type(route) is not Fallback:
            env.saga.append({"step": sid, "payload": before})
        if outcome.emit:
            outs.extend(outcome.emit)
        if sid in self.store and outcome.result is not None:
            env.steps[sid] = outcome.result
        if outcome.filtered:
            self.counters[sid].filtered.inc()
            self._event(env, outs, "filtered", note=outcome.note)
            return None
        if self.opts.step_events:
            self._event(env, outs, "step", note=outcome.note)
        nxt = route.step if isinstance(route, GoTo | Fallback) else self.flow.nodes[sid].next
        if nxt is None:
            self._completed(env, outs)
            return None
        env.step = nxt
        env.attempt = 1
        if nxt in self.chain:
            return env
        self._hop(env, sid, rec, outs, fresh)
        return None

    def _hop(self, env: Envelope, sid: str, rec: Record, outs: list[Out], fresh: bool) -> None:
        """``env`` leaves this agent for the topic of its next step."""
        try:
            value, headers = encode(env, self.opts.encoding)
        except Exception as exc:  # any encoder refusal: this execution fails, not the agent
            env.step = sid  # the step whose result cannot travel
            error = PoisonMessageError(f"its result cannot be encoded: {describe_contained(exc)}")
            self._dead_letter(env, rec, error, outs)
            return
        if self.traced and env.trace:
            headers.append(("traceparent", env.trace.encode()))
        if fresh and self.opts.summary:  # it goes on in another agent: it is running
            self._event(env, outs, "started")
        outs.append(Out(self.plan.entry_of[env.step], value, rec.key, headers))
        self.produced += 1

    def _completed(self, env: Envelope, outs: list[Out]) -> None:
        self.completed += 1
        ended = now_ms()
        self.latencies.values.append(max(0, ended - env.created_ms) / 1000)
        self.emitter.completed(env, outs, ended_ms=ended)

    def _event(
        self, env: Envelope, outs: list[Out], kind: str, *, note: str = "", error: str = ""
    ) -> None:
        self.emitter.event(env, outs, kind, note=note, error=error)

    def _dead_letter(self, env: Envelope, rec: Record, exc: BaseException, outs: list[Out]) -> None:
        """The execution failed for good: its dead letter, its ``failed`` event, a failed
        split child's notice to its aggregate, and its compensation when it has one."""
        error = self.emitter.where(env, exc)
        wire = self.emitter.dead_letter(env, rec, exc, outs, error)
        if wire is None:  # its input record went instead, with the `failed` event
            return
        if self.plan.state_topic_of and type(env.meta.get("split")) is dict:
            from streamflow.runtime.split import failed_child  # (split.py imports this module)

            outs.extend(failed_child(self.flow, self.plan, env, error, self.opts.encoding))
        if env.saga and self.plan.compensate_topic is not None:
            # the execution failed for good: undo its completed compensable steps
            self._event(env, outs, "failed", error=error, note="compensating")
            outs.append(Out(self.plan.compensate_topic, wire.value, rec.key, wire.headers))
        else:
            self._event(env, outs, "failed", error=error)
