"""Integration -> Plan: the topics, consumer groups and agents a topology runs as.

Topic names are the contract of DESIGN.md ("Topics and agents"). Every step that starts
an agent has an input topic ``sf.<integration>.<flow>.<step>`` read by the consumer group
of the same name. With ``fuse: true`` consecutive pure steps run in one agent (a branch
ends a fused chain; a step reached from two places always starts an agent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streamflow.topology.models import Flow, Integration

COMPACTED = {"cleanup.policy": "compact"}


@dataclass(frozen=True)
class TopicPlan:
    name: str
    partitions: int
    purpose: str
    config: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentPlan:
    name: str
    flow: str
    group: str
    input_topic: str
    steps: tuple[str, ...]  # the steps this agent runs, entry first


@dataclass
class FlowPlan:
    integration: str
    flow: str
    first_topic: str
    dlq_topic: str
    agents: list[AgentPlan]
    entry_of: dict[str, str]  # step id -> input topic of the agent that runs it
    external_topic: str | None = None  # a kafka trigger's source topic
    trigger_agent: AgentPlan | None = None  # consumes external_topic into the first step


@dataclass
class Plan:
    integration: str
    executions_topic: str
    topics: list[TopicPlan]
    flows: dict[str, FlowPlan]

    def to_json(self) -> dict[str, Any]:
        return {
            "integration": self.integration,
            "executions_topic": self.executions_topic,
            "topics": [asdict(t) for t in self.topics],
            "agents": [
                asdict(a)
                for fp in self.flows.values()
                for a in ([fp.trigger_agent] if fp.trigger_agent else []) + fp.agents
            ],
        }


def topic_prefix(integration: str, flow: str) -> str:
    return f"sf.{integration}.{flow}"


def compile_plan(integration: Integration) -> Plan:
    name = integration.name
    topics: list[TopicPlan] = []
    flows: dict[str, FlowPlan] = {}
    for flow in integration.flows.values():
        prefix = topic_prefix(name, flow.name)
        parts = flow.doc.partitions
        agents = []
        entry_of: dict[str, str] = {}
        for chain in _chains(flow):
            topic = f"{prefix}.{chain[0]}"
            topics.append(TopicPlan(topic, parts, f"input of step {chain[0]}"))
            agents.append(AgentPlan(topic, flow.name, topic, topic, tuple(chain)))
            for sid in chain:
                entry_of[sid] = topic
        dlq = f"{prefix}.dlq"
        topics.append(TopicPlan(dlq, parts, "dead letters"))
        external = getattr(flow.trigger, "topic", None) if flow.trigger.type == "kafka" else None
        trigger_agent = None
        if external is not None:
            group = getattr(flow.trigger, "group", None) or f"{prefix}.trigger"
            trigger_agent = AgentPlan(f"{prefix}.trigger", flow.name, group, external, ())
        flows[flow.name] = FlowPlan(
            name, flow.name, entry_of[flow.first], dlq, agents, entry_of, external, trigger_agent
        )
    executions = f"sf.{name}.executions"
    most = max(f.doc.partitions for f in integration.flows.values())
    topics.append(TopicPlan(executions, most, "execution lifecycle events"))
    return Plan(name, executions, topics, flows)


def _chains(flow: Flow) -> list[list[str]]:
    """Split the flow's steps into agents (one chain of step ids each)."""
    preds: dict[str, int] = dict.fromkeys(flow.nodes, 0)
    for node in flow.nodes.values():
        targets = {node.next, *(r.steps[0] for r in node.routes if r.steps)}
        for t in targets:
            if t is not None:
                preds[t] += 1

    def fusable(sid: str) -> bool:
        node = flow.nodes[sid]
        return flow.doc.fuse and node.config.pure and not node.routes

    entries = {flow.first}
    for sid, node in flow.nodes.items():
        if preds[sid] > 1:
            entries.add(sid)
        for r in node.routes:
            if r.steps:
                entries.add(r.steps[0])
        if node.next is not None and not (fusable(sid) and fusable(node.next)):
            entries.add(node.next)
    chains = []
    for sid in flow.nodes:
        if sid not in entries:
            continue
        chain = [sid]
        nxt = flow.nodes[sid].next
        while nxt is not None and nxt not in entries:
            chain.append(nxt)
            nxt = flow.nodes[nxt].next
        chains.append(chain)
    return chains
