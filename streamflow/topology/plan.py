"""Integration -> Plan: the topics, consumer groups and agents a topology runs as.

Topic names are the contract of DESIGN.md ("Topics and agents"). Every step that starts
an agent has an input topic ``sf.<integration>.<flow>.<step>`` read by the consumer group
of the same name. With ``fuse: true`` (the default) a pure step (transform, filter, log,
kafka_publish ...) runs in the agent of the step before it, and a ``kafka`` trigger runs
the first agent's chain itself; every I/O step starts an agent (its own input topic, retry
topic and consumer group), as does a branch target and a step reached from two places.
This is how Kafka Streams fuses a sub-topology: a hop through a topic only where one is
needed (an I/O step's durable retry, scaling per step), never between pure operators.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from streamflow.topology.models import Flow, Integration

COMPACTED = {"cleanup.policy": "compact"}
STATEFUL = frozenset({"split", "aggregate", "parallel"})  # each runs in an agent of its own
# triggers run by a leader keep their state (and elect the leader) on a compacted topic
STATE_TOPIC_SUFFIX = {
    "schedule": "schedule",
    "poll": "cursor",
    "file": "files",
    "sse": "stream",
    "websocket": "stream",
}


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
    retry_agents: list[AgentPlan] = field(default_factory=list)  # one per I/O step
    retry_topic_of: dict[str, str] = field(default_factory=dict)  # step id -> its .retry topic
    compensate_topic: str | None = None  # set when some step has `compensate:`
    compensate_agent: AgentPlan | None = None
    state_topic_of: dict[str, str] = field(default_factory=dict)  # aggregate id -> changelog
    trigger_fused: bool = False  # the trigger agent runs agents[0]'s chain itself
    # every hop of an event: (from step or "trigger", topic - "" when in-process -, to step)
    hops: list[tuple[str, str, str]] = field(default_factory=list)

    def all_agents(self) -> list[AgentPlan]:
        """Trigger agent, step agents, retry agents, compensation agent."""
        head = [self.trigger_agent] if self.trigger_agent else []
        tail = [self.compensate_agent] if self.compensate_agent else []
        return [*head, *self.agents, *self.retry_agents, *tail]


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
            "agents": [asdict(a) for fp in self.flows.values() for a in fp.all_agents()],
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
        retry_agents, retry_topic_of = [], {}
        if not flow.doc.ordered:
            for chain in _chains(flow):
                node = flow.nodes[chain[0]]
                if node.config.pure:
                    continue  # pure steps fail the same way again: never retried
                rtopic = f"{prefix}.{chain[0]}.retry"
                topics.append(TopicPlan(rtopic, parts, f"delayed retries of step {chain[0]}"))
                retry_agents.append(AgentPlan(rtopic, flow.name, rtopic, rtopic, (chain[0],)))
                retry_topic_of[chain[0]] = rtopic
        dlq = f"{prefix}.dlq"
        topics.append(TopicPlan(dlq, parts, "dead letters"))
        suffix = STATE_TOPIC_SUFFIX.get(flow.trigger.type)
        if suffix is not None:
            topics.append(
                TopicPlan(
                    f"{prefix}.{suffix}",
                    1,
                    f"{flow.trigger.type} trigger state and leader",
                    COMPACTED,
                )
            )
        state_topic_of = {}
        for sid, node in flow.nodes.items():
            if node.config.type == "aggregate":  # Kafka Streams style: a changelog per store
                state_topic_of[sid] = f"{prefix}.{sid}.state"
                purpose = f"state of aggregate {sid} (changelog, partitioned like its input)"
                topics.append(TopicPlan(state_topic_of[sid], parts, purpose, COMPACTED))
        compensate_topic = compensate_agent = None
        if any(n.compensation is not None for n in flow.nodes.values()):
            compensate_topic = f"{prefix}.compensate"
            topics.append(TopicPlan(compensate_topic, parts, "saga compensations"))
            compensate_agent = AgentPlan(
                compensate_topic, flow.name, compensate_topic, compensate_topic, ("compensate",)
            )
        external = getattr(flow.trigger, "topic", None) if flow.trigger.type == "kafka" else None
        trigger_agent = None
        if external is not None:
            group = getattr(flow.trigger, "group", None) or f"{prefix}.trigger"
            trigger_agent = AgentPlan(f"{prefix}.trigger", flow.name, group, external, ())
        fused = trigger_agent is not None and flow.doc.fuse
        # the trigger hands the first step its envelope in-process (fused) or via its topic
        hops = [("trigger", "" if fused else entry_of[flow.first], flow.first)]
        hops += [(a, entry_of[b], b) for chain in _chains(flow) for a, b in _handoffs(flow, chain)]
        flows[flow.name] = FlowPlan(
            name,
            flow.name,
            entry_of[flow.first],
            dlq,
            agents,
            entry_of,
            external,
            trigger_agent,
            retry_agents,
            retry_topic_of,
            compensate_topic,
            compensate_agent,
            state_topic_of,
            fused,
            hops,
        )
    executions = f"sf.{name}.executions"
    most = max(f.doc.partitions for f in integration.flows.values())
    topics.append(TopicPlan(executions, most, "execution lifecycle events"))
    return Plan(name, executions, topics, flows)


def _handoffs(flow: Flow, chain: list[str]) -> list[tuple[str, str]]:
    """(step, next step) pairs where ``chain`` hands an envelope to another agent."""
    inside = set(chain)
    out: list[tuple[str, str]] = []
    for sid in chain:
        node = flow.nodes[sid]
        for t in (node.next, *(r.steps[0] for r in node.routes if r.steps)):
            if t is not None and t not in inside and (sid, t) not in out:
                out.append((sid, t))
    return out


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
        return flow.doc.fuse and node.config.pure

    entries = {flow.first}
    for sid, node in flow.nodes.items():
        if node.config.type in STATEFUL:  # split and aggregate run in an agent of their own
            entries.add(sid)
            if node.next is not None:
                entries.add(node.next)
        if preds[sid] > 1:
            entries.add(sid)
        for r in node.routes:
            if r.steps:
                entries.add(r.steps[0])
        # a branch ends a chain (its targets start agents); a pure step after any other
        # step joins that step's agent; an I/O step always starts its own
        if node.next is not None and (node.routes or not fusable(node.next)):
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
