"""The console: a read-only HTTP API over the execution store and dead letters, operator
actions behind a second token, and the web pages that use it (``/console/``).

Served by the gateway (``serve`` and ``gateway``) when ``STREAMFLOW_CONSOLE_TOKEN`` is
set; ``STREAMFLOW_OPERATOR_TOKEN`` also allows replaying dead letters and re-running
executions. Tokens travel in the ``Authorization: Bearer`` header only (no cookies), so
another site cannot act with the user's credentials; a state-changing request must also
send ``Content-Type: application/json`` and, when it has an ``Origin``, come from this
host. Every answer passes ``redact``: no secret value is ever sent. Routes (all JSON)::

    GET  /api/v1/whoami                                  {"role": "viewer"|"operator"}
    GET  /api/v1/integration                             flows, plan, instances
    GET  /api/v1/executions?flow&status&instance&since&limit&after
    GET  /api/v1/executions/{id}                         row + timeline + dead letters
    POST /api/v1/executions/{id}/rerun                   operator: same input, new execution
    GET  /api/v1/flows/{flow}/dead-letters
    GET  /api/v1/flows/{flow}/dead-letters/{id}
    POST /api/v1/flows/{flow}/dead-letters/{id}/replay   operator; body {payload?,
                                                         allow_compensated?, again?}
    GET  /api/v1/stats                                   per flow: counts, rates, errors
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY

from streamflow import exactjson
from streamflow.envelope import decode_record
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.ingress import FlowIngress
from streamflow.observability import history
from streamflow.observability.events import ExecutionEvent
from streamflow.observability.logs import register_secrets
from streamflow.observability.redact import redact
from streamflow.runtime import dlq
from streamflow.topology.models import Integration, parse_duration
from streamflow.topology.plan import Plan
from streamflow.transport.base import Transport
from streamflow.util.secrets import MASK

READ_TOKEN_ENV = "STREAMFLOW_CONSOLE_TOKEN"
OPERATOR_TOKEN_ENV = "STREAMFLOW_OPERATOR_TOKEN"
HISTORY_DB_ENV = "STREAMFLOW_HISTORY_DB"
HISTORY_MAX_ENV = "STREAMFLOW_HISTORY_MAX"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
InstanceConfig = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class ConsoleConfig:
    read_token: str
    operator_token: str = ""
    history_db: str | None = None
    max_executions: int = history.MAX_EXECUTIONS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ConsoleConfig | None:
        """None (no console) unless ``STREAMFLOW_CONSOLE_TOKEN`` is set."""
        env = os.environ if environ is None else environ
        read, op = env.get(READ_TOKEN_ENV, ""), env.get(OPERATOR_TOKEN_ENV, "")
        if not read:
            return None
        for name, token in ((READ_TOKEN_ENV, read), (OPERATOR_TOKEN_ENV, op)):
            if token and len(token) < 16:
                raise ConfigError(f"{name} must be at least 16 characters")
        register_secrets([read, op])
        max_rows = env.get(HISTORY_MAX_ENV, "")
        return cls(
            read,
            op,
            env.get(HISTORY_DB_ENV) or None,
            int(max_rows) if max_rows.isascii() and max_rows.isdigit() else history.MAX_EXECUTIONS,
        )


class Console:
    """The API and pages of one integration; ``start`` builds the store from the topic."""

    def __init__(
        self,
        integration: Integration,
        plan: Plan,
        transport: Transport,
        config: ConsoleConfig,
        *,
        flow_config: Mapping[str, Any],
        instances: Callable[[], InstanceConfig | None],
        instance_rows: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.integration = integration
        self.plan = plan
        self.transport = transport
        self.config = config
        self.flow_config = flow_config
        self.instances = instances
        self.instance_rows = instance_rows
        self.store = history.ExecutionStore(
            history.dlq_topics(plan),
            history.trigger_types(integration),
            path=config.history_db,
            max_executions=config.max_executions,
        )
        self.follower = history.StoreFollower(self.store, transport, plan.executions_topic)
        self.replaying = asyncio.Lock()  # one replay at a time: a double click replays once

    def start(self) -> None:
        self.follower.start()

    def close(self) -> None:
        self.follower.close()
        self.store.close()

    def _events_of(self) -> Callable[[str], list[ExecutionEvent]] | None:
        """Events from the store once it read the topic to its end (before: None, and
        ``letter_states`` reads the topic itself). An execution past retention has none
        here: its letter's saga still shows in its envelope."""
        return self.store.events if self.follower.caught_up.is_set() else None

    # -- routes and guards ------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/console", self._index)
        r.add_get("/console/", self._index)
        r.add_get("/console/static/{name}", self._static)
        for path, handler in (
            ("/api/v1/whoami", self._whoami),
            ("/api/v1/integration", self._integration),
            ("/api/v1/executions", self._executions),
            ("/api/v1/executions/{id}", self._execution),
            ("/api/v1/flows/{flow}/dead-letters", self._dead_letters),
            ("/api/v1/flows/{flow}/dead-letters/{id}", self._dead_letter),
            ("/api/v1/stats", self._stats),
        ):
            r.add_get(path, self._guard(handler, operator=False))
        r.add_post("/api/v1/executions/{id}/rerun", self._guard(self._rerun, operator=True))
        r.add_post(
            "/api/v1/flows/{flow}/dead-letters/{id}/replay",
            self._guard(self._replay, operator=True),
        )

    def _role(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        given = auth[7:].strip().encode()
        if self.config.operator_token and hmac.compare_digest(
            given, self.config.operator_token.encode()
        ):
            return "operator"
        if hmac.compare_digest(given, self.config.read_token.encode()):
            return "viewer"
        return None

    def _guard(self, handler: Handler, *, operator: bool) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            role = self._role(request)
            if role is None:
                return _error(401, "a console token is needed (Authorization: Bearer …)")
            if operator:
                if role != "operator":
                    return _error(403, "this action needs the operator token")
                origin = request.headers.get("Origin")
                if origin is not None and origin != f"{request.scheme}://{request.host}":
                    return _error(403, f"cross-origin request refused (Origin {origin})")
                if request.content_type != "application/json":
                    return _error(415, "send Content-Type: application/json")
            request["role"] = role
            try:
                return await handler(request)
            except ConfigError as exc:
                return _error(409, str(exc))

        return guarded

    async def _index(self, _: web.Request) -> web.StreamResponse:
        return _file("index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return _file(request.match_info["name"])

    # -- reads ------------------------------------------------------------------------

    async def _whoami(self, request: web.Request) -> web.StreamResponse:
        return _json({"role": request["role"], "integration": self.integration.name})

    async def _integration(self, _: web.Request) -> web.StreamResponse:
        flows = []
        for flow in self.integration.flows.values():
            fp = self.plan.flows[flow.name]
            trigger = flow.trigger.model_dump(mode="json", exclude_none=True)
            steps = [
                {
                    "id": sid,
                    "type": node.config.type,
                    "next": node.next,
                    "topic": fp.entry_of.get(sid, ""),
                    "routes": [{"when": r.when, "steps": list(r.steps)} for r in node.routes],
                    "compensate": node.compensation.id if node.compensation else None,
                    "retry_topic": fp.retry_topic_of.get(sid, ""),
                }
                for sid, node in flow.nodes.items()
            ]
            flows.append(
                {
                    "name": flow.name,
                    "description": flow.doc.description,
                    "events": flow.doc.events,
                    "guarantee": flow.doc.guarantee,
                    "trigger": trigger,
                    "first": flow.first,
                    "steps": steps,
                    "topics": {
                        "input": fp.external_topic or fp.first_topic,
                        "dead_letters": fp.dlq_topic,
                        "compensate": fp.compensate_topic,
                        "executions": self.plan.executions_topic,
                    },
                }
            )
        instances = await asyncio.to_thread(self.instance_rows)
        return _json(
            {
                "name": self.integration.name,
                "description": self.integration.doc.description,
                "flows": flows,
                "instances": instances,
                "store": dict(zip(("executions", "bytes"), self.store.size(), strict=True)),
            }
        )

    async def _executions(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        since = None
        if q.get("since"):
            raw = q["since"]
            if raw.isascii() and raw.isdigit():
                since = _whole(q, "since", 0)
            else:  # a duration back from now; longer than the epoch: everything
                since = max(0, int((time.time() - min(_duration(raw), 1e12)) * 1000))
        after = _whole(q, "after", None)
        limit = _whole(q, "limit", 100) or 1  # the store keeps it within 1..10000
        status = q.get("status") or None
        if status and status not in history.STATUSES:
            return _error(400, f"status must be one of {', '.join(history.STATUSES)}")
        rows = self.store.list(
            flow=q.get("flow") or None,
            status=status,
            instance=q.get("instance") or None,
            since_ms=since,
            after_seq=after,
            limit=limit,
        )
        return _json(
            {
                "executions": [r.to_json() for r in rows],
                "seq": max(self.store.seq, history.seq_of(rows)),
                "caught_up": self.follower.caught_up.is_set(),
            }
        )

    async def _execution(self, request: web.Request) -> web.StreamResponse:
        row = self.store.get(request.match_info["id"])
        if row is None:
            return _error(404, f"no execution {request.match_info['id']} (kept: the newest "
                          f"{self.store.max_executions})")  # fmt: skip
        out = row.to_json()
        out["dead_letters"] = []
        if row.dead_letter:
            letters = await asyncio.to_thread(self._letters, row.flow, row.id)
            out["dead_letters"] = [lt for lt in letters if lt["execution_id"] == row.id]
        return _json(out)

    def _letters(self, flow: str, execution_id: str | None = None) -> list[dict[str, Any]]:
        if not self.transport.partitions(self.plan.flows[flow].dlq_topic):
            return []
        letters = dlq.read_dead_letters(self.transport, self.plan, flow)
        if execution_id is not None:
            letters = [d for d in letters if d.execution_id == execution_id]
        states = dlq.letter_states(self.transport, self.plan, flow, letters, self._events_of())
        return [{**d.summary(), **states[d.id].columns(), "flow": flow} for d in letters]

    def _flow(self, request: web.Request) -> str:
        flow = request.match_info["flow"]
        if flow not in self.integration.flows:
            raise web.HTTPNotFound(text=f"no flow {flow}")
        return flow

    async def _dead_letters(self, request: web.Request) -> web.StreamResponse:
        letters = await asyncio.to_thread(self._letters, self._flow(request))
        letters.reverse()  # newest first
        return _json({"dead_letters": letters})

    def _find(
        self, flow: str, letter_id: str, *, from_topic: bool = False
    ) -> tuple[dlq.DeadLetter, dlq.LetterState]:
        """The letter and its state (``from_topic``: read from the executions topic, not
        the store, which may lag a replay made a moment ago)."""
        letters = dlq.select(
            dlq.read_dead_letters(self.transport, self.plan, flow), ids=[letter_id]
        )
        letters = [d for d in letters if d.id == letter_id]
        if not letters:
            raise web.HTTPNotFound(text=f"no dead letter {letter_id} in flow {flow}")
        events = None if from_topic else self._events_of()
        states = dlq.letter_states(self.transport, self.plan, flow, letters, events)
        return letters[0], states[letter_id]

    async def _dead_letter(self, request: web.Request) -> web.StreamResponse:
        flow = self._flow(request)
        d, state = await asyncio.to_thread(self._find, flow, request.match_info["id"])
        out: dict[str, Any] = {**d.summary(), **state.columns(), "flow": flow,
                               "replays": state.replays}  # fmt: skip
        try:
            env = decode_record(d.record, self.integration.flows[flow].doc.encoding)
            out["envelope"] = env.shown()
            out["replayable"] = d.step in self.plan.flows[flow].entry_of
        except PoisonMessageError:
            out["raw"] = d.record.value[:2000].decode("utf-8", "replace")
            out["replayable"] = False
        out["why_not"] = dlq.refusal(d, state, allow_compensated=False, again=False)
        return _json(out)

    async def _stats(self, _: web.Request) -> web.StreamResponse:
        now = int(time.time() * 1000)
        last5, last60 = self.store.counts(now - 300_000), self.store.counts(now - 3_600_000)
        flows: dict[str, Any] = {}
        for name in self.integration.flows:
            hour = last60.get(name, {})
            ended = sum(n for s, n in hour.items() if s in history.ENDED)
            bad = sum(n for s, n in hour.items() if s not in ("completed", "filtered", "running"))
            flows[name] = {
                "last_5m": last5.get(name, {}),
                "last_1h": hour,
                "per_minute_5m": round(sum(last5.get(name, {}).values()) / 5, 2),
                "error_rate_1h": round(bad / ended, 4) if ended else 0.0,
                "metrics": _metrics(self.integration.name, name),
            }
        return _json({"flows": flows, "now_ms": now})

    # -- operator actions -------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = exactjson.loads(await request.read())  # edited numbers keep every digit
        except ValueError:
            raise web.HTTPBadRequest(text="the body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object")
        return body

    async def _replay(self, request: web.Request) -> web.StreamResponse:
        flow = self._flow(request)
        body = await self._body(request)
        letter_id = request.match_info["id"]

        def run() -> list[str]:
            d, state = self._find(flow, letter_id, from_topic=True)
            edit = None
            if "payload" in body:
                if _holds_mask(body["payload"]):
                    raise ConfigError(
                        "the edited payload holds masked values (***): the console never "
                        "shows secrets, so it cannot send them back; edit with the CLI"
                    )
                new = body["payload"]
                edit = lambda _old: new  # noqa: E731
            return dlq.replay(
                self.transport,
                self.plan,
                self.integration.flows[flow],
                [d],
                edit=edit,
                states={d.id: state},
                allow_compensated=bool(body.get("allow_compensated")),
                again=bool(body.get("again")),
            )

        async with self.replaying:
            ids = await asyncio.to_thread(run)
        return _json({"replayed": ids}, status=202)

    async def _rerun(self, request: web.Request) -> web.StreamResponse:
        await self._body(request)
        events = self.store.events(request.match_info["id"])
        started = next((e for e in events if e.event == "started"), None)
        if started is None or started.payload is None:
            raise ConfigError(
                "this execution's input was not recorded (its trigger writes no payload in "
                "the started event): it cannot be re-run from here"
            )
        flow = self.integration.flows[started.flow]
        config = self.flow_config
        if started.instance:
            lookup = self.instances()
            found = lookup(started.instance) if lookup is not None else None
            if found is None:
                raise ConfigError(f"instance {started.instance} is not deployed now")
            config = found
        ingress = FlowIngress(self.integration, flow, self.plan, config)
        env = ingress.envelope(
            started.payload,
            trigger={"type": flow.trigger.type, "manual": True, "rerun_of": started.execution_id},
            instance=started.instance,
        )

        def send() -> None:
            producer = self.transport.producer()
            try:
                ingress.send(producer, env)
                producer.flush()
            finally:
                producer.close()

        await asyncio.to_thread(send)
        return _json({"execution_id": env.execution_id, "rerun_of": started.execution_id}, 202)


def _whole(query: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A query parameter that is a whole number (ASCII digits, at most 15 of them), else
    400 - never a 500 from int() of '²' or SQLite's refusal of a 30-digit integer."""
    raw = query.get(name, "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        raise web.HTTPBadRequest(text=f"{name}: not a whole number of at most 15 digits")
    return int(raw)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except (ValueError, TypeError):
        raise web.HTTPBadRequest(text=f"since: not a duration: {text!r}") from None


def _holds_mask(value: Any) -> bool:
    if isinstance(value, str):
        return MASK in value
    if isinstance(value, dict):
        return any(_holds_mask(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_mask(v) for v in value)
    return False


def _metrics(integration: str, flow: str) -> dict[str, float]:
    """This process's counters of ``flow`` (agents running here), summed over steps."""
    wanted = {
        "streamflow_events_consumed_total": "consumed",
        "streamflow_executions_completed_total": "completed",
        "streamflow_events_failed_total": "failures",
        "streamflow_events_retried_total": "retries",
        "streamflow_events_dead_lettered_total": "dead_lettered",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for metric in REGISTRY.collect():
        for s in metric.samples:
            name = wanted.get(s.name)
            if name and s.labels.get("integration") == integration and s.labels.get("flow") == flow:
                out[name] += s.value
    return out


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(
        redact(data), status=status, headers=SECURITY_HEADERS, dumps=exactjson.dumps_text
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status=status)


_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css",
          ".svg": "image/svg+xml"}  # fmt: skip


def _file(name: str) -> web.StreamResponse:
    """A file shipped in the package (``streamflow/console/static``); nothing else."""
    static = importlib.resources.files("streamflow") / "console" / "static"
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in _TYPES:
        raise web.HTTPNotFound()
    f = static / name
    if not f.is_file():
        raise web.HTTPNotFound()
    return web.Response(
        body=f.read_bytes(),
        content_type=_TYPES[suffix],
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )
