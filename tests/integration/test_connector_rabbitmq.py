"""The rabbitmq_publish step and the rabbitmq trigger against a real RabbitMQ broker
(Debian's rabbitmq-server on a free loopback port; see tests/integration/servers.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest

from streamflow.envelope import Envelope, decode_record
from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import TopicSpec, Transport
from streamflow.triggers.amqp import RabbitMQRunner
from streamflow.triggers.gateway import TriggerHost
from tests.integration.servers import free_port

MQ = {"amqp_url": {"type": "string", "secret": True}}


@pytest.fixture
async def amqp_connection(rabbitmq_url: str) -> AsyncIterator[Any]:
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def amqp(amqp_connection: Any) -> Any:
    """A plain aio-pika channel for setting up and checking queues."""
    return await amqp_connection.channel()


def name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def take(queue: Any, n: int, timeout: float = 20.0) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < deadline, f"got {len(out)} of {n} messages"
        msg = await queue.get(no_ack=True, fail=False)
        if msg is None:
            await asyncio.sleep(0.05)
            continue
        out.append(msg)
    return out


# --------------------------------------------------------------------------- publish


async def test_publish_waits_for_the_confirm_and_sets_the_properties(
    step_runner: Any, amqp: Any, rabbitmq_url: str
) -> None:
    exchange = await amqp.declare_exchange(name(), aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await amqp.declare_queue(name(), auto_delete=True)
    await queue.bind(exchange, "order.*")
    runner = await step_runner(
        f"""
        - id: notify
          type: rabbitmq_publish
          connection: mq
          exchange: {exchange.name}
          routing_key: order.${{payload.status}}
          body: {{order: "${{payload.id}}", total: "${{payload.total}}"}}
          headers: {{x-source: streamflow, x-order: "${{payload.id}}"}}
          correlation_id: ${{payload.id}}
        - id: text
          type: rabbitmq_publish
          connection: mq
          routing_key: {queue.name}
          body: "order ${{payload.id}}"
          format: text
          persistent: false
          message_id: fixed-1
        """,
        config=MQ,
        values={"amqp_url": rabbitmq_url},
        connections={"mq": {"type": "rabbitmq", "url": "${config.amqp_url}", "pool_size": 2}},
    )
    out = await runner.run("notify", {"id": "o-1", "status": "paid", "total": 12.5})
    assert out.result["confirmed"] is True
    assert out.result["routing_key"] == "order.paid"
    assert out.payload == {"id": "o-1", "status": "paid", "total": 12.5}
    await runner.run("text", {"id": "o-2"})
    first, second = await take(queue, 2)
    assert orjson.loads(first.body) == {"order": "o-1", "total": 12.5}
    assert first.headers == {"x-source": "streamflow", "x-order": "o-1"}
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert first.content_type == "application/json"
    assert first.correlation_id == "o-1"
    assert first.message_id == out.result["message_id"]
    assert first.message_id.endswith("-notify")
    assert second.body == b"order o-2"
    assert second.content_type == "text/plain"
    assert second.message_id == "fixed-1"
    assert second.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT


async def test_refused_publishes_fail_the_step(
    step_runner: Any, amqp: Any, rabbitmq_url: str
) -> None:
    exchange = await amqp.declare_exchange(name(), aio_pika.ExchangeType.DIRECT, auto_delete=True)
    queue = await amqp.declare_queue(name(), auto_delete=True)
    await queue.bind(exchange, "known")
    runner = await step_runner(
        [
            {"id": "unroutable", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
             "exchange": exchange.name, "routing_key": "nobody-listens"},
            {"id": "missing", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
             "exchange": "no-such-exchange", "routing_key": "x"},
            {"id": "ok", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
             "exchange": exchange.name, "routing_key": "known"},
            {"id": "not-mandatory", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
             "exchange": exchange.name, "routing_key": "nobody-listens", "mandatory": False},
            {"id": "big-header", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
             "exchange": exchange.name, "routing_key": "known", "headers": {"n": "${payload.n}"}},
        ],
        config=MQ,
        values={"amqp_url": rabbitmq_url},
    )  # fmt: skip
    with pytest.raises(PoisonMessageError, match="no queue is bound"):
        await runner.run("unroutable", {"n": 1})
    with pytest.raises(PoisonMessageError, match=r"NOT_FOUND|no-such-exchange"):
        await runner.run("missing", {"n": 2})
    # the channel the broker closed is replaced: the next publish works
    for _ in range(3):
        await runner.run("ok", {"n": 3})
    assert len(await take(queue, 3)) == 3
    out = await runner.run("not-mandatory", {"n": 4})  # dropped by the broker, by request
    assert out.result["confirmed"] is True
    with pytest.raises(PoisonMessageError):  # AMQP has no integer type that holds it
        await runner.run("big-header", {"n": 2**70})
    await runner.run("ok", {"n": 5})  # and the client still works
    assert len(await take(queue, 1)) == 1


async def test_an_unreachable_broker_is_retriable(step_runner: Any) -> None:
    runner = await step_runner(
        [{"id": "p", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
          "routing_key": "q", "timeout": "3s"}],
        config=MQ,
        values={"amqp_url": f"amqp://app:pw-123456@127.0.0.1:{free_port()}/"},
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("p", {})
    assert "pw-123456" not in str(info.value)


async def test_header_values_from_the_event_are_data_not_secrets(step_runner: Any) -> None:
    """Every rendered header value was added to the process-wide masker: an event's
    `x-customer: acme` masked "acme" in every later log line, and the masker grew with each
    event. Values the deployer wrote (config, text) are still masked."""
    from streamflow.util.secrets import PROCESS

    runner = await step_runner(
        [{"id": "p", "type": "rabbitmq_publish", "url": f"amqp://127.0.0.1:{free_port()}/",
          "routing_key": "q", "timeout": "3s",
          "headers": {"x-customer": "${payload.customer}", "x-api-key": "${config.key}"}}],
        config={"key": {"type": "string"}},
        values={"key": "deployer-key-4711"},
    )  # fmt: skip
    for customer in ("qzx-customer-1", "qzx-customer-2"):
        before = PROCESS.mask(f"order of {customer}")  # other tests' secrets may mask parts
        with pytest.raises(RetriableError):
            await runner.run("p", {"customer": customer})
        assert PROCESS.mask(f"order of {customer}") == before
        assert customer not in PROCESS._secrets  # the masker did not learn it
    assert PROCESS.mask("key deployer-key-4711") == "key ***"


def test_validate_errors_point_at_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """apiVersion: streamflow/v1
kind: Integration
name: bad
connections:
  db: {type: sqlite, path: x.db}
