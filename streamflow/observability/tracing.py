"""W3C trace context through every hop, and OpenTelemetry spans when configured.

Every envelope carries a ``traceparent`` (``envelope.trace``, also the ``traceparent``
Kafka header of each produced envelope): created at the trigger (or taken from the
webhook request), then replaced at every step by that step's span, so one trace spans
the trigger, every step, retry, dead letter and compensation of an execution.

Off by default, at no cost: without ``STREAMFLOW_OTLP_ENDPOINT`` (or a tracer provider
installed by ``configure``), steps run without creating spans and the trigger's
traceparent travels unchanged. With it, each step is a span named
``<flow>/<step>`` with attributes ``streamflow.integration|flow|step|execution_id|attempt``,
exported over OTLP/HTTP.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

from streamflow.envelope import Envelope

ENV_ENDPOINT = "STREAMFLOW_OTLP_ENDPOINT"
_tracer: Any = None


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def valid_traceparent(value: str | None) -> bool:
    parts = (value or "").split("-")
    return len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and parts[1] != "0" * 32


def configure(provider: Any = None) -> None:
    """Turn spans on: with ``provider`` (tests: an in-memory exporter), or from the
    environment (``STREAMFLOW_OTLP_ENDPOINT``); a no-op when neither is given."""
    global _tracer
    if provider is None:
        endpoint = os.environ.get(ENV_ENDPOINT)
        if not endpoint:
            return
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": "streamflow"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    _tracer = provider.get_tracer("streamflow")


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


@contextlib.contextmanager
def step_span(env: Envelope, integration: str) -> Iterator[None]:
    """A span for one step handling ``env``; the envelope's traceparent becomes the span's."""
    if _tracer is None:
        yield
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    parent = propagator.extract({"traceparent": env.trace}) if env.trace else None
    attributes = {
        "streamflow.integration": integration,
        "streamflow.flow": env.flow,
        "streamflow.step": env.step,
        "streamflow.execution_id": env.execution_id,
        "streamflow.attempt": env.attempt,
    }
    if env.instance:
        attributes["streamflow.instance"] = env.instance
    with _tracer.start_as_current_span(
        f"{env.flow}/{env.step}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=True,
        set_status_on_exception=False,
    ) as span:
        carrier: dict[str, str] = {}
        propagator.inject(carrier)
        env.trace = carrier.get("traceparent", env.trace)
        try:
            yield
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            raise
