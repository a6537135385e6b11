"""The compensation agent of a flow: undoes completed steps of a failed execution.

When an execution fails for good (dead-lettered) after compensable steps completed, its
envelope - with the saga log of those steps - goes to ``sf.<integration>.<flow>.compensate``.
This agent runs the compensations in reverse order, each with its own retry policy and
with ``payload`` as the step saw it and ``steps.<id>`` holding the step's result. The
execution ends ``compensated``; a compensation that fails for good is dead-lettered and
the execution ends ``compensation_failed`` - never dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from streamflow.envelope import Envelope, decode, encode
from streamflow.errors import FatalError, PoisonMessageError
from streamflow.observability import tracing
from streamflow.observability.events import announce, event_for
from streamflow.observability.metrics import StepMetrics
from streamflow.runtime.contain import Out, place
from streamflow.runtime.processor import ProcessorOptions, describe, dlq_headers
from streamflow.runtime.retry import DEFAULT_POLICY, backoff_delay
from streamflow.steps.base import AnyStep, AsyncStep, Outcome
from streamflow.topology.expressions import ExpressionEvalError
from streamflow.topology.models import Flow
from streamflow.topology.plan import AgentPlan, FlowPlan
from streamflow.transport.base import Record

log = logging.getLogger("streamflow.runtime")


class CompensationProcessor:
    all_sync = False

    def __init__(
        self,
        flow: Flow,
        flow_plan: FlowPlan,
        agent: AgentPlan,
        compensations: Mapping[str, AnyStep],
        executions_topic: str,
        options: ProcessorOptions,
    ) -> None:
        self.flow = flow
        self.plan = flow_plan
        self.agent = agent
        self.compensations = compensations  # parent step id -> its compensation step
        self.executions = executions_topic
        self.opts = options
        self.metrics = StepMetrics(flow_plan.integration, flow.name, "compensate")
        self.counters = {sid: self.metrics.for_step(sid) for sid in compensations}

    def handle_sync(self, rec: Record) -> list[Out]:
        raise NotImplementedError("compensations are asynchronous")

    async def handle(self, rec: Record) -> list[Out]:
        outs: list[Out] = []
        try:
            env = decode(rec.value, self.opts.encoding)
        except PoisonMessageError as exc:
            headers = dlq_headers(rec, exc, describe(exc), "compensate", 0, "")
            return [Out(self.plan.dlq_topic, rec.value, rec.key, headers)]
        while env.saga:
            entry = env.saga[-1]
            parent = str(entry.get("step", ""))
            step = self.compensations.get(parent)
            if step is None:
                env.saga.pop()  # the topology changed since: nothing to undo for it
                continue
            node = self.flow.nodes[parent]
            assert node.compensation is not None
            env.step = node.compensation.id
            env.payload = entry.get("payload")
            env.attempt = 1
            if not await self._run(step, env, rec, outs, parent):
                return outs
            env.saga.pop()
        self._event(env, outs, "compensated")
        return outs

    async def _run(
        self, step: AnyStep, env: Envelope, rec: Record, outs: list[Out], parent: str
    ) -> bool:
        policy = self.flow.nodes[parent].compensation.retry or DEFAULT_POLICY  # type: ignore[union-attr]
        while True:
            try:
                with tracing.step_span(env, self.plan.integration):
                    outcome: Outcome = (
                        await step.process(env)
                        if isinstance(step, AsyncStep)
                        else step.process(env)
                    )
                self.counters[parent].compensated.inc()
                self._event(env, outs, "step", note=f"compensated {parent}")
                if outcome.result is not None:
                    env.steps[env.step] = outcome.result
                return True
            except FatalError:
                raise
            except Exception as exc:
                final = isinstance(exc, PoisonMessageError | ExpressionEvalError)
                if final or env.attempt >= policy.max_attempts:
                    where = place(self.plan.integration, self.flow.name, env.step, env.execution_id)
                    error = f"{where}: {describe(exc)}"
                    log.error(
                        "compensation %s of execution %s failed for good: %s",
                        env.step,
                        env.execution_id,
                        error,
                    )
                    headers = dlq_headers(rec, exc, error, env.step, env.attempt, env.execution_id)
                    outs.append(
                        Out(self.plan.dlq_topic, encode(env, self.opts.encoding), rec.key, headers)
                    )
                    self._event(env, outs, "compensation_failed", error=error)
                    return False
                delay = backoff_delay(policy, env.attempt, getattr(exc, "retry_after", None))
                self._event(env, outs, "retry", error=describe(exc), note=f"in {delay:.2f}s")
                await self.opts.clock.asleep(delay)
                env.attempt += 1

    def _event(
        self, env: Envelope, outs: list[Out], kind: str, *, note: str = "", error: str = ""
    ) -> None:
        payload = env.payload if self.opts.trace_payloads else None
        ev = event_for(env, kind, note=note, error=error, payload=payload)
        outs.append(Out(self.executions, ev.encode(), env.execution_id.encode()))
        announce(env, kind, note=note)

    def flush_metrics(self) -> None:
        return None

    async def close(self) -> None:
        for step in self.compensations.values():
            await step.close()
