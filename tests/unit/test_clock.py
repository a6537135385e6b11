"""The clocks: the real one, and the manual one tests move instead of sleeping."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from streamflow.clock import SYSTEM_CLOCK, Clock, ManualClock, SystemClock
from tests.waiting import until, wait_until


def test_the_system_clock_reads_the_real_time() -> None:
    clock: Clock = SYSTEM_CLOCK
    assert isinstance(clock, SystemClock)
    before = time.time_ns() // 1_000_000
    now = clock.now_ms()
    assert before <= now <= time.time_ns() // 1_000_000
    assert abs(clock.time() - time.time()) < 60
    a = clock.monotonic()
    assert clock.monotonic() >= a


async def test_the_system_clock_sleeps_for_real() -> None:
    a = time.monotonic()
    await SYSTEM_CLOCK.asleep(0.01)
    SYSTEM_CLOCK.sleep(0.01)
    assert time.monotonic() - a >= 0.02
    await SYSTEM_CLOCK.asleep(-1)  # a deadline in the past: no wait, no error
    SYSTEM_CLOCK.sleep(-1)


async def test_a_manual_clock_stands_still_until_advanced() -> None:
    clock = ManualClock(start_ms=1_000_000)
    assert clock.now_ms() == 1_000_000 and clock.time() == 1_000.0
    mono = clock.monotonic()
    await asyncio.sleep(0.01)
    assert clock.now_ms() == 1_000_000 and clock.monotonic() == mono
    await clock.advance(0.001)
    assert clock.now_ms() == 1_000_001  # exact: kept in nanoseconds
    await clock.advance(2.5)
    assert clock.now_ms() == 1_002_501 and clock.monotonic() == pytest.approx(mono + 2.501)
    with pytest.raises(ValueError, match="does not go back"):
        await clock.advance(-1)


async def test_advance_wakes_sleepers_in_deadline_order_at_their_own_time() -> None:
    clock = ManualClock(start_ms=0)
    woke: list[tuple[str, int]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        woke.append((name, clock.now_ms()))

    tasks = [
        asyncio.create_task(sleeper(n, s)) for n, s in [("c", 3), ("a", 1), ("b", 2), ("a2", 1)]
    ]
    await until(lambda: clock.sleepers == 4, what="four sleepers")
    await clock.advance(1.5)
    assert woke == [("a", 1000), ("a2", 1000)]  # ties wake in the order they slept
    assert clock.now_ms() == 1500
    await clock.advance(10)
    assert woke[2:] == [("b", 2000), ("c", 3000)]
    assert clock.now_ms() == 11_500
    await asyncio.gather(*tasks)


async def test_a_sleeper_that_sleeps_again_inside_the_span_wakes_again() -> None:
    clock = ManualClock(start_ms=0)
    ticks: list[int] = []

    async def every_second() -> None:
        while True:
            await clock.asleep(1)
            ticks.append(clock.now_ms())

    task = asyncio.create_task(every_second())
    await until(lambda: clock.sleepers == 1, what="the loop to sleep")
    await clock.advance(3.5)
    assert ticks == [1000, 2000, 3000]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await clock.advance(1)  # a cancelled sleeper is skipped
    assert ticks == [1000, 2000, 3000] and clock.sleepers == 0


async def test_a_thread_sleeping_on_a_manual_clock_wakes_when_it_is_advanced() -> None:
    clock = ManualClock(start_ms=0)
    done = threading.Event()

    def worker() -> None:
        clock.sleep(5)
        done.set()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    await clock.advance(4.999)
    assert not done.wait(0.05)
    await clock.advance(0.001)
    wait_until(done.is_set, what="the thread to wake")
    thread.join(5)


async def test_asleep_of_zero_yields_without_waiting_for_an_advance() -> None:
    clock = ManualClock()
    await asyncio.wait_for(clock.asleep(0), 5)
    assert clock.sleepers == 0
