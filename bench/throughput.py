"""Drain-a-backlog throughput of StreamFlow flows on one transport.

    python -m bench.throughput --broker local://.bench --events 20000 --steps 1
    python -m bench.throughput --broker kafka://127.0.0.1:9092 --events 100000 --steps 3 --fuse true

Preloads N keyed ~500-byte JSON events (fixed seed, the data of bench/common.py) into the
flow's first topic, then runs every agent of the flow in this process and times until
the last agent has committed all N (the clock starts when the first record is processed,
so consumer-group joins are not counted). Prints events/s, process CPU time per event and peak
RSS as one JSON line. This is the *step-only* reference of bench.run (no kafka trigger,
no kafka_publish); the end-to-end harness is bench/run.py. Not a test: no assertion on
speed anywhere; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import BATCH, PARTITIONS, SEED, event
from bench.topologies import integration_yaml, steps_yaml
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport


def topology(name: str, steps: int, guarantee: str, fuse: bool | None, interval: str) -> str:
    return integration_yaml(
        name,
        trigger="{type: manual}",
        steps=steps_yaml(steps),
        guarantee=guarantee,
        commit_interval=interval,
        fuse=fuse,
        max_batch=BATCH,
        partitions=PARTITIONS,
    )


def events(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """The same events as bench.run's backlog (bench/common.py), as payloads."""
    rnd = random.Random(seed)
    return [event(i, rnd) for i in range(n)]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    broker: str,
    n: int,
    steps: int,
    guarantee: str,
    fuse: bool | None,
    interval: str,
    step_events: bool,
    name: str | None = None,
) -> dict[str, Any]:
    name = name or f"bench-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.yaml"
        path.write_text(topology(name, steps, guarantee, fuse, interval))
        integration = load_integration(path)
    transport = open_transport(broker)
    app = App(integration, transport, {}, AppOptions(step_events=step_events, worker_id="bench"))
    app.deploy()
    flow = integration.flows["f"]
    ingress = FlowIngress(integration, flow, app.plan, {})
    producer = transport.producer()
    for payload in events(n):
        ingress.send(producer, ingress.envelope(payload))
    producer.flush()
    producer.close()
    agents = app.build_agents()
    last = agents[-1]
    stop = asyncio.Event()
    c0, t0 = cpu(), time.perf_counter()
    task = asyncio.create_task(app.run(stop))
    # the clock starts at the first record processed: consumer-group joins are not draining
    first: tuple[float, float] | None = None
    while last.committed < n:
        if task.done():
            task.result()
        if first is None and any(a.processed for a in agents):
            first = (cpu(), time.perf_counter())
        await asyncio.sleep(0.01)
    t1, c1 = time.perf_counter(), cpu()
    c_first, t_first = first or (c0, t0)
    seconds = t1 - t_first
    used = c1 - c_first
    stop.set()
    await task
    transport.close()
    if broker.startswith("kafka://"):
        groups = [a.group for fp in app.plan.flows.values() for a in fp.all_agents()]
        drop_topics(broker.removeprefix("kafka://"), [t.name for t in app.plan.topics], groups)
    return {
        "broker": broker.split(":", maxsplit=1)[0],
        "events": n,
        "steps": steps,
        "fuse": fuse,
        "guarantee": guarantee,
        "commit_interval": interval,
        "step_events": step_events,
        "agents": len(agents),
        "startup_s": round(t_first - t0, 3),
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
        "cpu_us_per_event": round(used / n * 1e6, 1),
        "rss_peak_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """VmHWM (ru_maxrss also counts the parent's RSS when this process was vfork-spawned)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def drop_topics(bootstrap: str, names: list[str], groups: list[str]) -> None:
    """Delete the flow's topics and consumer groups after a Kafka run (best effort)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})  # referenced until the end
    for fut in admin.delete_topics(names).values():
        with contextlib.suppress(KafkaException):
            fut.result(30)
    for fut in admin.delete_consumer_groups(groups).values():
        with contextlib.suppress(KafkaException):
            fut.result(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=None, help="default: a fresh local:// directory")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument(
        "--fuse", choices=("true", "false"), help="write `fuse:` (default: the flow default)"
    )
    ap.add_argument(
        "--guarantee", default="at_least_once", choices=("at_least_once", "exactly_once")
    )
    ap.add_argument("--commit-interval", default="100ms")
    ap.add_argument("--no-step-events", action="store_true")
    ap.add_argument("--name", help="integration name (default: bench-<random>)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = args.broker or f"local://{tmp}"
        result = asyncio.run(
            measure(
                broker,
                args.events,
                args.steps,
                args.guarantee,
                None if args.fuse is None else args.fuse == "true",
                args.commit_interval,
                not args.no_step_events,
                args.name,
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
