"""The ``s3`` trigger against a real S3 server (moto): each new object under the prefix is
one event, once — across a restart (a fresh runner reads the state topic back) and with
two runners at once (two gateway processes: only the leader lists and emits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow.clock import ManualClock
from streamflow.envelope import Envelope, decode_record
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.triggers.s3watch import S3Runner
from tests.integration.cloud import S3Server, moto_s3  # noqa: F401
from tests.waiting import next_round, until


def s3_integration(
    tmp_path: Path, name: str, server: S3Server, bucket: str, extra: str
) -> Integration:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
connections:
  store: {{type: s3, endpoint_url: "{server.url}", region: us-east-1,
          access_key_id: testing, secret_access_key: testing}}
flows:
  - name: drops
    partitions: 1
    trigger: {{type: s3, connection: store, bucket: {bucket}, prefix: incoming/,
              pattern: "*.csv", every: 1s{extra}}}
    steps:
      - {{id: keep, type: transform, output: "${{payload}}"}}
"""
    )
    return load_integration(path)


def emitted(transport: Transport, integration: Integration) -> list[Envelope]:
    topic = compile_plan(integration).flows["drops"].first_topic
    return [decode_record(r) for r in transport.read_all(topic)]


async def run_until(
    integration: Integration,
    transport: Transport,
    done: Callable[[list[Envelope]], bool],
    runners: int = 1,
    listings: int = 100,
    after_first: Callable[[], None] | None = None,
) -> list[Envelope]:
    """Run ``runners`` fresh trigger runners (as after a restart, or as several gateway
    processes) on a ManualClock, listing by listing, until ``done``; then two more
    listings (nothing more may come), and stop them. ``after_first`` runs once the leader
    has listed once (the baseline)."""
    flow = integration.flows["drops"]
    plan = compile_plan(integration)
    clock = ManualClock()
    stop = asyncio.Event()
    started = [S3Runner(FlowIngress(integration, flow, plan, {}), transport, clock=clock)
               for _ in range(runners)]  # fmt: skip
    tasks = [asyncio.create_task(r.run(stop)) for r in started]

    async def listing() -> None:
        await until(lambda: any(r.lease.leading for r in started) or any(t.done() for t in tasks))
        i = next((i for i, r in enumerate(started) if r.lease.leading), 0)
        await next_round(clock, started[i], tasks[i], lambda: started[i].next_poll)

    try:
        await listing()
        if after_first is not None:
            await asyncio.to_thread(after_first)
        for _ in range(listings):
            envs = await asyncio.to_thread(emitted, transport, integration)
            if done(envs):
                for _ in range(2):
                    await listing()
                return await asyncio.to_thread(emitted, transport, integration)
            await listing()
        raise AssertionError(f"timed out after {listings} listings; emitted {len(envs)}")
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def keys(envs: list[Envelope]) -> list[str]:
    return [e.payload["key"] for e in envs]


@pytest.mark.parametrize(
    "broker_url", ["local", pytest.param("kafka", marks=pytest.mark.kafka)], indirect=True
)
async def test_each_new_object_is_emitted_once_across_restarts_and_processes(
    moto_s3: S3Server,  # noqa: F811
    broker_url: str,
    tmp_path: Path,
    unique: str,
) -> None:
    bucket = moto_s3.bucket()
    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="incoming/a.csv", Body=b"id\n1\n")
    s3.put_object(Bucket=bucket, Key="incoming/b.csv", Body=b"id\n2\n")
    s3.put_object(Bucket=bucket, Key="incoming/b c ü.csv", Body=b"id\n9\n")  # any UTF-8 key
    s3.put_object(Bucket=bucket, Key="incoming/notes.txt", Body=b"not a csv")
    s3.put_object(Bucket=bucket, Key="incoming/sub/", Body=b"")  # a "folder" marker
    s3.put_object(Bucket=bucket, Key="other/c.csv", Body=b"id\n3\n")
    integration = s3_integration(tmp_path, f"s3t-{unique}", moto_s3, bucket, "")
    transport = open_transport(broker_url)
    App(integration, transport, {}).deploy()
    try:
        # two runners at once (two gateway processes): one leads, each object once
        envs = await run_until(integration, transport, lambda e: len(e) >= 3, runners=2)
        assert keys(envs) == ["incoming/a.csv", "incoming/b c ü.csv", "incoming/b.csv"]
        first = envs[0]
        assert first.payload["bucket"] == bucket
        assert first.payload["size"] == 5 and first.payload["etag"]
        assert first.trigger["type"] == "s3" and first.trigger["key"] == "incoming/a.csv"

        # a restart: what was emitted is not emitted again; a new object and a new
        # version of a known key are
        s3.put_object(Bucket=bucket, Key="incoming/d.csv", Body=b"id\n4\n")
        s3.put_object(Bucket=bucket, Key="incoming/a.csv", Body=b"id\n1\n5\n")
        envs = await run_until(integration, transport, lambda e: len(e) >= 5)
        assert sorted(keys(envs)[3:]) == ["incoming/a.csv", "incoming/d.csv"]
        assert len({e.execution_id for e in envs}) == 5

        # one more restart with nothing new: nothing is emitted
        envs = await run_until(integration, transport, lambda e: len(e) >= 5)
        assert len(envs) == 5
    finally:
        transport.close()


async def test_skip_existing_and_listing_failures(
    moto_s3: S3Server,  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bucket = moto_s3.bucket()
    s3 = moto_s3.client()
    s3.put_object(Bucket=bucket, Key="incoming/old.csv", Body=b"x")
    integration = s3_integration(tmp_path, "s3skip", moto_s3, bucket, ", skip_existing: true")
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    try:

        def put_new() -> None:
            s3.put_object(Bucket=bucket, Key="incoming/new.csv", Body=b"y")

        envs = await run_until(integration, transport, lambda e: len(e) >= 1, after_first=put_new)
        assert keys(envs) == ["incoming/new.csv"]

        # a bucket that does not exist: the listing fails, is logged, nothing emitted
        missing = s3_integration(tmp_path, "s3missing", moto_s3, "no-such-bucket-x", "")
        App(missing, transport, {}).deploy()
        with pytest.raises(AssertionError, match="timed out after 2 listings"):
            await run_until(missing, transport, lambda e: len(e) >= 1, listings=2)
        assert "listing failed" in caplog.text and "NoSuchBucket" in caplog.text
        assert emitted(transport, missing) == []
    finally:
        transport.close()
