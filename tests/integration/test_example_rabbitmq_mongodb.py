"""The example topologies/orders-rabbitmq-to-mongodb end to end against the real servers:
messages on RabbitMQ -> the rabbitmq trigger -> steps -> a MongoDB document -> a
confirmation on RabbitMQ. (Its flow tests cover only what happens before the servers.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
from pymongo import AsyncMongoClient

from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.values import resolve_config
from streamflow.transport import open_transport
from streamflow.triggers.gateway import TriggerHost

EXAMPLE = Path(__file__).resolve().parents[2] / "topologies" / "orders-rabbitmq-to-mongodb"


async def eventually(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


async def test_orders_flow_from_rabbitmq_into_mongodb(
    tmp_path: Path, rabbitmq_url: str, mongodb_url: str
) -> None:
    integration = load_integration(EXAMPLE / "integration.yaml")
    database = f"shop_{uuid.uuid4().hex[:8]}"
    config = resolve_config(
        integration.config,
        {"amqp_url": rabbitmq_url, "mongo_url": mongodb_url, "database": database},
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    app = App(integration, transport, config)
    app.deploy()
    host = TriggerHost(integration, app.plan, transport, config)
    connection = await aio_pika.connect(rabbitmq_url)
    client: Any = AsyncMongoClient(mongodb_url)
    stop = asyncio.Event()
    tasks = []
    try:
        channel = await connection.channel()
        orders = await channel.declare_queue("shop.orders", durable=True)
        stored = await channel.declare_queue("shop.orders.stored", durable=True)
        await orders.purge()
        await stored.purge()
        tasks = [asyncio.create_task(app.run(stop)), asyncio.create_task(host.run(stop))]
        bodies = [
            {"id": "o-1", "customer": "Ann@X.io", "total": 12.345, "items": [{"sku": "A"}]},
            {"id": "o-2", "customer": "bob@x.io", "total": 3, "items": []},  # filtered
            b"{oops",  # dead-lettered by the trigger
            {"id": "o-3", "customer": "Cy@x.io", "total": 7, "items": [{"sku": "B"}, {"sku": "C"}]},
            {"id": "o-1", "customer": "ann@x.io", "total": 15, "items": [{"sku": "A"}]},  # again
        ]
        for i, body in enumerate(bodies):
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            await channel.default_exchange.publish(
                aio_pika.Message(data, message_id=f"msg-{i}"), "shop.orders"
            )
            await asyncio.sleep(0.3)  # o-1 twice: the second after the first

        confirmations: list[Any] = []

        async def three() -> bool:
            msg = await stored.get(no_ack=True, fail=False)
            if msg is not None:
                confirmations.append(orjson.loads(msg.body))
            return len(confirmations) >= 3

        await eventually(three)
        assert sorted(confirmations, key=lambda c: (c["order_id"], c["total"])) == [
            {"order_id": "o-1", "total": 12.35, "created": True},
            {"order_id": "o-1", "total": 15, "created": False},
            {"order_id": "o-3", "total": 7, "created": True},
        ]
        docs = await client[database].orders.find({}, sort=[("_id", 1)]).to_list(None)
        assert docs == [
            {"_id": "o-1", "customer": "ann@x.io", "total": 15, "lines": 1, "revision": 2},
            {"_id": "o-3", "customer": "cy@x.io", "total": 7, "lines": 2, "revision": 1},
        ]
        dlq = app.plan.flows["store-orders"].dlq_topic
        dead = await asyncio.to_thread(transport.read_all, dlq)
        assert [r.value for r in dead] == [b"{oops"]
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.drop_database(database)
        await client.close()
        await connection.close()
        transport.close()
