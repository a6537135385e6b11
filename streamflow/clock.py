"""Where the runtime reads the time and waits for it: a ``Clock`` that tests can replace.

Code that decides *when* (the schedule's next tick, a breaker's reset timeout, a retry's
due time and backoff, the ``delay`` step) asks a ``Clock`` instead of ``time``/``asyncio``,
and takes it as a constructor argument or option defaulting to ``SYSTEM_CLOCK``::

    App(integration, transport, config, AppOptions(clock=clock))   # steps, retries, saga
    ScheduleRunner(ingress, transport, clock=clock)
    CircuitBreaker(config, clock=clock)

Tests pass a ``ManualClock`` and move it with ``await clock.advance(seconds)``: time stands
still until then, and sleepers wake in deadline order. Waits on something outside the
process (a broker poll, another process's lock, a server coming up) stay on real time:
they wait for a condition, not for an amount of time.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time: Unix epoch milliseconds (UTC)."""
        ...

    def time(self) -> float:
        """Wall-clock time: Unix epoch seconds (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; never goes back (for durations and deadlines)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds`` (not on the event loop)."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the event loop; other tasks run meanwhile."""
        ...


class SystemClock:
    """The real time: ``time`` and ``asyncio.sleep``."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK: Clock = SystemClock()


class ManualClock:
    """A clock that moves only when told (tests): ``await clock.advance(seconds)``.

    ``start_ms`` is the wall-clock time it shows first (epoch ms; default 2024-01-01 UTC),
    ``monotonic()`` starts at 1000.0 s. ``asleep`` waits until the clock is advanced past
    its deadline; ``advance`` wakes the sleepers one by one in deadline order (ties in the
    order they went to sleep), showing each its own deadline as the time and letting the
    event loop run after each, so a woken task that sleeps again within the advanced span
    is woken too. ``sleep`` (from a thread) blocks until an ``advance`` passes its deadline.
    Time is kept in integer nanoseconds: ``advance(0.001)`` moves ``now_ms()`` by exactly 1.
    """

    def __init__(self, start_ms: int = 1_704_067_200_000) -> None:
        self._wall_ns = start_ms * 1_000_000
        self._mono_ns = 1_000 * 1_000_000_000
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._moved = threading.Condition()

    def now_ms(self) -> int:
        return self._wall_ns // 1_000_000

    def time(self) -> float:
        return self._wall_ns / 1e9

    def monotonic(self) -> float:
        return self._mono_ns / 1e9

    @property
    def sleepers(self) -> int:
        """How many ``asleep`` calls are waiting (a test can wait for a task to sleep)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def next_wake(self) -> float | None:
        """Seconds until the earliest ``asleep`` call wakes; None if none waits."""
        waiting = [deadline for deadline, _, fut in self._sleepers if not fut.done()]
        return (min(waiting) - self._mono_ns) / 1e9 if waiting else None

    def sleep(self, seconds: float) -> None:
        deadline = self._mono_ns + _ns(seconds)
        with self._moved:
            self._moved.wait_for(lambda: self._mono_ns >= deadline)

    async def asleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono_ns + _ns(seconds), next(self._order), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds`` (>= 0), waking due sleepers in order."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back ({seconds} s)")
        target = self._mono_ns + _ns(seconds)
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._move(deadline - self._mono_ns)
            if not fut.done():  # a cancelled sleeper is skipped
                fut.set_result(None)
                for _ in range(10):  # let it run until it waits on something again
                    await asyncio.sleep(0)
        self._move(target - self._mono_ns)
        await asyncio.sleep(0)

    def _move(self, ns: int) -> None:
        with self._moved:
            self._mono_ns += ns
            self._wall_ns += ns
            self._moved.notify_all()


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))
