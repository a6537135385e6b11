"""Integrations as products: two instances of Acme ERP, each with its own config, secrets
and webhook URLs, on the embedded transport and on Kafka."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from streamflow.instances.vault import new_key
from streamflow.testing.mocks import MockServices
from streamflow.transport import open_transport

REPO = Path(__file__).resolve().parents[2]
ACME = REPO / "topologies" / "acme-erp" / "integration.yaml"
SECRETS = {  # every secret value of both instances: none may appear in clear anywhere
    "acme": {
        "erp_token": "erp-ACME-7f3a",
        "progix_token": "px-ACME-91bc",
        "webhook_secret": "wh-ACME-55d1",
    },
    "globex": {
        "erp_token": "erp-GLBX-2e8c",
        "progix_token": "px-GLBX-0a4f",
        "webhook_secret": "wh-GLBX-c3b7",
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sf(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def mocks() -> MockServices:
    services: dict[str, Any] = {}
    for name in SECRETS:
        services[f"erp-{name}"] = {
            "routes": [
                {
                    "method": "POST",
                    "path": "/webhooks",
                    "status": 201,
                    "json": {"id": "hook-${request.json.event}"},
                },
                {"method": "DELETE", "path": "/webhooks", "status": 204},
            ]
        }
        services[f"progix-{name}"] = {
            "routes": [
                {
                    "method": "PUT",
                    "path": "/customers/{id}",
                    "json": {"id": "${request.params.id}"},
                },
                {"method": "POST", "path": "/inventory", "status": 202, "json": {"ok": True}},
            ]
        }
    return MockServices.from_dict({"services": services})


async def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_two_instances_are_isolated_end_to_end(
    broker_url: str, tmp_path: Path, unique: str
) -> None:
    name = f"acme-erp-{unique}"
    topo = tmp_path / "integration.yaml"
    topo.write_text(ACME.read_text().replace("name: acme-erp\n", f"name: {name}\n", 1))
    env = {**os.environ, "STREAMFLOW_SECRET_KEY": new_key()}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    outputs: list[str] = []

    def run(*args: str) -> str:
        proc = sf(*args, env=env)
        outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run("deploy", str(topo), "--broker", broker_url)
    async with mocks() as m:
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamflow.cli.main",
            "serve",
            str(topo),
            "--broker",
            broker_url,
            "--port",
            str(port),
            cwd=REPO,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with aiohttp.ClientSession() as http:
                await until_ready(http, f"{base}/healthz")
                for inst, secrets in SECRETS.items():
                    region = "eu" if inst == "acme" else "us"
                    run(
                        "instance",
                        "deploy",
                        str(topo),
                        "--instance",
                        inst,
                        "--broker",
                        broker_url,
                        "--public-url",
                        base,
                        "--config",
                        f"erp_url={m.base_url(f'erp-{inst}')}",
                        "--config",
                        f"progix_url={m.base_url(f'progix-{inst}')}",
                        "--config",
                        f"region={region}",
                        *(a for k, v in secrets.items() for a in ("--config", f"{k}={v}")),
                    )
                # the initialization flow registered each instance's own URLs in its own ERP
                for inst in SECRETS:
                    await until(
                        lambda i=inst: len(m.calls_to(f"erp-{i}", "POST")) == 2,
                        f"{inst} webhook registrations",
                    )
                    urls = sorted(c.json["url"] for c in m.calls_to(f"erp-{inst}", "POST"))
                    assert urls == [
                        f"{base}/webhooks/{inst}/{name}/sync-customers",
                        f"{base}/webhooks/{inst}/{name}/sync-inventory",
                    ]
                    assert all(
                        c.headers["Authorization"] == f"Bearer {SECRETS[inst]['erp_token']}"
                        for c in m.calls_to(f"erp-{inst}")
                    )

                async def post(inst: str, secret: str, customer_id: str) -> int:
                    body = json.dumps(
                        {
                            "customer": {
                                "id": customer_id,
                                "first_name": inst,
                                "last_name": "X",
                                "email": "A@B.C",
                                "status": "active",
                            }
                        }
                    ).encode()
                    url = f"{base}/webhooks/{inst}/{name}/sync-customers"
                    async with http.post(
                        url,
                        data=body,
                        headers={
                            "Content-Type": "application/json",
                            "X-Acme-Signature": sign(body, secret),
                        },
                    ) as resp:
                        return resp.status

                assert await post("acme", SECRETS["acme"]["webhook_secret"], "A-1") == 202
                assert await post("globex", SECRETS["globex"]["webhook_secret"], "G-1") == 202
                # one instance's secret does not open another instance's URL
                assert await post("globex", SECRETS["acme"]["webhook_secret"], "G-2") == 401
                for inst, cid in (("acme", "A-1"), ("globex", "G-1")):
                    await until(
                        lambda i=inst: bool(m.calls_to(f"progix-{i}", "PUT")),
                        f"{inst} customer push",
                    )
                    [call] = m.calls_to(f"progix-{inst}", "PUT")
                    assert call.path == f"/customers/{cid}"
                    assert call.json["region"] == ("eu" if inst == "acme" else "us")
                    assert (
                        call.headers["Authorization"] == f"Bearer {SECRETS[inst]['progix_token']}"
                    )
                assert not any(c.path == "/customers/G-2" for c in m.calls)

                # removing globex runs its removal flow, then its URLs answer 404
                run(
                    "instance",
                    "remove",
                    str(topo),
                    "--instance",
                    "globex",
                    "--broker",
                    broker_url,
                    "--public-url",
                    base,
                )
                await until(lambda: bool(m.calls_to("erp-globex", "DELETE")), "unregistration")
                [delete] = m.calls_to("erp-globex", "DELETE")
                assert delete.query == {"instance": "globex"}
                await until_status(http, post, 404)
                assert await post("acme", SECRETS["acme"]["webhook_secret"], "A-2") == 202
                listed = run("instance", "list", str(topo), "--broker", broker_url)
                assert "acme" in listed and "globex" not in listed
                run("instance", "show", str(topo), "--instance", "acme", "--broker", broker_url)
        finally:
            server.terminate()
            _, err = await asyncio.wait_for(server.communicate(), 60)
            outputs.append(err.decode())
    leaked = [
        s for sec in SECRETS.values() for s in sec.values() if any(s in out for out in outputs)
    ]
    assert not leaked, f"secrets in CLI output or logs: {leaked}"
    assert_no_secret_on_topics(broker_url, name)


async def until_ready(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            async with http.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered")
        await asyncio.sleep(0.2)


async def until_status(
    http: aiohttp.ClientSession, post: Callable[[str, str, str], Awaitable[int]], status: int
) -> None:
    deadline = time.monotonic() + 30
    while await post("globex", SECRETS["globex"]["webhook_secret"], "G-3") != status:
        assert time.monotonic() < deadline, f"globex webhook never answered {status}"
        await asyncio.sleep(0.3)


def assert_no_secret_on_topics(broker_url: str, name: str) -> None:
    transport = open_transport(broker_url)
    try:
        topics = ["sf.instances", f"sf.{name}.executions"]
        for flow in ("sync-customers", "sync-inventory", "initialization", "removal"):
            topics.append(f"sf.{name}.{flow}.dlq")
        records = [r for t in topics if transport.partitions(t) for r in transport.read_all(t)]
    finally:
        transport.close()
    assert records, "nothing was read: the check would prove nothing"
    blob = b"".join(r.value + b"".join(v for _, v in r.headers) for r in records)
    for sec in SECRETS.values():
        for value in sec.values():
            assert value.encode() not in blob, f"secret {value} on a topic in clear"
