"""Turn an outside event into an envelope on a flow's first topic (every trigger uses this)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streamflow.envelope import Envelope, encode, new_execution_id, now_ms
from streamflow.observability import tracing
from streamflow.observability.events import event_for
from streamflow.topology.exprcode import LIGHT, roots_read
from streamflow.topology.expressions import Template, compile_value
from streamflow.topology.models import Flow, Integration
from streamflow.topology.plan import Plan
from streamflow.transport.base import Producer


@dataclass
class FlowIngress:
    """Produces trigger events into one flow: the envelope plus its ``started`` event."""

    integration: Integration
    flow: Flow
    plan: Plan
    config: Mapping[str, Any]
    key: Template | None = None

    def __post_init__(self) -> None:
        self.light_key = False
        if self.flow.doc.key is not None:
            self.key = compile_value(self.flow.doc.key)
            # a key read from the payload and trigger alone (the usual): no scope beyond them
            self.light_key = roots_read(self.key) <= LIGHT

    def envelope(
        self,
        payload: Any,
        *,
        trigger: dict[str, Any] | None = None,
        instance: str = "",
        execution_id: str | None = None,
        trace: str = "",
    ) -> Envelope:
        return Envelope(  # every field given: no default factory runs (the hot path)
            execution_id or new_execution_id(),
            self.integration.name,
            self.flow.name,
            self.flow.first,
            payload,
            instance,
            1,
            now_ms(),
            self._trace(trace),
            trigger or {},
            {},
            [],
            {},
        )

    @staticmethod
    def _trace(trace: str) -> str:
        """The caller's trace context if valid; else a new one, only when tracing is on
        (with tracing off nothing reads it: no random bytes per event)."""
        if trace and tracing.valid_traceparent(trace):
            return trace
        return tracing.new_traceparent() if tracing.enabled() else ""

    def partition_key(self, env: Envelope) -> bytes:
        """The flow's ``key`` (prefixed by the instance), else the execution id."""
        if self.key is None:
            return env.execution_id.encode()
        scope: dict[str, Any] = {"payload": env.payload, "trigger": env.trigger}
        if not self.light_key:
            scope["config"] = self.config
            scope["meta"] = {"execution_id": env.execution_id, "instance": env.instance}
        value = self.key.render(scope)
        text = "" if value is None else str(value)
        return f"{env.instance}/{text}".encode() if env.instance else text.encode()

    def send(self, producer: Producer, env: Envelope) -> None:
        fplan = self.plan.flows[self.flow.name]
        value, headers = encode(env, self.flow.doc.encoding)
        if tracing.enabled():
            headers.append(("traceparent", env.trace.encode()))
        producer.send(fplan.first_topic, value, self.partition_key(env), headers)
        started = event_for(env, "started", payload=env.payload)
        producer.send(self.plan.executions_topic, started.encode(), env.execution_id.encode())
