"""A composed chain (compose.py) writes what the interpreter writes, record for record:
outputs, end records, dead letters, filtered and routed executions."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.contain import Out
from streamflow.runtime.processor import ChainProcessor
from streamflow.runtime.trigger import KafkaTriggerProcessor
from streamflow.topology.loader import load_integration
from streamflow.transport.base import Record
from streamflow.transport.local import LocalTransport

TOPO = """apiVersion: streamflow/v1
kind: Integration
name: cz
flows:
  - name: f
    trigger: {{type: kafka, topic: outside-in}}
    key: ${{payload.user}}
{options}    steps:
{steps}"""

LINEAR = """      - id: enrich
        type: transform
        output: {id: "${payload.id}", user: "${payload.user}", total: "${payload.amount * 2}"}
      - {id: keep, type: filter, when: "${payload.total >= 0}"}
      - {id: out, type: kafka_publish, topic: outside-out, key: "${payload.id}"}
"""

BRANCHED = """      - id: enrich
        type: transform
        merge: true
        output: {twice: "${payload.amount * 2}"}
      - id: route
        type: branch
        routes:
          - when: ${payload.amount > 5}
            steps: [{id: big, type: transform, merge: true, output: {big: true}}]
      - {id: out, type: kafka_publish, topic: outside-out}
"""

RECORDS: list[Any] = [
    {"id": 1, "user": "ann", "amount": 3},
    {"id": 2, "user": "bob", "amount": -1},  # filtered
    {"id": 3, "user": "cy", "amount": None},  # the transform fails: a dead letter
    {"id": 4, "user": "dee", "amount": 10},
    b"not json",  # the trigger dead-letters it
]


TIMES = ("ts", "started_ms", "created_ms")


def outputs(outs: list[Out]) -> list[tuple[str, Any, bytes | None]]:
    """The messages, event times left out (they differ from run to run)."""
    seen = []
    for o in outs:
        value: Any = o.value
        if o.topic.startswith("sf."):  # events and envelopes: JSON with times in them
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(o.value)
            if isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in TIMES}
        seen.append((o.topic, value, o.key))
    return seen


def drive(procs: dict[str, Any], records: list[Record]) -> list[list[Any]]:
    """Each record through every agent it reaches (outputs on an agent's input topic are
    handed on to that agent): what each outside record made, in order."""
    made = []
    for rec in records:
        seen: list[Any] = []
        todo = [rec]
        while todo:
            r = todo.pop(0)
            for o in procs[r.topic].handle_sync(r):
                seen.extend(outputs([o]))
                if o.topic in procs:
                    todo.append(Record(o.topic, 0, 0, o.key, o.value, o.headers, 0))
        made.append(seen)
    return made


@pytest.mark.parametrize("steps", [LINEAR, BRANCHED], ids=["linear", "branched"])
@pytest.mark.parametrize("options", ["", "    events: lifecycle\n", "    fuse: false\n"])
def test_composed_chain_writes_what_the_interpreter_writes(
    tmp_path: Path, steps: str, options: str
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TOPO.format(options=options, steps=steps))
    transport = LocalTransport(tmp_path / "b")
    app = App(load_integration(path), transport, {}, AppOptions())
    agents = app.build_agents()
    procs = {a.plan.input_topic: a.processor for a in agents if not a.plan.name.endswith("retry")}
    chains = [p.chain if isinstance(p, KafkaTriggerProcessor) else p for p in procs.values()]
    composed = [c for c in chains if isinstance(c, ChainProcessor) and c.composed is not None]
    assert composed, "no agent runs a composed chain"
    records = [
        Record(
            "outside-in",
            0,
            i,
            b"k",
            r if isinstance(r, bytes) else orjson.dumps(r),
            None,
            1_700_000_000_000,
        )
        for i, r in enumerate(RECORDS)
    ]
    with_composition = drive(procs, records)
    for c in composed:
        c.composed = None
    interpreted = drive(procs, records)
    assert with_composition == interpreted
    flat = [o for outs in interpreted for o in outs]
    assert [o[1] for o in flat if o[0] == "outside-out"], "nothing reached the publish step"
    assert len([o for o in flat if o[0].endswith(".dlq")]) == 2
    transport.close()
