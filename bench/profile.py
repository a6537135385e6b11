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
import os
import pstats
import subprocess
import sys
import tempfile
import threading
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


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds (user + system) of each thread of this process, by thread id, with its
    name (Python names its threads for the OS since 3.14; librdkafka's are ``rdk:*``)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[str, float]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def _by_kind(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
             main: int, n: int) -> str:  # fmt: skip
    """CPU µs per event of the drain, per kind of thread."""
    kinds: dict[str, float] = {}
    for tid, (name, cpu) in after.items():
        spent = cpu - before.get(tid, (name, 0.0))[1]
        kind = "event loop (Python)" if tid == main else (
            "librdkafka " + name.split(":")[1].rstrip("0123456789#") if name.startswith("rdk:")
            else "other Python threads (I/O executor, watch)"
        )  # fmt: skip
        kinds[kind] = kinds.get(kind, 0.0) + spent
    total = sum(kinds.values())
    lines = [f"{k:45} {v / n * 1e6:7.2f} µs/event" for k, v in sorted(kinds.items())]
    return "\n".join([*lines, f"{'total':45} {total / n * 1e6:7.2f} µs/event"])


async def _measure(
    task: asyncio.Task[None], stop: asyncio.Event, watch: OutputWatch, n: int,
    prof: cProfile.Profile | None, report: list[str],
) -> float:  # fmt: skip
    if prof is not None:
        prof.enable()
    before = thread_cpu()
    t0 = time.perf_counter()
    while sum(await asyncio.to_thread(watch.ends)) < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - t0
    report.append(_by_kind(before, thread_cpu(), threading.get_native_id(), n))
    if prof is not None:
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


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.profile")
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--fuse", choices=("true", "false"))
    ap.add_argument("--events-mode", choices=("summary", "lifecycle", "steps"))
    ap.add_argument("--sort", default="tottime")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--threads", action="store_true",
        help="no cProfile: CPU per event of each kind of thread (event loop, librdkafka ...)",
    )  # fmt: skip
    ap.add_argument(
        "--http", action="store_true",
        help="the http row's flow: POST each event to bench.http_server (20 ms), concurrency 16",
    )  # fmt: skip
    return ap.parse_args()


def _print(args: argparse.Namespace, seconds: float, prof: cProfile.Profile | None,
           report: list[str]) -> None:  # fmt: skip
    rate = args.events / seconds
    if prof is None:
        print(f"{args.events} events in {seconds:.2f} s ({rate:,.0f}/s); CPU by thread:")
        print(report[0])
        return
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats(args.sort).print_stats(args.top)
    print(f"{args.events} events in {seconds:.2f} s under cProfile ({rate:,.0f}/s)")
    print(out.getvalue())


def main() -> None:
    args = _arguments()
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
    prof = None if args.threads else cProfile.Profile()
    report: list[str] = []

    async def run() -> float:
        # the backlog lands while the app warms up; the profile covers the drain
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        while sum(await asyncio.to_thread(watch.ends)) < 1:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(produce_all, bootstrap, source, data[1:])
        return await _measure(task, stop, watch, args.events + 1, prof, report)

    try:
        seconds = asyncio.run(run())
    finally:
        watch.close()
        transport.close()
        admin.delete_matching(tag)
        if server is not None:
            server.terminate()
            server.wait(10)
    _print(args, seconds, prof, report)


if __name__ == "__main__":
    main()
