"""The stateful enterprise integration patterns: ``split`` (Splitter) and ``aggregate``
(Aggregator). Their configs and step objects live here; the runtime side (one agent each,
state in a compacted changelog topic) is ``runtime/split.py`` and ``runtime/aggregate.py``.

``split`` turns one execution into one child execution per item of ``items``; each child
has its own id (``<parent>-<index>``), ``meta.split`` = ``{parent, index, size, step}``, the
item as its payload, and runs the rest of the flow. ``aggregate`` collects events by ``key``
(default: the parent of a split's children) until a completion condition holds, then
continues with one event ``{key, items, count, complete}``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError
from streamflow.steps.base import Outcome, Step, StepContext
from streamflow.topology.expressions import compile_expression
from streamflow.topology.models import Duration, Expression, Model, NestedSteps, StepConfig
from streamflow.topology.registry import step_type


class SplitConfig(StepConfig):
    """Splitter: one child execution per item of `items`, each running the rest of the flow."""

    type: Literal["split"]
    items: Annotated[str, Expression] = Field(
        description="a list, e.g. ${payload.lines}; each item is a child's payload"
    )
    max_items: int = Field(
        100_000, ge=1, le=10_000_000, description="more items than this dead-letters the event"
    )
    pure: ClassVar[bool] = True


@step_type(
    "split",
    SplitConfig,
    category="routing",
    since="0.1.0",
    example="""- id: lines
  type: split
  items: ${payload.lines}   # child i: payload lines[i], meta.split {parent, index, size}""",
)
class SplitStep(Step):
    """Renders the items; the split agent (``runtime/split.py``) makes the children."""

    def __init__(self, config: SplitConfig, ctx: StepContext) -> None:
        self.cfg, self.ctx = config, ctx
        self.items = compile_expression(config.items)

    def process(self, env: Envelope) -> Outcome:
        items = self.items.render(self.ctx.scope(env))
        if items is None:
            items = []
        if not isinstance(items, list | tuple):
            raise PoisonMessageError(
                f"step {self.cfg.id}: items gave {type(items).__name__}, not a list"
            )
        if len(items) > self.cfg.max_items:
            raise PoisonMessageError(
                f"step {self.cfg.id}: {len(items)} items is more than max_items "
                f"({self.cfg.max_items})"
            )
        result = {"count": len(items), "payload": env.payload}
        return Outcome(list(items), result, note=f"split into {len(items)}")


class Completion(Model):
    """When a group is complete (the first condition that holds wins)."""

    split: bool | None = Field(
        None,
        description="every child of the split has arrived (default when `key` is not set)",
    )
    count: int | None = Field(None, ge=1, description="this many items")
    when: str | None = Field(
        None, description="an expression over group.items, group.count, group.key"
    )
    timeout: Duration | None = Field(
        None, gt=0, description="after this long since the group's first item (what arrived)"
    )
    window: Duration | None = Field(
        None,
        gt=0,
        description="tumbling event-time window (by the event's created time) of this size",
    )
    grace: Duration = Field(0.0, ge=0, description="window: how long late events still count")


class AggregateConfig(StepConfig):
    """Aggregator: collect events by `key` until complete, then go on with one event
    {key, items, count, complete}."""

    type: Literal["aggregate"]
    key: Annotated[str | None, Expression] = Field(
        None, description="group key, e.g. ${payload.customer}; default: the split's parent"
    )
    complete: Completion = Field(
        default_factory=Completion,
        description="split (default without key), count, when, timeout, window + grace",
    )
    late: Literal["drop", "dead_letter"] = Field(
        "drop",
        description="an event for a group already complete: dropped (recorded as an execution "
        "event) or dead-lettered",
    )
    max_items: int = Field(
        100_000, ge=1, le=10_000_000, description="a group completes when it reaches this size"
    )
    retain_closed: Duration = Field(
        86_400.0, gt=0, description="how long a completed group is remembered (late events)"
    )
    pure: ClassVar[bool] = True
    expression_roots: ClassVar[frozenset[str]] = frozenset({"group"})

    @model_validator(mode="after")
    def _conditions(self) -> AggregateConfig:
        c = self.complete
        if c.split and self.key is not None:
            raise ValueError("complete.split groups by the split's parent: leave `key` unset")
        if c.window is not None and (c.split or c.timeout is not None):
            raise ValueError("a window does not combine with split or timeout")
        if self.key is None and c.window is not None:
            raise ValueError("a window needs a `key` (e.g. ${payload.customer} or a constant)")
        if self.key is not None and not any(
            x is not None for x in (c.count, c.when, c.timeout, c.window)
        ):
            raise ValueError("a keyed aggregate needs complete: count, when, timeout or window")
        return self

    @property
    def by_split(self) -> bool:
        return self.key is None


