"""split and aggregate on both transports, in-process: 1,000 children of one split come
back as one event with 1,000 items in index order; keyed aggregates complete by count and
by window; late and duplicate events change nothing; execution events link children to
their parent. (Crash tests: tests/e2e/test_patterns_crash.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.observability.events import decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import TopicSpec, Transport

SPLIT_AGGREGATE = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: orders
    partitions: 3
    guarantee: {guarantee}
    key: ${{payload.order}}
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - {{id: remember, type: transform, output: "${{payload}}"}}
      - id: lines
        type: split
        items: '${{map(payload.lines, ''{{"sku": item, "order": payload.order}}'')}}'
      - id: price
        type: transform
        output:
          sku: ${{payload.sku}}
          order: ${{payload.order}}
          at: ${{meta.split.index}}
          price: ${{len(payload.sku) * 10}}
      - {{id: collect, type: aggregate}}
      - id: total
        type: transform
        output:
          order: ${{steps.remember.order}}
          skus: ${{pluck(payload.items, 'sku')}}
          at: ${{pluck(payload.items, 'at')}}
          total: ${{sum(payload.items, 'item.price')}}
          count: ${{payload.count}}
          complete: ${{payload.complete}}
      - {{id: out, type: kafka_publish, topic: {sink}, key: "${{payload.order}}"}}
"""


async def run_until(
    transport: Transport,
    topo: Path,
    done: Callable[[], bool],
    *,
    timeout: float = 120.0,
    settle: float = 0.5,
) -> None:
    integration = load_integration(topo)
    app = App(integration, transport, {}, AppOptions())
    app.deploy()
    app.build_agents()
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert not task.done(), f"the app stopped: {task.exception()}"
            assert time.monotonic() < deadline, "timed out waiting for the outputs"
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)
    finally:
        stop.set()
        await task


def produce(transport: Transport, topic: str, events: list[tuple[bytes, Any]]) -> None:
    producer = transport.producer()
    for key, value in events:
        producer.send(topic, orjson.dumps(value), key)
    producer.flush()
    producer.close()


def values(transport: Transport, topic: str) -> list[Any]:
    return [orjson.loads(r.value) for r in transport.read_all(topic)]


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_a_thousand_children_come_back_as_one_event(
    broker_url: str, tmp_path: Path, unique: str, guarantee: str
) -> None:
    name, source, sink = f"pat-{unique}", f"pat-in-{unique}", f"pat-out-{unique}"
    topo = tmp_path / "t.yaml"
    topo.write_text(
        SPLIT_AGGREGATE.format(name=name, guarantee=guarantee, source=source, sink=sink)
    )
    transport = open_transport(broker_url)
    transport.ensure_topics([TopicSpec(source, 2), TopicSpec(sink, 2)])
    skus = [f"s{i}" for i in range(1000)]
    produce(
        transport,
        source,
        [(b"o1", {"order": "o1", "lines": skus}), (b"o2", {"order": "o2", "lines": ["a", "bb"]})],
    )
    try:
        await run_until(transport, topo, lambda: len(values(transport, sink)) >= 2)
        out = {v["order"]: v for v in values(transport, sink)}
        assert len(values(transport, sink)) == 2  # one event per order, no more
        assert out["o1"]["count"] == 1000 and out["o1"]["skus"] == skus
        assert out["o1"]["at"] == list(range(1000))  # index order, whatever the arrival
        assert out["o1"]["total"] == sum(len(s) * 10 for s in skus)
        assert out["o1"]["complete"] == "split"
        assert out["o2"] == {
            "order": "o2", "skus": ["a", "bb"], "at": [0, 1], "total": 30, "count": 2,
            "complete": "split",
        }  # fmt: skip
        events = [
            e for r in transport.read_all(f"sf.{name}.executions") for e in decode_all(r.value)
        ]
        children = [e for e in events if e.event == "started" and e.parent]
        assert len(children) == 1002
        by_parent: dict[str, list[int]] = {}
        for e in children:
            by_parent.setdefault(e.parent, []).append(e.index)
        assert sorted(sorted(ix) for ix in by_parent.values()) == [[0, 1], list(range(1000))]
        # every parent completes once, after its aggregate; every child completes once
        completed = [e.execution_id for e in events if e.event == "completed"]
        assert len(completed) == len(set(completed)) == 1002 + 2
        parents = {e.parent for e in children}
        assert parents <= set(completed)
        # the state of a finished group is gone: only the completion markers remain
        state = [r for r in transport.read_all(f"sf.{name}.orders.collect.state") if r.value]
        assert {r.key.decode()[0] for r in state if r.key} <= {"c", "g", "m"}
    finally:
        transport.close()


