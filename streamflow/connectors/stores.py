"""Key-value stores behind response caches, ``dedupe``, webhook idempotency and shared
rate limits: ``memory`` (this process) or ``redis`` (a named ``redis`` connection,
shared by every worker and gateway process of the integration).

```yaml
connections:
  cache: {type: redis, url: "${config.redis_url}", pool: {max_size: 20}}
steps:
  - {id: rates, type: http, url: ..., cache: {ttl: 5m, store: redis, connection: cache},
     rate_limit: {requests: 100, per: 1s, store: redis, connection: cache}}
```

A redis connection whose URL is ``memory://`` uses the memory store instead (flow tests
and local runs without a Redis). Needs Redis 5 or later (its Lua scripts read Redis's
clock). Redis failures raise ``RetriableError`` with the password masked; the callers
decide whether to fail or degrade (a cache degrades).
"""

from __future__ import annotations

import collections
import uuid
from typing import Any, Literal, Protocol

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.connectors.connections import RedisConnection, check_connection
from streamflow.errors import RetriableError
from streamflow.steps.base import Resources
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, Model
from streamflow.util.secrets import Masker, safe_dsn

MEMORY_URL = "memory://"
DAY = 86_400.0


class StoreOptions(Model):
    """Where state is kept: ``store: memory`` (this process) or ``store: redis`` with
    ``connection: <a redis connection>`` (shared by every process)."""

    store: Literal["memory", "redis"] = Field(
        "memory", description="memory (this process) or redis (shared; needs connection)"
    )
    connection: str | None = Field(None, description="a `connections:` entry of type redis")
    redis: RedisConnection | None = Field(
        None, description="filled from `connection` when the topology loads"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("connection"), str):
            return data
        ctx = info.context if isinstance(info.context, dict) else {}
        conn = (ctx.get("connections") or {}).get(data["connection"])
        if not isinstance(conn, RedisConnection):
            return data  # _known reports it
        data = {"store": "redis", **data}
        data.setdefault("redis", conn.model_dump(by_alias=True))
        return data

    @field_validator("connection")
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        check_connection(v, info, ("redis",))
        return v

    @model_validator(mode="after")
    def _complete(self) -> StoreOptions:
        if self.store == "redis" and self.redis is None:
            raise ValueError("store: redis needs connection: <a connection of type redis>")
        return self


class Idempotency(StoreOptions):
    """Webhook ``Idempotency-Key``: a request repeating a key seen within ``ttl`` is
    answered with the first one's execution id and not run again."""

    ttl: Duration = Field(DAY, description="how long a key is remembered, e.g. 24h")

    def __repr__(self) -> str:  # as the reference docs show the default
        where = f", connection: {self.connection}" if self.connection else ""
        return f"{{ttl: {self.ttl:g}s, store: {self.store}{where}}}"


class Store(Protocol):
    """What the features need; keys are prefixed by the store, values are bytes."""

    async def get(self, key: str) -> tuple[bytes, float] | None:
        """The value and its remaining lifetime in seconds, or None."""

    async def set(self, key: str, value: bytes, ttl: float) -> None: ...

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        """Set ``key`` if absent (None: claimed); else leave it and return its value."""

    async def delete(self, key: str) -> None: ...

    async def acquire(self, key: str, limit: int, per: float) -> float:
        """Take one of ``limit`` slots per ``per`` seconds (sliding window): 0.0 when
        taken, else the seconds to wait before asking again."""


class MemoryStore:
    """In-process store (one per App or gateway); expiry and windows on ``clock``."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self.items: dict[str, tuple[float, bytes]] = {}
        self.windows: dict[str, collections.deque[float]] = {}

    def _live(self, key: str) -> tuple[float, bytes] | None:
        item = self.items.get(key)
        if item is not None and item[0] <= self.clock.monotonic():
            del self.items[key]
            return None
        return item

    async def get(self, key: str) -> tuple[bytes, float] | None:
        item = self._live(key)
        return None if item is None else (item[1], item[0] - self.clock.monotonic())

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.items[key] = (self.clock.monotonic() + ttl, value)
        if len(self.items) > 100_000:  # sweep expired entries now and then
            for k in [k for k, (exp, _) in self.items.items() if exp <= self.clock.monotonic()]:
                del self.items[k]

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        item = self._live(key)
        if item is not None:
            return item[1]
        await self.set(key, value, ttl)
        return None

    async def delete(self, key: str) -> None:
        self.items.pop(key, None)

    async def acquire(self, key: str, limit: int, per: float) -> float:
        now = self.clock.monotonic()
        window = self.windows.setdefault(key, collections.deque())
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) < limit:
            window.append(now)
            return 0.0
        return max(0.001, window[0] + per - now)


# KEYS[1] the window; ARGV limit, window (microseconds), unique member. Redis's own clock,
# so every process agrees. Returns 0 (taken) or the microseconds to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
"""


