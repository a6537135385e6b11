"""SIGKILL of a `streamflow worker` in the middle of splits being joined back and of windows
being filled, on both transports, at-least-once and exactly-once.

After restarts every split is joined once with all of its children's results, every
window is emitted once, and every event is accounted for (in a window or recorded as late).
Exactly-once: a read_committed reader of the sink sees no duplicate. At-least-once: a
duplicate emission is possible in principle (the output and the state change are not one
write) and is counted; an incomplete join never is.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streamflow.envelope import decode_record
from streamflow.observability.events import decode_all
from streamflow.transport import open_transport
from streamflow.transport.base import TopicSpec, Transport
from tests.integration.workers import Worker, wait_for

ORDERS, LINES = 60, 20
JOIN = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: join
    partitions: 3
    guarantee: {guarantee}
    key: ${{payload.order}}
    max_batch: 20
    concurrency: 2
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - {{id: lines, type: split, items: "${{payload.lines}}"}}
      - {{id: slow, type: delay, duration: 15ms}}
      - {{id: price, type: transform, output: {{line: "${{payload}}", price: "${{payload * 2}}"}}}}
      - {{id: collect, type: aggregate}}
      - id: total
        type: transform
        output: {{order: "${{trigger.key}}", lines: "${{pluck(payload.items, 'line')}}"}}
      - {{id: out, type: kafka_publish, topic: {sink}, key: "${{payload.order}}"}}
"""
PARALLEL_JOIN = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: join
    partitions: 3
    guarantee: {guarantee}
    key: ${{payload.order}}
    max_batch: 20
    concurrency: 2
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - id: fan
        type: parallel
        branches:
          count:
            - {{id: slow, type: delay, duration: 400ms}}  # slow enough to be caught
            - {{id: lo, type: transform, output: "${{len(payload.lines)}}"}}
          high: [{{id: hi, type: transform, output: "${{payload.lines}}"}}]
      - id: total
        type: transform
        output:
          order: ${{payload.order}}
          lines: ${{steps.fan.high}}
          n: ${{steps.fan.count}}
      - {{id: out, type: kafka_publish, topic: {sink}, key: "${{payload.order}}"}}
"""
WINDOW = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: window
    partitions: 3
    guarantee: {guarantee}
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - id: per-second
        type: aggregate
        key: ${{payload.sensor}}
        complete: {{window: 1s, grace: 500ms}}
        late: dead_letter    # a late event is kept (with its payload) where the test sees it
      - id: out
        type: kafka_publish
        topic: {sink}
        key: ${{payload.key}}
        value:
          sensor: ${{payload.key}}
          window: ${{payload.window.start_ms}}
          ns: ${{pluck(payload.items, 'n')}}
"""


def produce(transport: Transport, topic: str, events: list[tuple[bytes, Any]]) -> None:
    producer = transport.producer()
    for key, value in events:
        producer.send(topic, orjson.dumps(value), key)
    producer.flush()
    producer.close()


def sink_values(transport: Transport, topic: str) -> list[Any]:
    return [orjson.loads(r.value) for r in transport.read_all(topic)]