@step_type(
    "aggregate",
    AggregateConfig,
    category="routing",
    since="0.1.0",
    example="""- id: order
  type: aggregate                # default: every child of the split above, in index order
  complete: {split: true, timeout: 5m}   # 5 minutes at most: then with what arrived""",
)
class AggregateStep(Step):
    """The aggregate agent (``runtime/aggregate.py``) does the work; this holds compiled
    expressions."""

    def __init__(self, config: AggregateConfig, ctx: StepContext) -> None:
        roots = frozenset({"group"})
        self.cfg, self.ctx = config, ctx
        self.key = compile_expression(config.key) if config.key is not None else None
        when = config.complete.when
        self.when = compile_expression(when, roots=roots) if when is not None else None

    def key_of(self, env: Envelope) -> str:
        if self.key is None:
            split = env.meta.get("split")
            if not isinstance(split, dict) or "parent" not in split:
                raise PoisonMessageError(
                    f"step {self.cfg.id}: this event comes from no split (set `key`)"
                )
            return str(split["parent"])
        value: Any = self.key.render(self.ctx.scope(env))
        if value is None or value == "":
            raise PoisonMessageError(f"step {self.cfg.id}: key is empty")
        return value if isinstance(value, str) else str(value)

    def process(self, env: Envelope) -> Outcome:
        raise RuntimeError("aggregate runs in its own agent (runtime/aggregate.py)")


class ParallelConfig(StepConfig):
    """Run named branches of steps concurrently for one execution; join them (all, any or n)
    and go on with the branch results under steps.<id>.<branch>."""

    type: Literal["parallel"]
    branches: Annotated[dict[str, list[dict[str, Any]]], NestedSteps] = Field(
        min_length=1, description="branch name -> its steps (a child execution each)"
    )
    join: Literal["all", "any"] | int = Field(
        "all", description="go on when all branches, any one, or this many have finished"
    )
    timeout: Duration | None = Field(
        None, gt=0, description="go on (or fail) with what arrived after this long"
    )
    on_failure: Literal["fail", "continue"] = Field(
        "fail",
        description="a failed or missing branch: fail the execution (completed branches are "
        "compensated in a saga), or continue with steps.<id>._partial saying what is missing",
    )
    pure: ClassVar[bool] = True

    @model_validator(mode="after")
    def _join(self) -> ParallelConfig:
        if isinstance(self.join, int) and not 1 <= self.join <= len(self.branches):
            raise ValueError(f"join: {self.join} is not between 1 and {len(self.branches)}")
        for name in self.branches:
            if not name.replace("_", "a").replace("-", "a").isalnum() or name.startswith("_"):
                raise ValueError(f"branch name {name!r}: letters, digits, '-' and '_' only")
        return self

    def join_step(self) -> AggregateConfig:
        """The join, an aggregate of this step's branches (its own agent and state)."""
        n = len(self.branches) if self.join == "all" else 1 if self.join == "any" else self.join
        complete = Completion(split=True if n == len(self.branches) else None, timeout=self.timeout)
        if n < len(self.branches):
            complete = Completion(count=n, timeout=self.timeout)
        return AggregateConfig(id=f"{self.id}-join", type="aggregate", complete=complete)


@step_type(
    "parallel",
    ParallelConfig,
    category="routing",
    since="0.1.0",
    example="""- id: lookups
  type: parallel
  join: all
  timeout: 5s
  branches:
    crm: [{id: crm, type: http, method: GET, url: "${config.crm_url}/c/${payload.id}"}]
    erp: [{id: erp, type: http, method: GET, url: "${config.erp_url}/c/${payload.id}"}]
# then: ${steps.lookups.crm} and ${steps.lookups.erp} (each branch's final payload)""",
)
class ParallelStep(Step):
    """The parallel agent (``runtime/split.py``) starts the branches."""

    def __init__(self, config: ParallelConfig, ctx: StepContext) -> None:
        self.cfg, self.ctx = config, ctx

    def process(self, env: Envelope) -> Outcome:
        names = list(self.cfg.branches)
        return Outcome(names, None, note=f"parallel: {len(names)} branches")
