"""A local HTTP endpoint for the ``http`` step contestant (127.0.0.1 only).

    python -m bench.http_server [--delay 0.02]   # prints "PORT <n>" once listening

``POST /ingest`` answers 200 ``{"ok": true, "id": <the body's id>}`` after ``--delay``
seconds (default 0: at once); it stops on SIGTERM. With a delay, a client with at most C
requests in flight makes at most C / delay requests per second (Little's law).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
from typing import Any

import orjson
from aiohttp import web


def handler(delay: float) -> Any:
    async def ingest(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(
            body=orjson.dumps({"ok": True, "id": body.get("id")}), content_type="application/json"
        )

    return ingest


async def serve(delay: float) -> None:
    app = web.Application()
    app.router.add_post("/ingest", handler(delay))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    asyncio.run(serve(ap.parse_args().delay))
    sys.exit(0)


if __name__ == "__main__":
    main()
