"""The gateway: webhooks in, envelopes out; and the schedule, poll and file triggers.

``streamflow serve`` runs it beside the agents; ``streamflow gateway`` runs it alone, so
the HTTP front can scale apart from the workers. Routes::

    POST /webhooks/<integration>/<flow>              a flow with a webhook trigger
    POST /webhooks/<instance>/<integration>/<flow>   the same, for one instance
    GET  /healthz   liveness          GET /readyz   broker reachable (503 if not)
    GET  /metrics   Prometheus
    /console/, /api/v1/...   the console and its API, when STREAMFLOW_CONSOLE_TOKEN is set
                             (see ``console.py``)

A request with an ``Idempotency-Key`` already accepted (within the trigger's
``idempotency.ttl``, in its store: memory, or Redis shared by every gateway) is answered
``202 {"execution_id", "duplicate": true}`` and not produced again; while the first is
still being produced a repeat gets ``409`` (retry). A key is recorded only once its
envelope is confirmed, so a request answered 503 may be retried with the same key.

A webhook is acknowledged only after the broker confirmed its envelope: accepted
requests are queued to one ``Publisher`` that sends a batch and flushes it, and each
request's answer waits for its batch (``202 {"execution_id"}``). Refused requests (401,
405, 413, 400, 422) never reach the producer; a failed flush answers 503. On Kafka the
gateway's producer gives up on a message (``message.timeout.ms``) before the gateway
stops waiting for it, so a 503 is never followed by a late delivery.

Every gateway process also runs the leader-elected triggers (``TriggerHost``): each
schedule, poll or file trigger fires in one process only (see ``lease.py``). A
``rabbitmq`` trigger has no leader: every gateway process consumes its queue (``amqp.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from aiohttp import web

from streamflow import exactjson
from streamflow.connectors.stores import Store, open_store
from streamflow.envelope import Envelope
from streamflow.errors import RetriableError, StreamFlowError
from streamflow.errtext import describe
from streamflow.ingress import FlowIngress
from streamflow.instances import store as instance_store
from streamflow.instances.store import InstanceTable
from streamflow.observability.metrics import GATEWAY_REQUESTS, GATEWAY_SECONDS, TRIGGER_FIRINGS
from streamflow.steps.base import Resources
from streamflow.topology.models import Flow, Integration
from streamflow.topology.plan import Plan, compile_plan
from streamflow.topology.triggers import WebhookTrigger
from streamflow.transport.base import MessageRejected, Transport
from streamflow.triggers.amqp import RabbitMQRunner
from streamflow.triggers.console import Console, ConsoleConfig
from streamflow.triggers.filewatch import FileRunner
from streamflow.triggers.http import HttpSite, add_probe_routes, serve_app
from streamflow.triggers.lease import envelope_messages
from streamflow.triggers.poller import PollRunner
from streamflow.triggers.publish import ExecutionWatcher, Publisher, gateway_producer
from streamflow.triggers.s3watch import S3Runner
from streamflow.triggers.schedule import ScheduleRunner
from streamflow.triggers.streams import StreamRunner
from streamflow.triggers.webhook import Refusal, WebhookEndpoint
from streamflow.util.secrets import MASK, Masker

log = logging.getLogger("streamflow.gateway")
InstanceConfig = Callable[[str], Mapping[str, Any] | None]
"""instance id -> that instance's config values for this integration, or None (unknown)."""


