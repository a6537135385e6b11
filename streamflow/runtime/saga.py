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

from streamflow.envelope import Envelope, decode
from streamflow.errors import PoisonMessageError
from streamflow.observability import tracing
from streamflow.observability.metrics import StepMetrics
from streamflow.runtime.contain import Containment, Out
from streamflow.runtime.core import Emitter, GaveUp, RetryExecutor
from streamflow.runtime.processor import ProcessorOptions
from streamflow.runtime.retry import DEFAULT_POLICY
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
        self.opts = options
        self.metrics = StepMetrics(flow_plan.integration, flow.name, "compensate")
        self.counters = {sid: self.metrics.for_step(sid) for sid in compensations}
        self.emitter = Emitter(
            Containment(
                flow_plan.integration,
                flow.name,
                "compensate",
                flow_plan.dlq_topic,
                executions_topic,
                options.encoding,
                options.max_message_bytes,
            ),
            trace_payloads=options.trace_payloads,
        )
        # a compensation is retried in place with its own policy; any failure but a bad
        # event (or expression) is worth another attempt
        self.executors = {
            parent: RetryExecutor(
                self.emitter,
                flow.nodes[parent].compensation.retry or DEFAULT_POLICY,  # type: ignore[union-attr]
                final=(PoisonMessageError, ExpressionEvalError),
                clock=options.clock,
            )
            for parent in compensations
        }

    def handle_sync(self, rec: Record) -> list[Out]:
        raise NotImplementedError("compensations are asynchronous")

    async def handle(self, rec: Record) -> list[Out]:
        outs: list[Out] = []
        try:
            env = decode(rec.value, rec.headers, self.opts.encoding)
        except PoisonMessageError as exc:
            return [self.emitter.raw_dead_letter(rec, exc, "compensate")]
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
        self.emitter.event(env, outs, "compensated")
        return outs

    async def _run(
        self, step: AnyStep, env: Envelope, rec: Record, outs: list[Out], parent: str
    ) -> bool:
        async def call() -> Outcome:
            with tracing.step_span(env, self.plan.integration):
                if isinstance(step, AsyncStep):
                    return await step.process(env)
                return step.process(env)

        outcome = await self.executors[parent].run(call, env, rec, outs)
        if isinstance(outcome, GaveUp):
            error = self.emitter.where(env, outcome.exc)
            log.error(
                "compensation %s of execution %s failed for good: %s",
                env.step,
                env.execution_id,
                error,
            )
            if self.emitter.dead_letter(env, rec, outcome.exc, outs, error) is not None:
                self.emitter.event(env, outs, "compensation_failed", error=error)
            return False
        assert outcome is not None  # no retry topic: retried here
        self.counters[parent].compensated.inc()
        self.emitter.event(env, outs, "step", note=f"compensated {parent}")
        if outcome.result is not None:
            env.steps[env.step] = outcome.result
        return True

    def flush_metrics(self) -> None:
        return None

    def summarize(self) -> None:
        return None  # it ends no execution

    def take_summary(self) -> list[Out]:
        return []

    async def close(self) -> None:
        for step in self.compensations.values():
            await step.close()