def test_plan_shows_the_changelog_and_the_agents(tmp_path: Path) -> None:
    topo = tmp_path / "t.yaml"
    topo.write_text(
        SPLIT_AGGREGATE.format(name="p", guarantee="exactly_once", source="a", sink="b")
    )
    plan = compile_plan(load_integration(topo))
    topics = {t.name: t for t in plan.topics}
    state = topics["sf.p.orders.collect.state"]
    assert state.config == {"cleanup.policy": "compact"} and state.partitions == 3
    chains = [a.steps for a in plan.flows["orders"].agents]
    assert ("lines",) in chains and ("collect",) in chains
    assert ("price",) in chains  # the step after a split starts an agent


TIMEOUT = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: quotes
    partitions: 2
    guarantee: {guarantee}
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - {{id: carriers, type: split, items: "${{payload.carriers}}"}}
      - id: slow-one
        type: branch
        routes:
          - when: ${{payload.name == 'slow'}}
            steps: [{{id: wait, type: delay, duration: 10s}}]
      - id: quote
        type: transform
        output: {{carrier: "${{payload.name}}", price: "${{payload.price}}"}}
      - id: gather
        type: aggregate
        complete: {{split: true, timeout: 5s}}  # far more than a fast answer takes
      - id: best
        type: transform
        output:
          best: ${{min_by(payload.items, 'item.price').carrier}}
          answers: ${{payload.count}}
          expected: ${{payload.expected}}
          complete: ${{payload.complete}}
      - {{id: out, type: kafka_publish, topic: {sink}}}
"""


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_timeout_completes_with_what_arrived_and_a_late_answer_changes_nothing(
    broker_url: str, tmp_path: Path, unique: str, guarantee: str
) -> None:
    name, source, sink = f"to-{unique}", f"to-in-{unique}", f"to-out-{unique}"
    topo = tmp_path / "t.yaml"
    topo.write_text(TIMEOUT.format(name=name, guarantee=guarantee, source=source, sink=sink))
    transport = open_transport(broker_url)
    transport.ensure_topics([TopicSpec(source, 2), TopicSpec(sink, 2)])
    carriers = [
        {"name": "slow", "price": 1},  # the cheapest answers too late
        {"name": "a", "price": 7},
        {"name": "b", "price": 5},
    ]
    produce(transport, source, [(b"q1", {"carriers": carriers})])
    executions = f"sf.{name}.executions"

    def late_seen() -> bool:
        events = [e for r in transport.read_all(executions) for e in decode_all(r.value)]
        return any(e.event == "filtered" and "late" in e.note for e in events)

    try:
        await run_until(transport, topo, late_seen, settle=1.0)
        out = values(transport, sink)
        assert out == [{"best": "b", "answers": 2, "expected": 3, "complete": "timeout"}]
        events = [e for r in transport.read_all(executions) for e in decode_all(r.value)]
        late = [e for e in events if e.event == "filtered"]
        assert len(late) == 1 and late[0].index == 0 and late[0].step == "gather"
        assert "already complete: timeout" in late[0].note
    finally:
        transport.close()
