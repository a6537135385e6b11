"""The pure step types: transform, filter, branch, log, delay."""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from streamflow.envelope import Envelope
from streamflow.steps.base import STOP, AsyncStep, ChainFn, GoTo, Outcome, Step, StepContext
from streamflow.topology.expressions import compile_expression, compile_value
from streamflow.topology.models import Duration, Expression, Model, NestedSteps, StepConfig
from streamflow.topology.registry import step_type


class TransformConfig(StepConfig):
    """Replace the payload with `output` (a template: one `${…}` keeps its type)."""

    type: Literal["transform"]
    output: Any = Field(description="the new payload")
    merge: bool = Field(False, description="merge `output` (a mapping) into the payload")
    pure: ClassVar[bool] = True


@step_type(
    "transform",
    TransformConfig,
    category="transform",
    since="0.1.0",
    example="""- id: to-crm
  type: transform
  output:
    externalId: ${payload.customer.id}
    name: "${payload.customer.first_name} ${payload.customer.last_name}"
    tags: ${split(default(payload.tags, ''), ',')}""",
)
class TransformStep(Step):
    def __init__(self, config: TransformConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        self.output = compile_value(config.output)
        self.merge = config.merge
        self.scope = ctx.scoper(self.output)

    def process(self, env: Envelope) -> Outcome:
        out = self._render(self.scope(env), env.payload)
        return Outcome(out, out)

    def _render(self, scope: dict[str, Any], payload: Any) -> Any:
        out = self.output.render(scope)
        if self.merge and isinstance(out, dict) and isinstance(payload, dict):
            out = {**payload, **out}
        return out

    def chain_fn(self) -> ChainFn | None:
        if not self.ctx.light(self.output):
            return None
        render = self._render
        return lambda scope, outs: render(scope, scope["payload"])


class FilterConfig(StepConfig):
    """Continue only when `when` is true; a filtered event is recorded, never lost."""

    type: Literal["filter"]
    when: Annotated[str, Expression] = Field(
        description="condition, e.g. ${payload.status == 'active'}"
    )
    pure: ClassVar[bool] = True


@step_type(
    "filter",
    FilterConfig,
    category="routing",
    since="0.1.0",
    example="""- id: only-active
  type: filter
  when: ${payload.status == 'active' and payload.amount > 0}""",
)
class FilterStep(Step):
    def __init__(self, config: FilterConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        self.when = compile_expression(config.when)
        self.scope = ctx.scoper(self.when)

    def process(self, env: Envelope) -> Outcome:
        if self.when.render(self.scope(env)):
            return Outcome(env.payload, True)
        return Outcome(env.payload, False, filtered=True, note="filtered")

    def chain_fn(self) -> ChainFn | None:
        if not self.ctx.light(self.when):
            return None
        when = self.when.render
        return lambda scope, outs: scope["payload"] if when(scope) else STOP


class BranchRoute(Model):
    when: str = Field(description="condition of this route")
    steps: list[dict[str, Any]] = Field(description="steps run when it matches")


class BranchConfig(StepConfig):
    """Run the steps of the first route whose `when` is true, else `default`; then go on."""

    type: Literal["branch"]
    routes: Annotated[list[BranchRoute], NestedSteps] = Field(
        min_length=1, description="`when` + `steps`, tried in order"
    )
    default: Annotated[list[dict[str, Any]], NestedSteps] = Field(
        default_factory=list, description="steps when no route matches (empty: go on)"
    )
    pure: ClassVar[bool] = True


@step_type(
    "branch",
    BranchConfig,
    category="routing",
    since="0.1.0",
    example="""- id: route
  type: branch
  routes:
    - when: ${payload.amount >= 1000}
      steps: [{id: big, type: transform, output: {tier: big}}]
  default:
    - {id: small, type: transform, output: {tier: small}}""",
)
class BranchStep(Step):
    def __init__(self, config: BranchConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        node = ctx.node
        self.conditions = [compile_expression(r.when) for r in config.routes]
        self.targets = [GoTo(r.steps[0] if r.steps else node.next) for r in node.routes]
        self.default_target = self.targets[-1] if config.default else GoTo(node.next)
        self.scope = ctx.scoper(*self.conditions)

    def process(self, env: Envelope) -> Outcome:
        scope = self.scope(env)
        for i, cond in enumerate(self.conditions):
            if cond.render(scope):
                return Outcome(env.payload, {"route": i}, route=self.targets[i], note=f"route {i}")
        return Outcome(env.payload, {"route": "default"}, route=self.default_target, note="default")


class LogConfig(StepConfig):
    """Write a log line (the payload passes unchanged)."""

    type: Literal["log"]
    message: str = "${payload}"
    level: Literal["debug", "info", "warning", "error"] = "info"
    pure: ClassVar[bool] = True


@step_type(
    "log",
    LogConfig,
    category="utility",
    since="0.1.0",
    example="""- {id: trace, type: log, message: "order ${payload.id} routed", level: info}""",
)
class LogStep(Step):
    def __init__(self, config: LogConfig, ctx: StepContext) -> None:
        self.ctx = ctx
        self.message = compile_value(config.message)
        self.level = logging.getLevelName(config.level.upper())
        self.scope = ctx.scoper(self.message)

    def process(self, env: Envelope) -> Outcome:
        text = self.message.render(self.scope(env))
        self.ctx.logger.log(
            self.level,
            "%s",
            text,
            extra={"flow": env.flow, "step": env.step, "execution_id": env.execution_id},
        )
        return Outcome(env.payload, None)


class DelayConfig(StepConfig):
    """Wait, then continue (other keys keep flowing; this key waits)."""

    type: Literal["delay"]
    duration: Duration = Field(description="how long, e.g. 500ms, 2s")


@step_type(
    "delay",
    DelayConfig,
    category="utility",
    since="0.1.0",
    example="""- {id: settle, type: delay, duration: 2s}""",
)
class DelayStep(AsyncStep):
    def __init__(self, config: DelayConfig, ctx: StepContext) -> None:
        self.duration = config.duration
        self.clock = ctx.clock

    async def process(self, env: Envelope) -> Outcome:
        await self.clock.asleep(self.duration)
        return Outcome(env.payload, None)
