"""The webhook gateway with real HTTP clients: a running ``Gateway`` on loopback, the
flow's agents beside it, and the broker read back to check what was (not) produced.

Each refused request (401, 405, 413, 400, 422) must leave the flow's first topic and the
executions topic empty; an accepted one (202) must run to completion. The core cases run
on both transports (``broker_url``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamflow.envelope import decode_record
from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.values import resolve_config
from streamflow.transport import open_transport
from streamflow.transport.base import Record, Transport
from streamflow.triggers.gateway import Gateway, has_sync_webhooks

SECRET = "s3cret-webhook-key"
TOKEN = "tok-123456"

ORDER_SCHEMA = {
    "type": "object",
    "required": ["id", "amount"],
    "properties": {"id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}},
}


def topology_text(name: str) -> str:
    return f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
config:
  webhook_secret: {{type: string, secret: true}}
  api_token: {{type: string, secret: true}}
flows:
  - name: orders
    partitions: 2
    trigger:
      type: webhook
      signature:
        header: X-Signature
        secret: ${{config.webhook_secret}}
        prefix: "sha256="
        timestamp_header: X-Timestamp
        tolerance: 60s
      schema: schemas/order.json
      max_body: 2048
    steps:
      - id: shape
        type: transform
        output:
          order: ${{payload.id}}
          total: ${{payload.amount}}
          via: ${{trigger.method}}
  - name: echo
    partitions: 1
    trigger:
      type: webhook
      methods: [POST, PUT]
      response: sync
      timeout: 30s
      auth: {{type: bearer, token: "${{config.api_token}}"}}
    steps:
      - id: double
        type: transform
        output: {{doubled: "${{payload.n * 2}}"}}
"""


@dataclass
class Running:
    base: str
    integration: Integration
    transport: Transport
    gateway: Gateway
    session: aiohttp.ClientSession

    def topic(self, flow: str) -> str:
        return self.gateway.plan.flows[flow].first_topic

    def records(self, flow: str) -> list[Record]:
        return self.transport.read_all(self.topic(flow))

    def events(self) -> list[ExecutionEvent]:
        recs = self.transport.read_all(self.gateway.plan.executions_topic)
        return [e for r in recs for e in decode_all(r.value)]

    async def post_order(
        self, doc: Any, *, secret: str = SECRET, stamp: float | None = None, **headers: str
    ) -> aiohttp.ClientResponse:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        ts = str(int(time.time() if stamp is None else stamp))
        sig = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        hdrs = {
            "Content-Type": "application/json",
            "X-Timestamp": ts,
            "X-Signature": f"sha256={sig}",
            **headers,
        }
        name = self.integration.name
        return await self.session.post(
            f"{self.base}/webhooks/{name}/orders", data=body, headers=hdrs
        )


async def wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


@pytest.fixture
async def gateway(
    broker_url: str, tmp_path: Path, unique: str
) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """``running = await gateway(agents=True)``: a gateway (and agents) on the broker."""
    stack: list[Callable[[], Awaitable[None]]] = []

    async def start(*, agents: bool = False, **options: Any) -> Running:
        (tmp_path / "schemas").mkdir(exist_ok=True)
        (tmp_path / "schemas" / "order.json").write_text(json.dumps(ORDER_SCHEMA))
        path = tmp_path / "integration.yaml"
        path.write_text(topology_text(f"gw-{unique}"))
        integration = load_integration(path)
        config = resolve_config(integration.config, {"webhook_secret": SECRET, "api_token": TOKEN})
        transport = open_transport(broker_url)
        # as `serve` does: `completed` events carry the output sync webhooks answer with
        app_options = AppOptions(trace_payloads=has_sync_webhooks(integration))
        app = App(integration, transport, config, app_options)
        await asyncio.to_thread(app.deploy)
        gw = Gateway(integration, transport, config, **options)
        port = await gw.start("127.0.0.1", 0)
        session = aiohttp.ClientSession()
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop)) if agents else None

        async def close() -> None:
            stop.set()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            await session.close()
            await gw.stop()
            transport.close()

        stack.append(close)
        return Running(f"http://127.0.0.1:{port}", integration, transport, gw, session)

    yield start
    for close in reversed(stack):
        await close()


both = pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
local = pytest.mark.parametrize("broker_url", ["local"], indirect=True)


