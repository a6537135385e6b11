"""Redis-backed features against a real Redis (``scripts/redis.sh``, AUTH on): the
two-level response cache with single flight, the ``dedupe`` step, shared rate limits
(two worker processes), the redis connection's pool settings and masked credentials."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow.errors import RetriableError, ValidationFailed
from streamflow.topology.loader import load_integration
from tests.integration.servers import REDIS_PASSWORD, free_port

REPO = Path(__file__).resolve().parents[2]


def redis_conn(url: str, **extra: Any) -> dict[str, Any]:
    return {"cache": {"type": "redis", "url": "${config.redis_url}", **extra}}


REDIS_CONFIG = {"redis_url": {"type": "string", "secret": True}}


async def counting_server(http_server: Any, delay: float = 0.0) -> Any:
    async def handler(call: Any) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        return web.json_response({"rate": 1.25, "path": call.path})

    return await http_server(handler)


async def test_cache_reads_memory_then_redis_and_writes_through_both(
    redis_url: str, step_runner: Any, http_server: Any
) -> None:
    server = await counting_server(http_server)
    steps = [{"id": "rate", "type": "http", "url": f"{server.url}/rates/${{payload.cur}}",
              "cache": {"ttl": "1m", "store": "redis", "connection": "cache"}}]  # fmt: skip
    one = await step_runner(
        steps, config=REDIS_CONFIG, values={"redis_url": redis_url},
        connections=redis_conn(redis_url),
    )  # fmt: skip
    two = await step_runner(  # another worker: its own memory, the same Redis
        steps, config=REDIS_CONFIG, values={"redis_url": redis_url},
        connections=redis_conn(redis_url),
    )  # fmt: skip
    first = await one.run("rate", {"cur": "EUR"})
    assert first.result["body"] == {"rate": 1.25, "path": "/rates/EUR"}
    assert len(server.calls) == 1
    again = await one.run("rate", {"cur": "EUR"})  # memory
    other = await two.run("rate", {"cur": "EUR"})  # Redis
    assert again.result == first.result == other.result
    assert len(server.calls) == 1
    await two.run("rate", {"cur": "USD"})
    assert len(server.calls) == 2
    await one.run("rate", {"cur": "USD"})  # written through to Redis by the other worker
    assert len(server.calls) == 2


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_concurrent_misses_for_one_key_make_one_call(
    store: str, redis_url: str, step_runner: Any, http_server: Any
) -> None:
    server = await counting_server(http_server, delay=0.3)
    cache: dict[str, Any] = {"ttl": "1m", "key": "${payload.cur}", "store": store}
    if store == "redis":
        cache["connection"] = "cache"
    runner = await step_runner(
        [{"id": "rate", "type": "http", "url": f"{server.url}/rates", "cache": cache}],
        config=REDIS_CONFIG, values={"redis_url": redis_url}, connections=redis_conn(redis_url),
    )  # fmt: skip
    outs = await asyncio.gather(*(runner.run("rate", {"cur": "GBP"}) for _ in range(10)))
    assert len(server.calls) == 1
    assert all(o.result["status"] == 200 for o in outs)
    await asyncio.gather(*(runner.run("rate", {"cur": k}) for k in ("a", "b", "a", "b")))
    assert len(server.calls) == 3


async def test_workers_missing_one_key_at_once_make_one_call(
    redis_url: str, step_runner: Any, http_server: Any
) -> None:
    server = await counting_server(http_server, delay=0.5)
    steps = [
        {
            "id": "rate",
            "type": "http",
            "url": f"{server.url}/rates",
            "cache": {"ttl": "1m", "key": "${payload.cur}", "connection": "cache"},
        }
    ]
    workers = [
        await step_runner(steps, config=REDIS_CONFIG, values={"redis_url": redis_url},
                          connections=redis_conn(redis_url))
        for _ in range(3)
    ]  # fmt: skip
    cur = f"X{os.urandom(3).hex()}"
    outs = await asyncio.gather(*(w.run("rate", {"cur": cur}) for w in workers))
    assert len(server.calls) == 1
    assert len({json.dumps(o.result, sort_keys=True) for o in outs}) == 1


async def test_a_failed_call_is_not_cached_and_fails_every_waiter(
    redis_url: str, step_runner: Any, http_server: Any
) -> None:
    answers = [500, 200]

    async def handler(call: Any) -> web.Response:
        await asyncio.sleep(0.2)
        return web.json_response({"ok": True}, status=answers.pop(0))

    server = await http_server(handler)
    runner = await step_runner(
        [{"id": "r", "type": "http", "url": f"{server.url}/x",
          "cache": {"ttl": "1m", "store": "redis", "connection": "cache"}}],
        config=REDIS_CONFIG, values={"redis_url": redis_url}, connections=redis_conn(redis_url),
    )  # fmt: skip
    results = await asyncio.gather(*(runner.run("r", {}) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, RetriableError) for r in results)
    assert len(server.calls) == 1
    ok = await runner.run("r", {})
    assert ok.result["status"] == 200 and len(server.calls) == 2


async def test_an_unreachable_redis_makes_the_cache_a_miss_not_a_failure(
    step_runner: Any, http_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await counting_server(http_server)
    secret = "redis-pw-never-logged"
    url = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
    runner = await step_runner(
        [{"id": "r", "type": "http", "url": f"{server.url}/x",
          "cache": {"ttl": "1m", "store": "redis", "connection": "cache"}}],
        config=REDIS_CONFIG, values={"redis_url": url},
        connections=redis_conn(url, timeout="1s"),
    )  # fmt: skip
    out = await runner.run("r", {})
    assert out.result["status"] == 200 and len(server.calls) == 1
    assert "cache read failed" in caplog.text
    assert secret not in caplog.text


@pytest.mark.parametrize("store", ["memory", "redis"])
async def test_dedupe_passes_a_key_once_and_the_same_execution_again(
    store: str, redis_url: str, step_runner: Any
) -> None:
    step: dict[str, Any] = {"id": "once", "type": "dedupe", "key": "${payload.order}",
                            "ttl": "1h", "store": store}  # fmt: skip
    if store == "redis":
        step["connection"] = "cache"
    kwargs = {"config": REDIS_CONFIG, "values": {"redis_url": redis_url},
              "connections": redis_conn(redis_url)}  # fmt: skip
    one = await step_runner([step], **kwargs)
    two = await step_runner([step], **kwargs)  # another worker
    key = f"o-{os.urandom(4).hex()}"
    first = await one.run("once", {"order": key})
    assert not first.filtered and first.result["duplicate"] is False
    dup = await one.run("once", {"order": key})
    assert dup.filtered and dup.note == "duplicate"
    assert dup.result["first_execution"] != ""
    elsewhere = await two.run("once", {"order": key})
    assert elsewhere.filtered is (store == "redis")  # memory: per process
    other = await one.run("once", {"order": key + "-b"})
    assert not other.filtered


async def test_dedupe_lets_a_redelivery_of_the_same_execution_through(
    redis_url: str, step_runner: Any
) -> None:
    from streamflow.envelope import Envelope
    from streamflow.steps.base import AsyncStep

    runner = await step_runner(
        [{"id": "once", "type": "dedupe", "key": "${payload.order}", "connection": "cache"}],
        config=REDIS_CONFIG, values={"redis_url": redis_url}, connections=redis_conn(redis_url),
    )  # fmt: skip
    impl = runner.step("once")
    assert isinstance(impl, AsyncStep)
    env = Envelope("exec-1", runner.integration.name, "f", "once", {"order": "r-1"})
    assert not (await impl.process(env)).filtered
    assert not (await impl.process(env)).filtered  # same execution (a retry): passes
    env2 = Envelope("exec-2", runner.integration.name, "f", "once", {"order": "r-1"})
    assert (await impl.process(env2)).filtered


def test_store_redis_needs_a_redis_connection(tmp_path: Path) -> None:
    path = tmp_path / "i.yaml"
    path.write_text(
        """apiVersion: streamflow/v1
