"""Operating StreamFlow: /metrics has what the dashboard queries, one trace spans an
execution's hops on Kafka, JSON logs carry context and never a secret."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streamflow.observability import tracing
from streamflow.observability.events import decode_all
from streamflow.runtime.app import App, AppOptions
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport
from streamflow.transport.local import LocalTransport
from streamflow.triggers.gateway import Gateway

REPO = Path(__file__).resolve().parents[2]
METRICS = (REPO / "helm/streamflow/dashboards/METRICS.txt").read_text().split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write(tmp_path: Path, name: str, steps: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
apiVersion: streamflow/v1
kind: Integration
name: {name}
config:
  api: {{type: string, default: "http://127.0.0.1:1"}}
  token: {{type: string, secret: true, default: "tok-SECRET-4711"}}
flows:
  - name: f
    partitions: 2
    key: ${{payload.id}}
    trigger: {{type: manual}}
{extra}    steps:
{steps}""")
    return path


THREE_STEPS = """\
      - {id: one, type: transform, output: {id: "${payload.id}", n: 1}}
      - {id: two, type: filter, when: "${payload.n == 1}"}
      - {id: three, type: transform, output: {id: "${payload.id}", n: 3}}
"""


def wait_for(url: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def completed(directory: Path, integration: str) -> set[str]:
    t = LocalTransport(directory)
    try:
        return {
            e.execution_id
            for r in t.read_all(f"sf.{integration}.executions")
            for e in decode_all(r.value)
            if e.event == "completed"
        }
    finally:
        t.close()


def test_metrics_endpoint_has_every_metric_the_dashboard_queries(tmp_path: Path) -> None:
    topo = write(tmp_path, "obs", THREE_STEPS)
    broker = f"local://{tmp_path / 'b'}"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamflow.cli.main",
            "serve",
            str(topo),
            "--broker",
            broker,
            "--port",
            str(port),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/healthz")
        events = tmp_path / "in.ndjson"
        events.write_text("".join(json.dumps({"id": f"e{i}"}) + "\n" for i in range(5)))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "streamflow.cli.main",
                "produce",
                str(topo),
                "--broker",
                broker,
                "--input",
                str(events),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        deadline = time.monotonic() + 30
        while len(completed(tmp_path / "b", "obs")) < 5:
            assert time.monotonic() < deadline, "executions did not complete"
            time.sleep(0.2)
        text = wait_for(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        proc.wait(30)
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    missing = [m for m in METRICS if m.removesuffix("_total") not in declared and m not in declared]
    assert not missing, f"metrics the dashboard queries but /metrics lacks: {missing}"
    # and the hot-path ones were really recorded for this flow
    assert 'streamflow_events_consumed_total{flow="f",integration="obs",step="one"} 5.0' in text
    assert 'streamflow_execution_latency_seconds_count{flow="f",integration="obs"} 5.0' in text


@pytest.mark.kafka
async def test_one_trace_spans_a_webhook_and_three_steps_on_kafka(
    kafka_bootstrap: str, tmp_path: Path, unique: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    caller_trace = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    try:
        path = write(tmp_path, f"trace-{unique}", THREE_STEPS)
        path.write_text(path.read_text().replace("{type: manual}", "{type: webhook}"))
        integration = load_integration(path)
        transport = open_transport(f"kafka://{kafka_bootstrap}")
        config = {"api": "x", "token": "y"}
        app = App(integration, transport, config, AppOptions())
        app.deploy()
        gateway = Gateway(integration, transport, config, triggers=False)
        gateway.instances = lambda _: None
        port = await gateway.start("127.0.0.1", 0)
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(stop))
        try:
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{port}/webhooks/{integration.name}/f"
                async with http.post(
                    url, json={"id": "t1"}, headers={"traceparent": caller_trace}
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    execution_id = (await resp.json())["execution_id"]
            deadline = time.monotonic() + 60
            while len(exporter.get_finished_spans()) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            await task
            await gateway.stop()
    finally:
        tracing.disable()
    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [s.name for s in spans] == ["f/one", "f/two", "f/three"]
    assert {s.context.trace_id for s in spans} == {int("ab" * 16, 16)}  # the caller's trace
    assert spans[0].parent is not None and spans[0].parent.span_id == int("cd" * 8, 16)
    for parent, child in itertools.pairwise(spans):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    assert spans[2].attributes is not None
    assert spans[2].attributes["streamflow.execution_id"] == execution_id


async def test_json_logs_carry_context_and_mask_secrets(tmp_path: Path) -> None:
    async def leak(request: web.Request) -> web.Response:
        # a careless server echoing the credentials it got into its error message
        return web.Response(status=400, text=f"bad token {request.headers['Authorization']}")

    app = web.Application()
    app.router.add_post("/x", leak)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        steps = """\
      - id: call
        type: http
        method: POST
        url: ${config.api}/x
        auth: {type: bearer, token: "${config.token}"}
        json: ${payload}
"""
        topo = write(tmp_path, "logs", steps)
        broker = f"local://{tmp_path / 'b'}"
        events = tmp_path / "in.ndjson"
        events.write_text('{"id": "l1"}\n')
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamflow.cli.main",
            "--log-format",
            "json",
            "--log-level",
            "INFO",
            "run",
            str(topo),
            "--broker",
            broker,
            "--input",
            str(events),
            "--config",
            f"api=http://127.0.0.1:{port}",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await runner.cleanup()
    assert proc.returncode == 1  # the execution failed (400)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    dead = [ln for ln in lines if "dead-lettered" in ln["message"]]
    assert dead and dead[0]["flow"] == "f" and dead[0]["step"] == "call"
    assert dead[0]["execution_id"]
    assert "bad token Bearer ***" in dead[0]["message"]  # the server's reason, masked
    assert "tok-SECRET-4711" not in err.decode() + out.decode()
    # nor on any topic: dead letter headers, execution events, envelopes
    for f in (tmp_path / "b").iterdir():
        assert b"tok-SECRET-4711" not in f.read_bytes(), f
