"""BH04: cron across daylight-saving changes, in two zones, on a real (local://) store,
with an injected clock: the schedule leader's own loop (``work``) is driven through both
transitions of each zone without sleeping.

Expected (Debian/Vixie cron): a fixed-time job fires once a day; on the spring-forward
day a time that does not exist fires at the jump; an hourly job fires in both passes of
the repeated hour.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from streamflow.clock import ManualClock
from streamflow.envelope import decode_record
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.triggers.schedule import ScheduleRunner


def epoch_ms(local: str, zone: str) -> int:
    return int(datetime.fromisoformat(local).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


async def fire_between(
    tmp_path: Path, cron: str, zone: str, start: str, end: str, *, jump: bool = False
) -> list[str]:
    """The ticks the leader fires while its clock moves from ``start`` to ``end`` (local
    times in ``zone``): tick by tick, or (``jump``) in one leap, as after a long outage."""
    path = tmp_path / "sched.yaml"
    path.write_text(
        "apiVersion: streamflow/v1\nkind: Integration\nname: dst\nflows:\n"
        f"  - name: tick\n    trigger: {{type: schedule, cron: '{cron}', timezone: {zone},"
        " catch_up: 100}\n"
        "    steps: [{id: t, type: transform, output: {at: '${payload.tick}'}}]\n"
    )
    integration = load_integration(path)
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    try:
        App(integration, transport, {}).deploy()
        plan = compile_plan(integration)
        clock = ManualClock(epoch_ms(start, zone))
        runner = ScheduleRunner(
            FlowIngress(integration, integration.flows["tick"], plan, {}), transport, clock=clock
        )
        await runner.lease.ensure_topic()
        stop_ms = epoch_ms(end, zone)
        for _ in range(100):  # the term starts when its marker is read back
            if await runner.lease.poll(0.1):
                break
        assert runner.lease.leading
        runner.on_term()
        await runner.work()  # a new schedule: starts from `start`
        if jump:
            await clock.advance((stop_ms - clock.now_ms()) / 1000)
        while clock.now_ms() <= stop_ms:
            assert await runner.lease.poll(0), "lost the lease"
            delay = await runner.work()
            if jump and clock.now_ms() == stop_ms and delay > 0:
                break
            await clock.advance(max(int(delay * 1000), 1) / 1000)  # straight to the next tick
        await runner.lease.close()
        topic = plan.flows["tick"].first_topic
        triggers = [decode_record(r).trigger for r in transport.read_all(topic)]
        return [t["tick"] for t in sorted(triggers, key=lambda t: t["epoch"])]  # all partitions
    finally:
        transport.close()


CASES = [
    # zone, transition, cron, from, to, expected ticks
    ("Europe/Berlin", "fall back", "30 2 * * *", "2026-10-24T12:00", "2026-10-26T12:00",
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("Europe/Berlin", "spring forward", "30 2 * * *", "2026-03-28T12:00", "2026-03-30T12:00",
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("America/New_York", "fall back", "30 1 * * *", "2026-10-31T12:00", "2026-11-02T12:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("America/New_York", "spring forward", "30 2 * * *", "2026-03-07T12:00", "2026-03-09T12:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("America/New_York", "fall back", "15 1-2 * * *", "2026-10-31T12:00", "2026-11-01T12:00",
     ["2026-11-01T01:15:00-04:00", "2026-11-01T02:15:00-05:00"]),
]  # fmt: skip


@pytest.mark.parametrize("jump", [False, True], ids=["tick by tick", "after an outage"])
@pytest.mark.parametrize(("zone", "transition", "cron", "start", "end", "expected"), CASES)
async def test_a_fixed_time_job_fires_once_a_day_across_dst(
    tmp_path: Path,
    zone: str,
    transition: str,
    cron: str,
    start: str,
    end: str,
    expected: list[str],
    jump: bool,
) -> None:
    assert await fire_between(tmp_path, cron, zone, start, end, jump=jump) == expected


@pytest.mark.parametrize(
    ("zone", "start", "end", "repeated"),
    [
        ("Europe/Berlin", "2026-10-25T00:30", "2026-10-25T04:30", "02:00:00"),
        ("America/New_York", "2026-11-01T00:30", "2026-11-01T03:30", "01:00:00"),
    ],
)
async def test_an_hourly_job_fires_in_both_passes_of_the_repeated_hour(
    tmp_path: Path, zone: str, start: str, end: str, repeated: str
) -> None:
    ticks = await fire_between(tmp_path, "0 * * * *", zone, start, end)
    assert len(ticks) == len(set(ticks))
    assert sum(1 for t in ticks if t[11:19] == repeated) == 2, ticks
