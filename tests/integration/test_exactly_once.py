"""The acceptance test: exactly-once through `kill -9` on a real Kafka broker.

A flow reads numbered events from an outside topic, squares them and publishes the result
to another outside topic, partitioned by the number. One `streamflow worker` runs it and
is SIGKILLed several times at random points while output grows; each time it restarts
under the same ``--worker-id``, so its transactional ids fence the dead process and abort
its open transactions. A ``read_committed`` reader of the output topic must then see
every number exactly once (``exactly_once``), or at least once (``at_least_once``; the
duplicates are counted and printed). A second test runs two workers on a live stream
through joins, a SIGKILL and a SIGTERM (partitions change hands mid-transaction).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from streamflow.transport.base import TopicSpec
from streamflow.transport.kafka import KafkaTransport
from tests.integration.workers import Worker

N = 20_000
PARTITIONS = 6
KILLS = 4
OVERALL_TIMEOUT = 300.0  # against hangs only: each kill costs up to a session timeout
MIN_PROGRESS = 300  # records a (re)started worker must append to the sink before a kill
SETTLE = 6.0  # seconds of watching for extra messages after the last expected one

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: squares
    guarantee: {guarantee}
    partitions: {partitions}
    key: ${{payload.n}}
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - id: square
        type: transform
        output: {{n: "${{payload.n}}", sq: "${{payload.n * payload.n}}"}}
      - id: publish
        type: kafka_publish
        topic: {sink}
        key: ${{payload.n}}
"""


def _produce_numbers(
    transport: KafkaTransport,
    topic: str,
    per_second: float = 0.0,
    allowed: Callable[[], int] | None = None,
) -> None:
    """Every number once; at ``per_second`` (a live stream) or all at once. ``allowed``:
    how many numbers may be produced so far (the feeder waits for it to grow)."""
    producer = transport.producer()
    started = time.monotonic()
    for i in range(N):
        while allowed is not None and i >= allowed():
            producer.flush(60)
            time.sleep(0.05)
            started = time.monotonic() - i / per_second if per_second else started
        producer.send(topic, orjson.dumps({"n": i}), str(i).encode())
        if per_second and i % 100 == 99:
            producer.flush(60)
            time.sleep(max(0.0, started + (i + 1) / per_second - time.monotonic()))
    producer.flush(120)
    producer.close()
    assert sum(transport.end_offsets(topic).values()) == N


@dataclass
class Action:
    at: int  # once this many outputs are visible
    label: str
    act: Callable[[], None]
    ready: Callable[[], bool] = lambda: True  # and this holds


