"""One behaviour, two transports: every case here runs on the embedded (``local://``) and
the Kafka (``kafka://``) transport through the ``broker_url`` fixture, and must give the
same answer on both (DESIGN.md: "a behaviour that differs is a bug").

The example integrations under ``topologies/`` run end to end against their mock
services; a poison record on a kafka-trigger topic goes to the flow's dead-letter topic
and the partition keeps flowing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.errors import ConfigError
from streamflow.observability.events import decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.runner import RunResult, run_events
from streamflow.testing.mocks import MockServices
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.values import resolve_config
from streamflow.transport import open_transport
from streamflow.transport.base import Consumer, Record, TopicChange, TopicSpec, Transport
from streamflow.transport.partitioner import partition_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "topologies"
RUN_TIMEOUT = 90.0  # against hangs only

# the conftest's broker_url params, with the Kafka one marked (so `-m "not kafka"` works)
pytestmark = pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)


@pytest.fixture
async def transport(broker_url: str) -> AsyncIterator[Transport]:
    t = open_transport(broker_url)
    yield t
    t.close()


def renamed(example: str, tmp_path: Path, unique: str) -> Integration:
    """The example with a unique integration name: its own topics and groups on Kafka."""
    src = (EXAMPLES / example / "integration.yaml").read_text()
    text, n = re.subn(r"(?m)^name: (\S+)$", rf"name: \1-{unique}", src, count=1)
    assert n == 1
    path = tmp_path / f"{example}.yaml"
    path.write_text(text)
    return load_integration(path)


def events(example: str) -> list[Any]:
    lines = (EXAMPLES / example / "events.ndjson").read_text().splitlines()
    return [orjson.loads(line) for line in lines if line.strip()]


async def run_example(
    example: str, transport: Transport, tmp_path: Path, unique: str
) -> tuple[RunResult, MockServices]:
    integration = renamed(example, tmp_path, unique)
    async with MockServices.from_file(EXAMPLES / example / "mocks.yaml") as mocks:
        config = resolve_config(integration.config, mocks.config_values())
        result = await run_events(
            integration, transport, config, events(example), timeout=RUN_TIMEOUT
        )
    return result, mocks


async def test_order_routing(transport: Transport, tmp_path: Path, unique: str) -> None:
    result, mocks = await run_example("order-routing", transport, tmp_path, unique)
    by_id = {e.input["id"]: e for e in result.executions}
    assert {k: e.status for k, e in by_id.items()} == {
        "o-1001": "completed",
        "o-1002": "completed",
        "o-1003": "filtered",
        "o-1004": "filtered",
    }
    assert by_id["o-1001"].output == {
        "order_id": "o-1001",
        "booked": True,
        "state": "auto-approved",
        "amount": 49.9,
    }
    assert by_id["o-1002"].output == {
        "order_id": "o-1002",
        "booked": True,
        "state": "pending-approval",
        "amount": 1250.5,
    }
    assert by_id["o-1003"].output == events("order-routing")[2]
    assert result.by_status() == {"completed": 2, "filtered": 2}
    assert result.ok

    # the steps each execution went through, in order
    assert [ev.step for ev in by_id["o-1001"].events if ev.event == "step"] == [
        "only-paid",
        "normalise",
        "route-by-amount",
        "mark-auto",
        "book-in-erp",
    ]
    assert [ev.step for ev in by_id["o-1002"].events if ev.event == "step"] == [
        "only-paid",
        "normalise",
        "route-by-amount",
        "request-approval",
        "mark-pending",
        "book-in-erp",
    ]
    assert [ev.event for ev in by_id["o-1003"].events] == ["started", "filtered"]

    (approval,) = mocks.calls_to("approvals", "POST", "/approvals")
    assert approval.json == {"order": "o-1002", "amount": 1250.5}
    erp = sorted(mocks.calls_to("erp", "PUT", "/orders/{id}"), key=lambda c: c.path)
    assert [(c.path, c.json) for c in erp] == [
        (
            "/orders/o-1001",
            {
                "order_id": "o-1001",
                "customer_id": "c-1",
                "amount": 49.9,
                "currency": "EUR",
                "lines": 1,
                "state": "auto-approved",
            },
        ),
        (
            "/orders/o-1002",
            {
                "order_id": "o-1002",
                "customer_id": "c-2",
                "amount": 1250.5,
                "currency": "EUR",
                "lines": 2,
                "state": "pending-approval",
                "approval": "APR-o-1002",
            },
        ),
    ]
    assert len(mocks.calls) == 3


async def test_web_form_to_cms(transport: Transport, tmp_path: Path, unique: str) -> None:
    result, mocks = await run_example("web-form-to-cms", transport, tmp_path, unique)
    assert result.by_status() == {"completed": 3}
    outputs = {}
    for e in result.executions:
        out = dict(e.output)
        meta = dict(out.pop("meta"))
        assert meta.pop("ref") == e.execution_id
        assert re.fullmatch(
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", meta.pop("received")
        )
        assert meta == {"source": "www.example.com"}
        outputs[out["author"]["name"]] = out
    assert outputs == {
        "Ada Lovelace": {
            "title": "Contact request from Ada Lovelace",
            "author": {"name": "Ada Lovelace", "email": "ada@example.com"},
            "body": "Please call me about the analytical engine.",
            "tags": ["engines", "math"],
        },
        "Grace Hopper": {
            "title": "Contact request from Grace Hopper",
            "author": {"name": "Grace Hopper", "email": "grace@navy.example"},
            "body": "Interested in a COBOL workshop.",
            "tags": ["general"],
        },
        "Alan Turing": {
            "title": "Contact request from Alan Turing",
            "author": {"name": "Alan Turing", "email": "alan@bletchley.example"},
            "body": "Do you ship to Manchester?",
            "tags": ["shipping"],
        },
    }

    cms = mocks.calls_to("cms", "POST", "/api/entries")
    assert len(cms) == 3
    assert all(c.headers.get("Authorization") == "Bearer dev-token" for c in cms)
    posted = {c.json["meta"]["ref"]: c.json for c in cms}
    assert posted == {e.execution_id: e.output for e in result.executions}
    chat = mocks.calls_to("chat", "POST", "/hooks/team")
    assert sorted(c.json["text"].split(":")[0] for c in chat) == [
        f"New contact request from {n}" for n in ("Ada Lovelace", "Alan Turing", "Grace Hopper")
    ]
    assert all(re.search(r"/entries/[0-9a-f-]{36}$", c.json["text"]) for c in chat)


POISON_YAML = """\
apiVersion: streamflow/v1
kind: Integration
name: poison-{unique}
flows:
  - name: ingest
    partitions: 2
    trigger: {{type: kafka, topic: {topic}}}
    steps:
      - id: double
        type: transform
        output: {{n: "${{payload.n}}", twice: "${{payload.n * 2}}"}}
