"""The console API answers hostile query parameters with 400, never a 500 (the gateway
logged a traceback for `since=99999999999999999999999`, `limit=²`, `since=1e20d`)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from streamflow.observability.events import ExecutionEvent
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.triggers.console import Console, ConsoleConfig

TOKEN = "viewer-token-0123456789"
TOPOLOGY = """
apiVersion: streamflow/v1
kind: Integration
name: cq
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: l, type: log, message: hi}
"""


async def test_hostile_query_parameters_get_400_not_500(tmp_path: Path) -> None:
    (tmp_path / "i.yaml").write_text(TOPOLOGY)
    integration = load_integration(tmp_path / "i.yaml")
    plan = compile_plan(integration)
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    console = Console(
        integration, plan, transport, ConsoleConfig(TOKEN),
        flow_config={}, instances=lambda: None, instance_rows=list,
    )  # fmt: skip
    console.store.apply([ExecutionEvent("e1", "f", "completed", ts=5, payload={"n": 1})])
    app = web.Application()
    console.add_routes(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with TestClient(TestServer(app)) as client:
            for query in (
                "since=99999999999999999999999", "after=99999999999999999999999",
                "limit=99999999999999999999999", "limit=%C2%B2", "since=%C2%B2",
                "after=-1", "limit=ten",
            ):  # fmt: skip
                resp = await client.get(f"/api/v1/executions?{query}", headers=auth)
                assert resp.status == 400, (query, resp.status, await resp.text())
            for query, ids in (
                ("since=99999999999999999999d", ["e1"]),  # longer than the epoch: everything
                ("since=1h", []),
                ("limit=0", ["e1"]),
                ("since=4", ["e1"]),
                ("after=0", ["e1"]),
            ):
                resp = await client.get(f"/api/v1/executions?{query}", headers=auth)
                assert resp.status == 200, (query, await resp.text())
                rows = (await resp.json())["executions"]
                assert [r["id"] for r in rows] == ids, query
    finally:
        console.close()
        transport.close()
