"""`fuse: true` (the default) with a kafka trigger: one agent runs trigger, transform and
kafka_publish; `events: summary` (the default) writes one record per execution that starts
and ends in one agent, `lifecycle` no per-step events. On the embedded transport."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from prometheus_client import REGISTRY

from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.transport.base import TopicSpec
from streamflow.transport.local import LocalTransport
from streamflow.transport.partitioner import partition_for
from tests.waiting import until

TOPO = """\
apiVersion: streamflow/v1
kind: Integration
name: fz
flows:
  - name: f
    partitions: 3
    key: ${{payload.n}}
{options}    trigger: {{type: kafka, topic: outside-in}}
    steps:
{steps}"""
STEPS = """\
      - {id: double, type: transform, output: {n: "${payload.n}", d: "${payload.n * 2}"}}
      - {id: out, type: kafka_publish, topic: outside-out, key: "${payload.n}"}
"""
# a branch ends a fused chain: its targets run in agents of their own (a hop each)
BRANCHED = """\
      - {id: double, type: transform, output: {n: "${payload.n}", d: "${payload.n * 2}"}}
      - id: route
        type: branch
        routes:
          - when: ${payload.n % 2 == 0}
            steps:
              - {id: even, type: transform, merge: true, output: {even: true}}
        default:
          - {id: odd, type: transform, merge: true, output: {even: false}}
      - {id: out, type: kafka_publish, topic: outside-out, key: "${payload.n}"}
"""


async def run(
    tmp_path: Path, fuse: bool | None = None, events: str | None = None, steps: str = STEPS
) -> tuple[App, list[ExecutionEvent], dict[int, tuple[int, bytes | None]]]:
    """Run the flow over 50 outside records (``None``: the option is left to its default)."""
    options = "" if fuse is None else f"    fuse: {str(fuse).lower()}\n"
    options += "" if events is None else f"    events: {events}\n"
    path = tmp_path / "t.yaml"
    path.write_text(TOPO.format(options=options, steps=steps))
    integration = load_integration(path)
    transport = LocalTransport(tmp_path / "b")
    transport.ensure_topics([TopicSpec("outside-in", 2), TopicSpec("outside-out", 3)])
    producer = transport.producer()
    for n in range(50):
        producer.send("outside-in", orjson.dumps({"n": n}), key=b"whatever")
    producer.flush()
    app = App(integration, transport, {}, AppOptions())
    app.deploy()
    app.build_agents()
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    deadline = time.monotonic() + 30
    while sum(transport.end_offsets("outside-out").values()) < 50:
        assert time.monotonic() < deadline, "outputs did not arrive"
        await asyncio.sleep(0.05)

    def completed() -> int:
        records = transport.read_all("sf.fz.executions")
        return sum(e.event == "completed" for r in records for e in decode_all(r.value))

    await until(lambda: completed() >= 50, what="50 completed executions")
    stop.set()
    await task
    evs = [e for r in transport.read_all("sf.fz.executions") for e in decode_all(r.value)]
    outs = {
        orjson.loads(r.value)["n"]: (r.partition, r.key) for r in transport.read_all("outside-out")
    }
    transport.close()
    return app, evs, outs


async def test_fused_trigger_runs_the_whole_flow_in_one_agent(tmp_path: Path) -> None:
    app, evs, outs = await run(tmp_path, fuse=True, events="steps")
    step_agents = [a for a in app.agents if a.plan.steps]
    assert [a.plan.steps for a in step_agents] == [("double", "out")]
    assert sorted(outs) == list(range(50))
    for n, (partition, key) in outs.items():  # placed by the publish key, not the outside key
        assert key == str(n).encode() and partition == partition_for(key, 3)
    completed = {e.execution_id for e in evs if e.event == "completed"}
    assert len(completed) == 50
    assert {e.step for e in evs if e.event == "step"} == {"double", "out"}
    # nothing travelled through the first step's topic: the trigger ran the chain itself
    t = LocalTransport(tmp_path / "b")
    assert sum(t.end_offsets("sf.fz.f.double").values()) == 0
    t.close()


async def test_unfused_and_lifecycle_events(tmp_path: Path) -> None:
    _, evs, outs = await run(tmp_path, fuse=False, events="lifecycle")
    assert sorted(outs) == list(range(50))
    kinds = {e.event for e in evs}
    assert kinds == {"started", "completed"}  # no per-step events
    assert sum(1 for e in evs if e.event == "completed") == 50


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_defaults_write_one_record_per_execution(tmp_path: Path) -> None:
    completed = _sample("streamflow_executions_completed_total", integration="fz", flow="f")
    fired = _sample("streamflow_trigger_firings_total", integration="fz", flow="f", trigger="kafka")
    app, evs, outs = await run(tmp_path)
    # the fused chain's and the trigger's counts reach /metrics (exported per batch)
    assert (
        _sample("streamflow_executions_completed_total", integration="fz", flow="f")
        == completed + 50
    )
    assert (
        _sample("streamflow_trigger_firings_total", integration="fz", flow="f", trigger="kafka")
        == fired + 50
    )
    assert [a.plan.steps for a in app.agents if a.plan.steps] == [("double", "out")]
    assert sorted(outs) == list(range(50))
    # one message per event besides the output: its end, which says when it started
    assert len(evs) == 50
    assert {e.event for e in evs} == {"completed"}
    assert len({e.execution_id for e in evs}) == 50
    assert all(0 < e.started_ms <= e.ts for e in evs)


async def test_summary_writes_started_when_an_execution_crosses_agents(tmp_path: Path) -> None:
    app, evs, outs = await run(tmp_path, steps=BRANCHED)
    # `out` is reached from both branches: it starts an agent too
    assert [a.plan.steps for a in app.agents if a.plan.steps] == [
        ("double", "route"),
        ("out",),
        ("even",),
        ("odd",),
    ]
    assert sorted(outs) == list(range(50))
    by_id: dict[str, list[str]] = {}
    for e in evs:
        by_id.setdefault(e.execution_id, []).append(e.event)
        assert e.started_ms > 0
    assert len(by_id) == 50
    # started in the trigger's agent, ended in another: a record for each
    assert all(sorted(kinds) == ["completed", "started"] for kinds in by_id.values())
