"""Waiting in tests: for a condition, never for an amount of time.

A test that needs *time* to pass moves a ``ManualClock`` (``streamflow.runtime.clock``).
A test that needs something to *happen* (a record on a topic, a file moved, a leader
elected) polls for it with a generous timeout: the timeout only bounds a failure, so a
slow or loaded machine makes the test slower, never red.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

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
