"""Drain-a-backlog throughput of StreamFlow flows on one transport.

    python -m bench.throughput --broker local://.bench --events 20000 --steps 1
    python -m bench.throughput --broker kafka://127.0.0.1:9092 --events 100000 --steps 3 --fuse

Preloads N keyed ~500-byte JSON events (fixed seed) into the flow's first topic, then
runs every agent of the flow in this process and times until the last agent has
processed all N. Prints events/s and process CPU time per event. This is not a test:
no assertion on speed anywhere; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.ingest import FlowIngress
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport

STEPS_1 = """      - id: enrich
        type: transform
        output: {id: "${payload.id}", user: "${payload.user}", total: "${payload.amount * 1.2}",
                 note: "${payload.note}"}
"""
STEPS_3 = (
    STEPS_1
    + """      - {id: keep, type: filter, when: "${payload.total >= 0}"}
      - id: shape
        type: transform
        output: {id: "${payload.id}", gross: "${payload.total}", who: "${upper(payload.user)}"}
"""
)


def topology(name: str, steps: int, guarantee: str, fuse: bool, interval: str) -> str:
    return f"""apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: f
    partitions: 6
    key: ${{payload.user}}
    guarantee: {guarantee}
    commit_interval: {interval}
    fuse: {str(fuse).lower()}
    max_batch: 1000
    trigger: {{type: manual}}
    steps:
{STEPS_1 if steps == 1 else STEPS_3}"""


def events(n: int, seed: int = 42) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    return [
        {
            "id": i,
            "user": f"user-{rnd.randrange(1000)}",
            "amount": round(rnd.random() * 500, 2),
            "note": "x" * 380,
        }
        for i in range(n)
    ]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def measure(
    broker: str, n: int, steps: int, guarantee: str, fuse: bool, interval: str, step_events: bool
) -> dict[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:6]}"
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
    while last.committed < n:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - t0
    used = cpu() - c0
    stop.set()
    await task
    transport.close()
    return {
        "broker": broker.split(":", maxsplit=1)[0],
        "events": n,
        "steps": steps,
        "fuse": fuse,
        "guarantee": guarantee,
        "commit_interval": interval,
        "step_events": step_events,
        "agents": len(agents),
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
        "cpu_us_per_event": round(used / n * 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default=None, help="default: a fresh local:// directory")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--fuse", action="store_true")
    ap.add_argument(
        "--guarantee", default="at_least_once", choices=("at_least_once", "exactly_once")
    )
    ap.add_argument("--commit-interval", default="100ms")
    ap.add_argument("--no-step-events", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = args.broker or f"local://{tmp}"
        result = asyncio.run(
            measure(
                broker,
                args.events,
                args.steps,
                args.guarantee,
                args.fuse,
                args.commit_interval,
                not args.no_step_events,
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
