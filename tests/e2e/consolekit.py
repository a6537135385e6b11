"""What the console tests run against: a real ``streamflow serve`` (subprocess) on a real
broker, a loopback HTTP target the flow calls, and three orders that end three ways.

The flow ``orders``: transform -> log -> reserve (http, compensated by release) -> ship
(http). Order A-1 completes; B-2 fails at ship after reserve, so its saga releases the
reservation (a compensated execution with a dead letter); C-3 fails at reserve (a plain
dead letter, replayable once its quantity is fixed). The target echoes the Authorization
header (the secret token) into its answers, and A-1 carries a ``password`` field: both
are secrets that no console page or API answer may show.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
API_TOKEN = "sekret-api-token-4b1d7e"  # the integration's secret config value
INPUT_PASSWORD = "hunter2-input-password"  # a secret field in an input payload
SECRETS = (API_TOKEN, INPUT_PASSWORD)
VIEWER = "viewer-token-0123456789abcdef"
OPERATOR = "operator-token-0123456789abcdef"
ORDERS = [
    {"id": "A-1", "qty": 1, "password": INPUT_PASSWORD},
    {"id": "B-2", "qty": -1},
    {"id": "C-3", "qty": -5},
]

TOPOLOGY = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
description: Orders from the shop, reserved then shipped; a failed shipment releases stock.
config:
  target: {{type: string}}
  api_token: {{type: string, secret: true}}
flows:
  - name: orders
    description: reserve stock, ship
    partitions: 2
    key: ${{payload.id}}
    trigger: {{type: manual}}
    retry: {{max_attempts: 1}}
    steps:
      - id: stamp
        type: transform
        merge: true
        output: {{source: shop}}
      - id: announce
        type: log
        message: "order ${{payload.id}} received"
        level: info
      - id: reserve
        type: http
        method: POST
        url: ${{config.target}}/reserve
        auth: {{type: bearer, token: "${{config.api_token}}"}}
        json: ${{payload}}
        compensate:
          id: release
          type: http
          method: POST
          url: ${{config.target}}/release
          json: {{id: "${{payload.id}}"}}
      - id: ship
        type: http
        method: POST
        url: ${{config.target}}/ship
        auth: {{type: bearer, token: "${{config.api_token}}"}}
        json: ${{payload}}
"""


@dataclass
class Target:
    """The services the flow calls, on a loopback port, in a thread of the test."""

    port: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append((request.path, body))
        qty = int(body.get("qty", 0)) if isinstance(body, dict) else 0
        echo = request.headers.get("Authorization", "")
        if request.path == "/reserve" and qty < -2:
            return web.json_response({"error": "quantity out of range", "auth": echo}, status=422)
        if request.path == "/ship" and qty < 0:
            return web.json_response({"error": "cannot ship", "auth": echo}, status=422)
        return web.json_response({"ok": request.path, "auth": echo}, status=201)

    @contextmanager
    def running(self) -> Iterator[Target]:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        runner_box: list[web.AppRunner] = []

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/{name}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            runner_box.append(runner)
            ready.set()

        thread = threading.Thread(target=lambda: (loop.run_until_complete(start()),
                                                  loop.run_forever()), daemon=True)  # fmt: skip
        thread.start()
        assert ready.wait(10)
        try:
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


def sf(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


@dataclass
class Served:
    """A running ``streamflow serve`` of the test topology, with the console on."""

    topology: Path
    broker: str
    target: Target
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    base: str = ""
    ids: dict[str, str] = field(default_factory=dict)  # order id -> execution id

    @property
    def config(self) -> list[str]:
        return ["--config", f"target=http://127.0.0.1:{self.target.port}",
                "--config", f"api_token={API_TOKEN}"]  # fmt: skip

    def start(self) -> None:
        env = {**os.environ, "STREAMFLOW_CONSOLE_TOKEN": VIEWER,
               "STREAMFLOW_OPERATOR_TOKEN": OPERATOR}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli.main", "serve", str(self.topology),
             "--port", "0", "--broker", self.broker, "--trace-payloads", *self.config],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            m = re.search(r"console (http://\S+)/console/", self.log.read_text())
            if m:
                self.base = m.group(1)
                return
            time.sleep(0.2)
        raise AssertionError("serve did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def produce(self, orders: list[dict[str, Any]]) -> list[str]:
        path = self.log.with_name("orders.ndjson")
        path.write_text("".join(json.dumps(o) + "\n" for o in orders))
        out = sf("produce", self.topology, "--input", path, "--broker", self.broker, *self.config)
        assert out.returncode == 0, out.stderr
        ids = out.stdout.split()
        assert len(ids) == len(orders)
        for order, eid in zip(orders, ids, strict=True):
            self.ids[order["id"]] = eid
        return ids

    def call(
        self,
        path: str,
        *,
        token: str | None = VIEWER,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, str]:
        """(status, JSON or None, raw text) of an API or page request."""
        hdrs = dict(headers or {})
        if token is not None:
            hdrs.setdefault("Authorization", f"Bearer {token}")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.base + path, data=data, headers=hdrs,
                                     method="POST" if data is not None else "GET")  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read().decode()
        try:
            return status, json.loads(text), text
        except ValueError:
            return status, None, text

    def wait_status(self, execution_id: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status, row, _ = self.call(f"/api/v1/executions/{execution_id}")
            if status == 200 and row["status"] in statuses:
                return row
            time.sleep(0.3)
        raise AssertionError(f"{execution_id} not {statuses}: {row}\n{self.log.read_text()}")

    def wait_letters(self, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        letters: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            _, body, _ = self.call("/api/v1/flows/orders/dead-letters")
            letters = body["dead_letters"]
            if len(letters) >= n:
                return letters
            time.sleep(0.3)
        raise AssertionError(f"{n} dead letters expected: {letters}")


@contextmanager
def served(tmp: Path, broker: str, name: str) -> Iterator[Served]:
    """The topology served with three orders produced and ended (A-1 completed, B-2
    compensated, C-3 failed)."""
    topology = tmp / "integration.yaml"
    topology.write_text(TOPOLOGY.format(name=name))
    with Target().running() as target:
        srv = Served(topology, broker, target, tmp / "serve.log")
        srv.start()
        try:
            srv.produce(ORDERS)
            srv.wait_status(srv.ids["A-1"], "completed")
            srv.wait_status(srv.ids["B-2"], "compensated")
            srv.wait_status(srv.ids["C-3"], "failed")
            srv.wait_letters(2)
            yield srv
        finally:
            srv.stop()