@both
async def test_a_signed_valid_request_is_accepted_and_its_execution_completes(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway(agents=True)
    resp = await gw.post_order({"id": "o-1", "amount": 12.5}, **{"X-Trace": "abc"})
    assert resp.status == 202, await resp.text()
    execution_id = (await resp.json())["execution_id"]

    def completed() -> ExecutionEvent | None:
        return next(
            (e for e in gw.events() if e.execution_id == execution_id and e.event == "completed"),
            None,
        )

    await wait_for(completed)
    [rec] = gw.records("orders")
    env = decode_record(rec)
    assert env.execution_id == execution_id
    assert env.payload == {"id": "o-1", "amount": 12.5}
    assert env.trigger["type"] == "webhook"
    assert env.trigger["method"] == "POST"
    assert env.trigger["path"] == f"/webhooks/{gw.integration.name}/orders"
    assert env.trigger["headers"]["x-trace"] == "abc"
    assert "x-signature" not in env.trigger["headers"]


@both
async def test_refused_requests_produce_nothing(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway()
    good = {"id": "o-2", "amount": 3}

    wrong_secret = await gw.post_order(good, secret="not-the-secret")
    assert wrong_secret.status == 401
    stale = await gw.post_order(good, stamp=time.time() - 3600)
    assert stale.status == 401
    assert "timestamp" in (await stale.json())["error"]

    invalid = await gw.post_order({"id": 7, "amount": -1})
    assert invalid.status == 422
    errors = (await invalid.json())["errors"]
    assert {e["path"] for e in errors} == {"/id", "/amount"}
    assert any("is not of type 'string'" in e["message"] for e in errors)

    too_large = await gw.post_order({"id": "o-3", "amount": 1, "pad": "x" * 4000})
    assert too_large.status == 413

    not_json = await gw.post_order(b"{not json")
    assert not_json.status == 400
    latin = await gw.post_order(b'{"id": "\xe9"}')  # e.g. sent with charset=latin-1
    assert latin.status == 400 and "not UTF-8 (byte 8)" in (await latin.json())["error"]

    name = gw.integration.name
    wrong_method = await gw.session.put(f"{gw.base}/webhooks/{name}/orders", json=good)
    assert wrong_method.status == 405
    assert wrong_method.headers["Allow"] == "POST"

    assert gw.records("orders") == []
    assert gw.events() == []


@local
async def test_an_oversized_body_without_content_length_is_refused(
    gateway: Callable[..., Awaitable[Running]], broker_url: str
) -> None:
    gw = await gateway()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000  # chunked transfer: the size is known only while reading

    name = gw.integration.name
    resp = await gw.session.post(f"{gw.base}/webhooks/{name}/orders", data=chunks())
    assert resp.status == 413
    assert gw.records("orders") == []


@local
async def test_bearer_auth_and_a_sync_response(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway(agents=True)
    url = f"{gw.base}/webhooks/{gw.integration.name}/echo"
    missing = await gw.session.post(url, json={"n": 1})
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = await gw.session.post(url, json={"n": 1}, headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert gw.records("echo") == []

    resp = await gw.session.put(url, json={"n": 21}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "completed"
    assert body["output"] == {"doubled": 42}
    [rec] = gw.records("echo")
    assert "authorization" not in decode_record(rec).trigger["headers"]


@local
async def test_an_idempotency_key_keeps_the_execution_id(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    gw = await gateway()
    first = await gw.post_order({"id": "o-9", "amount": 1}, **{"Idempotency-Key": "k-1"})
    again = await gw.post_order({"id": "o-9", "amount": 1}, **{"Idempotency-Key": "k-1"})
    other = await gw.post_order({"id": "o-9", "amount": 1}, **{"Idempotency-Key": "k-2"})
    ids = [(await r.json())["execution_id"] for r in (first, again, other)]
    assert ids[0] == ids[1] != ids[2]


@local
async def test_routes_probes_and_metrics(gateway: Callable[..., Awaitable[Running]]) -> None:
    gw = await gateway()
    s, name = gw.session, gw.integration.name
    assert (await s.get(f"{gw.base}/healthz")).status == 200
    ready = await s.get(f"{gw.base}/readyz")
    assert ready.status == 200, await ready.text()
    assert (await s.post(f"{gw.base}/webhooks/{name}/nope", json={})).status == 404
    assert (await s.post(f"{gw.base}/webhooks/other/orders", json={})).status == 404
    unknown = await s.post(f"{gw.base}/webhooks/acme/{name}/orders", json={})
    assert unknown.status == 404
    assert "unknown instance" in (await unknown.json())["error"]
    await gw.post_order({"id": 1})  # 422
    metrics = await (await s.get(f"{gw.base}/metrics")).text()
    assert f'streamflow_gateway_requests_total{{route="{name}/orders",status="422"}} 1.0' in metrics


@local
async def test_an_instance_url_uses_the_instance_config(
    gateway: Callable[..., Awaitable[Running]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamflow.instances.store import deploy_instance
    from streamflow.instances.vault import ENV_KEY, new_key

    monkeypatch.setenv(ENV_KEY, new_key())
    gw = await gateway()
    other_secret = "acme-own-secret"
    await asyncio.to_thread(
        deploy_instance,
        gw.transport,
        gw.integration,
        "acme",
        {"webhook_secret": other_secret, "api_token": "x-token"},
    )
    name = gw.integration.name
    url = f"{gw.base}/webhooks/acme/{name}/orders"
    body = json.dumps({"id": "a-1", "amount": 2}).encode()
    ts = str(int(time.time()))

    def signed(secret: str) -> dict[str, str]:
        mac = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return {
            "X-Timestamp": ts,
            "X-Signature": f"sha256={mac}",
            "Content-Type": "application/json",
        }

    async def accepted() -> bool:
        resp = await gw.session.post(url, data=body, headers=signed(other_secret))
        return resp.status == 202

    deadline = time.monotonic() + 30
    while not await accepted():  # the gateway follows sf.instances in the background
        assert time.monotonic() < deadline, "the instance never became known"
        await asyncio.sleep(0.2)
    wrong = await gw.session.post(url, data=body, headers=signed(SECRET))
    assert wrong.status == 401  # the integration's secret is not the instance's
    [rec] = gw.records("orders")
    assert decode_record(rec).instance == "acme"


@pytest.mark.kafka
async def test_an_unreachable_broker_answers_503_and_not_ready(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "order.json").write_text(json.dumps(ORDER_SCHEMA))
    path = tmp_path / "integration.yaml"
    path.write_text(topology_text("gw-down"))
    integration = load_integration(path)
    config = resolve_config(integration.config, {"webhook_secret": SECRET, "api_token": TOKEN})
    transport = open_transport("kafka://127.0.0.1:1")  # nothing listens there
    gw = Gateway(
        integration, transport, config, flows=["orders"], produce_timeout=3.0, triggers=False
    )
    gw.instances = lambda _: None  # no sf.instances to follow on a dead broker
    port = await gw.start("127.0.0.1", 0)
    running = Running(
        f"http://127.0.0.1:{port}", integration, transport, gw, aiohttp.ClientSession()
    )
    try:
        ready = await running.session.get(f"{running.base}/readyz")
        assert ready.status == 503
        resp = await running.post_order({"id": "o-1", "amount": 1})
        assert resp.status == 503
        assert "nothing was accepted" in (await resp.json())["error"]
    finally:
        await running.session.close()
        await gw.stop()


def test_webhook_config_problems_are_validation_errors(tmp_path: Path) -> None:
    from streamflow.errors import ValidationFailed

    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "bad.json").write_text('{"type": "no-such-type"}')
    for trigger, message in [
        ("{type: webhook, schema: schemas/missing.json}", "cannot read schema file"),
        ("{type: webhook, schema: schemas/bad.json}", "not a valid JSON Schema"),
        ("{type: webhook, schema: ../outside.json}", "outside the topology's folder"),
        ("{type: webhook, auth: {type: bearer}}", "needs `token`"),
        ("{type: webhook, signature: {header: 'X Sig', secret: x}}", "not an HTTP header"),
    ]:
        path = tmp_path / "t.yaml"
        path.write_text(
            "apiVersion: streamflow/v1\nkind: Integration\nname: t\nflows:\n"
            f"  - name: f\n    trigger: {trigger}\n"
            "    steps: [{id: s, type: transform, output: '${payload}'}]\n"
        )
        with pytest.raises(ValidationFailed, match=message):
            load_integration(path)


@local
async def test_webhook_numbers_are_exact_through_a_sync_answer(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    """BH06: a 30-digit integer and an 18-digit decimal cross the webhook, the envelope, an
    expression and the sync answer with every digit."""
    gw = await gateway(agents=True)
    url = f"{gw.base}/webhooks/{gw.integration.name}/echo"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for sent, answered in (
        (b'{"n":123456789012345678901234567890}', b'"doubled":246913578024691357802469135780'),
        (b'{"n":1234567890123456.78}', b'"doubled":2469135780246913.56'),
        (b'{"n":18446744073709551615}', b'"doubled":36893488147419103230'),
    ):
        resp = await gw.session.post(url, data=sent, headers=headers)
        assert resp.status == 200, await resp.text()
        assert answered in await resp.read()


@local
async def test_a_timestamp_that_is_not_unix_seconds_is_refused(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    """BH08: the window check cannot be skipped with nan, inf or another non-number."""
    gw = await gateway()
    body = json.dumps({"id": "o-9", "amount": 1}).encode()
    for stamp in ("nan", "NaN", "inf", "-inf", "Infinity", "1e9", "0x10", "", " ", "1_700", "-5"):
        sig = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        resp = await gw.session.post(
            f"{gw.base}/webhooks/{gw.integration.name}/orders",
            data=body,
            headers={"Content-Type": "application/json", "X-Timestamp": stamp,
                     "X-Signature": f"sha256={sig}"},
        )  # fmt: skip
        assert resp.status == 401, stamp
    assert gw.records("orders") == []


@local
async def test_content_types_the_gateway_does_not_read_get_415(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    """F7: JSON is read from application/json and application/*+json only."""
    gw = await gateway(agents=True)
    doc = {"id": "o-7", "amount": 3}
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x"):
        resp = await gw.post_order(doc, **{"Content-Type": ctype})
        assert resp.status == 415, ctype
        assert "application/json" in (await resp.json())["error"]
    url = f"{gw.base}/webhooks/{gw.integration.name}/echo"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # no Content-Type at all (aiohttp sends none for bytes without a header)
    resp = await gw.session.post(
        url, data=b'{"n": 1}', headers=auth, skip_auto_headers=["Content-Type"]
    )
    assert resp.status == 415
    resp = await gw.session.post(
        url, data=b'{"n": 2}', headers={**auth, "Content-Type": "application/vnd.api+json"}
    )
    assert resp.status == 200
    assert (await resp.json())["output"] == {"doubled": 4}
    assert gw.records("orders") == []


@local
async def test_form_values_are_typed_by_the_flow_schema(
    gateway: Callable[..., Awaitable[Running]],
) -> None:
    """F7: `amount=12.5` in a form is the number the schema asks for, so the order is
    accepted as JSON would be; a value that is not a number is a 422 naming the field."""
    gw = await gateway()
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = await gw.post_order(b"id=o-5&amount=12.5", **form)
    assert resp.status == 202, await resp.text()
    bad = await gw.post_order(b"id=o-6&amount=lots", **form)
    assert bad.status == 422
    assert (await bad.json())["errors"][0]["path"] == "/amount"
    huge = await gw.post_order(b"id=o-7&amount=1e400", **form)  # was a 500 (and ".5" too)
    assert huge.status == 422 and (await huge.json())["errors"][0]["path"] == "/amount"
    latin = await gw.post_order(b"id=%ff%fe&amount=1", **form)  # %-escapes that are not UTF-8
    assert latin.status == 400
    [rec] = gw.records("orders")
    assert decode_record(rec).payload == {"id": "o-5", "amount": 12.5}


def test_form_bodies_keep_repeated_keys_and_type_by_schema() -> None:
    from streamflow.triggers.webhook import form_payload

    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"}, "big": {"type": "integer"}, "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "ids": {"type": "array", "items": {"type": "integer"}}, "name": {"type": "string"},
        },
    }  # fmt: skip
    pairs = [("n", "7"), ("big", "123456789012345678901234567890"), ("ok", "true"),
             ("tags", "a"), ("ids", "1"), ("ids", "2"), ("name", "42"),
             ("x", "1"), ("x", "2")]  # fmt: skip
    assert form_payload(pairs, schema) == {
        "n": 7, "big": 123456789012345678901234567890, "ok": True, "tags": ["a"],
        "ids": [1, 2], "name": "42", "x": ["1", "2"],
    }  # fmt: skip
    assert form_payload([("a", "1"), ("a", "2"), ("b", "3")], None) == {"a": ["1", "2"], "b": "3"}
    # numbers outside JSON's grammar convert (or stay text for the 422), never raise
    numbers = {"type": "object", "properties": {"v": {"type": "number"}}}
    for text, value in ((".5", 0.5), ("-.5", -0.5), ("007", 7), ("+2.50", 2.5), ("1e3", 1000.0),
                        ("1e400", "1e400"), ("0.10000000000000000001", None)):  # fmt: skip
        got = form_payload([("v", text)], numbers)["v"]
        if value is None:
            assert str(got) == text and not isinstance(got, float | str)  # exact Decimal
        else:
            assert got == value and type(got) is type(value), (text, got)