def setup(
    broker_url: str, tmp_path: Path, unique: str, template: str, guarantee: str
) -> tuple[Transport, Path, str, str, str]:
    name, source, sink = f"crash-{unique}", f"crash-in-{unique}", f"crash-out-{unique}"
    topo = tmp_path / "t.yaml"
    topo.write_text(template.format(name=name, guarantee=guarantee, source=source, sink=sink))
    transport = open_transport(broker_url)
    transport.ensure_topics([TopicSpec(source, 3), TopicSpec(sink, 3)])
    return transport, topo, name, source, sink


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
@pytest.mark.parametrize("pattern", ["split", "parallel"])
def test_sigkill_mid_join(
    broker_url: str, tmp_path: Path, unique: str, guarantee: str, pattern: str
) -> None:
    template = JOIN if pattern == "split" else PARALLEL_JOIN
    transport, topo, name, source, sink = setup(broker_url, tmp_path, unique, template, guarantee)
    orders = {f"o{i}": list(range(i, i + LINES)) for i in range(ORDERS)}
    produce(transport, source, [(k.encode(), {"order": k, "lines": v}) for k, v in orders.items()])
    worker = Worker(topo, broker_url, "w0", tmp_path)
    kills = 0
    try:
        for at in (3, 20):  # kill while joins are half done (children in flight, state kept)
            worker.start()
            wait_for(lambda at=at: len(sink_values(transport, sink)) >= at, 180,
                     f"{at} joins", worker.log_tail)  # fmt: skip
            worker.kill()
            kills += 1
        assert len({v["order"] for v in sink_values(transport, sink)}) < ORDERS, "killed too late"
        worker.start()
        wait_for(lambda: len({v["order"] for v in sink_values(transport, sink)}) >= ORDERS, 240,
                 "every join", worker.log_tail)  # fmt: skip
        time.sleep(3)  # anything more would show now
    finally:
        worker.stop()
    out = sink_values(transport, sink)
    counts = Counter(v["order"] for v in out)
    for v in out:  # complete, in index order: all children's (both branches') results
        assert v["lines"] == orders[v["order"]], v["order"]
        assert pattern == "split" or v["n"] == LINES
    assert set(counts) == set(orders)
    duplicates = sum(counts.values()) - len(counts)
    transport_name = broker_url.split(":", maxsplit=1)[0]
    print(f"\n{transport_name} {guarantee}: {kills} kills, {duplicates} duplicate joins")
    if guarantee == "exactly_once":
        assert duplicates == 0, counts.most_common(3)
    events = [e for r in transport.read_all(f"sf.{name}.executions") for e in decode_all(r.value)]
    parents_done = {e.execution_id for e in events if e.event == "completed" and not e.parent}
    assert len(parents_done) == ORDERS  # every parent execution ended (after its join)
    transport.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_sigkill_mid_window(broker_url: str, tmp_path: Path, unique: str, guarantee: str) -> None:
    transport, topo, name, source, sink = setup(broker_url, tmp_path, unique, WINDOW, guarantee)
    worker = Worker(topo, broker_url, "w0", tmp_path)
    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        batch = [
            (f"s{i % 4}".encode(), {"sensor": f"s{i % 4}", "n": i}) for i in range(sent, sent + n)
        ]
        produce(transport, source, batch)
        sent += n

    def late_ns() -> list[int]:  # late events are dead-lettered with their envelope
        dlq = transport.read_all(f"sf.{name}.window.dlq")
        return [decode_record(r).payload["n"] for r in dlq]

    def accounted() -> int:
        return sum(len(v["ns"]) for v in sink_values(transport, sink)) + len(late_ns())

    try:
        for _ in range(3):  # a stream over several windows; a kill while windows are open
            worker.start()
            emitted, sends = len(sink_values(transport, sink)), 0
            deadline = time.monotonic() + 120
            # go on until this start has closed a window and others are open, then kill
            while sends < 8 or len(sink_values(transport, sink)) <= emitted:
                assert time.monotonic() < deadline, worker.log_tail()
                send(10)
                sends += 1
                time.sleep(0.25)
            worker.kill()
            send(20)  # arrives while nobody runs the flow
        worker.start()
        wait_for(lambda: accounted() >= sent, 240, "every window", worker.log_tail)
        time.sleep(3)  # anything more would show now
    finally:
        worker.stop()

    out = sink_values(transport, sink)
    windows = Counter((v["sensor"], v["window"]) for v in out)
    seen = Counter(n for v in out for n in v["ns"])
    late = late_ns()
    assert set(seen) | set(late) == set(range(sent))  # nothing lost
    for v in out:  # a window holds only its own sensor's events
        assert all(f"s{n % 4}" == v["sensor"] for n in v["ns"])
    if guarantee == "exactly_once":
        assert max(windows.values()) == 1, windows.most_common(3)  # each window closes once
        assert max(seen.values()) == 1 and not set(seen) & set(late)
        assert sum(seen.values()) + len(late) == sent
    dup = sum(windows.values()) - len(windows)
    print(f"\n{guarantee}: {len(windows)} windows ({dup} twice), {len(late)} late, {sent} sent")
    transport.close()


def test_state_moves_with_its_partitions_between_two_workers(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    """Two workers share the join (exactly-once); one is SIGKILLed (its partitions and their
    state go to the other), then comes back (some move back): every join once, complete."""
    broker_url = f"kafka://{kafka_bootstrap}"
    transport, topo, name, source, sink = setup(broker_url, tmp_path, unique, JOIN, "exactly_once")
    n = ORDERS * 3
    orders = {f"o{i}": list(range(i, i + LINES)) for i in range(n)}
    events = [(k.encode(), {"order": k, "lines": v}) for k, v in orders.items()]
    # the first half now, the rest after the kill: the kill and the return land mid-stream
    # by construction, however fast or slow the machine
    produce(transport, source, events[: n // 2])
    w0 = Worker(topo, broker_url, "w0", tmp_path, log_level="INFO")
    w1 = Worker(topo, broker_url, "w1", tmp_path, log_level="INFO")
    group = f"sf.{name}.join.collect"

    def joined() -> int:
        return len(sink_values(transport, sink))

    try:
        w0.start()
        w1.start()
        wait_for(lambda: bool(w1.assignments(group)), 120, "w1 holds part of the aggregate",
                 w1.log_tail)  # fmt: skip
        wait_for(lambda: joined() >= 5, 180, "5 joins", w0.log_tail)
        w1.kill()  # w1's partitions, and the groups kept in them, move to w0
        produce(transport, source, events[n // 2 :])
        wait_for(lambda: joined() >= 25, 240, "25 joins", w0.log_tail)
        w1.start()  # a rebalance again: partitions move back with their state
        wait_for(lambda: len({v["order"] for v in sink_values(transport, sink)}) >= n, 240,
                 "every join", lambda: w0.log_tail() + "\n" + w1.log_tail())  # fmt: skip
        time.sleep(3)
    finally:
        w0.stop()
        w1.stop()
    out = sink_values(transport, sink)
    counts = Counter(v["order"] for v in out)
    assert set(counts) == set(orders) and max(counts.values()) == 1, counts.most_common(3)
    for v in out:
        assert v["lines"] == orders[v["order"]], v["order"]
    transport.close()
