"""The ``azure_blob`` step against a real Blob service (Azurite from npm, on loopback):
get/put/list/delete, streaming through local files in blocks, named connections (a
connection string, or an account URL with a shared key), failures classified."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import PoisonMessageError, RetriableError
from tests.integration.cloud import AZURITE_ACCOUNT, AZURITE_KEY, AzureServer, azurite  # noqa: F401
from tests.integration.conftest import free_port


async def make_container(server: AzureServer) -> str:
    from azure.storage.blob.aio import BlobServiceClient

    name = f"c{uuid.uuid4().hex[:12]}"
    async with BlobServiceClient.from_connection_string(server.connection_string) as client:
        await client.create_container(name)
    return name


async def test_put_get_list_delete(azurite: AzureServer, step_runner: Any) -> None:  # noqa: F811
    container = await make_container(azurite)
    connections = {
        "lake": {"type": "azure_blob", "connection_string": azurite.connection_string},
        "keyed": {"type": "azure_blob", "account_url": azurite.url,
                  "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
    }  # fmt: skip
    runner = await step_runner(
        [
            {"id": "put", "type": "azure_blob", "connection": "lake", "operation": "put",
             "container": container, "blob": "in/${payload.name}", "content": "${payload.body}",
             "metadata": {"source": "test"}},
            {"id": "get", "type": "azure_blob", "connection": "keyed", "container": container,
             "blob": "in/${payload.name}"},
            {"id": "list", "type": "azure_blob", "connection": "lake", "operation": "list",
             "container": container, "prefix": "in/", "max_keys": 2},
            {"id": "delete", "type": "azure_blob", "connection": "lake", "operation": "delete",
             "container": container, "blob": "in/${payload.name}"},
            {"id": "create", "type": "azure_blob", "connection": "lake", "operation": "put",
             "container": container, "blob": "in/${payload.name}", "overwrite": False},
        ],
        connections=connections,
    )  # fmt: skip
    rows = [{"id": 1}, {"id": 2}]
    put = await runner.run("put", {"name": "a.json", "body": rows})
    assert put.result["size"] == len(b'[{"id":1},{"id":2}]') and put.result["etag"]
    await runner.run("put", {"name": "b.csv", "body": "id,email\n1,a@x.io\n"})
    await runner.run("put", {"name": "c.ndjson", "body": [{"n": 1}, {"n": 2}]})

    got = (await runner.run("get", {"name": "a.json"})).result
    assert got["body"] == rows and got["content_type"] == "application/json"
    assert got["metadata"] == {"source": "test"} and got["etag"] == put.result["etag"]
    got = (await runner.run("get", {"name": "b.csv"})).result
    assert got["body"] == [{"id": "1", "email": "a@x.io"}]
    got = (await runner.run("get", {"name": "c.ndjson"})).result
    assert got["body"] == [{"n": 1}, {"n": 2}]

    listed = (await runner.run("list", {})).result
    assert [b["name"] for b in listed["blobs"]] == ["in/a.json", "in/b.csv"]
    assert listed["truncated"] is True

    assert (await runner.run("delete", {"name": "a.json"})).result["deleted"] is True
    assert (await runner.run("delete", {"name": "a.json"})).result["deleted"] is False
    with pytest.raises(PoisonMessageError, match="BlobNotFound"):
        await runner.run("get", {"name": "a.json"})
    with pytest.raises(PoisonMessageError, match="BlobAlreadyExists"):
        await runner.run("create", {"name": "b.csv"})


async def test_large_blobs_stream_through_files(
    azurite: AzureServer,  # noqa: F811
    step_runner: Any,
    tmp_path: Path,
) -> None:
    container = await make_container(azurite)
    data = os.urandom(1024 * 1024) * 9  # 9 MiB: blocks of 4 MiB
    (tmp_path / "big.bin").write_bytes(data)
    lake = {"lake": {"type": "azure_blob", "connection_string": azurite.connection_string}}
    runner = await step_runner(
        [
            {"id": "up", "type": "azure_blob", "connection": "lake", "operation": "put",
             "container": container, "blob": "big.bin", "file": str(tmp_path / "big.bin")},
            {"id": "down", "type": "azure_blob", "connection": "lake", "container": container,
             "blob": "big.bin", "file": "out/copy.bin"},
            {"id": "mem", "type": "azure_blob", "connection": "lake", "container": container,
             "blob": "big.bin", "max_bytes": 1000000},
            {"id": "fetch", "type": "azure_blob", "connection": "lake", "container": container,
             "blob": "big.bin", "file": "in/${payload.name}"},
            {"id": "named", "type": "azure_blob", "connection": "lake", "container": container,
             "blob": "${payload.name}"},
        ],
        connections=lake,
        directory=tmp_path / "topo",
    )  # fmt: skip
    assert (await runner.run("up", {})).result["size"] == len(data)
    down = (await runner.run("down", {})).result
    copied = Path(down["file"]).read_bytes()
    assert hashlib.sha256(copied).digest() == hashlib.sha256(data).digest()
    assert [p.name for p in (tmp_path / "topo" / "out").iterdir()] == ["copy.bin"]
    with pytest.raises(PoisonMessageError, match="more than max_bytes"):
        await runner.run("mem", {})
    # a payload value cannot steer a blob into another container: URLs collapse `..`
    # (Azurite answered 403 to the collapsed path; an account SAS would have written there)
    for name in ("../other/x.bin", "a/./b", "a/.."):
        with pytest.raises(PoisonMessageError, match=r"'\.' or '\.\.' path segment"):
            await runner.run("named", {"name": name})
    # a payload value cannot steer the local file out of in/ (the default root)
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("fetch", {"name": "../../escape.bin"})
    assert not (tmp_path / "escape.bin").exists()
    from azure.storage.blob.aio import BlobServiceClient

    async with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        blocks = await client.get_blob_client(container, "big.bin").get_block_list()
    assert len(blocks[0]) == 3  # committed in three blocks: never one 9 MiB request


async def test_missing_container_is_poison_unreachable_is_retriable(
    azurite: AzureServer,  # noqa: F811
    step_runner: Any,
) -> None:
    gone = (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{free_port()}/{AZURITE_ACCOUNT};"
    )
    runner = await step_runner(
        [
            {"id": "get", "type": "azure_blob", "connection_string": azurite.connection_string,
             "container": "no-such-container", "blob": "x"},
            {"id": "far", "type": "azure_blob", "connection_string": gone, "timeout": "2s",
             "container": "ccc", "blob": "x"},
            {"id": "badkey", "type": "azure_blob", "account_url": azurite.url,
             "account_name": AZURITE_ACCOUNT, "account_key": "d3JvbmcK", "container": "ccc",
             "blob": "x"},
        ],
    )  # fmt: skip
    with pytest.raises(PoisonMessageError, match=r"ContainerNotFound"):
        await runner.run("get", {})
    with pytest.raises(RetriableError, match="ServiceRequestError"):
        await runner.run("far", {})
    with pytest.raises(PoisonMessageError, match="403"):
        await runner.run("badkey", {})