class ScriptedRun:
    """Reads the sink ``read_committed`` while workers run, and performs each action
    (kill, start, stop a worker) once output has reached its count and the workers have
    written output of their own since the previous action."""

    def __init__(
        self, transport: KafkaTransport, workers: list[Worker], sink: str, group: str
    ) -> None:
        self.transport = transport
        self.workers = workers
        self.sink = sink
        self.reader = transport.consumer(group, [sink])
        self.seen: Counter[int] = Counter()
        self.bad: list[bytes] = []
        self.done: list[str] = []
        self.todo: list[Action] = []
        self.log_end = 0  # sink's log end at the previous action
        self.over = False  # until_all_seen returned or raised
        self.fed = 0  # what a gated feeder was allowed when the last action ran

    def allowed(self) -> int:
        """How much input a gated feeder may have produced: up to a little past the next
        pending action's count, so input never runs out before every action has run
        (however long a rebalance takes on a loaded machine)."""
        pending = list(self.todo)  # a copy: the script pops from it meanwhile
        if self.over or not pending:  # the script ended (done or failed): feed the rest
            return N
        # and at least N // 20 more than before the previous action: two actions close
        # together must not leave the restarted worker too little input to show progress
        return min(N, max(pending[0].at, self.fed) + N // 20)

    def read(self, timeout: float) -> None:
        for rec in self.reader.poll(2000, timeout):
            doc = orjson.loads(rec.value)
            if doc.get("sq") != doc["n"] * doc["n"] or rec.key != str(doc["n"]).encode():
                self.bad.append(rec.value)
            self.seen[doc["n"]] += 1

    def sink_end(self) -> int:
        return sum(self.transport.end_offsets(self.sink).values())

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.worker_id}:\n{w.log_tail()}" for w in self.workers)

    def until_all_seen(self, actions: list[Action], timeout: float) -> None:
        try:
            self._until_all_seen(actions, timeout)
        finally:
            self.over = True  # a gated feeder finishes instead of waiting for ever

    def _until_all_seen(self, actions: list[Action], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self.todo = todo = sorted(actions, key=lambda a: a.at)
        while len(self.seen) < N:
            if time.monotonic() > deadline:
                missing = sorted(set(range(N)) - set(self.seen))
                raise AssertionError(
                    f"only {len(self.seen)} of {N} numbers after {timeout:g}s "
                    f"(done: {self.done}; first missing: {missing[:10]})\n{self.logs()}"
                )
            for w in self.workers:
                if w.proc is not None and w.proc.returncode is None and not w.alive():
                    raise AssertionError(f"worker {w.worker_id} exited on its own\n{self.logs()}")
            self.read(0.2)
            total = sum(self.seen.values())
            if (
                todo
                and total >= todo[0].at
                and todo[0].ready()
                # the running workers wrote output (not only the reader's backlog)
                and self.sink_end() >= self.log_end + MIN_PROGRESS
            ):
                self.fed = self.allowed()
                action = todo.pop(0)
                action.act()
                self.done.append(f"{action.label} at {total} outputs")
                self.log_end = self.sink_end()
        assert not todo, f"all output seen before these ran: {[a.label for a in todo]}"

    def settle(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.read(0.5)

    def close(self) -> None:
        for w in self.workers:
            w.stop(10)
        self.reader.close()

    def report(self, label: str, seconds: float) -> tuple[dict[int, int], int]:
        duplicates = {n: c for n, c in self.seen.items() if c > 1}
        extra = sum(c - 1 for c in duplicates.values())
        print(
            f"\n[{label}] {N} events, {len(self.done)} actions ({'; '.join(self.done)}), "
            f"all seen after {seconds:.1f}s, "
            f"{extra} duplicate message(s) over {len(duplicates)} number(s)"
        )
        assert not self.bad, f"wrong square or key: {self.bad[:5]}"
        missing = sorted(set(range(N)) - set(self.seen))
        assert not missing, f"{len(missing)} missing: {missing[:20]}"
        return duplicates, extra


def _setup(
    kafka_bootstrap: str, unique: str, tmp_path: Path, guarantee: str, *, feed: bool = True
) -> tuple[KafkaTransport, Path, str]:
    transport = KafkaTransport(kafka_bootstrap)
    source, sink = f"eos.{unique}.in", f"eos.{unique}.out"
    transport.ensure_topics([TopicSpec(source, PARTITIONS), TopicSpec(sink, PARTITIONS)])
    topology = tmp_path / "integration.yaml"
    topology.write_text(
        TOPOLOGY.format(
            name=f"eos-{unique}",
            guarantee=guarantee,
            partitions=PARTITIONS,
            source=source,
            sink=sink,
        )
    )
    if feed:
        _produce_numbers(transport, source)
    return transport, topology, sink


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_kill_9_loses_and_doubles_nothing(
    guarantee: str, kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    transport, topology, sink = _setup(kafka_bootstrap, unique, tmp_path, guarantee, feed=False)
    worker = Worker(topology, f"kafka://{kafka_bootstrap}", "w0", tmp_path)
    seed = int(unique, 16)
    # kill at random output counts; restart at once under the same --worker-id
    kill_at = sorted(random.Random(seed).sample(range(N // 20, N * 2 // 3), KILLS))

    def kill_and_restart() -> None:
        worker.kill()
        worker.start()

    run = ScriptedRun(transport, [worker], sink, f"eos-check.{unique}")
    run.todo = actions = [Action(n, "kill -9", kill_and_restart) for n in kill_at]
    # input as fast as the worker takes it, gated by the script: it stops a little past
    # the next kill's count until that kill ran, so no kill finds the input drained
    # (a fast worker drained all 20,000 numbers before a restarted one was killed)
    feeder = threading.Thread(
        target=_produce_numbers, args=(transport, f"eos.{unique}.in", 0.0, run.allowed)
    )
    started = time.monotonic()
    try:
        worker.start()
        feeder.start()
        run.until_all_seen(actions, OVERALL_TIMEOUT)
        finished = time.monotonic() - started
        run.settle(SETTLE)  # the worker keeps running: nothing more may show up
        assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        code = worker.stop(60)
        assert code == 0, f"worker did not stop cleanly ({code}):\n{worker.log_tail()}"
    finally:
        if feeder.ident is not None:
            feeder.join(120)
        run.close()

    duplicates, extra = run.report(f"{guarantee} seed={seed:x}", finished)
    assert len(run.done) == KILLS
    if guarantee == "exactly_once":
        assert not duplicates, f"{extra} duplicates, e.g. {sorted(duplicates.items())[:10]}"


@pytest.mark.kafka
@pytest.mark.slow
def test_exactly_once_through_rebalances(kafka_bootstrap: str, unique: str, tmp_path: Path) -> None:
    """Two workers on a live stream: the second joins (the first hands partitions over
    inside its open transaction), is SIGKILLed while it holds partitions, comes back,
    then the first leaves with SIGTERM and the second takes everything."""
    transport, topology, sink = _setup(
        kafka_bootstrap, unique, tmp_path, "exactly_once", feed=False
    )
    # one agent per step (three consumer groups, transactions across hops change hands);
    # the kill -9 test above runs the fused default (one agent)
    unfused = topology.read_text().replace("    trigger:", "    fuse: false\n    trigger:")
    topology.write_text(unfused)
    source = f"eos.{unique}.in"
    broker = f"kafka://{kafka_bootstrap}"
    w0 = Worker(topology, broker, "w0", tmp_path, log_level="INFO")
    w1 = Worker(topology, broker, "w1", tmp_path, log_level="INFO")
    run = ScriptedRun(transport, [w0, w1], sink, f"eos-check.{unique}")
    groups = [f"sf.eos-{unique}.squares.{g}" for g in ("trigger", "square", "publish")]

    def holds_some(w: Worker) -> Callable[[], bool]:
        return lambda: all(w.assignments(g) for g in groups)

    def term_w0() -> None:
        assert w0.stop(60) == 0, w0.log_tail()

    actions = [
        Action(N // 10, "w1 joins", w1.start),
        Action(N * 3 // 10, "kill -9 w1", w1.kill, holds_some(w1)),
        Action(N * 4 // 10, "w1 restarts", w1.start),
        Action(N * 6 // 10, "SIGTERM w0", term_w0, holds_some(w1)),
    ]
    # a live stream (~70 s) gated by the script: the feeder stops a little past the next
    # action's count until that action ran, so each rebalance lands while input still
    # flows, however slow the machine
    run.todo = sorted(actions, key=lambda a: a.at)
    feeder = threading.Thread(
        target=_produce_numbers, args=(transport, source, N / 70, run.allowed)
    )
    started = time.monotonic()
    try:
        w0.start()
        feeder.start()
        run.until_all_seen(actions, OVERALL_TIMEOUT)
        finished = time.monotonic() - started
        run.settle(SETTLE)
        assert w1.alive(), w1.log_tail()
        # the restarted w1 ended up with every partition of every agent
        for g in groups:
            assert {p for _, p in w1.assignments(g)} == set(range(PARTITIONS)), run.logs()
    finally:
        if feeder.ident is not None:
            feeder.join(120)
        run.close()

    duplicates, extra = run.report("exactly_once, 2 workers", finished)
    assert not duplicates, f"{extra} duplicates, e.g. {sorted(duplicates.items())[:10]}"
