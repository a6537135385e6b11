"""Containment on the embedded transport, in one process: a record whose outputs cannot be
written fails alone; an agent that stops unexpectedly is restarted; a run refuses to start
when a topic it produces to is missing; the message size limit is Kafka's."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from streamflow.envelope import decode_record
from streamflow.errors import ConfigError
from streamflow.observability.metrics import AGENT_RESTARTS
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.runner import run_events
from streamflow.testing import run_flow
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport.base import DEFAULT_MAX_MESSAGE_BYTES, MessageRejected, Record
from streamflow.transport.local import LocalConsumer, LocalTransport

from .test_runtime import topology


def test_the_embedded_transport_refuses_what_kafka_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = LocalTransport(tmp_path)
    assert transport.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 1_000_000
    producer = transport.producer()
    producer.send("t", b"x" * 999_000)  # queued; the topic is checked at flush
    with pytest.raises(MessageRejected, match="over the 1,000,000-byte limit"):
        producer.send("t", b"x" * 1_000_000)
    producer.pending.clear()
    producer.close()
    transport.close()
    monkeypatch.setenv("STREAMFLOW_MAX_MESSAGE_BYTES", "5000")
    small = LocalTransport(tmp_path / "small")
    assert small.max_message_bytes == 5000
    with pytest.raises(MessageRejected, match="STREAMFLOW_MAX_MESSAGE_BYTES"):
        small.producer().send("t", b"x" * 4000, headers=[("h", b"y" * 1000)])
    small.close()


BLOWUP = """\
    partitions: 2
    key: ${payload.id}
    steps:
      - id: grow
        type: transform
        output: {id: "${payload.id}", big: "${'x' * payload.n}"}
      - id: done
        type: transform
        merge: true
        output: {ok: true}
"""


async def test_an_output_over_the_size_limit_fails_its_execution_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMFLOW_MAX_MESSAGE_BYTES", "4096")
    path = topology(tmp_path, BLOWUP, name="blow")
    broker = tmp_path / "broker"
    payloads = [{"id": i, "n": 10_000 if i == 3 else 10} for i in range(8)]
    result = await run_flow(path, payloads, directory=broker)
    status = {ex.input["id"]: ex.status for ex in result.executions}
    assert status == {i: "failed" if i == 3 else "completed" for i in range(8)}
    bad = next(ex for ex in result.executions if ex.input["id"] == 3)
    assert "over the 4,096-byte limit" in bad.error
    assert "blow/f step grow" in bad.error  # its place
    transport = LocalTransport(broker)
    letters = transport.read_all(compile_plan(load_integration(path)).flows["f"].dlq_topic)
    assert len(letters) == 1
    (letter,) = letters
    assert letter.header("sf-dead-letter") == b"input"
    env = decode_record(letter)  # the record as the agent received it: before `grow`
    assert env.step == "grow" and env.payload == {"id": 3, "n": 10_000}
    assert letter.header("sf-execution-id") == bad.execution_id.encode()
    transport.close()


# one agent per step: the deep result must cross a topic (fused, it never is encoded
# and the execution completes)
DEEP = """\
    fuse: false
    steps:
      - id: deepen
        type: transform
        output: {a: {b: {c: "${payload}"}}}
      - id: done
        type: transform
        output: {ok: true}
"""


async def test_a_result_nested_too_deep_fails_its_execution_only(tmp_path: Path) -> None:
    path = topology(tmp_path, DEEP, name="deep")
    deep: object = 1
    for _ in range(252):  # + {a: {b: {c:}}} = 255 levels, one over the encoder's limit
        deep = [deep]
    result = await run_flow(path, [deep, {"fine": 1}])
    by_status = sorted(ex.status for ex in result.executions)
    assert by_status == ["completed", "failed"]
    failed = next(ex for ex in result.executions if ex.status == "failed")
    assert "nested deeper than 254 levels" in failed.error


class FlakyTransport(LocalTransport):
    """The embedded transport whose first consumer fails on its first poll: an agent
    stopping on an unexpected error, as a broker call failing in an outage would."""

    failures = 0

    def consumer(
        self, group: str, topics: Sequence[str], *, from_end: bool = False
    ) -> LocalConsumer:
        c = super().consumer(group, topics, from_end=from_end)
        if group.endswith(".work") and FlakyTransport.failures == 0:
            FlakyTransport.failures += 1
            real, calls = c.poll, [0]

            def poll(max_records: int, timeout: float) -> list[Record]:
                calls[0] += 1
                if calls[0] == 1:
                    raise RuntimeError("the broker went away")
                return real(max_records, timeout)

            c.poll = poll  # type: ignore[method-assign]
        return c


WORK = """\
    steps:
      - id: work
        type: transform
        output: {n: "${payload.n + 1}"}
"""


async def test_the_supervisor_restarts_an_agent_that_stopped(tmp_path: Path) -> None:
    path = topology(tmp_path, WORK, name="sup")
    integration = load_integration(path)
    transport = FlakyTransport(tmp_path / "broker")
    agent = "sf.sup.f.work"
    before = AGENT_RESTARTS.labels("sup", "f", "work", agent, "RuntimeError")._value.get()
    options = AppOptions(trace_payloads=True)
    result = await run_events(
        integration, transport, {}, [{"n": i} for i in range(20)], options=options, timeout=60
    )
    assert result.by_status() == {"completed": 20}
    assert FlakyTransport.failures == 1
    after = AGENT_RESTARTS.labels("sup", "f", "work", agent, "RuntimeError")._value.get()
    assert after == before + 1
    transport.close()


PUBLISH = """\
    steps:
      - id: out
        type: kafka_publish
        topic: "nowhere.${config.suffix}"
"""


async def test_a_missing_topic_to_produce_to_refuses_the_start(tmp_path: Path) -> None:
    path = topology(
        tmp_path, PUBLISH, name="pre", config='  suffix: {type: string, default: "x"}\n'
    )
    integration = load_integration(path)
    transport = LocalTransport(tmp_path / "broker")
    app = App(integration, transport, {"suffix": "x"}, AppOptions())
    app.deploy()
    assert "nowhere.x" in app.produced_topics()
    with pytest.raises(ConfigError, match=r"nowhere\.x do not exist"):
        await asyncio.wait_for(app.run(asyncio.Event()), 30)
    assert transport.end_offsets(app.plan.flows["f"].first_topic) == {0: 0, 1: 0, 2: 0}
    transport.close()


async def test_an_input_event_that_cannot_travel_fails_alone(tmp_path: Path) -> None:
    path = topology(tmp_path, WORK, name="feed")
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    result = await run_flow(path, [{"n": 1}, deep, {"n": 2}])
    assert sorted(ex.status for ex in result.executions) == ["completed", "completed", "failed"]
    failed = next(ex for ex in result.executions if ex.status == "failed")
    assert "feed/f step work: cannot be sent: a value is nested deeper than 254" in failed.error