# KEYS[1]; ARGV value, ttl (ms): the key's value if it exists, else set it and return nil
# (atomic on any Redis version, unlike SET NX GET which needs 7.0)
_CLAIM = """
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""


class RedisStore:
    """A redis-py asyncio client (its own pool) under ``prefix``."""

    def __init__(self, client: Any, prefix: str, where: str, masker: Masker) -> None:
        self.client = client
        self.prefix = prefix
        self.where = where
        self.masker = masker
        self.script = client.register_script(_ACQUIRE)
        self.claim_script = client.register_script(_CLAIM)

    async def _do(self, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            text = self.masker.mask(f"{self.where}: {exc.__class__.__name__}: {exc}")
            raise RetriableError(text) from None

    async def get(self, key: str) -> tuple[bytes, float] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.prefix + key)
        pipe.pttl(self.prefix + key)
        value, pttl = await self._do(pipe.execute())
        if value is None:
            return None
        return bytes(value), (pttl / 1000 if pttl and pttl > 0 else 0.001)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        await self._do(self.client.set(self.prefix + key, value, px=max(1, int(ttl * 1000))))

    async def claim(self, key: str, value: bytes, ttl: float) -> bytes | None:
        old = await self._do(
            self.claim_script(keys=[self.prefix + key], args=[value, max(1, int(ttl * 1000))])
        )
        return None if old is None else bytes(old)

    async def delete(self, key: str) -> None:
        await self._do(self.client.delete(self.prefix + key))

    async def acquire(self, key: str, limit: int, per: float) -> float:
        wait = await self._do(
            self.script(
                keys=[self.prefix + key], args=[limit, int(per * 1_000_000), uuid.uuid4().hex]
            )
        )
        return int(wait) / 1_000_000

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.aclose()


def render_redis(conn: RedisConnection, scope: dict[str, Any]) -> dict[str, Any]:
    """The connection's fields with ``${config.*}`` / ``${env.*}`` rendered."""
    rendered = compile_value(conn.model_dump(exclude={"pool"})).render(scope)
    assert isinstance(rendered, dict)
    return rendered


async def open_store(
    opts: StoreOptions | None, resources: Resources, scope: dict[str, Any], masker: Masker
) -> Store:
    """The store ``opts`` names: the App's memory store, or a Redis client shared by
    every user of the same URL and credentials in this App."""
    if opts is None or opts.store == "memory" or opts.redis is None:
        return resources.get("store\x00memory", MemoryStore)
    conn = opts.redis
    fields = render_redis(conn, scope)
    url = str(fields["url"] or "")
    if url.startswith(MEMORY_URL):
        return resources.get("store\x00memory", MemoryStore)
    masker.add_dsn(url)
    masker.add(fields.get("password"))  # a user name is not a secret: masking it hid words
    pool = conn.pool
    key = f"store\x00redis\x00{url}\x00{fields.get('username')}\x00{fields.get('password')}"

    async def create() -> RedisStore:
        import redis.asyncio as aioredis

        timeout = float(conn.timeout)
        kwargs: dict[str, Any] = {
            "max_connections": (pool.max_size if pool and pool.max_size else 10),
            "timeout": (pool.acquire_timeout if pool and pool.acquire_timeout else timeout),
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "socket_keepalive": pool.keepalive if pool else True,
            "health_check_interval": int(pool.idle_timeout) if pool else 30,
        }
        if fields.get("username"):
            kwargs["username"] = fields["username"]
        if fields.get("password"):
            kwargs["password"] = fields["password"]
        try:
            pool_obj = aioredis.BlockingConnectionPool.from_url(url, **kwargs)
        except ValueError as exc:
            raise RetriableError(masker.mask(f"bad redis url {safe_dsn(url)}: {exc}")) from None
        client = aioredis.Redis(connection_pool=pool_obj)
        return RedisStore(client, str(fields.get("prefix") or ""), safe_dsn(url), masker)

    async def close(store: RedisStore) -> None:
        await store.close()

    return await resources.aget(key, create, close)


async def wait_for_slot(
    store: Store, key: str, limit: int, per: float, max_wait: float, clock: Clock = SYSTEM_CLOCK
) -> float:
    """Wait (sleeping on ``clock``, never failing) until a slot is free; the seconds waited.
    RetriableError if it would take longer than ``max_wait``."""
    waited = 0.0
    while True:
        wait = await store.acquire(key, limit, per)
        if wait <= 0:
            return waited
        if waited + wait > max_wait:
            raise RetriableError(
                f"rate limit {limit}/{per:g}s: no slot within {max_wait:g}s", retry_after=wait
            )
        await clock.asleep(wait)
        waited += wait
