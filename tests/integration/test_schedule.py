"""The schedule trigger: tick arithmetic, and one firing per tick with several processes.

The Kafka case runs two real ``streamflow gateway`` processes on one topology with
``every: 1s`` and kills the leader (SIGKILL) in the middle, then starts it again: the
ticks on the flow's first topic must be consecutive, none twice (execution ids are
``<flow>-<tick epoch>``), over at least 10 ticks. The documented tolerance is what
``catch_up`` allows: here it is large, so no tick may be missing at all.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamflow.clock import ManualClock
from streamflow.envelope import decode_record
from streamflow.ingress import FlowIngress
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.topology.triggers import ScheduleTrigger
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.triggers.schedule import ScheduleRunner, Ticks, tick_id
from tests.waiting import until, wait_until


def schedule_topology(tmp_path: Path, name: str, trigger: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: tick
    partitions: 1
    trigger: {trigger}
    steps:
      - {{id: note, type: transform, output: {{at: "${{payload.tick}}"}}}}
"""
    )
    return path


def fired_ticks(transport: Transport, integration: Integration) -> list[int]:
    """Tick epochs of the envelopes on the flow's first topic, in topic order."""
    topic = compile_plan(integration).flows["tick"].first_topic
    out = []
    for rec in transport.read_all(topic):
        env = decode_record(rec)
        assert env.execution_id == f"tick-{env.trigger['epoch']}"
        out.append(int(env.trigger["epoch"]))
    return out


def assert_consecutive_once(ticks: list[int], step: int = 1) -> None:
    assert len(ticks) == len(set(ticks)), f"a tick fired twice: {sorted(ticks)}"
    s = sorted(ticks)
    gaps = [(a, b) for a, b in itertools.pairwise(s) if b - a != step]
    assert not gaps, f"ticks missing between {gaps}"


# --------------------------------------------------------------------------- ticks


def test_interval_ticks_are_aligned_to_the_epoch() -> None:
    t = Ticks(ScheduleTrigger(type="schedule", every="15s"))
    assert t.next_after(1_000_000) == 1_005_000
    assert t.next_after(1_005_000) == 1_020_000
    ticks, skipped = t.due(1_000_000, 1_062_000, limit=10)
    assert ticks == [1_005_000, 1_020_000, 1_035_000, 1_050_000] and not skipped
    ticks, skipped = t.due(1_000_000, 1_062_000, limit=2)
    assert ticks == [1_035_000, 1_050_000] and skipped
    assert t.due(1_050_000, 1_062_000, limit=5) == ([], False)
    assert tick_id("f", 1_050_000) == "f-1050"


def test_cron_ticks_follow_the_time_zone_and_daylight_saving() -> None:
    t = Ticks(ScheduleTrigger(type="schedule", cron="30 2 * * *", timezone="Europe/Berlin"))
    # 2024-03-30 12:00 UTC; the next 02:30 Berlin would be on the 31st, a day without
    # 02:30 (clocks jump from 02:00 to 03:00): that day's tick fires at the jump
    start = 1_711_800_000_000
    first = t.next_after(start)
    assert t.iso(first) == "2024-03-31T03:00:00+02:00"
    second = t.next_after(first)
    assert t.iso(second) == "2024-04-01T02:30:00+02:00"
    ticks, skipped = t.due(start, second, limit=5)
    assert ticks == [first, second] and not skipped


def test_a_bad_schedule_is_a_validation_error(tmp_path: Path) -> None:
    from streamflow.errors import ValidationFailed

    for trigger, message in [
        ("{type: schedule, cron: '61 * * * *'}", "not a valid cron"),
        ("{type: schedule, every: 1s, cron: '* * * * *'}", "exactly one of"),
        ("{type: schedule, every: 10s, timezone: Mars/Olympus}", "unknown time zone"),
    ]:
        with pytest.raises(ValidationFailed, match=message):
            load_integration(schedule_topology(tmp_path, "bad", trigger))


# --------------------------------------------------------------------------- local


START_MS = 1_700_000_000_500  # half a second past a tick of `every: 1s`


def runner(integration: Integration, transport: Transport, clock: ManualClock) -> ScheduleRunner:
    flow = integration.flows["tick"]
    ingress = FlowIngress(integration, flow, compile_plan(integration), {})
    return ScheduleRunner(ingress, transport, clock=clock)


async def started(r: ScheduleRunner) -> None:
    """Wait until ``r`` leads and has recorded where its schedule stands."""
    await until(lambda: r.lease.leading and not r.starting, what="the runner to lead")


async def tick(clock: ManualClock, count: Callable[[], int], expected: int) -> None:
    """One second passes; the leader fires the tick that fell due."""
    await clock.advance(1)
    await until(lambda: count() >= expected, what=f"{expected} ticks")