flows:
  - name: f
    trigger: {type: rabbitmq, url: "http://127.0.0.1/", queue: q}
    steps:
      - {id: p, type: rabbitmq_publish, connection: db, routing_key: x}
      - {id: q, type: rabbitmq_publish, routing_key: x}
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    text = str(info.value)
    assert "bad.yaml:8:" in text and "not an amqp:// or amqps:// URL" in text
    assert "bad.yaml:10:" in text and "connection 'db' is of type sqlite" in text
    assert "bad.yaml:11:" in text and "set url" in text


# --------------------------------------------------------------------------- trigger


def rabbit_integration(tmp_path: Path, queue: str, url: str, **extra: Any) -> Integration:
    path = tmp_path / f"{queue}.yaml"
    trigger = {"type": "rabbitmq", "connection": "mq", "queue": queue, **extra}
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {queue}
config:
  amqp_url: {{type: string, secret: true, default: ""}}
connections:
  mq: {{type: rabbitmq, url: "{url}"}}
flows:
  - name: orders
    partitions: 1
    trigger: {orjson.dumps(trigger).decode()}
    steps:
      - {{id: keep, type: transform, output: "${{payload}}"}}
"""
    )
    return load_integration(path)


def emitted(transport: Transport, integration: Integration) -> list[Envelope]:
    topic = compile_plan(integration).flows["orders"].first_topic
    return [decode_record(r) for r in transport.read_all(topic)]


def dead(transport: Transport, integration: Integration) -> list[Any]:
    return transport.read_all(compile_plan(integration).flows["orders"].dlq_topic)


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def publish(channel: Any, queue: str, bodies: list[bytes], **props: Any) -> None:
    for i, body in enumerate(bodies):
        msg = aio_pika.Message(body, message_id=f"m-{i}", **props)
        await channel.default_exchange.publish(msg, queue)


async def depth(connection: Any, queue: str) -> int:
    """Messages ready in ``queue`` (a fresh channel: a failed passive declare closes one)."""
    fresh = await connection.channel()
    try:
        declared = await fresh.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await fresh.close()


async def until_declared(connection: Any, queue: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await depth(connection, queue)
            return
        except aio_pika.exceptions.ChannelNotFoundEntity:
            assert time.monotonic() < deadline, f"queue {queue} was not declared"
            await asyncio.sleep(0.2)


async def test_trigger_emits_each_message_and_dead_letters_what_cannot_be_parsed(
    tmp_path: Path, amqp: Any, amqp_connection: Any, rabbitmq_url: str
) -> None:
    queue = name()
    integration = rabbit_integration(tmp_path, queue, rabbitmq_url, prefetch=5)
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    host = TriggerHost(integration, compile_plan(integration), transport, {})
    stop = asyncio.Event()
    task = asyncio.create_task(host.run(stop))
    try:
        await until_declared(amqp_connection, queue)  # the trigger declares it (durable)
        bodies = [orjson.dumps({"id": i}) for i in range(12)]
        bodies.insert(4, b"{not json")
        bodies.insert(9, b"\xff\xfe")
        bodies.insert(11, b'{"id": 123456789012345678901234567890}')  # beyond 64 bits: exact
        bodies.insert(12, b'{"a": ' * 300 + b"1" + b"}" * 300)  # parses; too deep to encode
        await publish(amqp, queue, bodies, headers={"x-tenant": "acme"})
        hostile = {  # every AMQP field type the payload cannot carry as is
            "x-bytes": bytearray(b"\xff\x00"),
            "x-decimal": Decimal("1.50"),
            "x-when": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
            "x-nested": {"list": [1, "a", None]},
        }
        await amqp.default_exchange.publish(
            aio_pika.Message(b'{"id": 99}', headers=hostile, message_id="m-h"), queue
        )
        await until(lambda: len(emitted(transport, integration)) >= 14)
        await until(lambda: len(dead(transport, integration)) >= 3)
        await asyncio.sleep(0.5)  # nothing more may come
        envs, dlq = emitted(transport, integration), dead(transport, integration)
        big = 123456789012345678901234567890
        assert [e.payload["id"] for e in envs] == [*range(9), big, 9, 10, 11, 99]
        assert envs[-1].trigger["headers"] == {
            "x-bytes": "\ufffd\x00",
            "x-decimal": "1.50",
            "x-when": "2026-01-01T00:00:00+00:00",
            "x-nested": {"list": [1, "a", None]},
        }
        assert len(dlq) == 3
        env = envs[0]
        assert env.trigger["type"] == "rabbitmq"
        assert env.trigger["queue"] == queue
        assert env.trigger["headers"] == {"x-tenant": "acme"}
        assert env.trigger["redelivered"] is False
        assert env.execution_id.startswith("orders-")  # derived from the message id
        assert sorted(r.value for r in dlq) == sorted(bodies[i] for i in (4, 9, 12))
        headers = dict(dlq[0].headers or [])
        assert headers["sf-origin-topic"] == f"amqp:{queue}".encode()
        assert b"not" in headers["sf-error"]
        assert await depth(amqp_connection, queue) == 0  # all acknowledged, none requeued
    finally:
        stop.set()
        await task
        transport.close()


async def test_nothing_is_acknowledged_before_the_flow_broker_has_it(
    tmp_path: Path, amqp: Any, amqp_connection: Any, rabbitmq_url: str
) -> None:
    """A worker whose flow broker is down gives every message back; once it stops (as if
    it died), another worker with a live broker emits them all (those it held: redelivered)."""
    queue = name()
    await amqp.declare_queue(queue, durable=True)
    integration = rabbit_integration(tmp_path, queue, rabbitmq_url, timeout="2s", prefetch=3)
    await publish(amqp, queue, [orjson.dumps({"id": i}) for i in range(6)])
    flow = integration.flows["orders"]
    ingress = FlowIngress(integration, flow, compile_plan(integration), {})

    down = open_transport(f"kafka://127.0.0.1:{free_port()}")  # nothing listens there
    runner = RabbitMQRunner(ingress, down, {})
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    deadline = time.monotonic() + 60
    while runner.given_back < 3:  # delivered, not confirmed (2s), handed back
        assert not task.done(), task.exception()
        assert time.monotonic() < deadline, "the messages were never handed back"
        await asyncio.sleep(0.1)
    stop.set()
    await task
    assert await depth(amqp_connection, queue) == 6  # nothing acknowledged, nothing lost

    live = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, live, {}).deploy()
    stop = asyncio.Event()
    task = asyncio.create_task(RabbitMQRunner(ingress, live, {}).run(stop))
    try:
        await until(lambda: len(emitted(live, integration)) >= 6)
        envs = emitted(live, integration)
        assert sorted(e.payload["id"] for e in envs) == list(range(6))
        # the first worker held `prefetch` (3) of them and gave them back
        assert sum(bool(e.trigger["redelivered"]) for e in envs) >= 3
        await asyncio.sleep(0.5)
        assert await depth(amqp_connection, queue) == 0
    finally:
        stop.set()
        await task
        live.close()


async def test_several_workers_share_the_queue(
    tmp_path: Path, amqp: Any, rabbitmq_url: str
) -> None:
    queue = name()
    await amqp.declare_queue(queue, durable=True)
    integration = rabbit_integration(tmp_path, queue, rabbitmq_url, prefetch=1)
    flow = integration.flows["orders"]
    ingress = FlowIngress(integration, flow, compile_plan(integration), {})
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    stop = asyncio.Event()
    runners = [RabbitMQRunner(ingress, transport, {}) for _ in range(2)]
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        deadline = time.monotonic() + 30
        while (await amqp.declare_queue(queue, passive=True)).declaration_result.consumer_count < 2:
            assert time.monotonic() < deadline, "the two consumers never attached"
            await asyncio.sleep(0.05)  # both consumers attached before anything is sent
        await publish(amqp, queue, [orjson.dumps({"id": i}) for i in range(40)])
        await until(lambda: len(emitted(transport, integration)) >= 40)
        envs = emitted(transport, integration)
        assert sorted(e.payload["id"] for e in envs) == list(range(40))
        counts = [r.emitted for r in runners]
        assert sum(counts) == 40
        assert all(counts), f"one worker took everything: {counts}"
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        transport.close()


async def test_a_refused_login_never_shows_the_password(
    tmp_path: Path, step_runner: Any, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Against the real broker: a wrong password fails the step (retriable: it may be
    rotated) and the trigger's start, and neither the errors nor the logs quote it."""
    caplog.set_level(logging.DEBUG)
    secret = "wr0ng-Passw0rd-XYZ"
    bad_url = rabbitmq_url.replace("guest:guest@", f"guest:{secret}@")
    runner = await step_runner(
        [{"id": "p", "type": "rabbitmq_publish", "url": "${config.amqp_url}",
          "routing_key": "q", "timeout": "5s"}],
        config=MQ,
        values={"amqp_url": bad_url},
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("p", {})
    assert secret not in str(info.value)

    integration = rabbit_integration(tmp_path, name(), "${config.amqp_url}")
    integration_config = {"amqp_url": bad_url}
    flow = integration.flows["orders"]
    ingress = FlowIngress(integration, flow, compile_plan(integration), integration_config)
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    try:
        with pytest.raises(RetriableError) as started:
            await RabbitMQRunner(ingress, transport, {}).run(asyncio.Event())
    finally:
        transport.close()
    assert secret not in str(started.value)
    assert secret not in caplog.text


@pytest.mark.kafka
async def test_a_message_kafka_refuses_is_dead_lettered_not_requeued_forever(
    tmp_path: Path, amqp: Any, amqp_connection: Any, rabbitmq_url: str, kafka_bootstrap: str
) -> None:
    """The flow's topic takes at most 10 kB: the broker answers, refuses the big events at
    delivery, the others go through; the big ones end on the DLQ (whole, or cut to 64 KiB
    when even the DLQ refuses them) and the queue is empty."""
    queue = name()
    integration = rabbit_integration(tmp_path, queue, rabbitmq_url, prefetch=10)
    transport = open_transport(f"kafka://{kafka_bootstrap}")
    plan = compile_plan(integration)
    first = plan.flows["orders"].first_topic
    transport.ensure_topics([TopicSpec(first, 1, {"max.message.bytes": "10000"})])
    App(integration, transport, {}).deploy()
    await amqp.declare_queue(queue, durable=True)
    noise = base64.b64encode(os.urandom(40_000)).decode()  # lz4 cannot shrink it
    big = orjson.dumps({"id": "big", "blob": noise})
    huge = orjson.dumps({"id": "huge", "blob": "y" * 3_000_000})  # beyond the DLQ's 1 MB
    bodies = [orjson.dumps({"id": i}) for i in range(3)]
    await publish(amqp, queue, [bodies[0], big, bodies[1], huge, bodies[2]])
    stop = asyncio.Event()
    task = asyncio.create_task(
        RabbitMQRunner(
            FlowIngress(integration, integration.flows["orders"], plan, {}), transport, {}
        ).run(stop)
    )
    try:
        await until(lambda: len(dead(transport, integration)) >= 2, timeout=90)
        await until(lambda: len(emitted(transport, integration)) >= 3, timeout=30)
        assert sorted(e.payload["id"] for e in emitted(transport, integration)) == [0, 1, 2]
        letters = {len(r.value): dict(r.headers or []) for r in dead(transport, integration)}
        assert sorted(letters) == [len(big), 65536]
        assert letters[65536]["sf-truncated"] == str(len(huge)).encode()
        await asyncio.sleep(0.5)
        assert await depth(amqp_connection, queue) == 0
    finally:
        stop.set()
        await task
        transport.close()
