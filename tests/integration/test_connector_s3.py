"""The ``s3`` step against a real S3 server (moto's server mode on loopback): every
operation, streaming large objects through local files (multipart both ways), named
connections, and failures classified (poison vs retriable)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed
from streamflow.topology.loader import load_integration
from tests.integration.cloud import S3Server, moto_s3  # noqa: F401
from tests.integration.conftest import free_port, topology

KEYS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


def conn(server: S3Server) -> dict[str, Any]:
    return {"store": {"type": "s3", "endpoint_url": server.url, **KEYS}}


async def test_put_get_list_head_copy_delete(moto_s3: S3Server, step_runner: Any) -> None:  # noqa: F811
    bucket = moto_s3.bucket()
    runner = await step_runner(
        [
            {"id": "put", "type": "s3", "connection": "store", "operation": "put",
             "bucket": bucket, "key": "in/${payload.name}", "content": "${payload.body}",
             "metadata": {"source": "test"}},
            {"id": "get", "type": "s3", "connection": "store", "bucket": bucket,
             "key": "in/${payload.name}"},
            {"id": "list", "type": "s3", "connection": "store", "operation": "list",
             "bucket": bucket, "prefix": "in/", "max_keys": 2},
            {"id": "head", "type": "s3", "connection": "store", "operation": "head",
             "bucket": bucket, "key": "in/${payload.name}"},
            {"id": "copy", "type": "s3", "connection": "store", "operation": "copy",
             "bucket": bucket, "key": "done/${payload.name}", "source_key": "in/${payload.name}"},
            {"id": "delete", "type": "s3", "connection": "store", "operation": "delete",
             "bucket": bucket, "key": "in/${payload.name}"},
        ],
        connections=conn(moto_s3),
    )  # fmt: skip
    rows = [{"id": "1", "email": "a@x.io"}, {"id": "2", "email": "b@x.io"}]
    put = await runner.run("put", {"name": "a.json", "body": {"rows": rows}})
    assert put.result["size"] == len(orjson.dumps({"rows": rows}))
    await runner.run("put", {"name": "b.csv", "body": "id,email\n1,a@x.io\n2,\n"})
    await runner.run("put", {"name": "c.txt", "body": "plain"})

    got = await runner.run("get", {"name": "a.json"})
    assert got.result["body"] == {"rows": rows}
    assert got.result["content_type"] == "application/json"
    assert got.result["metadata"] == {"source": "test"}
    assert got.result["etag"] == put.result["etag"]
    got = await runner.run("get", {"name": "b.csv"})
    assert got.result["body"] == [{"id": "1", "email": "a@x.io"}, {"id": "2", "email": ""}]
    assert (await runner.run("get", {"name": "c.txt"})).result["body"] == "plain"

    listed = (await runner.run("list", {})).result
    assert [o["key"] for o in listed["objects"]] == ["in/a.json", "in/b.csv"]
    assert listed["truncated"] is True and listed["count"] == 2

    head = (await runner.run("head", {"name": "a.json"})).result
    assert "body" not in head and head["size"] == put.result["size"]

    copied = (await runner.run("copy", {"name": "a.json"})).result
    assert copied["etag"] == put.result["etag"]
    await runner.run("delete", {"name": "a.json"})
    await runner.run("delete", {"name": "a.json"})  # deleting a missing key is no error
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["done/a.json", "in/b.csv", "in/c.txt"]


async def test_large_objects_stream_through_files_in_parts(
    moto_s3: S3Server,  # noqa: F811
    step_runner: Any,
    tmp_path: Path,
) -> None:
    bucket = moto_s3.bucket()
    source = tmp_path / "big.bin"
    data = os.urandom(1024 * 1024) * 12  # 12 MiB: three 5 MiB parts
    source.write_bytes(data)
    runner = await step_runner(
        [
            {"id": "up", "type": "s3", "connection": "store", "operation": "put",
             "bucket": bucket, "key": "big.bin", "file": str(source), "part_size": 5242880},
            {"id": "down", "type": "s3", "connection": "store", "bucket": bucket,
             "key": "big.bin", "file": "out/${payload.name}", "part_size": 5242880},
            {"id": "mem", "type": "s3", "connection": "store", "bucket": bucket,
             "key": "big.bin", "max_bytes": 1000000},
            {"id": "send", "type": "s3", "connection": "store", "operation": "put",
             "bucket": bucket, "key": "sent.bin", "file": "${payload.src}"},
        ],
        connections=conn(moto_s3),
        directory=tmp_path / "topo",
    )  # fmt: skip
    up = (await runner.run("up", {})).result
    assert up["size"] == len(data)
    assert up["etag"].endswith("-3")  # a multipart upload of three parts
    down = (await runner.run("down", {"name": "copy.bin"})).result
    target = Path(down["file"])
    assert target == tmp_path / "topo" / "out" / "copy.bin"
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert down["size"] == len(data) and "body" not in down
    with pytest.raises(PoisonMessageError, match=r"more than max_bytes=1000000.*file:"):
        await runner.run("mem", {})
    # a payload value cannot steer the local file out of its folder (default root), either way
    for name in ("../../escape.bin", "../escape.bin"):
        with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
            await runner.run("down", {"name": name})
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "topo/escape.bin").exists()
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("send", {"src": "/etc/hostname"})


async def test_missing_things_are_poison_and_an_unreachable_store_is_retriable(
    moto_s3: S3Server,  # noqa: F811
    step_runner: Any,
) -> None:
    bucket = moto_s3.bucket()
    runner = await step_runner(
        [
            {"id": "get", "type": "s3", "connection": "store", "bucket": "${payload.bucket}",
             "key": "${payload.key}"},
            {"id": "far", "type": "s3", "bucket": "b", "key": "k", "timeout": "2s",
             "endpoint_url": f"http://127.0.0.1:{free_port()}", **KEYS},
        ],
        connections=conn(moto_s3),
    )  # fmt: skip
    with pytest.raises(PoisonMessageError, match=r"s3 get s3://.*/nope: NoSuchKey"):
        await runner.run("get", {"bucket": bucket, "key": "nope"})
    with pytest.raises(PoisonMessageError, match="NoSuchBucket"):
        await runner.run("get", {"bucket": "no-such-bucket-here", "key": "k"})
    with pytest.raises(PoisonMessageError, match="the key is empty"):
        await runner.run("get", {"bucket": bucket, "key": ""})
    with pytest.raises(RetriableError, match=r"EndpointConnectionError|Could not connect"):
        await runner.run("far", {})


async def _s3_playing(status: int, code: str) -> tuple[web.AppRunner, str]:
    """A loopback server answering every S3 call with an S3 error document."""

    async def handler(request: web.Request) -> web.Response:
        body = f"<Error><Code>{code}</Code><Message>try later</Message></Error>"
        return web.Response(status=status, text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (503, "SlowDown", RetriableError),
        (500, "InternalError", RetriableError),
        (403, "AccessDenied", PoisonMessageError),
        (400, "InvalidArgument", PoisonMessageError),
    ],
)
async def test_s3_errors_are_classified(
    step_runner: Any, status: int, code: str, error: type[Exception]
) -> None:
    server, url = await _s3_playing(status, code)
    try:
        runner = await step_runner(
            [{"id": "put", "type": "s3", "operation": "put", "bucket": "b", "key": "k",
              "endpoint_url": url, "addressing_style": "path", **KEYS}]
        )  # fmt: skip
        with pytest.raises(error, match=code):
            await runner.run("put", {"x": 1})
    finally:
        await server.cleanup()


def test_validation_errors_point_at_the_yaml(tmp_path: Path) -> None:
    doc = topology(
        [{"id": "a", "type": "s3", "operation": "copy", "bucket": "b", "key": "k"},
         {"id": "b", "type": "s3", "connection": "nope", "bucket": "b", "key": "k"},
         {"id": "c", "type": "s3", "bucket": "b", "key": "k", "access_key_id": "x"}],
        connections={"db": {"type": "sqlite", "path": "x.db"}},
    )  # fmt: skip
    path = tmp_path / "integration.yaml"
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    text = str(info.value)
    assert "operation copy needs `source_key`" in text
    assert "unknown connection 'nope'" in text
    assert "give both access_key_id and secret_access_key" in text
    assert all(i.file == str(path) and i.line > 1 for i in info.value.issues), text


def test_s3_trigger_validation_points_at_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "integration.yaml"
    path.write_text(
        """apiVersion: streamflow/v1
kind: Integration
name: drops
config:
  key: {type: string, secret: true}
connections:
  db: {type: sqlite, path: x.db}
flows:
  - name: a
    trigger: {type: s3, connection: db, bucket: b}
    steps: [{id: s, type: log}]
  - name: b
    trigger: {type: s3, bucket: b, every: 100ms, access_key_id: x}
    steps: [{id: s, type: log}]
  - name: c
    trigger: {type: s3, bucket: "${config.key}"}
    steps: [{id: s, type: log}]
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    issues = {i.line: i.message for i in info.value.issues}
    assert "connection 'db' is of type sqlite" in issues[10], issues
    assert "`every` is at least 1s" in issues[13], issues
    assert any("secret" in m for line, m in issues.items() if line == 16), issues
