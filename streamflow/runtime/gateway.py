"""The gateway: webhooks in, envelopes out; and the schedule, poll and file triggers.

``streamflow serve`` runs it beside the agents; ``streamflow gateway`` runs it alone, so
the HTTP front can scale apart from the workers. Routes::

    POST /webhooks/<integration>/<flow>              a flow with a webhook trigger
    POST /webhooks/<instance>/<integration>/<flow>   the same, for one instance
    GET  /healthz   liveness          GET /readyz   broker reachable (503 if not)
    GET  /metrics   Prometheus

A webhook is acknowledged only after the broker confirmed its envelope: accepted
requests are queued to one ``Publisher`` that sends a batch and flushes it, and each
request's answer waits for its batch (``202 {"execution_id"}``). Refused requests (401,
405, 413, 400, 422) never reach the producer; a failed flush answers 503. On Kafka the
gateway's producer gives up on a message (``message.timeout.ms``) before the gateway
stops waiting for it, so a 503 is never followed by a late delivery.

Every gateway process also runs the leader-elected triggers (``TriggerHost``): each
schedule, poll or file trigger fires in one process only (see ``lease.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from aiohttp import web

from streamflow.errors import StreamFlowError
from streamflow.runtime.contain import describe
from streamflow.runtime.events import ExecutionEvent, is_terminal
from streamflow.runtime.filewatch import FileRunner
from streamflow.runtime.http import HttpSite, add_probe_routes, serve_app
from streamflow.runtime.ingest import FlowIngress
from streamflow.runtime.instances import InstanceTable
from streamflow.runtime.lease import LeaderTrigger, Outgoing, envelope_messages, send_all
from streamflow.runtime.metrics import GATEWAY_REQUESTS, GATEWAY_SECONDS, TRIGGER_FIRINGS
from streamflow.runtime.poller import PollRunner
from streamflow.runtime.schedule import ScheduleRunner
from streamflow.runtime.webhook import Refusal, WebhookEndpoint
from streamflow.topology.models import Flow, Integration
from streamflow.topology.plan import Plan, compile_plan
from streamflow.topology.triggers import WebhookTrigger
from streamflow.transport.base import Consumer, MessageRejected, Producer, Transport

log = logging.getLogger("streamflow.gateway")
InstanceConfig = Callable[[str], Mapping[str, Any] | None]
"""instance id -> that instance's config values for this integration, or None (unknown)."""
RUNNERS: dict[str, type[LeaderTrigger]] = {
    "schedule": ScheduleRunner,
    "poll": PollRunner,
    "file": FileRunner,
}
READY_TIMEOUT = 2.0
MAX_BATCH = 1000


def gateway_producer(transport: Transport, timeout: float) -> Producer:
    """A producer whose messages are confirmed or failed within ``timeout`` seconds."""
    if transport.url.startswith("kafka://"):
        from streamflow.transport.kafka import KafkaProducer

        base = dict(getattr(transport, "base", {}))
        base.setdefault("message.timeout.ms", max(1000, int((timeout - 2) * 1000)))
        return KafkaProducer(base, None)
    return transport.producer()


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
        "poll": {"source": "http" if getattr(flow.trigger, "http", None) else "sql"},
        "file": {"path": "", "name": "", "size": 0, "sha256": "", "modified": ""},
        "kafka": {
            "topic": getattr(flow.trigger, "topic", ""),
            "partition": -1,
            "offset": -1,
            "key": None,
            "timestamp_ms": now,
        },
    }
    return {"type": kind, **shapes.get(kind, {}), "manual": True}


class Publisher:
    """Sends accepted events in batches, one flush per batch, on a thread of its own;
    ``publish`` returns once the broker confirmed (or raises: answer 503)."""

    def __init__(self, producer: Producer, timeout: float) -> None:
        self.producer = producer
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[list[Outgoing], asyncio.Future[None]]] = asyncio.Queue()
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-gateway-produce")
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="gateway-publisher")

    async def publish(self, messages: list[Outgoing]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((messages, fut))
        await fut

    def _send(self, batch: Sequence[list[Outgoing]]) -> list[Exception | None]:
        """Queue each request's messages (one refused at once, e.g. too large for the
        broker, fails alone), then flush: a failed flush fails the whole batch."""
        results: list[Exception | None] = []
        for messages in batch:
            try:
                send_all(self.producer, messages)
                results.append(None)
            except Exception as exc:
                results.append(exc)
        self.producer.flush(self.timeout)
        return results

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self.queue.get_nowait())
            live = [(m, f) for m, f in batch if not f.done()]  # a gone client: not sent
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.io, self._send, [m for m, _ in live])
            except Exception as exc:
                log.warning("gateway: %d event(s) not confirmed by the broker: %s", len(live), exc)
                results = [exc] * len(live)
            for (_, f), error in zip(live, results, strict=True):
                if f.done():
                    continue
                if error is None:
                    f.set_result(None)
                else:
                    f.set_exception(error)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self.io, self.producer.close)
        self.io.shutdown(wait=True)