async def test_two_local_runners_fire_each_tick_once_across_a_hand_over(
    tmp_path: Path,
) -> None:
    integration = load_integration(
        schedule_topology(tmp_path, "sched-local", "{type: schedule, every: 1s, catch_up: 100}")
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    from streamflow.runtime.app import App

    App(integration, transport, {}).deploy()
    clock = ManualClock(START_MS)
    count = lambda: len(fired_ticks(transport, integration))  # noqa: E731
    a, b = runner(integration, transport, clock), runner(integration, transport, clock)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(a.run(stop_a))
    await started(a)  # a takes the lock first
    task_b = asyncio.create_task(b.run(stop_b))
    for n in range(1, 5):
        await tick(clock, count, n)
    assert a.lease.leading and not b.lease.leading
    stop_a.set()  # the leader stops; b takes over and catches up
    await task_a
    await clock.advance(3)  # three ticks fall due while nobody leads
    await started(b)
    await until(lambda: count() >= 7, what="b to catch up the three missed ticks")
    await tick(clock, count, 8)
    assert b.lease.leading
    stop_b.set()
    await task_b
    ticks = fired_ticks(transport, integration)
    assert len(ticks) == 8, ticks
    assert_consecutive_once(ticks)
    transport.close()


async def test_a_restart_catches_up_at_most_catch_up_missed_ticks(tmp_path: Path) -> None:
    integration = load_integration(
        schedule_topology(tmp_path, "sched-catch", "{type: schedule, every: 1s, catch_up: 1}")
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    from streamflow.runtime.app import App

    App(integration, transport, {}).deploy()
    clock = ManualClock(START_MS)
    count = lambda: len(fired_ticks(transport, integration))  # noqa: E731
    stop = asyncio.Event()
    first = runner(integration, transport, clock)
    task = asyncio.create_task(first.run(stop))
    await started(first)
    await tick(clock, count, 1)
    await tick(clock, count, 2)
    stop.set()
    await task
    before = fired_ticks(transport, integration)
    assert before, "the first run fired nothing"
    await clock.advance(3.2)  # down for three ticks or more
    restarted_at = clock.time()
    stop = asyncio.Event()
    second = runner(integration, transport, clock)
    task = asyncio.create_task(second.run(stop))
    await started(second)
    stop.set()
    await task
    after = fired_ticks(transport, integration)[len(before) :]
    # one catch-up tick, the latest missed one (two would start a second earlier); the
    # older missed ticks are skipped
    assert after, "nothing fired after the restart"
    assert after == [int(restarted_at)], (after, restarted_at)
    assert after[0] - before[-1] >= 3, (before, after)
    assert_consecutive_once(after)
    transport.close()


# --------------------------------------------------------------------------- kafka


class Gateway:
    """A `streamflow gateway` subprocess whose stderr is kept."""

    def __init__(self, topology: Path, broker: str, log: Path) -> None:
        self.topology, self.broker, self.log = topology, broker, log
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    def start(self) -> None:
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli.main", "--log-level", "INFO", "gateway",
             str(self.topology), "--broker", self.broker, "--port", "0"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with self.log.open("a") as f:
            for line in proc.stderr:
                self.lines.append(line)
                f.write(line)

    def leading(self) -> bool:
        """Whether its last word on leadership says it leads."""
        state = False
        for line in list(self.lines):
            if ".schedule: leading" in line:
                state = True
            elif ".schedule: no longer leading" in line:
                state = False
        return state

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()


@pytest.mark.kafka
def test_two_gateway_processes_fire_each_tick_once_across_a_leader_crash(
    kafka_bootstrap: str, tmp_path: Path, unique: str, gateways: list[Gateway]
) -> None:
    name = f"sched-{unique}"
    topology = schedule_topology(tmp_path, name, "{type: schedule, every: 1s, catch_up: 60}")
    integration = load_integration(topology)
    broker = f"kafka://{kafka_bootstrap}"
    transport = open_transport(broker)
    a = Gateway(topology, broker, tmp_path / "a.log")
    b = Gateway(topology, broker, tmp_path / "b.log")
    gateways.extend([a, b])
    a.start()
    b.start()
    try:
        wait_until(lambda: a.leading() or b.leading(), 60, "a leader")
        wait_until(lambda: len(fired_ticks(transport, integration)) >= 5, 60, "5 ticks")
        leader, follower = (a, b) if a.leading() else (b, a)
        assert not follower.leading()  # one leader
        leader.kill()  # no goodbye: its partition moves after the session timeout
        killed_at = len(fired_ticks(transport, integration))
        time.sleep(1.0)
        leader.start()  # a new member: either process may lead next
        wait_until(lambda: a.leading() or b.leading(), 60, "a new leader")
        wait_until(
            lambda: len(fired_ticks(transport, integration)) >= max(killed_at + 5, 10),
            60,
            "ticks after the crash",
        )
    finally:
        a.stop()
        b.stop()
    ticks = fired_ticks(transport, integration)
    assert len(ticks) >= 10, ticks
    assert_consecutive_once(ticks)
    transport.close()
