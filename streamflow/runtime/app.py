"""Build and run the agents of an integration on a transport.

``App`` wires what every agent needs (steps built from their configs, an HTTP session,
config values) and runs agents as asyncio tasks until ``stop`` is set. It is what
``streamflow serve``, ``worker`` and ``run`` start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, FatalError
from streamflow.errtext import describe
from streamflow.ingress import FlowIngress
from streamflow.instances.store import InstanceTable
from streamflow.observability.logs import register_secrets
from streamflow.observability.metrics import AGENT_RESTARTS
from streamflow.runtime.agent import StepAgent
from streamflow.runtime.aggregate import AggregateProcessor
from streamflow.runtime.contain import Containment, place
from streamflow.runtime.processor import ChainProcessor, Processor, ProcessorOptions
from streamflow.runtime.retrying import RetryProcessor
from streamflow.runtime.saga import CompensationProcessor
from streamflow.runtime.split import SplitProcessor
from streamflow.runtime.trigger import KafkaTriggerProcessor
from streamflow.steps.base import AnyStep, Resources, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Flow, Integration, StepConfig, StepNode
from streamflow.topology.plan import AgentPlan, Plan, compile_plan
from streamflow.topology.registry import STEPS
from streamflow.transport.base import TopicSpec, Transport

log = logging.getLogger("streamflow.runtime")
RESTART_MIN, RESTART_MAX = 1.0, 30.0  # seconds between restarts of a failed agent
RESTART_RESET = 60.0  # an agent that ran this long restarts after RESTART_MIN again
MAX_FENCED = 3  # fenced this many times in a row: a duplicate worker id, stop


@dataclass
class AppOptions:
    flows: Sequence[str] = ()  # only these flows (default: all)
    steps: Sequence[str] = ()  # only the agents whose chain holds one of these steps
    step_events: bool = True
    trace_payloads: bool = False
    worker_id: str = "0"  # distinguishes transactional ids of worker processes
    triggers: bool = True  # run trigger agents (kafka triggers); `run` feeds events itself
    instances: bool = False  # follow sf.instances and resolve each envelope's instance config
    env: Mapping[str, str] = field(default_factory=dict)
    clock: Clock = SYSTEM_CLOCK  # delay steps, retry backoff and due times, breakers


class App:
    def __init__(
        self,
        integration: Integration,
        transport: Transport,
        config: Mapping[str, Any],
        options: AppOptions | None = None,
    ) -> None:
        self.integration = integration
        self.transport = transport
        self.config = dict(config)
        self.options = options or AppOptions()
        self.plan: Plan = compile_plan(integration)
        self._session: aiohttp.ClientSession | None = None
        self.resources = Resources()
        self.instances: InstanceTable | None = None
        register_secrets(self.config.get(n) for n, v in integration.config.items() if v.secret)
        self.agents: list[StepAgent] = []
        self._health: dict[str, dict[str, Any]] = {}
        self._topics_checked = False  # agent name -> state, restarts, error
        unknown = set(self.options.flows) - set(integration.flows)
        if unknown:
            raise ConfigError(
                f"unknown flow(s): {', '.join(sorted(unknown))}; "
                f"this integration has: {', '.join(integration.flows)}"
            )

    def topic_specs(self) -> list[TopicSpec]:
        return [TopicSpec(t.name, t.partitions, t.config) for t in self.plan.topics]

    def deploy(self) -> None:
        self.transport.ensure_topics(self.topic_specs())

    def produced_topics(self) -> list[str]:
        """Every topic this App's flows produce to that can be known before an event
        arrives: the plan's topics and the ``topic`` of ``kafka_publish`` steps written
        literally or from config/env values."""
        topics = {t.name for t in self.plan.topics}
        scope = {"config": self.config, "env": dict(self.options.env)}
        for flow in self.integration.flows.values():
            if self.options.flows and flow.name not in self.options.flows:
                continue
            for node in flow.nodes.values():
                raw = getattr(node.config, "topic", None)
                if node.config.type != "kafka_publish" or not isinstance(raw, str):
                    continue
                template = compile_value(raw)
                if any(ref[0] not in scope for ref in template.references):
                    continue  # named by the event: checked when it is produced
                with contextlib.suppress(Exception):
                    if name := str(template.render(scope) or ""):
                        topics.add(name)
        return sorted(topics)

    def check_topics(self) -> None:
        """Refuse to start (ConfigError) unless every topic it will produce to exists, so
        a run never stops half-way through an execution on a missing topic."""
        if self._topics_checked:
            return
        missing = [t for t in self.produced_topics() if self.transport.partitions(t) == 0]
        self._topics_checked = not missing
        if missing:
            raise ConfigError(
                f"topic(s) {', '.join(missing)} do not exist on {self.transport.url}: "
                "create them (outside topics) or run `streamflow deploy`; nothing was consumed"
            )

    def http_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100), raise_for_status=False
            )
        return self._session

    def build_agents(self) -> list[StepAgent]:
        if self.options.instances and self.instances is None:
            self.instances = InstanceTable(self.transport, self.integration)
        agents = []
        for flow in self.integration.flows.values():
            if self.options.flows and flow.name not in self.options.flows:
                continue
            fplan = self.plan.flows[flow.name]
            if fplan.trigger_agent is not None and self.options.triggers and not self.options.steps:
                agents.append(self._trigger_agent(flow, fplan.trigger_agent))
            wanted = set(self.options.steps)
            for aplan in fplan.agents:
                if not wanted or wanted & set(aplan.steps):
                    agents.append(self._agent(flow, aplan))
            for aplan in fplan.retry_agents:
                if not wanted or wanted & set(aplan.steps):
                    agents.append(
                        self._loop_for(flow, RetryProcessor(fplan, aplan, self.options.clock))
                    )
            if fplan.compensate_agent is not None and (not wanted or "compensate" in wanted):
                agents.append(self._compensation_agent(flow, fplan.compensate_agent))
        if not agents:
            raise ConfigError("no agent matches the given --flow/--step")
        self.agents = agents
        return agents

    def _build_step(self, flow: Flow, node: StepNode, config: StepConfig) -> AnyStep:
        factory = STEPS[config.type].factory
        ctx = StepContext(
            self.integration.name,
            flow.name,
            node,
            self.config,
            self.options.env,
            self.http_session,
            logging.getLogger(f"streamflow.step.{flow.name}.{config.id}"),
            self.resources,
            self._instance_config if self.instances is not None else None,
            self.options.clock,
        )
        try:
            step: AnyStep = factory(config, ctx)
        except ConfigError as exc:  # the one place that says which step it is
            raise ConfigError(
                f"{place(self.integration.name, flow.name, config.id)}: {exc}"
            ) from exc
        return step

    def _options(self, flow: Flow) -> ProcessorOptions:
        # run/test (trace_payloads) show every step an execution went through
        mode = "steps" if self.options.trace_payloads else flow.doc.events
        step_events = self.options.step_events and mode == "steps"
        return ProcessorOptions(
            flow.doc.encoding,
            step_events,
            self.options.trace_payloads,
            self.transport.max_message_bytes,
            summary=mode == "summary",
            clock=self.options.clock,
        )

    def _compensation_agent(self, flow: Flow, aplan: AgentPlan) -> StepAgent:
        steps = {
            sid: self._build_step(flow, node, node.compensation)
            for sid, node in flow.nodes.items()
            if node.compensation is not None
        }
        proc = CompensationProcessor(
            flow,
            self.plan.flows[flow.name],
            aplan,
            steps,
            self.plan.executions_topic,
            self._options(flow),
        )
        return self._loop_for(flow, proc)

    def _agent(self, flow: Flow, aplan: AgentPlan) -> StepAgent:
        return self._loop_for(flow, self._chain(flow, aplan))

    def _chain(self, flow: Flow, aplan: AgentPlan) -> ChainProcessor:
        steps = {
            sid: self._build_step(flow, flow.nodes[sid], flow.nodes[sid].config)
            for sid in aplan.steps
        }
        kind = pattern_processor(flow.nodes[aplan.steps[0]].config.type)  # split, aggregate
        args = (
            flow,
            self.plan.flows[flow.name],
            aplan,
            steps,
            self.plan.executions_topic,
            self._options(flow),
            _stored_results(flow),
        )
        if kind is AggregateProcessor:
            return AggregateProcessor(*args, self.transport)
        return kind(*args)

    def _trigger_agent(self, flow: Flow, aplan: AgentPlan) -> StepAgent:
        ingress = FlowIngress(self.integration, flow, self.plan, self.config)
        chain = None
        first = flow.nodes[flow.first].config.type
        if flow.doc.fuse and pattern_processor(first) is ChainProcessor:
            # the trigger runs the first agent's steps itself: one hop less
            chain = self._chain(flow, self.plan.flows[flow.name].agents[0])
        proc = KafkaTriggerProcessor(ingress, aplan, self._options(flow), chain)
        return self._loop_for(flow, proc)

    def _loop_for(self, flow: Flow, proc: Processor) -> StepAgent:
        fplan = self.plan.flows[flow.name]
        containment = Containment(
            self.integration.name,
            flow.name,
            proc.agent.steps[0] if proc.agent.steps else "trigger",
            fplan.dlq_topic,
            self.plan.executions_topic,
            flow.doc.encoding,
            self.transport.max_message_bytes,
            trigger=isinstance(proc, KafkaTriggerProcessor),
        )
        return StepAgent(
            self.transport,
            proc,
            containment,
            exactly_once=flow.doc.guarantee == "exactly_once",
            commit_interval=flow.doc.commit_interval,
            max_batch=flow.doc.max_batch,
            concurrency=flow.doc.concurrency,
            transactional_id=f"{proc.agent.group}.{self.options.worker_id}",
            max_value_size=flow.doc.max_value_size,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run every agent until ``stop`` is set. An agent that stops on an unexpected error
        is restarted (``_supervise``); ``FatalError``/``ConfigError`` stop them all."""
        agents = self.agents or self.build_agents()
        await asyncio.to_thread(self.check_topics)
        tasks = [asyncio.create_task(self._supervise(a, stop), name=a.plan.name) for a in agents]
        if self.instances is not None:
            tasks.append(asyncio.create_task(self._follow_instances(stop), name="instances"))
        try:
            done, _ = await asyncio.wait(
                [*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            for t in done:
                if t in tasks and t.exception() is not None:
                    stop.set()
                    raise t.exception()  # type: ignore[misc]
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            stop.set()
            for t in tasks:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for agent in agents:
                await agent.processor.close()
            await self.resources.aclose()
            if self.instances is not None:
                self.instances.close()
            if self._session is not None:
                await self._session.close()

    async def _supervise(self, agent: StepAgent, stop: asyncio.Event) -> None:
        """Run ``agent``; restart it with backoff (1 s doubling to 30 s; back to 1 s after
        a minute of running) when it stops on anything but FatalError/ConfigError. It
        starts over from its committed offsets; the other agents and the gateway go on.
        A record cannot crash-loop an agent: the agent contains each record's errors."""
        name = agent.plan.name
        state = self._health.setdefault(name, {"state": "running", "restarts": 0, "error": ""})
        delay = RESTART_MIN
        fenced = 0  # restarts in a row after the agent's transactional producer was fenced
        while not stop.is_set():
            started = time.monotonic()
            try:
                await agent.run(stop)
                return
            except (FatalError, ConfigError):
                state["state"] = "stopped"
                raise
            except Exception as exc:
                if time.monotonic() - started > RESTART_RESET:
                    delay = RESTART_MIN
                    fenced = 0
                if exc.__class__.__name__ == "ProducerFenced":
                    fenced += 1
                    if fenced >= MAX_FENCED:  # two processes keep fencing each other
                        state["state"] = "stopped"
                        raise FatalError(
                            f"agent {name}: {exc} ({fenced} times in a row: does another "
                            "worker run with the same --worker-id?)"
                        ) from exc
                state.update(
                    state="restarting", restarts=int(state["restarts"]) + 1, error=describe(exc)
                )
                AGENT_RESTARTS.labels(
                    self.integration.name,
                    agent.plan.flow,
                    agent.containment.step,
                    name,
                    exc.__class__.__name__,
                ).inc()
                log.error(
                    "agent %s stopped on an unexpected error; restarting in %.0f s",
                    name,
                    delay,
                    exc_info=exc,
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RESTART_MAX)
                state["state"] = "running"

    def health(self) -> dict[str, Any]:
        """Agents that restarted or stopped: {name: {state, restarts, error}} (``/readyz``)."""
        return {
            name: dict(h)
            for name, h in self._health.items()
            if h["restarts"] or h["state"] != "running"
        }

    def _instance_config(self, env: Envelope) -> Mapping[str, Any]:
        """The config of the envelope's instance; a removed instance's only for the flows
        its removal triggers (they unregister what the instance set up)."""
        assert self.instances is not None
        removing = env.trigger.get("type") == "remove"
        return self.instances.config(env.instance, removing=removing)

    async def _follow_instances(self, stop: asyncio.Event) -> None:
        """Keep the instance table live (deploys and removals take effect within ~1 s)."""
        assert self.instances is not None
        table = self.instances
        while not stop.is_set():
            await asyncio.to_thread(table.refresh, 0.5)
            await asyncio.sleep(0.5)


def pattern_processor(step_type: str) -> type[ChainProcessor]:
    """The processor of an agent whose first step is of ``step_type``."""
    return {
        "split": SplitProcessor,
        "parallel": SplitProcessor,
        "aggregate": AggregateProcessor,
    }.get(step_type, ChainProcessor)


def _stored_results(flow: Flow) -> frozenset[str]:
    """Steps whose results go into ``steps.<id>``: I/O steps, and any step referenced."""
    return frozenset(
        sid for sid, n in flow.nodes.items() if not n.config.pure or sid in flow.referenced
    )


def environment() -> dict[str, str]:
    """Variables exposed as ``${env.*}``: only those named STREAMFLOW_ENV_*, prefix removed."""
    return {
        k.removeprefix("STREAMFLOW_ENV_"): v
        for k, v in os.environ.items()
        if k.startswith("STREAMFLOW_ENV_")
    }
