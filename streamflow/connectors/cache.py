"""Response cache (memory, then Redis; single flight) and shared rate limits for steps.

``cache: {ttl, key, store: memory|redis, connection}``: a lookup checks this step's memory
first, then Redis (a hit there fills memory for the time Redis still keeps it); a miss
calls, and a cacheable result is written through both. Concurrent misses for one key in
one process make one call: the others wait for its result (or its error). Across
workers, the first to miss claims ``<key>:loading`` in Redis and calls; the others poll
Redis for its result (up to the step's timeout, then call themselves). A Redis that
fails makes the cache a miss (logged, masked): the call is made, the step does not fail.

``rate_limit: {requests, per, store, connection, key, max_wait}``: at most ``requests``
calls in any ``per`` window (sliding), counted in the store: in memory per process, in
Redis for every worker of the integration (Redis's clock). A call over the limit waits
for a slot; only beyond ``max_wait`` does it fail (retriable).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import Field

from streamflow import exactjson
from streamflow.connectors.stores import Store, StoreOptions, open_store, wait_for_slot
from streamflow.errors import RetriableError
from streamflow.steps.base import StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration
from streamflow.util.secrets import Masker

log = logging.getLogger("streamflow.cache")
Result = dict[str, Any]


class ResponseCache(StoreOptions):
    ttl: Duration = Field(description="how long a 2xx result is reused, e.g. 5m")
    key: str | None = Field(None, description="template; default: method, URL and query")
    max_entries: int = Field(1000, ge=1, le=1_000_000, description="memory level, per step")


class RateLimit(StoreOptions):
    requests: int = Field(ge=1, le=1_000_000, description="calls allowed per window")
    per: Duration = Field(1.0, description="the window, e.g. 1s, 1m")
    key: str | None = Field(
        None, description="template naming the limit (default: the connection, else the step)"
    )
    max_wait: Duration = Field(
        60.0, description="wait at most this long for a slot, then fail (retriable)"
    )


def _scope_for_store(ctx: StepContext, scope: Mapping[str, Any]) -> dict[str, Any]:
    return {"config": scope.get("config", ctx.config), "env": ctx.env}


class TwoLevelCache:
    """One step's cache: an LRU in memory in front of an optional shared store."""

    def __init__(
        self, cfg: ResponseCache, ctx: StepContext, roots: frozenset[str], lock_ttl: float = 30.0
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.lock_ttl = lock_ttl  # how long other workers wait for one loading a key
        self.memory: OrderedDict[str, tuple[float, Result]] = OrderedDict()
        self.flights: dict[str, asyncio.Future[Result]] = {}
        self.template = compile_value(cfg.key, roots=roots) if cfg.key is not None else None
        self.masker = Masker()
        self.prefix = f"cache:{ctx.integration}:{ctx.flow}:{ctx.step_id}:"

    def key(self, default: str, scope: Mapping[str, Any]) -> str:
        return str(self.template.render(scope)) if self.template is not None else default

    async def get_or_load(
        self,
        key: str,
        scope: Mapping[str, Any],
        load: Callable[[], Awaitable[Result]],
        cacheable: Callable[[Result], bool],
    ) -> Result:
        hit = self.memory.get(key)
        if hit is not None and hit[0] > time.monotonic():
            self.memory.move_to_end(key)
            return hit[1]
        flight = self.flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight)
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self.flights[key] = fut
        try:
            result = await self._load(key, scope, load, cacheable)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            fut.set_result(result)
            return result
        finally:
            del self.flights[key]

    async def _load(
        self,
        key: str,
        scope: Mapping[str, Any],
        load: Callable[[], Awaitable[Result]],
        cacheable: Callable[[Result], bool],
    ) -> Result:
        store = await self._store(scope)
        shared = self.prefix + hashlib.sha256(key.encode()).hexdigest()
        if store is None:
            return self._fresh(key, await load(), cacheable)
        found = await self._read(store, shared)
        if found is not None:
            return self._hit(key, found)
        lock = shared + ":loading"
        try:  # one worker loads; the others wait for its result in Redis
            owner = await store.claim(lock, uuid.uuid4().hex.encode(), self.lock_ttl)
        except RetriableError:
            owner = None
        if owner is not None:
            found = await self._wait_for(store, shared, lock)
            if found is not None:
                return self._hit(key, found)
        try:
            result = self._fresh(key, await load(), cacheable)
            if cacheable(result):
                try:
                    await store.set(shared, exactjson.dumps(result), self.cfg.ttl)
                except (RetriableError, TypeError, ValueError) as exc:
                    log.warning("%s: cache write failed: %s", self.ctx.step_id, exc)
            return result
        finally:
            if owner is None:
                with contextlib.suppress(RetriableError):
                    await store.delete(lock)

    async def _read(self, store: Store, shared: str) -> tuple[bytes, float] | None:
        try:
            return await store.get(shared)
        except RetriableError as exc:
            log.warning("%s: cache read failed, calling: %s", self.ctx.step_id, exc)
            return None

    async def _wait_for(self, store: Store, shared: str, lock: str) -> tuple[bytes, float] | None:
        """Another worker is loading ``shared``: its value once written, or None when the
        loader gave up (its lock is gone, or outlived ``lock_ttl``): then load here."""
        deadline = time.monotonic() + self.lock_ttl
        pause = 0.02
        while time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            found = await self._read(store, shared)
            if found is not None:
                return found
            try:
                if await store.get(lock) is None:
                    return await self._read(store, shared)
            except RetriableError:
                return None
        return None

    def _hit(self, key: str, found: tuple[bytes, float]) -> Result:
        result: Result = exactjson.loads(found[0])
        self._remember(key, result, min(found[1], self.cfg.ttl))
        return result

    def _fresh(self, key: str, result: Result, cacheable: Callable[[Result], bool]) -> Result:
        if cacheable(result):
            self._remember(key, result, self.cfg.ttl)
        return result

    async def _store(self, scope: Mapping[str, Any]) -> Store | None:
        if self.cfg.store != "redis":
            return None
        try:
            return await open_store(
                self.cfg, self.ctx.resources, _scope_for_store(self.ctx, scope), self.masker
            )
        except RetriableError as exc:
            log.warning("%s: cache store unavailable, calling: %s", self.ctx.step_id, exc)
            return None

    def _remember(self, key: str, result: Result, ttl: float) -> None:
        self.memory[key] = (time.monotonic() + ttl, result)
        self.memory.move_to_end(key)
        while len(self.memory) > self.cfg.max_entries:
            self.memory.popitem(last=False)


class RateLimiter:
    """Waits for a slot of ``rate_limit`` before each call."""

    def __init__(
        self, cfg: RateLimit, ctx: StepContext, shared_name: str | None, roots: frozenset[str]
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.template = compile_value(cfg.key, roots=roots) if cfg.key is not None else None
        name = f"connection:{shared_name}" if shared_name else f"step:{ctx.flow}:{ctx.step_id}"
        self.default = f"rl:{ctx.integration}:{name}"
        self.masker = Masker()

    async def wait(self, scope: Mapping[str, Any]) -> float:
        """Seconds waited for the slot; RetriableError past ``max_wait`` or if the store
        cannot be reached (the limit is never skipped)."""
        store = await open_store(
            self.cfg, self.ctx.resources, _scope_for_store(self.ctx, scope), self.masker
        )
        key = self.default
        if self.template is not None:
            key = f"rl:{self.ctx.integration}:key:{self.template.render(scope)}"
        return await wait_for_slot(store, key, self.cfg.requests, self.cfg.per, self.cfg.max_wait)
