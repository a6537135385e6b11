"""The ``kafka`` trigger's agent: outside records in, envelopes on the first step's topic.

It runs in the same agent loop as steps (so it commits after delivery, or in the flow's
transaction when the flow is exactly-once). A record that cannot be decoded per the
trigger's ``format`` is dead-lettered and the partition keeps flowing.
"""

from __future__ import annotations

import logging
from typing import Any

from streamflow import exactjson
from streamflow.envelope import Envelope, encode
from streamflow.errors import PoisonMessageError
from streamflow.ingress import FlowIngress
from streamflow.observability.metrics import TRIGGER_FIRINGS, StepMetrics
from streamflow.runtime.contain import Containment, Out
from streamflow.runtime.core import Emitter
from streamflow.runtime.kernel import Kernel, kernel
from streamflow.runtime.processor import ChainProcessor, ProcessorOptions
from streamflow.topology.plan import AgentPlan
from streamflow.topology.triggers import KafkaTrigger
from streamflow.transport.base import Record

log = logging.getLogger("streamflow.runtime")


class KafkaTriggerProcessor:
    """With ``chain`` (a flow with ``fuse: true``) the envelope runs straight through the
    first agent's steps in this agent, instead of a hop through the first step's topic."""

    def __init__(
        self,
        ingress: FlowIngress,
        agent: AgentPlan,
        options: ProcessorOptions,
        chain: ChainProcessor | None = None,
    ) -> None:
        self.ingress = ingress
        self.agent = agent
        # fused, `events: summary`: no `started` record unless the execution leaves this
        # agent (the chain writes it then); its end record carries its start time
        self.announce = chain is None or not options.summary
        trigger = ingress.flow.trigger
        assert isinstance(trigger, KafkaTrigger)
        self.format = trigger.format
        fplan = ingress.plan.flows[ingress.flow.name]
        self.first_topic = fplan.first_topic
        self.dlq = fplan.dlq_topic
        self.executions = ingress.plan.executions_topic
        self.encoding = ingress.flow.doc.encoding
        self.emitter = Emitter(
            Containment(
                fplan.integration, ingress.flow.name, "trigger", self.dlq, self.executions,
                self.encoding, options.max_message_bytes, trigger=True,
            )
        )  # fmt: skip
        self.chain = chain
        self.all_sync = chain.all_sync if chain is not None else True
        self.metrics = StepMetrics(fplan.integration, ingress.flow.name, "trigger")
        self.firings = TRIGGER_FIRINGS.labels(fplan.integration, ingress.flow.name, "kafka")
        self.fired = 0  # counted per record, exported per batch (flush_metrics)
        self.kernel: Kernel | None = None  # see summarize

    def _payload(self, rec: Record) -> Any:
        if self.format == "bytes":
            return rec.value.hex()
        if self.format == "text":
            try:
                return rec.value.decode()
            except UnicodeDecodeError as exc:
                raise PoisonMessageError(f"record is not UTF-8 text: {exc}") from exc
        try:
            return exactjson.loads(rec.value)
        except exactjson.JSONDecodeError as exc:
            raise PoisonMessageError(f"record is not valid JSON: {exc}") from exc

    def handle_sync(self, rec: Record) -> list[Out]:
        if self.kernel is not None:
            done = self.kernel(rec)
            if done is not None:
                self.fired += 1
                return done
        outs, env, keyed = self._start(rec)
        if env is not None and self.chain is not None:
            self.chain.run_sync(env, keyed, outs, fresh=not self.announce)
        return outs

    async def handle(self, rec: Record) -> list[Out]:
        outs, env, keyed = self._start(rec)
        if env is not None and self.chain is not None:
            await self.chain.run(env, keyed, outs, fresh=not self.announce)
        return outs

    def _start(self, rec: Record) -> tuple[list[Out], Envelope | None, Record]:
        """The envelope of an outside record and its ``started`` event (plus, unfused, the
        envelope on the first step's topic); a record that can't be read: a dead letter."""
        try:
            payload = self._payload(rec)
        except PoisonMessageError as exc:
            return [self.emitter.raw_dead_letter(rec, exc, "trigger")], None, rec
        trigger = {
            "type": "kafka",
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "key": rec.key.decode("utf-8", "replace") if rec.key else None,
            "timestamp_ms": rec.timestamp_ms,
        }
        # the execution id is derived from the record's position, so a redelivered record
        # (at-least-once) keeps its execution id and downstream can deduplicate
        execution_id = f"{rec.topic}-{rec.partition}-{rec.offset}"
        env = self.ingress.envelope(payload, trigger=trigger, execution_id=execution_id)
        self.fired += 1
        key = self.ingress.partition_key(env)
        outs: list[Out] = []
        if self.announce:
            self.emitter.event(env, outs, "started")
        if self.chain is None:
            if self.format == "json":  # nothing changed it: the record's JSON is the payload's
                env.reuse_bytes(rec.value)
            value, headers = encode(env, self.encoding)
            outs.append(Out(self.first_topic, value, key, headers))
        # the flow's key places every output downstream, not the outside record's key
        keyed = Record(
            rec.topic, rec.partition, rec.offset, key, rec.value, rec.headers, rec.timestamp_ms
        )
        return outs, env, keyed

    def flush_metrics(self) -> None:
        """Export the batch's counts: firings, and the fused chain's (produced, completed)."""
        if self.fired:
            self.firings.inc(self.fired)
            self.fired = 0
        if self.chain is not None:
            self.chain.flush_metrics()

    def summarize(self) -> None:
        if self.chain is not None:
            self.chain.summarize()
            if not self.announce:  # fused, `events: summary`: the record-to-outputs kernel
                self.kernel = kernel(self.chain, self.format)

    def take_summary(self) -> list[Out]:
        return self.chain.take_summary() if self.chain is not None else []

    async def close(self) -> None:
        return None
