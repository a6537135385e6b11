"""Run a flow or a single step on the embedded transport and collect what happened.

result = await run_flow("topologies/x/integration.yaml", [{"id": 1}], config={...})
assert result.ok
assert result.executions[0].output == {...}

out = run_step(integration, "flow", "step-id", payload)   # one pure step, no broker
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streamflow.envelope import Envelope, new_execution_id
from streamflow.runtime.app import AppOptions
from streamflow.runtime.runner import RunResult, run_events
from streamflow.steps.base import Outcome, Step, StepContext
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.registry import STEPS
from streamflow.topology.values import resolve_config
from streamflow.transport.local import LocalTransport


def as_integration(topology: str | Path | Integration) -> Integration:
    return topology if isinstance(topology, Integration) else load_integration(topology)


async def run_flow(
    topology: str | Path | Integration,
    payloads: Sequence[Any],
    *,
    flow: str | None = None,
    config: Mapping[str, Any] | None = None,
    directory: str | Path | None = None,
    timeout: float = 60.0,
    options: AppOptions | None = None,
) -> RunResult:
    """Run ``payloads`` through a flow on a fresh embedded broker (a temp dir by default)."""
    integration = as_integration(topology)
    values = resolve_config(integration.config, dict(config or {}))
    with tempfile.TemporaryDirectory(prefix="sf-test-") as tmp:
        transport = LocalTransport(directory or tmp)
        try:
            return await run_events(
                integration,
                transport,
                values,
                payloads,
                flow=flow,
                timeout=timeout,
                options=options or AppOptions(trace_payloads=True),
            )
        finally:
            transport.close()


def run_step(
    topology: str | Path | Integration,
    flow: str,
    step: str,
    payload: Any,
    *,
    config: Mapping[str, Any] | None = None,
    steps: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run one synchronous (pure) step on ``payload``; no broker involved."""
    integration = as_integration(topology)
    node = integration.flows[flow].nodes[step]
    values = resolve_config(integration.config, dict(config or {}))
    factory = STEPS[node.config.type].factory
    impl = factory(node.config, StepContext(integration.name, flow, node, values))
    if not isinstance(impl, Step):
        raise TypeError(f"step {step} is asynchronous; use run_flow")
    env = Envelope(
        new_execution_id(), integration.name, flow, step, payload, steps=dict(steps or {})
    )
    return impl.process(env)