class ExecutionWatcher:
    """Follows the executions topic from its end; ``response: sync`` webhooks wait here
    for their execution's terminal event."""

    def __init__(self, transport: Transport, topic: str) -> None:
        self.consumer: Consumer = transport.consumer(
            f"sf.gateway.{uuid.uuid4().hex}", [topic], from_end=True
        )
        self.waiters: dict[
            str, tuple[asyncio.AbstractEventLoop, asyncio.Future[ExecutionEvent]]
        ] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sf-gateway-watch", daemon=True)
        self.thread.start()

    def expect(self, execution_id: str) -> asyncio.Future[ExecutionEvent]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[ExecutionEvent] = loop.create_future()
        with self.lock:
            self.waiters[execution_id] = (loop, fut)
        return fut

    def forget(self, execution_id: str) -> None:
        with self.lock:
            self.waiters.pop(execution_id, None)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                records = self.consumer.poll(500, 0.2)
            except Exception as exc:
                log.warning("gateway: reading executions failed: %s", exc)
                time.sleep(1.0)
                continue
            for rec in records:
                try:
                    ev = ExecutionEvent.decode(rec.value)
                except (ValueError, TypeError):
                    continue
                if not is_terminal(ev.event, ev.note):
                    continue
                with self.lock:
                    waiter = self.waiters.pop(ev.execution_id, None)
                if waiter is not None:
                    loop, fut = waiter
                    loop.call_soon_threadsafe(_resolve, fut, ev)
        self.consumer.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)


def _resolve(fut: asyncio.Future[ExecutionEvent], ev: ExecutionEvent) -> None:
    if not fut.done():
        fut.set_result(ev)


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
        self.factories: list[tuple[str, Callable[[], LeaderTrigger]]] = []
        for flow in integration.flows.values():
            runner = RUNNERS.get(flow.trigger.type)
            if runner is None or (flows and flow.name not in flows):
                continue
            ingress = FlowIngress(integration, flow, plan, config)

            def make(r: type[LeaderTrigger] = runner, i: FlowIngress = ingress) -> LeaderTrigger:
                return r(i, transport, dict(env or {}))

            make()  # build once now: a bad config (e.g. a poll query) refuses to start
            self.factories.append((flow.name, make))

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(*(self._supervise(name, make, stop) for name, make in self.factories))

    @staticmethod
    async def _supervise(name: str, make: Callable[[], LeaderTrigger], stop: asyncio.Event) -> None:
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
        self._probe_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-gateway-ready")
        self._probe: Future[int] | None = None
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
        return app

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
        payload = endpoint.parse(request.method, request.content_type, body, request.query)
        endpoint.validate(payload)
        env = endpoint.envelope(
            payload, method=request.method, headers=request.headers, query=request.query
        )
        try:
            messages = envelope_messages(endpoint.ingress, env)
        except Exception as exc:  # the encoder refuses it: too deep, a value it cannot write
            raise Refusal(422, f"body cannot be carried: {describe(exc)}") from None
        sync = endpoint.trigger.response == "sync" and self.watcher is not None
        waiter = self.watcher.expect(env.execution_id) if sync and self.watcher else None
        assert self.publisher is not None
        try:
            await asyncio.wait_for(self.publisher.publish(messages), self.produce_timeout + 5)
        except MessageRejected as exc:  # over message.max.bytes with the envelope around it
            if self.watcher is not None:
                self.watcher.forget(env.execution_id)
            raise Refusal(413, f"body too large to carry: {exc}") from None
        except Exception as exc:
            if self.watcher is not None:
                self.watcher.forget(env.execution_id)
            log.warning("%s: not accepted, the broker did not confirm: %s", endpoint.path, exc)
            raise Refusal(503, "the broker is unavailable; nothing was accepted, retry") from None
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
            return web.json_response({**accepted, "status": ev.event, "output": ev.payload})
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
