"""Mock HTTP services for running example integrations with no outside service.

A small YAML file (``--mocks FILE``) describes services; each one is a real HTTP
server bound to ``127.0.0.1`` that answers from a list of routes and records every
call it receives::

    services:
      cms:
        port: 0                  # 0 (default) picks a free port
        config: cms_url          # set config variable cms_url to http://127.0.0.1:PORT
        routes:
          - method: POST         # default: any method
            path: /articles/{id} # exact path; {name} segments capture path params
            status: 201          # default 200
            headers: {X-Trace: abc}
            json: {id: "${uuid()}", title: "${request.json.title}"}   # or body: text
            delay: 50ms
            times: 2             # answer only the first 2 matching calls

``json``, ``body`` and header values are templates of the expression engine with a
single root, ``request``: ``method``, ``path``, ``params`` (path params), ``query``,
``headers``, ``json`` (the parsed body, or null) and ``body`` (text). Routes are tried
in order; the first whose method and path match and whose ``times`` is not used up
answers. Anything else gets a 404 JSON body saying no route matched. Request headers
are recorded in memory for assertions but never logged.

Usage::

    async with MockServices.from_file("mocks.yaml") as mocks:
        config.update(mocks.config_values())
        ...
        assert mocks.calls_to("cms", "POST", "/articles/{id}")
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Self

from aiohttp import web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema

from streamflow import exactjson
from streamflow.errors import ConfigError, Issue, ValidationFailed
from streamflow.topology.expressions import (
    ExpressionError,
    ExpressionEvalError,
    Template,
    compile_value,
)
from streamflow.topology.models import DURATION_JSON_SCHEMA, parse_duration
from streamflow.topology.source import PathT, Positions, format_path, load_yaml

__all__ = ["MockServices", "RecordedCall"]

log = logging.getLogger("streamflow.mocks")

HOST = "127.0.0.1"
ROOTS: frozenset[str] = frozenset({"request"})
_METHOD = re.compile(r"^[A-Za-z]+$")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_CONFIG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_SHUTDOWN_TIMEOUT = 1.0


# --------------------------------------------------------------------------- format


def _duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError("a delay cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(DURATION_JSON_SCHEMA)]
HeaderValue = str | int | float | bool


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RouteDoc(_Model):
    """One route of a mock service, as written in YAML."""

    method: str | None = Field(None, description="HTTP method; default: any")
    path: str = Field(description="exact path, or with {param} segments")
    status: int = Field(200, ge=100, le=599, strict=True)
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    json_: Any = Field(None, alias="json")
    body: str | None = None
    delay: Duration = 0.0
    times: int | None = Field(None, ge=1, strict=True)


class ServiceDoc(_Model):
    """One mock service, as written in YAML."""

    port: int = Field(0, ge=0, le=65535, strict=True)
    config: str | None = None
    routes: list[RouteDoc] = Field(default_factory=list)


class MocksDoc(_Model):
    """A mocks file."""

    services: dict[str, ServiceDoc]


# --------------------------------------------------------------------------- runtime


@dataclass
class RecordedCall:
    """One request a mock service received, with the status it answered."""

    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)  # may hold secrets: kept out of repr
    json: Any
    body: str
    status: int
    ts: float


@dataclass
class _Route:
    method: str | None
    path: str
    segments: tuple[str | tuple[str], ...]  # literal text, or (param name,)
    status: int
    headers: dict[str, Template]
    json: Template | None
    body: Template | None
    delay: float
    times: int | None
    used: int = 0

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.method is not None and self.method != method:
            return None
        return _match_path(self.segments, path)


@dataclass
class _Service:
    name: str
    port: int
    config: str | None
    routes: list[_Route]
    runner: web.ServerRunner | None = None
    bound_port: int | None = None


def _split_path(path: str) -> list[str]:
    return path.split("/")


def _compile_path(path: str) -> tuple[str | tuple[str], ...]:
    if not path.startswith("/"):
        raise ValueError("a path starts with '/'")
    out: list[str | tuple[str]] = []
    seen: set[str] = set()
    for seg in _split_path(path):
        if m := _PARAM.match(seg):
            name = m.group(1)
            if name in seen:
                raise ValueError(f"path parameter {{{name}}} appears twice")
            seen.add(name)
            out.append((name,))
        elif "{" in seg or "}" in seg:
            raise ValueError(
                f"bad path segment {seg!r}: a parameter is a whole segment like {{id}}"
            )
        else:
            out.append(seg)
    return tuple(out)


def _match_path(segments: Sequence[str | tuple[str]], path: str) -> dict[str, str] | None:
    parts = _split_path(path)
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for seg, part in zip(segments, parts, strict=True):
        if isinstance(seg, tuple):
            if not part:
                return None
            params[seg[0]] = part
        elif seg != part:
            return None
    return params


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return exactjson.dumps(value).decode()


def _issues_from_pydantic(exc: ValidationError, positions: Positions) -> list[Issue]:
    out: list[Issue] = []
    for err in exc.errors():
        loc: PathT = tuple(x for x in err["loc"] if isinstance(x, str | int))
        kind = err["type"]
        if kind == "missing":
            msg = f"missing required key '{loc[-1]}'" if loc else "missing value"
        elif kind == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'" + _suggest(loc)
        else:
            msg = err["msg"]
        out.append(positions.issue(loc, msg))
    return out


def _suggest(loc: PathT) -> str:
    models: dict[int, type[BaseModel]] = {1: MocksDoc, 3: ServiceDoc, 5: RouteDoc}
    model = models.get(len(loc), _Model)
    names = sorted(f.alias or n for n, f in model.model_fields.items())
    if not names:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(names)}"


class _Builder:
    """Turns a validated MocksDoc into services, collecting every problem."""

    def __init__(self, positions: Positions) -> None:
        self.pos = positions
        self.issues: list[Issue] = []

    def fail(self, path: PathT, message: str) -> None:
        self.issues.append(self.pos.issue(path, message))

    def template(self, value: Any, path: PathT) -> Template | None:
        try:
            return compile_value(value, roots=ROOTS)
        except ExpressionError as e:
            self.fail((*path, *e.path), f"{e.message} (in ${{{e.expression}}})")
            return None

    def build(self, doc: MocksDoc) -> list[_Service]:
        services: list[_Service] = []
        configs: dict[str, str] = {}
        ports: dict[int, str] = {}
        for name, sdoc in doc.services.items():
            spath: PathT = ("services", name)
            if not _SERVICE_NAME.match(name):
                self.fail(spath, f"bad service name {name!r}: use letters, digits, '_' and '-'")
            if sdoc.config is not None:
                if not _CONFIG_NAME.match(sdoc.config):
                    self.fail(
                        (*spath, "config"),
                        f"bad config variable name {sdoc.config!r}: "
                        "use letters, digits and '_', not starting with a digit",
                    )
                if sdoc.config in configs:
                    self.fail(
                        (*spath, "config"),
                        f"config variable '{sdoc.config}' is "
                        f"already set by service '{configs[sdoc.config]}'",
                    )
                configs[sdoc.config] = name
            if sdoc.port:
                if sdoc.port in ports:
                    self.fail(
                        (*spath, "port"),
                        f"port {sdoc.port} is already used by service '{ports[sdoc.port]}'",
                    )
                ports[sdoc.port] = name
            routes = [self.route(r, (*spath, "routes", i)) for i, r in enumerate(sdoc.routes)]
            services.append(
                _Service(name, sdoc.port, sdoc.config, [r for r in routes if r is not None])
            )
        return services

    def route(self, r: RouteDoc, path: PathT) -> _Route | None:
        ok = True
        method = None
        if r.method is not None:
            if not _METHOD.match(r.method):
                self.fail((*path, "method"), f"bad HTTP method {r.method!r}")
                ok = False
            method = r.method.upper()
        try:
            segments = _compile_path(r.path)
        except ValueError as e:
            self.fail((*path, "path"), str(e))
            segments, ok = (), False
        has_json = "json_" in r.model_fields_set
        if has_json and r.body is not None:
            self.fail(path, "use only one of json and body")
            ok = False
        headers: dict[str, Template] = {}
        for key, value in r.headers.items():
            t = self.template(value, (*path, "headers", key))
            if t is None:
                ok = False
            else:
                headers[key] = t
        json_t = self.template(r.json_, (*path, "json")) if has_json else None
        body_t = self.template(r.body, (*path, "body")) if r.body is not None else None
        if (has_json and json_t is None) or (r.body is not None and body_t is None):
            ok = False
        if not ok:
            return None
        return _Route(method, r.path, segments, r.status, headers, json_t, body_t, r.delay, r.times)


# --------------------------------------------------------------------------- public API


class MockServices:
    """Loopback HTTP servers described by a mocks file; they record every call."""

    def __init__(self, services: list[_Service], source: str = "<mocks>") -> None:
        self._services: dict[str, _Service] = {s.name: s for s in services}
        self.source = source
        self.calls: list[RecordedCall] = []
        self._started = False

    # -- loading

    @classmethod
    def from_file(cls, path: str | Path) -> MockServices:
        """Load a mocks file; raise ConfigError (ValidationFailed) naming the file."""
        data, positions = load_yaml(path)
        return cls._load(data, positions)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<mocks>") -> MockServices:
        """Build from already-parsed data; problems are reported against ``source``."""
        return cls._load(data, Positions(source))

    @classmethod
    def _load(cls, data: Any, positions: Positions) -> MockServices:
        if not isinstance(data, dict):
            raise ValidationFailed(
                [positions.issue((), "a mocks file is a YAML mapping with a 'services' key")]
            )
        try:
            doc = MocksDoc.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(_issues_from_pydantic(exc, positions)) from None
        builder = _Builder(positions)
        services = builder.build(doc)
        if builder.issues:
            raise ValidationFailed(builder.issues)
        return cls(services, positions.file)

    # -- lifecycle

    async def start(self) -> None:
        """Bind every service on 127.0.0.1 and start answering."""
        if self._started:
            raise RuntimeError("mock services are already started")
        self._started = True
        try:
            for svc in self._services.values():
                await self._start_service(svc)
        except BaseException:
            await self.stop()
            raise

    async def _start_service(self, svc: _Service) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if svc.port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, svc.port))
        except OSError as exc:
            sock.close()
            where = format_path(("services", svc.name, "port"))
            raise ConfigError(
                f"{self.source}: {where}: cannot listen on {HOST}:{svc.port}: {exc.strerror or exc}"
            ) from None
        svc.bound_port = int(sock.getsockname()[1])

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            return await self._handle(svc, request)

        server = web.Server(handler, access_log=None)  # no access log: keep headers/URLs out
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        svc.runner = runner
        await web.SockSite(runner, sock).start()
        log.info("mock service %s listening on %s", svc.name, self.base_url(svc.name))

    async def stop(self) -> None:
        """Stop every service (safe to call twice). Recorded calls are kept."""
        for svc in self._services.values():
            runner, svc.runner = svc.runner, None
            svc.bound_port = None
            if runner is not None:
                await runner.cleanup()
        self._started = False

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- addresses

    @property
    def services(self) -> list[str]:
        """Service names, in file order."""
        return list(self._services)

    def base_url(self, service: str) -> str:
        """``http://127.0.0.1:PORT`` of a started service (no trailing slash)."""
        svc = self._service(service)
        if svc.bound_port is None:
            raise RuntimeError(f"mock service {service!r} is not started")
        return f"http://{HOST}:{svc.bound_port}"

    def config_values(self) -> dict[str, str]:
        """``{config variable: base URL}`` for every service with ``config:``."""
        return {
            s.config: self.base_url(s.name) for s in self._services.values() if s.config is not None
        }

    # -- recorded calls

    def calls_to(
        self, service: str, method: str | None = None, path: str | None = None
    ) -> list[RecordedCall]:
        """Calls one service received, optionally of one method and path. ``path``
        may hold ``{param}`` segments (``/customers/{id}``) to match any value."""
        self._service(service)
        segments = _compile_path(path) if path is not None and "{" in path else None
        m = method.upper() if method is not None else None
        out = []
        for c in self.calls:
            if c.service != service or (m is not None and c.method != m):
                continue
            if path is not None and (
                _match_path(segments, c.path) is None if segments is not None else c.path != path
            ):
                continue
            out.append(c)
        return out

    def reset(self) -> None:
        """Forget recorded calls and re-arm every route's ``times``."""
        self.calls.clear()
        for svc in self._services.values():
            for r in svc.routes:
                r.used = 0

    def _service(self, service: str) -> _Service:
        try:
            return self._services[service]
        except KeyError:
            known = ", ".join(self._services) or "none"
            raise KeyError(f"no mock service {service!r} (known: {known})") from None

    # -- serving

    async def _handle(self, svc: _Service, request: web.BaseRequest) -> web.StreamResponse:
        ts = time.time()
        raw = await request.read()
        text = raw.decode("utf-8", errors="replace")
        parsed: Any = None
        if raw.strip():
            try:
                parsed = exactjson.loads(raw)
            except exactjson.JSONDecodeError:
                parsed = None
        method = request.method.upper()
        path = request.path
        query = dict(request.query)
        headers = dict(request.headers)

        route: _Route | None = None
        params: dict[str, str] = {}
        for r in svc.routes:
            if r.times is not None and r.used >= r.times:
                continue
            p = r.match(method, path)
            if p is not None:
                route, params = r, p
                break

        if route is None:
            response: web.Response = web.json_response(
                {"error": "no route matched", "service": svc.name, "method": method, "path": path},
                status=404,
            )
            delay = 0.0
        else:
            route.used += 1
            delay = route.delay
            scope = {
                "request": {
                    "method": method,
                    "path": path,
                    "params": params,
                    "query": query,
                    "headers": headers,
                    "json": parsed,
                    "body": text,
                }
            }
            try:
                response = _render(route, scope)
            except (ExpressionEvalError, TypeError, ValueError) as exc:
                # the message may quote request data (headers too): it goes in the
                # 500 body for the caller, never in the log
                log.warning(
                    "mock service %s: %s %s: route %s: cannot render the response "
                    "(%s; details in the 500 body)",
                    svc.name,
                    method,
                    path,
                    route.path,
                    type(exc).__name__,
                )
                response = web.json_response(
                    {
                        "error": f"mock response template failed: {exc}",
                        "service": svc.name,
                        "route": route.path,
                    },
                    status=500,
                )

        self.calls.append(
            RecordedCall(svc.name, method, path, query, headers, parsed, text, response.status, ts)
        )
        log.debug("mock service %s: %s %s -> %d", svc.name, method, path, response.status)
        if delay > 0:
            await asyncio.sleep(delay)
        return response


def _render(route: _Route, scope: Mapping[str, Any]) -> web.Response:
    headers = {k: _text(t.render(scope)) for k, t in route.headers.items()}
    has_type = any(k.lower() == "content-type" for k in headers)
    if route.json is not None:
        payload = exactjson.dumps(route.json.render(scope))
        if not has_type:
            headers["Content-Type"] = "application/json"
        return web.Response(status=route.status, body=payload, headers=headers)
    if route.body is not None:
        if not has_type:
            headers["Content-Type"] = "text/plain; charset=utf-8"
        return web.Response(
            status=route.status, body=_text(route.body.render(scope)).encode(), headers=headers
        )
    return web.Response(status=route.status, headers=headers)
