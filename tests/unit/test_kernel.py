"""A fused kafka trigger's kernel (runtime/kernel.py) writes what the composed chain
writes, record for record: outputs, the batch's summary record, dead letters and
filtered executions (those two through the composed path, from the kernel's fallback)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.observability.events import decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.trigger import KafkaTriggerProcessor
from streamflow.transport.base import Record
from streamflow.transport.local import LocalTransport
from tests.unit.test_compose import RECORDS, TOPO, outputs

LINEAR = """      - id: enrich
        type: transform
        output: {id: "${payload.id}", user: "${payload.user}", total: "${payload.amount * 2}",
                 key: "${trigger.key}", at: "${trigger.offset}"}
      - {id: keep, type: filter, when: "${payload.total >= 0}"}
      - id: shape
        type: transform
        merge: true
        output: {label: "order ${payload.id} of ${upper(payload.user)}"}
      - id: out
        type: kafka_publish
        topic: "outside-${payload.user}"
        key: "${payload.id}"
        headers: {who: "${payload.user}"}
"""
TEXT = """      - id: out
        type: kafka_publish
        topic: outside-out
        format: text
        value: "${payload.id}"
"""
# a template that reads what the kernel does not carry: no kernel, the composed chain runs
META = """      - id: enrich
        type: transform
        output: {id: "${payload.id}", run: "${meta.execution_id}"}
      - {id: out, type: kafka_publish, topic: outside-out}
"""


def trigger_of(tmp_path: Path, steps: str, options: str = "") -> KafkaTriggerProcessor:
    path = tmp_path / "t.yaml"
    path.write_text(TOPO.format(options=options, steps=steps))
    from streamflow.topology.loader import load_integration

    app = App(load_integration(path), LocalTransport(tmp_path / "b"), {}, AppOptions())
    (proc,) = [a.processor for a in app.build_agents() if a.plan.name.endswith("trigger")]
    assert isinstance(proc, KafkaTriggerProcessor)
    proc.summarize()  # as the agent's lean loop does
    return proc


def run(proc: KafkaTriggerProcessor, records: list[Record]) -> tuple[list[Any], list[Any]]:
    """Each record's outputs, and the executions of the batch's summary records."""
    made = [outputs(proc.handle_sync(r)) for r in records]
    summary = [
        (ev.execution_id, ev.step, ev.event, ev.instance, ev.parent, ev.index)
        for out in proc.take_summary()
        for ev in decode_all(out.value)
    ]
    return made, summary


def records() -> list[Record]:
    return [
        Record("outside-in", 2, 10 + i, b"k%d" % i,
               r if isinstance(r, bytes) else orjson.dumps(r), [], 1_700_000_000_000)
        for i, r in enumerate([*RECORDS, {"id": 9, "user": "eve", "amount": 2.5}])
    ]  # fmt: skip


@pytest.mark.parametrize("steps", [LINEAR, TEXT], ids=["linear", "text"])
def test_the_kernel_writes_what_the_composed_chain_writes(tmp_path: Path, steps: str) -> None:
    proc = trigger_of(tmp_path, steps)
    kernel = proc.kernel
    assert kernel is not None
    handled = []

    def counted(rec: Record) -> Any:
        outs = kernel(rec)
        handled.append(outs is not None)
        return outs

    proc.kernel = counted
    with_kernel = run(proc, records())
    # the kernel ran the good records itself; the rest fell back to the composed chain
    assert sum(handled) == (3 if steps == LINEAR else 5), handled
    proc.kernel = None
    composed = run(proc, records())
    assert with_kernel == composed
    made, summary = composed
    outs = [o for rec in made for o in rec]
    assert [o for o in outs if o[0].startswith("outside-")], "nothing was published"
    if steps == LINEAR:
        assert len([o for o in outs if o[0].endswith(".dlq")]) == 2  # bad JSON, null * 2
        assert len(summary) == 3  # ann, dee, eve: bob filtered, two failed
        assert {s[0] for s in summary} == {"outside-in-2-10", "outside-in-2-13", "outside-in-2-15"}
        assert {s[1] for s in summary} == {"out"}


def test_the_kernel_logs_each_execution_as_the_composed_chain_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proc = trigger_of(tmp_path, LINEAR)
    assert proc.kernel is not None

    def lines() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="streamflow.executions"):
            run(proc, records())
        return [re.sub(r" in \d+ms", "", r.getMessage()) for r in caplog.records
                if r.name == "streamflow.executions"]  # fmt: skip

    with_kernel = lines()
    proc.kernel = None
    assert with_kernel == lines()
    assert "execution outside-in-2-10 f completed" in with_kernel


@pytest.mark.parametrize(
    ("steps", "options"),
    [(META, ""), (LINEAR, "    events: lifecycle\n"), (LINEAR, "    fuse: false\n")],
    ids=["reads-meta", "lifecycle-events", "unfused"],
)
def test_no_kernel_where_the_chain_needs_its_envelope(
    tmp_path: Path, steps: str, options: str
) -> None:
    assert trigger_of(tmp_path, steps, options).kernel is None


def test_summary_records_stay_small_whatever_the_ids() -> None:
    """500 executions per record at most, and long ids split a record rather than make
    one the producer would refuse; every execution is in exactly one record, in order."""
    from streamflow.observability.events import SUMMARY_BYTES, summary_records

    done = [
        (f"x{i}-" + "y" * (5000 if i % 7 == 0 else 10), "s", "", 1, 2, "", -1) for i in range(1203)
    ]
    records = summary_records("f", done)
    assert all(len(value) <= SUMMARY_BYTES for _, value in records)
    back = [ev.execution_id for _, value in records for ev in decode_all(value)]
    assert back == [d[0] for d in done]
    assert all(len(orjson.loads(v)["executions"]) <= 500 for _, v in records)
    assert [k for k, _ in records] == [
        orjson.loads(v)["executions"][0][0].encode() for _, v in records
    ]
