"""CPU per record of the fused bench pipeline in Python alone: no broker, no client.

    python -m bench.chain_cpu --steps 1            # µs of CPU per record (fastest pass)
    python -m bench.chain_cpu --steps 3 --profile  # and the cProfile of a second pass

Builds the topology of the ``sf-1step``/``sf-3step`` rows (``kafka`` trigger -> steps ->
``kafka_publish``, default options) and hands the bench events (bench/common.py) to the
trigger agent's processor as records, as the agent loop does, timing ``handle_sync`` with
``time.process_time``. What it leaves out - polling, producing, committing, librdkafka's
threads - is what ``bench.run`` adds; what it measures is the framework's own work per
event, free of the broker's and other processes' noise on a shared machine.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench.common import SEED, dataset
from bench.topologies import STEP_1, STEP_3, publish_step
from streamflow.runtime.app import App, AppOptions
from streamflow.runtime.trigger import KafkaTriggerProcessor
from streamflow.topology.loader import load_integration
from streamflow.transport.base import Record
from streamflow.transport.local import LocalTransport

BATCH = 1000  # records per batch, the flow's default max_batch
TOPO = """apiVersion: streamflow/v1
kind: Integration
name: chaincpu
flows:
  - name: f
    trigger: {{type: kafka, topic: bench-in}}
    steps:
{steps}"""


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.chain_cpu")
    ap.add_argument("--steps", type=int, choices=(1, 3), default=1)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5, help="passes; the fastest is reported")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chaincpu"))
    steps = (STEP_3 if args.steps == 3 else STEP_1) + publish_step("bench-out")
    (work / "t.yaml").write_text(TOPO.format(steps=steps))
    app = App(load_integration(work / "t.yaml"), LocalTransport(work / "b"), {}, AppOptions())
    procs = [a.processor for a in app.build_agents()]
    trigger = next(p for p in procs if isinstance(p, KafkaTriggerProcessor))
    records = [
        Record("bench-in", 0, i, key, value, None, 0)
        for i, (key, value) in enumerate(dataset(args.events, SEED))
    ]
    trigger.summarize()  # as the agent's lean loop: a batch's end records in one
    for rec in records[:1000]:  # warm-up
        trigger.handle_sync(rec)
    trigger.take_summary()
    passes = []
    for _ in range(args.repeat):  # the fastest pass: the least disturbed by the machine
        started = time.process_time()
        for i in range(0, len(records), BATCH):
            for rec in records[i : i + BATCH]:
                trigger.handle_sync(rec)
            trigger.flush_metrics()
            trigger.take_summary()
        passes.append((time.process_time() - started) / len(records) * 1e6)
    print(
        f"{args.steps}-step: {min(passes):.2f} µs CPU per record "
        f"(fastest of {args.repeat} passes of {len(records)}; slowest {max(passes):.2f})"
    )
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for rec in records:
            trigger.handle_sync(rec)
        trigger.take_summary()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
