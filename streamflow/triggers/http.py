"""The HTTP endpoints every serving process has: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` is liveness (the process answers); ``/readyz`` is readiness (the broker is
reachable; 503 otherwise), so an orchestrator routes webhooks only to a gateway that can
accept them. The gateway adds its webhook routes to the same application. In a process
with agents, ``/readyz`` also lists under ``agents`` each agent the supervisor restarted
(``state``: running/restarting/stopped, ``restarts``, last ``error``); a restarting agent
does not make the process unready (what it consumes waits, durably, in its topic).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

ReadyCheck = Callable[[], Awaitable[bool]]
Details = Callable[[], dict[str, Any]]


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_probe_routes(
    app: web.Application, ready: ReadyCheck | None = None, agents: Details | None = None
) -> None:
    """GET /healthz, /metrics and, given a check, /readyz (with ``agents``' report)."""
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    if ready is not None:

        async def readyz(_: web.Request) -> web.Response:
            extra = {"agents": agents()} if agents is not None else {}
            if await ready():
                return web.json_response({"status": "ready", **extra})
            return web.json_response({"status": "broker unreachable", **extra}, status=503)

        app.router.add_get("/readyz", readyz)


class HttpSite:
    def __init__(self, runner: web.AppRunner, port: int = 0) -> None:
        self.runner = runner
        self.port = port

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, host: str, port: int) -> HttpSite:
    """Serve ``app`` on host:port (port 0: any free port; ``HttpSite.port`` says which)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = int(server.sockets[0].getsockname()[1])
    return HttpSite(runner, bound)


async def start_http(
    host: str, port: int, ready: ReadyCheck | None = None, agents: Details | None = None
) -> HttpSite:
    app = web.Application()
    add_probe_routes(app, ready, agents)
    return await serve_app(app, host, port)
