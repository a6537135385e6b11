"""A webhook request repeated with the same ``Idempotency-Key`` runs the flow once: on
both transports with the default memory store, across two gateways with a Redis store,
and a request the broker did not confirm (503) leaves the key free for the retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.values import resolve_config
from streamflow.transport import open_transport
from streamflow.triggers.gateway import Gateway
from tests.integration.test_gateway import (
    ORDER_SCHEMA,
    SECRET,
    TOKEN,
    Running,
    both,
    gateway,
    topology_text,
    wait_for,
)

__all__ = ["gateway"]  # the fixture, used by name


@both
async def test_a_repeated_idempotency_key_runs_the_flow_once(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway(agents=True)
    order = {"id": "o-7", "amount": 3}
    first = await gw.post_order(order, **{"Idempotency-Key": "pay-7"})
    assert first.status == 202
    body = await first.json()
    assert "duplicate" not in body
    again = await gw.post_order(order, **{"Idempotency-Key": "pay-7"})
    assert again.status == 202
    assert await again.json() == {"execution_id": body["execution_id"], "duplicate": True}

    def completed() -> list[Any]:
        return [
            e for e in gw.events()
            if e.execution_id == body["execution_id"] and e.event == "completed"
        ]  # fmt: skip

    await wait_for(completed)
    other = await gw.post_order(order, **{"Idempotency-Key": "pay-8"})
    assert other.status == 202 and "duplicate" not in await other.json()
    await wait_for(lambda: len(gw.records("orders")) >= 2)
    await asyncio.sleep(0.5)
    assert len(gw.records("orders")) == 2  # pay-7 once, pay-8 once
    assert len(completed()) == 1
    plain = [await gw.post_order(order) for _ in range(2)]  # no key: each one runs
    assert {(await r.json()).get("duplicate") for r in plain} == {None}
    await wait_for(lambda: len(gw.records("orders")) >= 4)


@pytest.mark.parametrize("broker_url", ["local"], indirect=True)
async def test_concurrent_repeats_produce_one_event(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway()
    order = {"id": "o-8", "amount": 1}
    responses = await asyncio.gather(
        *(gw.post_order(order, **{"Idempotency-Key": "same"}) for _ in range(6))
    )
    statuses = sorted(r.status for r in responses)
    assert set(statuses) <= {202, 409}, statuses
    fresh = [r for r in responses if r.status == 202 and "duplicate" not in await r.json()]
    assert len(fresh) == 1
    for r in responses:
        if r.status == 409:
            assert r.headers["Retry-After"] == "1"
    assert len(gw.records("orders")) == 1


async def test_a_503_leaves_the_key_free_for_the_retry(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text(json.dumps(ORDER_SCHEMA))
    path = tmp_path / "integration.yaml"
    path.write_text(topology_text("gw-idem-down"))
    integration = load_integration(path)
    config = resolve_config(integration.config, {"webhook_secret": SECRET, "api_token": TOKEN})
    transport = open_transport("kafka://127.0.0.1:1")  # nothing listens there
    gw = Gateway(
        integration, transport, config, flows=["orders"], produce_timeout=2.0, triggers=False
    )
    gw.instances = lambda _: None
    port = await gw.start("127.0.0.1", 0)
    running = Running(
        f"http://127.0.0.1:{port}", integration, transport, gw, aiohttp.ClientSession()
    )
    try:
        for _ in range(2):  # not 409, not "duplicate": the key was released
            resp = await running.post_order({"id": "o-1", "amount": 1}, **{"Idempotency-Key": "k"})
            assert resp.status == 503
    finally:
        await running.session.close()
        await gw.stop()


SHARED = """apiVersion: streamflow/v1
kind: Integration
name: idem-shared
config:
  redis_url: {type: string, secret: true}
connections:
  cache: {type: redis, url: "${config.redis_url}"}
flows:
  - name: orders
    trigger:
      type: webhook
      idempotency: {ttl: 1h, store: redis, connection: cache}
    steps:
      - {id: keep, type: transform, output: "${payload}"}
"""


async def test_two_gateways_share_the_keys_in_redis(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text(SHARED)
    integration = load_integration(path)
    config = resolve_config(integration.config, {"redis_url": redis_url})
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, config).deploy()
    gateways = [Gateway(integration, transport, config, triggers=False) for _ in range(2)]
    ports = [await g.start("127.0.0.1", 0) for g in gateways]
    key = {"Idempotency-Key": f"shared-{tmp_path.name}"}
    try:
        async with aiohttp.ClientSession() as session:
            answers = []
            for port in ports:
                url = f"http://127.0.0.1:{port}/webhooks/idem-shared/orders"
                async with session.post(url, json={"n": 1}, headers=key) as resp:
                    answers.append((resp.status, await resp.json()))
        assert answers[0][0] == answers[1][0] == 202
        assert "duplicate" not in answers[0][1]
        assert answers[1][1] == {"execution_id": answers[0][1]["execution_id"], "duplicate": True}
        topic = gateways[0].plan.flows["orders"].first_topic
        assert len(transport.read_all(topic)) == 1
    finally:
        for g in gateways:
            await g.stop()
        transport.close()
