"""The HTTP endpoints every serving process has: ``/healthz`` and ``/metrics``."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _metrics(_: web.Request) -> web.Response:
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class HttpSite:
    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_http(host: str, port: int) -> HttpSite:
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return HttpSite(runner)