"""


async def _read_until(
    transport: Transport,
    topic: str,
    group: str,
    done: Callable[[list[Record]], bool],
    runner: asyncio.Task[None],
) -> list[Record]:
    consumer = transport.consumer(group, [topic])
    out: list[Record] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while not done(out):
            if runner.done():
                runner.result()
                raise AssertionError("the agents stopped")
            assert time.monotonic() < deadline, f"timed out reading {topic}: {out}"
            out.extend(await asyncio.to_thread(consumer.poll, 100, 0.3))
    finally:
        consumer.close()
    return out


async def test_poison_record_is_dead_lettered_and_the_partition_flows_on(
    transport: Transport, tmp_path: Path, unique: str
) -> None:
    topic = f"ext.{unique}.numbers"
    transport.ensure_topics([TopicSpec(topic, 1)])
    path = tmp_path / "poison.yaml"
    path.write_text(POISON_YAML.format(unique=unique, topic=topic))
    integration = load_integration(path)
    producer = transport.producer()
    producer.send(topic, b'{"n": 20', b"k1", partition=0)  # offset 0: not JSON
    producer.send(topic, b'{"n": 21}', b"k2", partition=0)  # offset 1: fine
    producer.flush()
    producer.close()

    app = App(integration, transport, {}, AppOptions(trace_payloads=True))
    await asyncio.to_thread(app.deploy)
    stop = asyncio.Event()
    runner = asyncio.create_task(app.run(stop))
    try:
        good = f"{topic}-0-1"  # the execution id of a kafka-triggered record is its position

        def completed(recs: list[Record]) -> bool:
            return any(
                ev.execution_id == good and ev.event == "completed"
                for r in recs
                for ev in decode_all(r.value)
            )

        evs = await _read_until(
            transport, f"sf.{integration.name}.executions", f"check.{unique}", completed, runner
        )
        dead = await _read_until(
            transport,
            f"sf.{integration.name}.ingest.dlq",
            f"dlq.{unique}",
            lambda recs: len(recs) >= 1,
            runner,
        )
    finally:
        stop.set()
        await asyncio.wait_for(runner, 60)

    decoded = [e for r in evs for e in decode_all(r.value)]
    done = [ev for ev in decoded if ev.event == "completed"]
    assert [(ev.execution_id, ev.payload) for ev in done] == [(good, {"n": 21, "twice": 42})]
    assert {ev.execution_id for ev in decoded} == {good}, "the poison record started a run"
    (rec,) = dead
    assert rec.value == b'{"n": 20'
    assert rec.key == b"k1"
    assert rec.header("sf-error-type") == b"PoisonMessageError"
    assert b"not valid JSON" in (rec.header("sf-error") or b"")
    assert rec.header("sf-origin-topic") == topic.encode()
    assert rec.header("sf-origin-partition") == b"0"
    assert rec.header("sf-origin-offset") == b"0"


# -- the Transport protocol itself --------------------------------------------------------------


def _poll(consumer: Consumer, n: int, settle: float = 0.5) -> list[Record]:
    """At least ``n`` records (or fail after RUN_TIMEOUT), then whatever comes in ``settle`` s."""
    out: list[Record] = []
    deadline = time.monotonic() + RUN_TIMEOUT
    while len(out) < n:
        assert time.monotonic() < deadline, f"timed out with {len(out)} of {n} record(s)"
        out.extend(consumer.poll(500, 0.3))
    end = time.monotonic() + settle
    while time.monotonic() < end:
        out.extend(consumer.poll(500, 0.2))
    return out


def test_topic_changes(transport: Transport, unique: str) -> None:
    a, b = f"cf.{unique}.a", f"cf.{unique}.b"
    assert transport.ensure_topics([TopicSpec(a, 2), TopicSpec(b, 1)], dry_run=True) == [
        TopicChange(a, "create", 2),
        TopicChange(b, "create", 1),
    ]
    assert (transport.partitions(a), transport.partitions(b)) == (0, 0)
    transport.ensure_topics([TopicSpec(a, 2), TopicSpec(b, 1)])
    assert transport.ensure_topics([TopicSpec(a, 3), TopicSpec(b, 1)]) == [
        TopicChange(a, "grow", 3, 2),
        TopicChange(b, "unchanged", 1),
    ]
    assert transport.end_offsets(a) == {0: 0, 1: 0, 2: 0}
    with pytest.raises(ConfigError, match=rf"^topic {a} has 3 partitions; shrinking to 1 "):
        transport.ensure_topics([TopicSpec(a, 1)])
    assert transport.partitions(a) == 3


def test_keys_land_on_the_same_partitions(transport: Transport, unique: str) -> None:
    topic = f"cf.{unique}.keys"
    transport.ensure_topics([TopicSpec(topic, 5)])
    keys = [f"k{i}".encode() for i in range(40)]
    producer = transport.producer()
    for seq in range(3):
        for k in keys:
            producer.send(topic, b"%s:%d" % (k, seq), k)
    producer.flush()
    producer.close()
    consumer = transport.consumer(f"cf.{unique}.g", [topic])
    try:
        recs = _poll(consumer, 3 * len(keys))
    finally:
        consumer.close()
    assert len(recs) == 3 * len(keys)
    order: dict[bytes, list[bytes]] = {}
    for r in recs:
        assert r.key is not None
        assert r.partition == partition_for(r.key, 5)
        order.setdefault(r.key, []).append(r.value)
    assert order == {k: [b"%s:%d" % (k, s) for s in range(3)] for k in keys}


def test_group_commit_resume_and_rewind(transport: Transport, unique: str) -> None:
    topic, group = f"cf.{unique}.t", f"cf.{unique}.g"
    transport.ensure_topics([TopicSpec(topic, 1)])
    producer = transport.producer()
    for i in range(6):
        producer.send(topic, b"%d" % i)
    producer.flush()
    first = transport.consumer(group, [topic])
    try:
        assert [r.offset for r in _poll(first, 6)] == list(range(6))
        first.commit({(topic, 0): 4})
    finally:
        first.close()
    second = transport.consumer(group, [topic])
    try:
        assert [r.offset for r in _poll(second, 2)] == [4, 5]
        second.rewind()
        assert [r.offset for r in _poll(second, 2)] == [4, 5]
    finally:
        second.close()


def test_transactions_commit_atomically_and_abort_cleanly(
    transport: Transport, unique: str
) -> None:
    source, sink, group = f"cf.{unique}.in", f"cf.{unique}.out", f"cf.{unique}.g"
    transport.ensure_topics([TopicSpec(source, 1), TopicSpec(sink, 1)])
    plain = transport.producer()
    for i in range(4):
        plain.send(source, b"%d" % i)
    plain.flush()
    plain.close()
    consumer = transport.consumer(group, [source])
    producer = transport.producer(transactional_id=f"cf.{unique}.tx")
    try:
        recs = _poll(consumer, 4)
        producer.begin()
        producer.send(sink, b"aborted")
        producer.flush()  # flushed, but still inside the transaction
        producer.abort()
        consumer.rewind()
        assert [r.offset for r in _poll(consumer, 4)] == [r.offset for r in recs]
        producer.begin()
        producer.send(sink, b"committed")
        producer.commit_transaction(consumer, {(source, 0): 3})
    finally:
        producer.close()
        consumer.close()
    watcher = transport.consumer(f"cf.{unique}.watch", [sink])
    resumed = transport.consumer(group, [source])
    try:
        assert [r.value for r in _poll(watcher, 1)] == [b"committed"]
        assert [r.offset for r in _poll(resumed, 1)] == [3]
    finally:
        watcher.close()
        resumed.close()


def test_producer_with_a_delivery_timeout(transport: Transport, unique: str) -> None:
    """The gateway's producer comes through the protocol (``delivery_timeout``), not by
    building a transport's own producer class: what it sends is confirmed and readable."""
    topic = f"cf.{unique}.gw"
    transport.ensure_topics([TopicSpec(topic, 1)])
    producer = transport.producer(delivery_timeout=5.0)
    try:
        producer.send(topic, b"accepted", b"k")
        producer.flush(10.0)
    finally:
        producer.close()
    reader = transport.consumer("", [topic])
    try:
        assert [(r.key, r.value) for r in _poll(reader, 1)] == [(b"k", b"accepted")]
    finally:
        reader.close()
