"""The mongodb step and the poll trigger's mongodb source against a real server speaking
the MongoDB wire protocol: FerretDB v1 over SQLite (see tests/integration/servers.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport
from tests.integration.servers import free_port
from tests.integration.test_poll import emitted, poll_integration, poll_until

MONGO = {"mongo_url": {"type": "string", "secret": True}}


@pytest.fixture
async def mongo(mongodb_url: str) -> AsyncIterator[Any]:
    """A fresh database (dropped afterwards) through a plain PyMongo client."""
    client: Any = AsyncMongoClient(mongodb_url, tz_aware=True)
    name = f"t_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


async def runner_for(step_runner: Any, mongo: Any, mongodb_url: str, steps: str) -> Any:
    return await step_runner(
        steps,
        config=MONGO,
        values={"mongo_url": mongodb_url},
        connections={
            "mongo": {
                "type": "mongodb",
                "url": "${config.mongo_url}",
                "database": mongo.name,
                "max_pool_size": 4,
                "min_pool_size": 0,
                "max_idle_time": "1m",
                "acquire_timeout": "5s",
                "connect_timeout": "5s",
            }
        },
    )


async def test_insert_find_update_delete_aggregate(
    step_runner: Any, mongo: Any, mongodb_url: str
) -> None:
    runner = await runner_for(
        step_runner,
        mongo,
        mongodb_url,
        """
        - id: add
          type: mongodb
          connection: mongo
          collection: orders
          operation: insert_one
          document: ${payload}
        - id: add-many
          type: mongodb
          connection: mongo
          collection: orders
          operation: insert_many
          documents: ${payload.items}
        - id: find
          type: mongodb
          connection: mongo
          collection: orders
          filter: {status: "${payload.status}"}
          projection: {_id: 0, id: 1, total: 1}
          sort: {total: desc}
          limit: 2
        - id: one
          type: mongodb
          connection: mongo
          collection: orders
          operation: find_one
          filter: {id: "${payload.id}"}
        - id: upsert
          type: mongodb
          connection: mongo
          collection: orders
          operation: update_one
          filter: {id: "${payload.id}"}
          update: {$set: {status: "${payload.status}"}, $inc: {revision: 1}}
          upsert: true
        - id: close-all
          type: mongodb
          connection: mongo
          collection: orders
          operation: update_many
          filter: {status: paid}
          update: {$set: {closed: true}}
        - id: totals
          type: mongodb
          connection: mongo
          collection: orders
          operation: aggregate
          pipeline:
            - {$match: {status: "${payload.status}"}}
            - {$group: {_id: $status, sum: {$sum: $total}}}  # FerretDB v1: one accumulator
          replace_payload: true
        - id: drop
          type: mongodb
          connection: mongo
          collection: orders
          operation: delete_many
          filter: {status: "${payload.status}"}
        """,
    )
    out = await runner.run("add", {"id": "o-1", "status": "paid", "total": 10})
    assert len(out.result["inserted_id"]) == 24  # an ObjectId, as hex text
    items = [
        {"id": "o-2", "status": "paid", "total": 30},
        {"id": "o-3", "status": "paid", "total": 20},
        {"id": "o-4", "status": "open", "total": 5},
    ]
    out = await runner.run("add-many", {"items": items})
    assert out.result["count"] == 3
    out = await runner.run("find", {"status": "paid"})
    assert out.result == {
        "documents": [{"id": "o-2", "total": 30}, {"id": "o-3", "total": 20}],
        "count": 2,
    }
    out = await runner.run("one", {"id": "o-4"})
    assert out.result["status"] == "open" and "_id" in out.result
    out = await runner.run("upsert", {"id": "o-1", "status": "shipped"})
    assert out.result == {"matched": 1, "modified": 1, "upserted_id": None}
    out = await runner.run("upsert", {"id": "o-9", "status": "paid"})
    assert out.result["matched"] == 0 and len(out.result["upserted_id"]) == 24
    assert (await mongo.orders.find_one({"id": "o-9"}))["revision"] == 1
    out = await runner.run("close-all", {})
    assert out.result["matched"] == 3 and out.result["modified"] == 3
    out = await runner.run("totals", {"status": "paid"})
    assert out.payload == {"documents": [{"_id": "paid", "sum": 50}], "count": 1}
    out = await runner.run("drop", {"status": "paid"})
    assert out.result == {"deleted": 3}
    assert await mongo.orders.count_documents({}) == 2


async def test_event_data_never_becomes_an_operator(
    step_runner: Any, mongo: Any, mongodb_url: str
) -> None:
    await mongo.users.insert_many([{"email": "a@x.io", "role": "admin"}, {"email": "b@x.io"}])
    runner = await runner_for(
        step_runner,
        mongo,
        mongodb_url,
        """
        - id: login
          type: mongodb
          connection: mongo
          collection: users
          operation: find_one
          filter: {email: "${payload.email}"}
        """,
    )
    assert (await runner.run("login", {"email": "a@x.io"})).result["role"] == "admin"
    with pytest.raises(PoisonMessageError, match=r"operator '\$ne'"):
        await runner.run("login", {"email": {"$ne": None}})
    assert (await runner.run("login", {"email": "nobody"})).result is None


async def test_errors_are_classified(step_runner: Any, mongo: Any, mongodb_url: str) -> None:
    await mongo.people.create_index("email", unique=True)
    await mongo.people.insert_one({"email": "a@x.io"})
    runner = await runner_for(
        step_runner,
        mongo,
        mongodb_url,
        """
        - id: dup
          type: mongodb
          connection: mongo
          collection: people
          operation: insert_one
          document: {email: "${payload.email}"}
        - id: lookup
          type: mongodb
          connection: mongo
          collection: people
          operation: aggregate
          pipeline: [{$lookup: {from: x, localField: a, foreignField: b, as: c}}]
        - id: bad-doc
          type: mongodb
          connection: mongo
          collection: people
          operation: insert_one
          document: ${payload}
        """,
    )
    with pytest.raises(PoisonMessageError, match=r"(?i)duplicate"):
        await runner.run("dup", {"email": "a@x.io"})
    with pytest.raises(PoisonMessageError):  # FerretDB v1 does not implement $lookup
        await runner.run("lookup", {})
    with pytest.raises(PoisonMessageError, match="not a mapping"):
        await runner.run("bad-doc", [1, 2])
    with pytest.raises(PoisonMessageError, match="8-byte ints"):  # BSON has no bigger int
        await runner.run("bad-doc", {"n": 2**70})

    down = await step_runner(
        [{"id": "s", "type": "mongodb", "url": "${config.mongo_url}", "database": "d",
          "collection": "c", "connect_timeout": "1s"}],
        config=MONGO,
        values={"mongo_url": f"mongodb://app:pw-123456@127.0.0.1:{free_port()}/"},
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await down.run("s", {})
    assert "pw-123456" not in str(info.value)


def test_validate_errors_point_at_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """apiVersion: streamflow/v1
kind: Integration
name: bad
connections:
  mq: {type: rabbitmq, url: "amqp://127.0.0.1/"}
