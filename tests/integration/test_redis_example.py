"""topologies/priced-orders-redis against a real Redis: its flow tests, run with
``redis_url`` pointing at the test Redis instead of ``memory://``, pass; the cache, the
dedupe claims and the rate-limit window are in Redis, under the connection's prefix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streamflow.testing.cases.loading import load_test_file
from streamflow.testing.cases.running import run_case

EXAMPLE = Path(__file__).resolve().parents[2] / "topologies" / "priced-orders-redis"


async def test_the_example_flow_tests_pass_on_a_real_redis(redis_url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    try:
        test_file = load_test_file(EXAMPLE / "tests.yaml")
        for case in test_file.cases:
            real = dataclasses.replace(case, config={**case.config, "redis_url": redis_url})
            result = await run_case(real)
            assert result.passed, "\n".join("\n".join(f) for f in result.failures)
        keys = sorted(k.decode() for k in await client.keys("priced-orders:*"))
        assert any(k.startswith("priced-orders:cache:priced-orders:") for k in keys), keys
        assert any(k.startswith("priced-orders:dedupe:") for k in keys), keys
        assert any(k.startswith("priced-orders:rl:priced-orders:connection:fx") for k in keys)
    finally:
        await client.aclose()
