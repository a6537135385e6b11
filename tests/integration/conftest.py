"""Fixtures for connector tests: real servers on loopback, never mocks of the thing tested.

- ``postgres_url``: a real PostgreSQL. ``scripts/postgres.sh start`` honours DATABASE_URL /
  PG* when they answer, else starts the Debian packages' server on 127.0.0.1:5433. Without
  one the PostgreSQL tests are skipped with one loud line, except under CI=true, where
  they fail.
- ``pg_schema``: a fresh schema per test (dropped after), so tests never share tables.
- ``smtp_server``: an aiosmtpd server on 127.0.0.1 that records every message (and, with
  ``auth=True``, requires AUTH LOGIN/PLAIN against a known user).
- ``rabbitmq_url``, ``mongodb_url``: a RabbitMQ broker and FerretDB, started once per
  session on free loopback ports (``servers.py``).
- ``step_runner``: build a step from YAML the way the runtime does (a loaded topology,
  a StepContext with a real aiohttp session and shared Resources) and run it on payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from streamflow.envelope import Envelope, new_execution_id
from streamflow.steps.base import AsyncStep, Outcome, Resources, Step, StepContext
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.registry import STEPS
from streamflow.topology.values import resolve_config
from tests.integration.servers_mq import mongodb_url, rabbitmq_url

__all__ = ["mongodb_url", "rabbitmq_url"]  # session fixtures (servers_mq.py), started once

REPO = Path(__file__).resolve().parents[2]
_pg: dict[str, Any] = {}


def _start_postgres() -> str | None:
    if "url" not in _pg:
        try:
            proc = subprocess.run(
                ["bash", str(REPO / "scripts" / "postgres.sh"), "start"],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            urls = [
                line.removeprefix("DATABASE_URL=")
                for line in proc.stdout.splitlines()
                if line.startswith("DATABASE_URL=")
            ]
            _pg["url"] = urls[-1] if proc.returncode == 0 and urls else None
            _pg["why"] = "\n".join(proc.stderr.splitlines()[-15:])
        except (OSError, subprocess.TimeoutExpired) as exc:
            _pg["url"], _pg["why"] = None, str(exc)
    return _pg["url"]  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = _start_postgres()
    if url is None:
        msg = f"NO POSTGRESQL: scripts/postgres.sh start failed: {_pg.get('why', '')}"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI=true: PostgreSQL tests must run)")
        if not _pg.get("reported"):
            _pg["reported"] = True
            print("\n" + "!" * 20 + " " + msg + " — PostgreSQL tests skipped " + "!" * 20)
        pytest.skip(msg)
    return url


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A fresh schema name (created now, dropped with everything in it afterwards)."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schema
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection for setting up and checking tables."""
    import asyncpg

    conn = await asyncpg.connect(postgres_url)
    try:
        yield conn
    finally:
        await conn.close()


# --------------------------------------------------------------------------- SMTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Certificate:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 (openssl), to test TLS for real."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: TLS tests skipped")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return Certificate(cert, key)


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    login: str | None

    @property
    def message(self) -> Message:
        return message_from_bytes(self.data)

    def text(self, subtype: str = "plain") -> str:
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                return payload.decode(part.get_content_charset() or "utf-8")
        raise AssertionError(f"no text/{subtype} part")


@dataclass
class SmtpServer:
    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    username: str = "mailer"
    password: str = "s3cret-mail-pw"


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., SmtpServer]]:
    """Start aiosmtpd servers on 127.0.0.1 (a thread each); ``auth=True`` requires login."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    controllers: list[Any] = []

    def start(
        *, auth: bool = False, tls_context: Any = None, implicit_tls: bool = False
    ) -> SmtpServer:
        server = SmtpServer("127.0.0.1", 0)

        class Handler:
            async def handle_DATA(self, srv: Any, session: Any, envelope: Any) -> str:
                data = session.auth_data if session.authenticated else None
                login = data.decode() if isinstance(data, bytes) else None
                server.received.append(
                    Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, login)
                )
                return "250 OK"

        def authenticator(
            srv: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == server.username
                and data.password.decode() == server.password
            )
            return AuthResult(success=ok, handled=False, auth_data=data.login if ok else None)

        kwargs: dict[str, Any] = {}
        if auth:
            kwargs.update(authenticator=authenticator, auth_required=True)
            kwargs["auth_require_tls"] = tls_context is not None and not implicit_tls
        if tls_context is not None and not implicit_tls:
            kwargs["tls_context"] = tls_context
            kwargs["require_starttls"] = True
        server.port = free_port()
        controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=server.port,
            ssl_context=tls_context if implicit_tls else None,
            **kwargs,
        )
        controller.start()
        controllers.append(controller)
        return server

    yield start
    for c in controllers:
        c.stop()


# --------------------------------------------------------------------------- steps


def topology(
    steps: list[dict[str, Any]] | str,
    *,
    config: dict[str, Any] | None = None,
    connections: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A one-flow integration document around ``steps`` (a list or YAML text)."""
    if isinstance(steps, str):
        steps = yaml.safe_load(textwrap.dedent(steps))
    doc: dict[str, Any] = {
        "apiVersion": "streamflow/v1",
        "kind": "Integration",
        "name": "connector-test",
        "config": config or {},
        "flows": [{"name": "f", "trigger": {"type": "manual"}, "steps": steps}],
    }
    if connections:
        doc["connections"] = connections
    return doc