class TriggerRunner(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


RUNNERS: dict[str, Callable[[FlowIngress, Transport, dict[str, str]], TriggerRunner]] = {
    "schedule": ScheduleRunner,
    "poll": PollRunner,
    "file": FileRunner,
    "s3": S3Runner,
    "sse": StreamRunner,
    "websocket": StreamRunner,
    "rabbitmq": RabbitMQRunner,  # no leader: every process consumes the queue
}
# trigger types without a runner here, and what runs them instead; with RUNNERS, every
# registered trigger type (tests/unit/test_registry.py checks both against the registry)
RUN_ELSEWHERE: dict[str, str] = {
    "webhook": "the gateway's HTTP front (webhook.py)",
    "kafka": "the flow's trigger agent (runtime/trigger.py)",
    "deploy": "`streamflow instance deploy` (instances/)",
    "remove": "`streamflow instance remove` (instances/)",
    "manual": "`streamflow run` / `produce` feed the flow themselves",
}
READY_TIMEOUT = 2.0


def has_sync_webhooks(integration: Integration) -> bool:
    return any(
        isinstance(f.trigger, WebhookTrigger) and f.trigger.response == "sync"
        for f in integration.flows.values()
    )


def manual_trigger(flow: Flow) -> dict[str, Any]:
    """What ``trigger`` holds for an event fed by ``produce``/``run``: the shape of the
    flow's real trigger (so ``${trigger.*}`` expressions resolve), marked manual."""
    kind = flow.trigger.type
    now = time.time_ns() // 1_000_000
    shapes: dict[str, dict[str, Any]] = {
        "webhook": {"method": "POST", "path": "", "headers": {}, "query": {}},
        "schedule": {"tick": "", "epoch": now // 1000, "fired_ms": now, "late_ms": 0},
        "poll": {"source": _poll_source(flow)},
        "file": {"path": "", "name": "", "size": 0, "sha256": "", "modified": ""},
        "s3": {"bucket": "", "key": "", "etag": ""},
        "sse": {"url": "", "event": "message", "id": None},
        "websocket": {"url": "", "binary": False},
        "kafka": {
            "topic": getattr(flow.trigger, "topic", ""),
            "partition": -1,
            "offset": -1,
            "key": None,
            "timestamp_ms": now,
        },
        "rabbitmq": {
            "queue": getattr(flow.trigger, "queue", ""),
            "exchange": "",
            "routing_key": "",
            "message_id": None,
            "correlation_id": None,
            "content_type": None,
            "headers": {},
            "redelivered": False,
            "timestamp": None,
        },
    }
    return {"type": kind, **shapes.get(kind, {}), "manual": True}


def _poll_source(flow: Flow) -> str:
    for source in ("http", "mongodb"):
        if getattr(flow.trigger, source, None) is not None:
            return source
    return "sql"


class TriggerHost:
    """Runs the schedule, poll and file triggers of an integration, each restarted (with
    backoff) if it fails."""

    def __init__(
        self,
        integration: Integration,
        plan: Plan,
        transport: Transport,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        flows: Sequence[str] = (),
    ) -> None:
        self.factories: list[tuple[str, Callable[[], TriggerRunner]]] = []
        for flow in integration.flows.values():
            runner = RUNNERS.get(flow.trigger.type)
            if runner is None or (flows and flow.name not in flows):
                continue
            ingress = FlowIngress(integration, flow, plan, config)

            def make(
                r: Callable[[FlowIngress, Transport, dict[str, str]], TriggerRunner] = runner,
                i: FlowIngress = ingress,
            ) -> TriggerRunner:
                return r(i, transport, dict(env or {}))

            make()  # build once now: a bad config (e.g. a poll query) refuses to start
            self.factories.append((flow.name, make))

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._supervise(name, make, stop) for name, make in self.factories))

    @staticmethod
    async def _supervise(name: str, make: Callable[[], TriggerRunner], stop: asyncio.Event) -> None:
        backoff = 1.0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await make().run(stop)
            except Exception:
                log.exception("trigger of flow %s failed; restarting in %.0fs", name, backoff)
            if stop.is_set():
                return
            backoff = 1.0 if time.monotonic() - started > 60 else min(backoff * 2, 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff)


