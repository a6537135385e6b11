"""The in-process store behind memory caches, dedupe, idempotency and rate limits."""

from __future__ import annotations

import asyncio

import pytest

from streamflow.clock import ManualClock
from streamflow.connectors.stores import MemoryStore, wait_for_slot
from streamflow.errors import RetriableError
from tests.waiting import until


async def test_claim_get_set_delete_and_expiry() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    assert await store.claim("k", b"first", 60) is None
    assert await store.claim("k", b"second", 60) == b"first"
    value, ttl = await store.get("k") or (b"", 0.0)
    assert value == b"first" and ttl == 60
    await store.set("short", b"x", 0.05)
    await clock.advance(0.049)
    assert await store.get("short") == (b"x", pytest.approx(0.001))
    await clock.advance(0.001)
    assert await store.get("short") is None
    assert await store.claim("short", b"again", 60) is None  # expired: free again
    await store.delete("k")
    assert await store.get("k") is None


async def test_sliding_window_gives_limit_slots_then_the_wait() -> None:
    store = MemoryStore()
    assert [await store.acquire("w", 2, 10.0) for _ in range(2)] == [0.0, 0.0]
    wait = await store.acquire("w", 2, 10.0)
    assert 9.0 < wait <= 10.0
    assert await store.acquire("other", 2, 10.0) == 0.0  # limits are per key


async def test_wait_for_slot_waits_then_gives_up_past_max_wait() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    assert await wait_for_slot(store, "w", 1, 0.1, 5.0, clock) == 0.0
    waiting = asyncio.create_task(wait_for_slot(store, "w", 1, 0.1, 5.0, clock))
    await until(lambda: clock.sleepers == 1, what="the wait for a slot")
    assert clock.next_wake() == pytest.approx(0.1)
    await clock.advance(0.1)
    assert await waiting == pytest.approx(0.1)
    await wait_for_slot(store, "z", 1, 60.0, 1.0, clock)
    with pytest.raises(RetriableError, match="no slot within 1s"):
        await wait_for_slot(store, "z", 1, 60.0, 1.0, clock)
