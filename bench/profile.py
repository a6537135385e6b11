"""Profile StreamFlow's hot path in-process: kafka trigger -> steps -> kafka_publish.

    python -m bench.profile --events 50000 --steps 1            # cProfile, top 30 by tottime
    python -m bench.profile --events 50000 --fuse false --sort cumulative
    python -m bench.profile --events 5000 --http           # the http row's flow (20 ms target)

Preloads N events of bench/common.py on a fresh topic, runs the bench pipeline (the
topology of bench/run.py's StreamFlow rows) in this process under cProfile until the output
topic holds N records, then prints events/s (slowed by the profiler: compare profiles,
not rates) and the profile of the event-loop thread (where steps run; the agents' I/O
threads - polls, flushes, commits - are not in it). docs/performance.md quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.broker import Admin, OutputWatch, bootstrap_servers, produce_all
from bench.common import BATCH, PARTITIONS, dataset
from bench.topologies import http_step, integration_yaml, publish_step, steps_yaml
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport


async def _measure(
    task: asyncio.Task[None], stop: asyncio.Event, watch: OutputWatch, n: int,
    prof: cProfile.Profile,
) -> float:  # fmt: skip
    prof.enable()
    t0 = time.perf_counter()
    while sum(await asyncio.to_thread(watch.ends)) < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - t0
    prof.disable()
    stop.set()
    await task
    return seconds


def http_target() -> tuple[subprocess.Popen[str], str]:
    """bench.http_server answering after the http row's delay, and the http step for it."""
    from bench.run import HTTP_DELAY_S

    server = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", "--delay", str(HTTP_DELAY_S)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert server.stdout is not None
    return server, http_step(f"http://127.0.0.1:{server.stdout.readline().split()[1]}/ingest")


def topology(args: argparse.Namespace, tag: str, source: str, sink: str, steps: str) -> Any:
    """The bench pipeline as an Integration (bench/run.py's StreamFlow rows)."""
    from bench.run import HTTP_CONCURRENCY

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        path.write_text(
            integration_yaml(
                tag, trigger=f"{{type: kafka, topic: {source}}}",
                steps=steps + publish_step(sink),
                fuse=None if args.fuse is None else args.fuse == "true",
                events=args.events_mode, max_batch=BATCH, partitions=PARTITIONS,
                concurrency=HTTP_CONCURRENCY if args.http else None,
            )
        )  # fmt: skip
        return load_integration(path)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--fuse", choices=("true", "false"))
    ap.add_argument("--events-mode", choices=("summary", "lifecycle", "steps"))
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--http", action="store_true",
        help="the http row's flow: POST each event to bench.http_server (20 ms), concurrency 16",
    )  # fmt: skip
    args = ap.parse_args()
    bootstrap = bootstrap_servers()
    tag = f"prof{uuid.uuid4().hex[:6]}"
    source, sink = f"{tag}.in", f"{tag}.out"
    admin = Admin(bootstrap)
    admin.create([source, sink], PARTITIONS)
    data = dataset(args.events + 1)
    produce_all(bootstrap, source, data[:1])  # the warm-up event
    server, steps = None, steps_yaml(args.steps)
    if args.http:
        server, steps = http_target()
    integration = topology(args, tag, source, sink, steps)
    transport = open_transport(f"kafka://{bootstrap}")
    app = App(integration, transport, {}, AppOptions(worker_id="profile"))
    app.deploy()
    watch = OutputWatch(bootstrap, sink, PARTITIONS)
    prof = cProfile.Profile()

    async def run() -> float:
        # the backlog lands while the app warms up; the profile covers the drain
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        while sum(await asyncio.to_thread(watch.ends)) < 1:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(produce_all, bootstrap, source, data[1:])
        return await _measure(task, stop, watch, args.events + 1, prof)

    try:
        seconds = asyncio.run(run())
    finally:
        watch.close()
        transport.close()
        admin.delete_matching(tag)
        if server is not None:
            server.terminate()
            server.wait(10)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
    rate = args.events / seconds
    print(f"{args.events} events in {seconds:.2f} s under cProfile ({rate:,.0f}/s)")
    print(out.getvalue())


if __name__ == "__main__":
    main()
