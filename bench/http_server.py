"""A local HTTP endpoint for the ``http`` step contestant (127.0.0.1 only).

    python -m bench.http_server [--delay 0.02]   # prints "PORT <n>" once listening

``POST /ingest`` answers 200 ``{"ok": true, "id": <the body's id>}`` after ``--delay``
seconds (default 0: at once); it stops on SIGTERM. With a delay, a client with at most C
requests in flight makes at most C / delay requests per second (Little's law).

``bare_client`` is the reference for the http row: a bare aiohttp client (one session, C
requests in flight, nothing else) against the same server - what this target, the HTTP
client library and the machine allow, below Little's law's bound.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from collections.abc import Sequence
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


def bare_client(url: str, bodies: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    """POST every body to ``url``, ``concurrency`` at a time, over one aiohttp session
    (after a warm-up of ``concurrency`` requests): requests/s, CPU µs per request (this
    process), p50/p99 of a request in ms."""
    import aiohttp

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession() as session:

            async def worker(todo: list[bytes]) -> None:
                while todo:
                    body = todo.pop()
                    t = time.perf_counter()
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                    latencies.append(time.perf_counter() - t)

            warm = list(bodies[:concurrency])
            await asyncio.gather(*(worker(warm) for _ in range(concurrency)))
            latencies.clear()
            todo = list(bodies)
            t0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker(todo) for _ in range(concurrency)))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        latencies.sort()
        n = len(latencies)
        return {
            "requests": n,
            "concurrency": concurrency,
            "requests_per_s": round(n / seconds),
            "cpu_us_per_request": round(cpu / n * 1e6, 1),
            "p50_ms": round(latencies[n // 2] * 1e3, 2),
            "p99_ms": round(latencies[min(n - 1, int(n * 0.99))] * 1e3, 2),
        }

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    asyncio.run(serve(ap.parse_args().delay))
    sys.exit(0)


if __name__ == "__main__":
    main()