flows:
  - name: f
    trigger: {type: poll, mongodb: {connection: mq, collection: c}, every: 1s}
    steps:
      - {id: a, type: mongodb, connection: mq, collection: c}
      - {id: b, type: mongodb, url: "mongodb://h/db", collection: c, operation: update_one,
         update: {status: x}}
      - {id: c, type: mongodb, url: "mongodb://h/db", collection: c, operation: delete_many}
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    text = str(info.value)
    assert "bad.yaml:8:" in text and "unknown mongodb connection 'mq'" in text
    assert "bad.yaml:10:" in text and "connection 'mq' is of type rabbitmq" in text
    assert "bad.yaml:11:" in text and "use operators ($set" in text
    assert "bad.yaml:13:" in text and "empty filter touches every document" in text


# --------------------------------------------------------------------------- poll


async def test_poll_a_collection_with_a_date_cursor_across_restarts(
    tmp_path: Path, mongo: Any, mongodb_url: str
) -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    await mongo.orders.insert_many(
        [
            {"id": i, "status": "paid" if i != 2 else "open", "at": t0 + dt.timedelta(minutes=i)}
            for i in range(1, 5)
        ]
    )
    integration = poll_integration(
        tmp_path,
        f"mongo-{uuid.uuid4().hex[:6]}",
        f"""
      type: poll
      every: 200ms
      mongodb: {{url: "{mongodb_url}", database: {mongo.name}, collection: orders,
                filter: {{status: paid}}, projection: {{_id: 0}}, cursor_type: date}}
      cursor: {{field: at}}""",
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    try:
        envs = await poll_until(integration, transport, lambda e: len(e) >= 3)
        assert [e.payload["id"] for e in envs] == [1, 3, 4]
        assert envs[0].payload["at"] == "2026-01-01T00:01:00+00:00"
        assert envs[0].trigger["source"] == "mongodb"
        # a new document with the same time as the cursor, and a later one; then a restart
        await mongo.orders.insert_many(
            [
                {"id": 5, "status": "paid", "at": t0 + dt.timedelta(minutes=4)},
                {"id": 6, "status": "paid", "at": t0 + dt.timedelta(minutes=9)},
            ]
        )
        envs = await poll_until(integration, transport, lambda e: len(e) >= 5)
        assert [e.payload["id"] for e in envs] == [1, 3, 4, 5, 6]
        envs = await poll_until(integration, transport, lambda e: len(e) >= 5, timeout=5)
        assert len(await asyncio.to_thread(emitted, transport, integration)) == 5
    finally:
        transport.close()
