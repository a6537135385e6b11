"""The retry agent of a step: re-delivers envelopes from ``<step>.retry`` when they are due.

A failed envelope waits on the step's retry topic with its due time in the ``sf-due``
header (epoch ms), so the step's own partitions keep flowing. This agent forwards each
record to the step's input topic once due. When the head of a partition is not due yet it
raises ``Deferred``: the agent seeks back, pauses that partition until the due time, and
other partitions go on — nothing spins while waiting.
"""

from __future__ import annotations

import time

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import carried
from streamflow.observability.metrics import StepMetrics
from streamflow.runtime.contain import Out
from streamflow.runtime.core import Deferred
from streamflow.topology.plan import AgentPlan, FlowPlan
from streamflow.transport.base import Record


class RetryProcessor:
    all_sync = True

    def __init__(self, flow_plan: FlowPlan, agent: AgentPlan, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.agent = agent
        self.step = agent.steps[0]
        self.target = flow_plan.entry_of[self.step]
        self.metrics = StepMetrics(flow_plan.integration, flow_plan.flow, f"{self.step}.retry")

    def handle_sync(self, rec: Record) -> list[Out]:
        raw = rec.header("sf-due")
        due = int(raw) if raw else 0
        wait_ms = due - self.clock.now_ms()
        if wait_ms > 0:
            raise Deferred(time.monotonic() + wait_ms / 1000)
        # the envelope as it waited: its value and its own headers, not sf-due/sf-error
        return [Out(self.target, rec.value, rec.key, carried(rec.headers) or None)]

    async def handle(self, rec: Record) -> list[Out]:
        return self.handle_sync(rec)

    def flush_metrics(self) -> None:
        return None

    def summarize(self) -> None:
        return None  # it ends no execution

    def take_summary(self) -> list[Out]:
        return []

    async def close(self) -> None:
        return None
