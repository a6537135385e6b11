"""The ``dedupe`` step (the webhook's ``Idempotency-Key`` is in ``triggers/gateway.py``).

``dedupe`` lets an event pass once per ``key`` within ``ttl``: the first execution to
claim a key owns it; another execution with the same key is filtered (recorded as
``filtered``, note ``duplicate``, never dead-lettered). The claim stores the owner's
execution id, so a redelivery or a retry of the *same* execution (after a crash, or a
failed later step retried) passes again: dedupe never loses the first event. The store
is the App's memory (one process) or Redis (``store: redis``, every worker).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field

from streamflow.connectors.stores import DAY, StoreOptions, open_store
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, StepConfig
from streamflow.topology.registry import step_type
from streamflow.util.secrets import Masker


class DedupeConfig(StepConfig, StoreOptions):
    """Let an event through once per key within ttl; another execution with it is filtered."""

    type: Literal["dedupe"]
    key: str = Field(description="template naming the event, e.g. ${payload.order_id}")
    ttl: Duration = Field(DAY, description="how long a key is remembered, e.g. 24h")


@step_type(
    "dedupe",
    DedupeConfig,
    category="routing",
    since="0.1.0",
    example="""- id: once
  type: dedupe
  key: ${payload.order_id}
  ttl: 24h
  store: memory              # or redis, with connection: <a redis connection>""",
)
class DedupeStep(AsyncStep):
    def __init__(self, config: DedupeConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.key = compile_value(config.key)
        self.masker = Masker()

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        value: Any = self.key.render(scope)
        if value is None or value == "":
            raise PoisonMessageError("the dedupe key is empty")
        store = await open_store(
            self.cfg, self.ctx.resources, {"config": scope["config"], "env": self.ctx.env},
            self.masker,
        )  # fmt: skip
        text = str(value)
        if len(text) > 200:  # a long key is stored as its hash
            text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        name = f"dedupe:{self.ctx.integration}:{self.ctx.flow}:{self.cfg.id}:{text}"
        owner = await store.claim(name, env.execution_id.encode(), self.cfg.ttl)
        if owner is None or owner.decode() == env.execution_id:
            return Outcome(env.payload, {"duplicate": False, "key": str(value)}, note="first")
        result = {"duplicate": True, "key": str(value), "first_execution": owner.decode()}
        return Outcome(env.payload, result, filtered=True, note="duplicate")
