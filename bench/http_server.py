"""A local HTTP endpoint for the ``http`` step contestant (127.0.0.1 only).

    python -m bench.http_server          # prints "PORT <n>" once listening

``POST /ingest`` answers 200 ``{"ok": true, "id": <the body's id>}``; it stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import orjson
from aiohttp import web


async def ingest(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(
        body=orjson.dumps({"ok": True, "id": body.get("id")}), content_type="application/json"
    )


async def serve() -> None:
    app = web.Application()
    app.router.add_post("/ingest", ingest)
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
    asyncio.run(serve())
    sys.exit(0)


if __name__ == "__main__":
    main()