@dataclass
class StepRunner:
    integration: Integration
    config: dict[str, Any]
    resources: Resources
    session: aiohttp.ClientSession | None = None
    built: dict[str, Step | AsyncStep] = field(default_factory=dict)

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        return self.session

    def step(self, step_id: str) -> Step | AsyncStep:
        if step_id not in self.built:
            flow = self.integration.flows["f"]
            node = flow.nodes[step_id]
            factory = STEPS[node.config.type].factory
            assert factory is not None
            ctx = StepContext(
                self.integration.name, "f", node, self.config, {}, self.http,
                resources=self.resources,
            )  # fmt: skip
            self.built[step_id] = factory(node.config, ctx)
        return self.built[step_id]

    async def run(
        self, step_id: str, payload: Any, *, steps: dict[str, Any] | None = None
    ) -> Outcome:
        impl = self.step(step_id)
        env = Envelope(
            new_execution_id(), self.integration.name, "f", step_id, payload,
            steps=dict(steps or {}),
        )  # fmt: skip
        if isinstance(impl, AsyncStep):
            return await impl.process(env)
        return impl.process(env)

    async def close(self) -> None:
        for impl in self.built.values():
            await impl.close()
        await self.resources.aclose()
        if self.session is not None:
            await self.session.close()


@pytest.fixture
async def step_runner(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[StepRunner]]]:
    """``runner = await step_runner(steps_yaml, config_decl={...}, values={...})``."""
    runners: list[StepRunner] = []

    async def make(
        steps: list[dict[str, Any]] | str,
        *,
        config: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
        connections: dict[str, Any] | None = None,
        directory: Path | None = None,
    ) -> StepRunner:
        where = directory or tmp_path
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"integration-{len(runners)}.yaml"
        path.write_text(yaml.safe_dump(topology(steps, config=config, connections=connections)))
        integration = load_integration(path)
        resolved = resolve_config(integration.config, values or {})
        runner = StepRunner(integration, resolved, Resources())
        runners.append(runner)
        return runner

    yield make
    for r in runners:
        with contextlib.suppress(Exception):
            await r.close()
    await asyncio.sleep(0)


# --------------------------------------------------------------------------- HTTP


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        import orjson

        return orjson.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, str]:
        from urllib.parse import parse_qsl

        return dict(parse_qsl(self.body.decode()))


@dataclass
class HttpServer:
    url: str
    calls: list[Call] = field(default_factory=list)

    def to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


Handler = Callable[[Call], Awaitable[Any]]


@pytest.fixture
async def http_server() -> AsyncIterator[Callable[[Handler], Awaitable[HttpServer]]]:
    """``server = await http_server(handler)``: a real aiohttp server on 127.0.0.1 that
    records every request and answers with ``await handler(call)`` (a web.Response)."""
    from aiohttp import web

    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> HttpServer:
        server = HttpServer("")

        async def dispatch(request: web.Request) -> web.StreamResponse:
            call = Call(
                request.method,
                request.path,
                dict(request.headers),
                dict(request.query),
                await request.read(),
            )
            server.calls.append(call)
            response: web.StreamResponse = await handler(call)
            return response

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", dispatch)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    for r in runners:
        await r.cleanup()


# --------------------------------------------------------------------------- MariaDB, Redis
from tests.integration.servers import (  # noqa: E402, F401  (fixtures, by name)
    mariadb_server,
    mysql_url,
    redis_server,
    redis_url,
)