class Gateway:
    """The HTTP front of one integration plus its leader-elected triggers."""

    def __init__(
        self,
        integration: Integration,
        transport: Transport,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        flows: Sequence[str] = (),
        instances: InstanceConfig | None = None,
        produce_timeout: float = 10.0,
        triggers: bool = True,
        console: ConsoleConfig | None = None,
    ) -> None:
        self.integration = integration
        self.transport = transport
        self.config = dict(config)
        self.env = dict(env or {})
        self.plan = compile_plan(integration)
        self.instances = instances
        self.table: InstanceTable | None = None
        self.produce_timeout = produce_timeout
        self.webhooks: dict[str, FlowIngress] = {}
        self.endpoints: dict[tuple[str, str], WebhookEndpoint] = {}
        for flow in integration.flows.values():
            if flows and flow.name not in flows:
                continue
            if isinstance(flow.trigger, WebhookTrigger):
                ingress = FlowIngress(integration, flow, self.plan, self.config)
                self.webhooks[flow.name] = ingress
                try:
                    self.endpoints[("", flow.name)] = WebhookEndpoint(ingress, self.env)
                except ValueError as exc:  # e.g. no secret outside instances
                    log.warning("%s: only instance URLs are served (%s)", flow.name, exc)
        self.host = (
            TriggerHost(integration, self.plan, transport, self.config, env=self.env, flows=flows)
            if triggers
            else None
        )
        first = next(iter(self.webhooks.values()), None)
        self.ready_topic = (
            self.plan.flows[first.flow.name].first_topic if first else self.plan.executions_topic
        )
        self.publisher: Publisher | None = None
        self.watcher: ExecutionWatcher | None = None
        self.site: HttpSite | None = None
        self.stop_triggers = asyncio.Event()
        self.trigger_task: asyncio.Task[None] | None = None
        self.instance_task: asyncio.Task[None] | None = None
        self.resources = Resources()  # idempotency stores
        self.masker = Masker()
        self._probe_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-gateway-ready")
        self._probe: Future[int] | None = None
        self.console = (
            Console(
                integration,
                self.plan,
                transport,
                console,
                flow_config=self.config,
                instances=lambda: self.instances,
                instance_rows=self._instance_rows,
            )
            if console is not None
            else None
        )
        self.agents: Callable[[], dict[str, Any]] | None = None  # serve: the App's report

    def _webhook_triggers(self) -> list[WebhookTrigger]:
        return [
            i.flow.trigger
            for i in self.webhooks.values()
            if isinstance(i.flow.trigger, WebhookTrigger)
        ]

    @property
    def port(self) -> int:
        return self.site.port if self.site is not None else 0

    def app(self) -> web.Application:
        limit = max((t.max_body for t in self._webhook_triggers()), default=1 << 20)
        app = web.Application(client_max_size=limit + 1)
        add_probe_routes(app, self.ready, self.agents)
        app.router.add_route("*", "/webhooks/{integration}/{flow}", self._webhook)
        app.router.add_route("*", "/webhooks/{instance}/{integration}/{flow}", self._webhook)
        if self.console is not None:
            self.console.add_routes(app)
        return app

    def _instance_rows(self) -> list[dict[str, Any]]:
        """The deployed instances of this integration, every secret config value masked."""
        secret = {n for n, v in self.integration.config.items() if v.secret}
        rows = []
        table = instance_store.live(instance_store.read_instances(self.transport))
        for r in sorted(table.values(), key=lambda r: r.instance):
            if r.integration != self.integration.name:
                continue
            config = {k: MASK if k in secret else v for k, v in r.masked().items()}
            rows.append(
                {"instance": r.instance, "version": r.version, "deployed_ms": r.deployed_ms,
                 "config": config}
            )  # fmt: skip
        return rows

    async def start(self, host: str, port: int) -> int:
        """Serve on host:port (0: any free port); return the port."""
        self.publisher = Publisher(
            await asyncio.to_thread(gateway_producer, self.transport, self.produce_timeout),
            self.produce_timeout,
        )
        self.publisher.start()
        if any(t.response == "sync" for t in self._webhook_triggers()):
            self.watcher = await asyncio.to_thread(
                ExecutionWatcher, self.transport, self.plan.executions_topic
            )
        if self.instances is None and self.webhooks:
            self.table = await asyncio.to_thread(InstanceTable, self.transport, self.integration)
            self.instances = self._instance_config
            self.instance_task = asyncio.create_task(self._follow_instances())
        if self.console is not None:
            await asyncio.to_thread(self.console.start)
        if self.host is not None and self.host.factories:
            self.trigger_task = asyncio.create_task(self.host.run(self.stop_triggers))
        self.site = await serve_app(self.app(), host, port)
        return self.site.port

    def _instance_config(self, instance: str) -> Mapping[str, Any] | None:
        assert self.table is not None
        try:
            return self.table.config(instance)
        except StreamFlowError:  # unknown or removed; or sealed without a key
            return None

    async def _follow_instances(self) -> None:
        assert self.table is not None
        while not self.stop_triggers.is_set():
            try:
                await asyncio.to_thread(self.table.refresh, 0.5)
            except Exception as exc:
                log.warning("gateway: reading sf.instances failed: %s", exc)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        self.stop_triggers.set()
        if self.instance_task is not None:
            await asyncio.gather(self.instance_task, return_exceptions=True)
        if self.table is not None:
            await asyncio.to_thread(self.table.close)
        if self.site is not None:
            await self.site.stop()
        if self.trigger_task is not None:
            await asyncio.gather(self.trigger_task, return_exceptions=True)
        if self.publisher is not None:
            await self.publisher.close()
        if self.watcher is not None:
            await asyncio.to_thread(self.watcher.close)
        await self.resources.aclose()
        if self.console is not None:
            await asyncio.to_thread(self.console.close)
        self._probe_io.shutdown(wait=False, cancel_futures=True)

    async def ready(self) -> bool:
        """The broker answers (the flow's first topic has partitions) within 2 s."""
        if self._probe is None or self._probe.done():
            self._probe = self._probe_io.submit(self.transport.partitions, self.ready_topic)
        try:
            n = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(self._probe)), READY_TIMEOUT
            )
        except Exception:
            return False
        return n > 0

    # -- webhooks ---------------------------------------------------------------------

    def _endpoint(self, instance: str, integration: str, flow: str) -> WebhookEndpoint:
        if integration != self.integration.name or flow not in self.webhooks:
            raise Refusal(404, f"no webhook flow {integration}/{flow} here")
        if not instance:
            endpoint = self.endpoints.get(("", flow))
            if endpoint is None:
                raise Refusal(404, f"{integration}/{flow} is served for instances only")
            return endpoint
        config = self.instances(instance) if self.instances is not None else None
        if config is None:
            raise Refusal(404, f"unknown instance {instance!r}")
        endpoint = self.endpoints.get((instance, flow))
        if endpoint is not None and endpoint.ingress.config is config:
            return endpoint  # the same config object: the instance did not change
        base = self.webhooks[flow]
        ingress = FlowIngress(base.integration, base.flow, base.plan, config)
        try:
            endpoint = WebhookEndpoint(ingress, self.env, instance=instance)
        except ValueError as exc:
            log.error("instance %s: %s", instance, exc)
            raise Refusal(500, "this instance's webhook is not configured") from None
        self.endpoints[(instance, flow)] = endpoint
        return endpoint

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        info = request.match_info
        route = f"{info['integration']}/{info['flow']}"
        started = time.monotonic()
        try:
            endpoint = self._endpoint(info.get("instance", ""), info["integration"], info["flow"])
            response = await self._accept(endpoint, request)
        except Refusal as refusal:
            if refusal.status == 404:
                route = "unknown"
            response = web.json_response(
                refusal.body, status=refusal.status, headers=refusal.headers
            )
        GATEWAY_REQUESTS.labels(route, str(response.status)).inc()
        GATEWAY_SECONDS.labels(route).observe(time.monotonic() - started)
        return response

    async def _accept(self, endpoint: WebhookEndpoint, request: web.Request) -> web.Response:
        endpoint.check_method(request.method)
        endpoint.check_auth(request.headers)
        body = await _read_body(request, endpoint)
        endpoint.check_signature(request.headers, body)
        content_type = request.content_type if "Content-Type" in request.headers else ""
        payload = endpoint.parse(request.method, content_type, body, request.query)
        endpoint.validate(payload)
        env = endpoint.envelope(
            payload, method=request.method, headers=request.headers, query=request.query
        )
        claim = await self._claim(endpoint, request, env.execution_id)
        if claim is not None and claim[1] is not None:
            return claim[1]
        return await self._publish(endpoint, env, claim[0] if claim is not None else None)

    def _idem_key(self, execution_id: str) -> str:
        return f"idem:{self.integration.name}:{execution_id}"

    async def _claim(
        self, endpoint: WebhookEndpoint, request: web.Request, execution_id: str
    ) -> tuple[Store, web.Response | None] | None:
        """For an Idempotency-Key: (store, None) when this request owns the key, (store,
        answer) when it was seen; None without a key (or with idempotency off)."""
        idem = endpoint.trigger.idempotency
        if idem is None or not request.headers.get("Idempotency-Key"):
            return None
        scope = {"config": endpoint.ingress.config, "env": self.env}
        try:
            store = await open_store(idem, self.resources, scope, self.masker)
            pending = self.produce_timeout + 30  # a crashed gateway's claim expires soon
            seen = await store.claim(self._idem_key(execution_id), b"pending", pending)
        except RetriableError as exc:
            log.warning("%s: idempotency store unavailable: %s", endpoint.path, exc)
            raise Refusal(503, "the idempotency store is unavailable; retry") from None
        if seen is None:
            return store, None
        if seen == b"pending":
            refusal = Refusal(409, "a request with this Idempotency-Key is in progress; retry")
            refusal.headers["Retry-After"] = "1"
            raise refusal
        body = {"execution_id": execution_id, "duplicate": True}
        return store, web.json_response(body, status=202)

    async def _publish(
        self, endpoint: WebhookEndpoint, env: Envelope, claimed: Store | None
    ) -> web.Response:
        """Produce the envelope (a claimed Idempotency-Key becomes done once confirmed, or
        is released if not) and answer."""
        try:
            messages = envelope_messages(endpoint.ingress, env)
        except Exception as exc:  # the encoder refuses it: too deep, a value it cannot write
            if claimed is not None:  # not accepted: a retry with the key must run
                with contextlib.suppress(RetriableError):
                    await claimed.delete(self._idem_key(env.execution_id))
            raise Refusal(422, f"body cannot be carried: {describe(exc)}") from None
        sync = endpoint.trigger.response == "sync" and self.watcher is not None
        waiter = self.watcher.expect(env.execution_id) if sync and self.watcher else None
        assert self.publisher is not None
        try:
            await asyncio.wait_for(self.publisher.publish(messages), self.produce_timeout + 5)
        except BaseException as exc:
            if self.watcher is not None:
                self.watcher.forget(env.execution_id)
            if claimed is not None:  # not accepted: a retry with the key must run
                with contextlib.suppress(RetriableError):
                    await claimed.delete(self._idem_key(env.execution_id))
            if not isinstance(exc, Exception):
                raise
            if isinstance(exc, MessageRejected):  # over message.max.bytes with the envelope
                raise Refusal(413, f"body too large to carry: {exc}") from None
            log.warning("%s: not accepted, the broker did not confirm: %s", endpoint.path, exc)
            raise Refusal(503, "the broker is unavailable; nothing was accepted, retry") from None
        if claimed is not None:
            idem = endpoint.trigger.idempotency
            assert idem is not None
            try:
                await claimed.set(self._idem_key(env.execution_id), b"done", idem.ttl)
            except RetriableError as exc:  # accepted all the same; the claim expires soon
                log.warning("%s: could not record the Idempotency-Key: %s", endpoint.path, exc)
        TRIGGER_FIRINGS.labels(self.integration.name, endpoint.ingress.flow.name, "webhook").inc()
        accepted = {"execution_id": env.execution_id}
        if waiter is None:
            return web.json_response(accepted, status=202)
        assert self.watcher is not None
        try:
            ev = await asyncio.wait_for(waiter, endpoint.trigger.timeout)
        except TimeoutError:
            return web.json_response({**accepted, "status": "running"}, status=202)
        finally:
            self.watcher.forget(env.execution_id)
        if ev.event in ("completed", "filtered"):
            return web.json_response(  # numbers exact: big ints and Decimals keep every digit
                {**accepted, "status": ev.event, "output": ev.payload}, dumps=exactjson.dumps_text
            )
        return web.json_response({**accepted, "status": ev.event, "error": ev.error}, status=502)


async def _read_body(request: web.Request, endpoint: WebhookEndpoint) -> bytes:
    """The body, refusing (413) as soon as it is known to exceed the flow's limit."""
    if request.content_length is not None:
        endpoint.check_size(request.content_length)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(65536):
        size += len(chunk)
        endpoint.check_size(size)
        chunks.append(chunk)
    return b"".join(chunks)