kind: Integration
name: bad-store
connections:
  db: {type: sqlite, path: x.db}
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: a, type: dedupe, key: "${payload.id}", store: redis}
      - id: b
        type: http
        url: http://127.0.0.1:1/
        rate_limit: {requests: 1, per: 1s, connection: db}
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    text = str(info.value)
    assert "i.yaml:10:" in text and "store: redis needs connection" in text, text
    assert "i.yaml:14:" in text and "connection 'db' is of type sqlite" in text, text


async def test_a_wrong_redis_password_is_retriable_and_masked(
    redis_url: str, step_runner: Any, http_server: Any
) -> None:
    server = await counting_server(http_server)
    secret = "wrong-redis-pw-77"
    url = redis_url.replace(REDIS_PASSWORD, secret)
    runner = await step_runner(
        [{"id": "r", "type": "http", "url": f"{server.url}/x",
          "rate_limit": {"requests": 5, "per": "1s", "connection": "cache"}}],
        config=REDIS_CONFIG, values={"redis_url": url}, connections=redis_conn(url),
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("r", {})
    assert secret not in str(info.value)
    assert "Authentication" in str(info.value) or "WRONGPASS" in str(info.value)
    assert server.calls == []  # the limit is never skipped


async def test_pool_settings_reach_the_redis_client(redis_url: str, step_runner: Any) -> None:
    from streamflow.connectors.stores import RedisStore

    runner = await step_runner(
        [{"id": "once", "type": "dedupe", "key": "${payload.k}", "connection": "cache"}],
        config=REDIS_CONFIG, values={"redis_url": redis_url},
        connections=redis_conn(redis_url, prefix="app1:",
                               pool={"max_size": 3, "acquire_timeout": "2s",
                                     "idle_timeout": "10s", "keepalive": True}),
    )  # fmt: skip
    await runner.run("once", {"k": "x"})
    [store] = [v for k, v in runner.resources._items.items() if k.startswith("store\x00redis")]
    assert isinstance(store, RedisStore)
    pool = store.client.connection_pool
    assert pool.max_connections == 3 and pool.timeout == 2.0
    assert pool.connection_kwargs["health_check_interval"] == 10
    assert pool.connection_kwargs["socket_keepalive"] is True
    assert await store.client.exists("app1:dedupe:connector-test:f:once:x") == 1


RATE_TOPOLOGY = """apiVersion: streamflow/v1
kind: Integration
name: rate-shared
config:
  redis_url: {{type: string, secret: true}}
connections:
  cache: {{type: redis, url: "${{config.redis_url}}", prefix: "{prefix}"}}
flows:
  - name: f
    trigger: {{type: manual}}
    steps:
      - id: call
        type: http
        url: {url}/api
        query: {{w: "${{payload.w}}", i: "${{payload.i}}"}}
        rate_limit: {{requests: {requests}, per: 1s, store: redis, connection: cache}}
"""


async def test_a_redis_rate_limit_is_shared_by_two_worker_processes(
    redis_url: str, http_server: Any, tmp_path: Path
) -> None:
    """Two processes, 6 calls each at once, limit 3 per second: the server's log of
    arrivals never shows more than 3 calls within half a second (two separate limits
    would let 6 through at the start), and every call is made (waiting, not failing)."""
    arrivals: list[tuple[float, str]] = []

    async def handler(call: Any) -> web.Response:
        arrivals.append((time.monotonic(), call.query["w"]))
        return web.json_response({"ok": True})

    server = await http_server(handler)
    requests, calls = 3, 6
    path = tmp_path / "rate.yaml"
    prefix = f"t{os.urandom(4).hex()}:"
    path.write_text(RATE_TOPOLOGY.format(url=server.url, requests=requests, prefix=prefix))
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.integration.ratelimit_worker",
            str(path), redis_url, str(calls), name,
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        for name in ("a", "b")
    ]  # fmt: skip
    outputs = [await p.communicate() for p in procs]
    for proc, (out, _) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out.decode()
    assert len(arrivals) == 2 * calls
    assert {w for _, w in arrivals} == {"a", "b"}
    times = sorted(t for t, _ in arrivals)
    busiest = max(sum(1 for u in times if t <= u < t + 0.5) for t in times)
    offsets = [round(t - times[0], 2) for t in times]
    assert busiest <= requests, f"{busiest} calls within 0.5s: {offsets}"
    windows = {int((t - times[0]) // 1.0) for t in times}
    assert len(windows) >= 2 * calls // requests - 1  # the calls were spread, not refused


async def test_a_memory_rate_limit_waits_instead_of_failing(
    step_runner: Any, http_server: Any
) -> None:
    arrivals: list[float] = []

    async def handler(call: Any) -> web.Response:
        arrivals.append(time.monotonic())
        return web.json_response({"ok": True})

    server = await http_server(handler)
    runner = await step_runner(
        [{"id": "r", "type": "http", "url": f"{server.url}/x",
          "rate_limit": {"requests": 2, "per": "400ms"}}]
    )  # fmt: skip
    await asyncio.gather(*(runner.run("r", {}) for _ in range(6)))
    assert len(arrivals) == 6  # all made: the limit waits
    busiest = max(sum(1 for u in arrivals if t <= u < t + 0.2) for t in arrivals)
    assert busiest <= 2


async def test_a_rate_limit_beyond_max_wait_fails_retriably(
    step_runner: Any, http_server: Any
) -> None:
    server = await counting_server(http_server)
    runner = await step_runner(
        [{"id": "r", "type": "http", "url": f"{server.url}/x",
          "rate_limit": {"requests": 1, "per": "1m", "max_wait": "100ms"}}]
    )  # fmt: skip
    await runner.run("r", {})
    with pytest.raises(RetriableError, match="no slot within") as info:
        await runner.run("r", {})
    assert info.value.retry_after is not None and info.value.retry_after > 50
    assert len(server.calls) == 1


async def test_graphql_pages_share_a_redis_rate_limit(
    redis_url: str, step_runner: Any, http_server: Any
) -> None:
    arrivals: list[float] = []

    async def handler(call: Any) -> web.Response:
        arrivals.append(time.monotonic())
        after = (call.json or {}).get("variables", {}).get("after")
        page = 0 if after is None else int(after)
        info = {"hasNextPage": page < 3, "endCursor": str(page + 1)}
        return web.json_response({"data": {"items": {"nodes": [page], "pageInfo": info}}})

    server = await http_server(handler)
    runner = await step_runner(
        [{"id": "g", "type": "graphql", "url": f"{server.url}/graphql",
          "query": "query($after: String) { items(after: $after) { nodes } }",
          "paginate": {"path": "data.items.nodes", "cursor": "data.items.pageInfo.endCursor",
                       "has_next": "data.items.pageInfo.hasNextPage", "variable": "after"},
          "rate_limit": {"requests": 1, "per": "400ms", "connection": "cache",
                         "key": "gql-${payload.run}"}}],
        config=REDIS_CONFIG, values={"redis_url": redis_url}, connections=redis_conn(redis_url),
    )  # fmt: skip
    out = await runner.run("g", {"run": os.urandom(3).hex()})
    assert out.result["items"] == [0, 1, 2, 3] and len(arrivals) == 4
    busiest = max(sum(1 for u in arrivals if t <= u < t + 0.2) for t in arrivals)
    assert busiest == 1  # one page per window: each waited for its slot


async def test_an_error_names_the_redis_server_and_masks_only_the_password(
    step_runner: Any,
) -> None:
    """The whole connection URL was taken for a secret: a dedupe on an unreachable Redis
    said `***: ConnectionError ...`, and its user name was masked in every log line."""
    port = free_port()
    secret = "redis-pw-masked-31"
    url = f"redis://127.0.0.1:{port}/0"  # the credentials in their own fields
    runner = await step_runner(
        [{"id": "once", "type": "dedupe", "key": "${payload.k}", "store": "redis",
          "connection": "cache"}],
        connections={"cache": {"type": "redis", "url": url, "username": "ops-user",
                               "password": secret, "timeout": "2s"}},
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("once", {"k": 1})
    text = str(info.value)
    assert f"redis://127.0.0.1:{port}/0" in text and secret not in text, text
    from streamflow.util.secrets import PROCESS

    assert PROCESS.mask("ops-user logged in") == "ops-user logged in"
    assert PROCESS.mask(f"said {secret}") == "said ***"
