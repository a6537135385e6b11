"""One-shot runs: feed events into a flow, run every agent until each execution ended.

This is ``streamflow run`` and ``streamflow.testing.run_flow``: the agents run in this
process on the given transport, the executions topic is followed from its end, and the
run returns when every execution it started is completed, filtered or failed.
"""

from __future__ import annotations

import asyncio
import bisect
import difflib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamflow.errors import ConfigError
from streamflow.errtext import describe
from streamflow.ingress import FlowIngress
from streamflow.observability.events import ExecutionEvent, decode_all, is_terminal
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.contain import place
from streamflow.topology.models import Integration
from streamflow.transport.base import Transport


@dataclass
class Execution:
    execution_id: str
    flow: str
    input: Any
    events: list[ExecutionEvent] = field(default_factory=list)
    index: int = 0  # position of its event in the input (0-based)

    @property
    def via_fallback(self) -> bool:
        """True when a step's fallback (not the step itself) carried it on."""
        return any(ev.note == "fallback" or ev.note.startswith("fallback to") for ev in self.events)

    @property
    def status(self) -> str:
        for ev in reversed(self.events):
            if is_terminal(ev.event, ev.note):
                return ev.event
        return "running"

    @property
    def output(self) -> Any:
        for ev in reversed(self.events):
            if ev.event in ("completed", "step", "filtered"):
                return ev.payload
        return None

    @property
    def error(self) -> str:
        return next((ev.error for ev in reversed(self.events) if ev.error), "")


@dataclass
class RunResult:
    executions: list[Execution]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(e.status in ("completed", "filtered") for e in self.executions)

    def by_status(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.executions:
            out[e.status] = out.get(e.status, 0) + 1
        return out


def pick_flow(integration: Integration, flow: str | None) -> str:
    if flow is not None:
        if flow not in integration.flows:
            close = difflib.get_close_matches(flow, list(integration.flows), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"unknown flow '{flow}'{hint} (this integration has: "
                f"{', '.join(integration.flows)})"
            )
        return flow
    if len(integration.flows) == 1:
        return next(iter(integration.flows))
    raise ConfigError(
        f"this integration has several flows ({', '.join(integration.flows)}); "
        "choose one with --flow"
    )


async def run_events(
    integration: Integration,
    transport: Transport,
    config: Mapping[str, Any],
    payloads: Sequence[Any],
    *,
    flow: str | None = None,
    timeout: float = 60.0,
    on_event: Callable[[Execution, ExecutionEvent], None] | None = None,
    options: AppOptions | None = None,
) -> RunResult:
    flow_name = pick_flow(integration, flow)
    opts = options or AppOptions(trace_payloads=True)
    opts.triggers = False  # this run feeds the flow itself
    app = App(integration, transport, config, opts)
    app.deploy()
    app.build_agents()
    app.check_topics()  # before any event is fed: a missing topic stops nothing half-way
    started = time.monotonic()
    watcher = transport.consumer(
        f"sf.run.{uuid.uuid4().hex}", [app.plan.executions_topic], from_end=True
    )
    ingress = FlowIngress(integration, integration.flows[flow_name], app.plan, config)
    executions: dict[str, Execution] = {}
    producer = transport.producer()
    refused: set[str] = set()
    for index, payload in enumerate(payloads):
        env = ingress.envelope(payload, trigger={"type": "manual"})
        fed = executions[env.execution_id] = Execution(
            env.execution_id, flow_name, payload, index=index
        )
        try:
            ingress.send(producer, env)
        except Exception as exc:  # an event that cannot travel fails alone, before any step
            why = f"{place(integration.name, flow_name, env.step)}: cannot be sent: {describe(exc)}"
            fed.events.append(
                ExecutionEvent(env.execution_id, flow_name, "failed", env.step, error=why)
            )
            refused.add(env.execution_id)
    await asyncio.to_thread(producer.flush)
    producer.close()

    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    open_ids = set(executions) - refused
    deadline = time.monotonic() + timeout
    try:
        while open_ids:
            if runner.done():
                runner.result()  # raises the agent's error
                raise RuntimeError("agents stopped before the run ended")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(open_ids)} of {len(executions)} executions did not end "
                    f"within {timeout:g}s"
                )
            for rec in await asyncio.to_thread(watcher.poll, 1000, 0.2):
                for ev in decode_all(rec.value):
                    ex = executions.get(ev.execution_id)
                    if ex is None:
                        continue
                    _insert(ex.events, ev)
                    if on_event is not None:
                        on_event(ex, ev)
                    if is_terminal(ev.event, ev.note):
                        open_ids.discard(ev.execution_id)
    finally:
        stop.set()
        await asyncio.gather(runner, return_exceptions=True)
        watcher.close()
    return RunResult(list(executions.values()), time.monotonic() - started)


def _insert(events: list[ExecutionEvent], ev: ExecutionEvent) -> None:
    """Keep ``events`` in event-time order (stable: equal stamps stay in arrival order).
    Two agents' events of one execution can arrive out of order - each agent produces with
    its own producer, and a producer orders nothing between partitions, so a step's output
    can be read and the next step's event written before the step's own event lands - but
    the later step stamped its event later."""
    events.insert(bisect.bisect_right(events, ev.ts, key=lambda e: e.ts), ev)
