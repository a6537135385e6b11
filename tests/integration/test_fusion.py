"""`fuse: true` with a kafka trigger: one agent runs trigger, transform and kafka_publish;
`events: lifecycle` writes no per-step events. On the embedded transport."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.events import ExecutionEvent
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
    fuse: {fuse}
    events: {events}
    trigger: {{type: kafka, topic: outside-in}}
    steps:
      - {{id: double, type: transform, output: {{n: "${{payload.n}}", d: "${{payload.n * 2}}"}}}}
      - {{id: out, type: kafka_publish, topic: outside-out, key: "${{payload.n}}"}}
"""


async def run(
    tmp_path: Path, fuse: bool, events: str
) -> tuple[App, list[ExecutionEvent], dict[int, tuple[int, bytes | None]]]:
    path = tmp_path / "t.yaml"
    path.write_text(TOPO.format(fuse=str(fuse).lower(), events=events))
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
        return sum(ExecutionEvent.decode(r.value).event == "completed" for r in records)

    await until(lambda: completed() >= 50, what="50 completed executions")
    stop.set()
    await task
    evs = [ExecutionEvent.decode(r.value) for r in transport.read_all("sf.fz.executions")]
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
