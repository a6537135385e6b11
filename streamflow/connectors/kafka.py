"""The ``kafka_publish`` step: produce to an outside Kafka topic.

The step never touches a producer: it returns the message in ``Outcome.emit`` and the
agent produces it with the batch, so on an exactly-once flow the publish is part of the
flow's Kafka transaction (a crash neither loses nor doubles it).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from streamflow import exactjson
from streamflow.envelope import Envelope
from streamflow.steps.base import ChainFn, Emit, Outcome, Step, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Secret, StepConfig
from streamflow.topology.registry import step_type


class KafkaPublishConfig(StepConfig):
    """Produce a message to an outside Kafka topic (inside the flow's transaction)."""

    type: Literal["kafka_publish"]
    topic: str = Field(description="the outside topic (must exist)")
    key: str | None = Field(None, description="message key template")
    value: Any = Field("${payload}", description="message value template")
    headers: Annotated[dict[str, str], Secret] = Field(default_factory=dict)
    format: Literal["json", "text"] = Field("json", description="how the value is encoded")
    # its message is produced with the agent's batch (in the flow's transaction): no side
    # effect outside the batch, so it may be fused with its neighbours like a pure step
    pure: ClassVar[bool] = True


@step_type(
    "kafka_publish",
    KafkaPublishConfig,
    category="messaging",
    since="0.1.0",
    example="""- id: out
  type: kafka_publish
  topic: erp.orders.enriched
  key: ${payload.order_id}
  value: ${payload}""",
)
class KafkaPublishStep(Step):
    def __init__(self, config: KafkaPublishConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        self.topic = compile_value(config.topic)
        self.key = compile_value(config.key) if config.key is not None else None
        self.value = compile_value(config.value)
        self.headers = compile_value(config.headers)
        self.text = config.format == "text"
        # constant settings (the usual topic, no headers) are rendered once, here
        self.fixed_topic = str(self.topic.render({})) if self.topic.is_constant else None
        self.no_headers = self.headers.is_constant and not config.headers
        self.templates = (self.topic, self.value, self.headers, *([self.key] if self.key else []))
        self.scope = ctx.scoper(*self.templates)

    def process(self, env: Envelope) -> Outcome:
        emit = self._emit(self.scope(env))
        return Outcome(env.payload, {"topic": emit.topic}, emit=[emit])

    def chain_fn(self) -> ChainFn | None:
        if not self.ctx.light(*self.templates):
            return None
        emit = self._emit

        def fn(scope: dict[str, Any], outs: list[Emit]) -> Any:
            outs.append(emit(scope))
            return scope["payload"]

        return fn

    def _emit(self, scope: dict[str, Any]) -> Emit:
        value = self.value.render(scope)
        data = str(value).encode() if self.text else exactjson.dumps(value)
        key = None
        if self.key is not None:
            k = self.key.render(scope)
            key = None if k is None else str(k).encode()
        headers = None
        if not self.no_headers:
            headers = [(h, str(v).encode()) for h, v in self.headers.render(scope).items()] or None
        topic = self.fixed_topic or str(self.topic.render(scope))
        return Emit(topic, data, key, headers)
