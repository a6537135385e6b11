"""Scale-out on a real Kafka broker: two `streamflow worker` processes share a flow's
partitions; when one goes away (SIGTERM or SIGKILL) the other takes its partitions over
and every execution still completes.

Who holds what is read from the workers' own INFO logs (``group G: assigned T[p], …``);
completion from the ``sf.<integration>.executions`` topic.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streamflow.observability.events import decode_all
from streamflow.transport.base import Consumer, TopicPartition
from streamflow.transport.kafka import KafkaTransport
from tests.integration.workers import Worker, run_cli, wait_for

PARTITIONS = 6
BATCH = 300
TIMEOUT = 90.0  # against hangs only (a SIGKILLed member holds its partitions ~10 s)

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: work
    partitions: {partitions}
    key: ${{payload.id}}
    fuse: false  # one agent per step: two consumer groups to share and hand over
    trigger: {{type: manual}}
    steps:
      - id: shape
        type: transform
        output: {{id: "${{payload.id}}", n: "${{payload.n}}"}}
      - id: tag
        type: transform
        merge: true
        output: {{double: "${{payload.n * 2}}"}}
"""


class Completions:
    """Follows the executions topic; counts ``completed`` events per execution id."""

    def __init__(self, transport: KafkaTransport, topic: str, group: str) -> None:
        self.consumer: Consumer = transport.consumer(group, [topic])
        self.completed: Counter[str] = Counter()
        self.other: Counter[str] = Counter()

    def poll(self) -> None:
        for rec in self.consumer.poll(2000, 0.2):
            for ev in decode_all(rec.value):
                if ev.event == "completed":
                    self.completed[ev.execution_id] += 1
                elif ev.event in ("failed", "filtered"):
                    self.other[f"{ev.event}: {ev.error}"] += 1

    def wait_all(self, ids: list[str], workers: list[Worker]) -> None:
        def done() -> bool:
            self.poll()
            assert not self.other, f"unexpected ends: {self.other}"
            return all(self.completed[i] >= 1 for i in ids)

        wait_for(
            done,
            TIMEOUT,
            f"{len(ids)} executions to complete",
            lambda: (
                f"{sum(1 for i in ids if self.completed[i])} completed\n"
                + "\n".join(f"[{w.worker_id}] {w.log_tail(15)}" for w in workers)
            ),
        )

    def close(self) -> None:
        self.consumer.close()


def _produce(topology: Path, broker: str, tmp_path: Path, start: int) -> list[str]:
    events = tmp_path / f"events-{start}.ndjson"
    events.write_bytes(
        b"\n".join(orjson.dumps({"id": f"e-{i}", "n": i}) for i in range(start, start + BATCH))
    )
    res = run_cli(
        "produce", str(topology), "--flow", "work", "--input", str(events), "--broker", broker
    )
    assert res.returncode == 0, res.stderr
    ids = res.stdout.split()
    assert len(ids) == BATCH and len(set(ids)) == BATCH
    assert f"produced {BATCH} events" in res.stderr
    return ids


class Pair:
    """Two workers of one topology and what their logs say they hold."""

    def __init__(self, topology: Path, broker: str, groups: list[str], tmp_path: Path) -> None:
        self.a = Worker(topology, broker, "a", tmp_path, log_level="INFO")
        self.b = Worker(topology, broker, "b", tmp_path, log_level="INFO")
        self.groups = groups
        self.every = {g: {(g, p) for p in range(PARTITIONS)} for g in groups}  # group = topic

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.worker_id}:\n{w.log_tail(30)}" for w in (self.a, self.b))

    def holds_all(self, w: Worker) -> bool:
        return all(w.assignments(g) == self.every[g] for g in self.groups)

    def split(self) -> bool:
        for g in self.groups:
            ha, hb = self.a.assignments(g), self.b.assignments(g)
            if not ha or not hb or ha & hb or ha | hb != self.every[g]:
                return False
        return True

    def stop(self) -> None:
        self.a.stop(30)
        self.b.stop(30)


@pytest.mark.kafka
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_two_workers_share_partitions_and_one_takes_over(
    stop_signal: signal.Signals, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    name = f"scale-{unique}"
    broker = f"kafka://{kafka_bootstrap}"
    topology = tmp_path / "integration.yaml"
    topology.write_text(TOPOLOGY.format(name=name, partitions=PARTITIONS))
    res = run_cli("deploy", str(topology), "--broker", broker)
    assert res.returncode == 0, res.stderr

    groups = [f"sf.{name}.work.shape", f"sf.{name}.work.tag"]
    done = Completions(KafkaTransport(kafka_bootstrap), f"sf.{name}.executions", f"chk.{unique}")
    pair = Pair(topology, broker, groups, tmp_path)
    a, b = pair.a, pair.b
    try:
        a.start()
        wait_for(lambda: pair.holds_all(a), TIMEOUT, "worker a to hold everything", pair.logs)
        b.start()
        wait_for(pair.split, TIMEOUT, "both workers to hold a share of every group", pair.logs)
        share_b: dict[str, set[TopicPartition]] = {g: b.assignments(g) for g in groups}
        print(
            f"\nsplit of {groups[0]}: a={sorted(p for _, p in a.assignments(groups[0]))} "
            f"b={sorted(p for _, p in share_b[groups[0]])}"
        )

        first = _produce(topology, broker, tmp_path, 0)
        done.wait_all(first, [a, b])

        second = _produce(topology, broker, tmp_path, BATCH)
        mark = len(a.snapshot())
        b.signal(stop_signal)
        code = b.wait(60)
        if stop_signal == signal.SIGTERM:
            assert code == 0, b.log_tail()
            assert "streamflow: stopped cleanly" in b.snapshot()
        else:
            assert code == -signal.SIGKILL
        started = time.monotonic()
        wait_for(lambda: pair.holds_all(a), TIMEOUT, "worker a to take over", pair.logs)
        took = time.monotonic() - started
        for g in groups:
            assert a.ever_assigned(g, since=mark) >= share_b[g], "a did not get b's partitions"
        done.wait_all(first + second, [a, b])

        third = _produce(topology, broker, tmp_path, 2 * BATCH)
        done.wait_all(third, [a])
        assert a.alive(), a.log_tail()
    finally:
        pair.stop()
        done.close()

    ids = first + second + third
    dupes = {i: c for i, c in done.completed.items() if c > 1}
    print(
        f"[{stop_signal.name}] takeover after {took:.1f}s; {len(ids)} executions completed, "
        f"{len(dupes)} completed more than once (at-least-once redelivery)"
    )
    assert set(done.completed) == set(ids), "completions of executions never produced"
