"""The ``scatter_gather`` step: one HTTP request to many targets at once, gathered within a
time limit and picked or combined with an expression.

``targets`` is a list (a fixed list, or one per item of a list: ``${payload.carriers}``);
each request is an ``http`` request whose templates read the target as ``${item}``. Every
request runs concurrently (``max_concurrency``, default: all). After ``within`` the
requests still open are cancelled and recorded as late. The result is ``{answers, late,
failed, picked}``: ``answers`` = ``[{target, status, body}]`` of the successful answers in
target order, ``failed`` = ``[{target, error}]`` (late ones included, with ``late: true``);
``picked`` = the ``pick`` expression over ``answers`` (default: all answers), which becomes
the payload with ``replace_payload``. Fewer than ``min_answers`` (default 1) answers fail the
step with every target's reason (a retriable failure: the step's retry policy asks every
target again).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from streamflow.connectors.http import HttpConfig, HttpStep
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.steps.base import Outcome, StepContext
from streamflow.topology.expressions import ROOTS, compile_expression
from streamflow.topology.models import Duration
from streamflow.topology.registry import step_type


class ScatterGatherConfig(HttpConfig):
    """Send one request to many targets at once; gather the answers that arrive within
    `within`, pick or combine them with `pick`."""

    type: Literal["scatter_gather"]  # type: ignore[assignment]
    targets: str = Field(description="a list; each target is ${item} in the request templates")
    within: Duration = Field(5.0, gt=0, description="gather for this long; later answers: late")
    pick: str | None = Field(
        None,
        description="expression over `answers` ([{target, status, body}]), e.g. "
        "${min_by(answers, 'item.body.price')}; default: every answer",
    )
    min_answers: int = Field(1, ge=0, description="fewer answers than this fail the step")
    expression_roots: ClassVar[frozenset[str]] = frozenset({"item", "response", "answers"})


@step_type(
    "scatter_gather",
    ScatterGatherConfig,
    category="routing",
    since="0.1.0",
    example="""- id: quotes
  type: scatter_gather
  targets: ${[config.fastship_url, config.parcelco_url, config.slowfreight_url]}
  method: POST
  url: ${item}/quotes
  json: {weight_kg: "${payload.weight_kg}"}
  within: 2s
  pick: ${min_by(answers, 'item.body.price')}
  replace_payload: true""",
)
class ScatterGatherStep(HttpStep):
    def __init__(self, config: ScatterGatherConfig, ctx: StepContext) -> None:
        n = config.max_concurrency or 10_000
        as_http = config.model_copy(
            update={"for_each": config.targets, "on_item_error": "continue", "max_concurrency": n}
        )
        super().__init__(as_http, ctx)
        self.sg = config
        roots = ROOTS | {"answers"}
        self.pick = compile_expression(config.pick, roots=roots) if config.pick else None

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        assert self.for_each is not None
        targets = self.for_each.render(scope)
        if not isinstance(targets, list | tuple):
            raise PoisonMessageError(f"step {self.cfg.id}: targets did not give a list")
        targets = list(targets)
        results = await self.each(env, scope, targets, self.sg.within)
        answers, failed = [], []
        for target, r in zip(targets, results, strict=True):
            if "error" in r:
                late = "late: dropped" in r["error"]
                failed.append({"target": target, "error": r["error"], "late": late})
            else:
                answers.append({"target": target, "status": r["status"], "body": r["body"]})
        if len(answers) < self.sg.min_answers:
            reasons = "; ".join(f"{f['target']}: {f['error']}" for f in failed) or "no targets"
            msg = f"step {self.cfg.id}: {len(answers)} answer(s) of {len(targets)}: {reasons}"
            raise RetriableError(msg[:2000])
        picked = self.pick.render({**scope, "answers": answers}) if self.pick else answers
        result = {
            "answers": answers,
            "failed": failed,
            "late": [f["target"] for f in failed if f["late"]],
            "picked": picked,
        }
        payload = picked if self.cfg.replace_payload else env.payload
        note = f"{len(answers)} of {len(targets)} answered"
        return Outcome(payload, result, note=note)
