"""Waiting in tests: for a condition, never for an amount of time.

A test that needs *time* to pass moves a ``ManualClock`` (``streamflow.clock``).
A test that needs something to *happen* (a record on a topic, a file moved, a leader
elected) polls for it with a generous timeout: the timeout only bounds a failure, so a
slow or loaded machine makes the test slower, never red.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from streamflow.clock import ManualClock
from streamflow.triggers.lease import LeaderTrigger

T = TypeVar("T")

TIMEOUT = 30.0  # seconds; a bound on failure, not an expected duration


def wait_until(
    check: Callable[[], T], timeout: float = TIMEOUT, what: str = "", interval: float = 0.05
) -> T:
    """Call ``check`` until it returns a true value, and return that value (blocking).
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check}")
        time.sleep(interval)
    return value


async def until(
    check: Callable[[], T], timeout: float = TIMEOUT, what: str = "", interval: float = 0.05
) -> T:
    """``wait_until`` on the event loop: other tasks run between the checks."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check}")
        await asyncio.sleep(interval)
    return value


async def next_round(
    clock: ManualClock,
    trigger: LeaderTrigger,
    task: asyncio.Task[None],
    progress: Callable[[], object],
    timeout: float = TIMEOUT,
) -> None:
    """One round of a leader trigger (poll, file) running on ``clock`` as ``task``: wait
    until it pauses, move the clock a millisecond past the time it waits for, and wait until
    it has done the work that fell due: a round is over and ``progress()`` (e.g. its next
    due time) changed. A round woken a hair early (due times are float sums) does nothing;
    its trigger then wakes again on its own (it waits at most half a second of real time)."""

    def paused() -> bool:
        return clock.sleepers > 0 or task.done()

    await until(paused, timeout, "the trigger to pause", interval=0.002)
    assert not task.done(), f"the trigger stopped: {task}"
    rounds, before, wake = trigger.rounds, progress(), clock.next_wake()
    assert wake is not None
    await clock.advance(wake + 0.001)

    def done() -> bool:
        return (trigger.rounds > rounds and progress() != before) or task.done()

    await until(done, timeout, "the work that fell due", interval=0.002)
    assert not task.done(), f"the trigger stopped: {task}"
