"""The execution store, its API and ``streamflow executions`` on both transports, against
a real ``serve``: tokens, CSRF guards, filters, timelines, safe replay, re-run, visible
runs, and no secret in any answer."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.consolekit import OPERATOR, ORDERS, SECRETS, VIEWER, Served, served, sf


@pytest.fixture
def srv(tmp_path: Path, broker_url: str, unique: str) -> Iterator[Served]:
    with served(tmp_path, broker_url, f"console-{unique}") as s:
        yield s


def test_console_api_cli_and_safe_replay(srv: Served) -> None:
    a, b, c = srv.ids["A-1"], srv.ids["B-2"], srv.ids["C-3"]

    # -- tokens and CSRF guards
    assert srv.call("/api/v1/executions", token=None)[0] == 401
    assert srv.call("/api/v1/executions", token="not-the-token-at-all")[0] == 401
    assert srv.call("/api/v1/whoami")[1]["role"] == "viewer"
    assert srv.call("/api/v1/whoami", token=OPERATOR)[1]["role"] == "operator"
    letters = srv.wait_letters(2)
    by_exec = {d["execution_id"]: d for d in letters}
    plain, saga = by_exec[c], by_exec[b]
    replay_c = f"/api/v1/flows/orders/dead-letters/{plain['id']}/replay"
    assert srv.call(replay_c, body={})[0] == 403  # the viewer token reads only
    status, body, _ = srv.call(
        replay_c, token=OPERATOR, body={}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403 and "cross-origin" in body["error"]
    status, _, _ = srv.call(
        replay_c, token=OPERATOR, body={}, headers={"Content-Type": "text/plain"}
    )
    assert status == 415  # a form or text body (what another site can send) is refused

    # -- filters and rows
    rows = srv.call("/api/v1/executions?flow=orders")[1]["executions"]
    mine = {r["id"]: r for r in rows}
    assert {mine[a]["status"], mine[b]["status"], mine[c]["status"]} == {
        "completed", "compensated", "failed",
    }  # fmt: skip
    done = srv.call("/api/v1/executions?status=completed")[1]["executions"]
    assert [r["id"] for r in done] == [a]
    assert srv.call("/api/v1/executions?status=bogus")[0] == 400
    assert srv.call("/api/v1/executions?since=1h")[1]["executions"]
    assert mine[b]["dead_letter"].endswith(".orders.dlq") and mine[a]["trigger"] == "manual"
    row = srv.call(f"/api/v1/executions/{b}")[1]
    kinds = [(e["event"], e["step"]) for e in row["timeline"]]
    assert kinds[0][0] == "started" and ("step", "reserve") in kinds
    assert ("step", "release") in kinds and kinds[-1][0] == "compensated"
    assert [d["id"] for d in row["dead_letters"]] == [saga["id"]]
    assert saga["compensated"] == "compensated" and saga["replayed"] == 0
    assert plain["compensated"] == "" and plain["replayed"] == 0

    # -- safe replay: a compensated execution's letter needs the override
    replay_b = f"/api/v1/flows/orders/dead-letters/{saga['id']}/replay"
    status, body, _ = srv.call(replay_b, token=OPERATOR, body={})
    assert status == 409 and "was compensated" in body["error"], body
    shown = srv.call(f"/api/v1/flows/orders/dead-letters/{saga['id']}")[1]
    assert "compensated" in shown["why_not"]

    # the plain one, its payload fixed: completes; a second replay needs `again`
    payload = srv.call(f"/api/v1/flows/orders/dead-letters/{plain['id']}")[1]["envelope"]["payload"]
    status, body, _ = srv.call(replay_c, token=OPERATOR, body={"payload": {**payload, "qty": 2}})
    assert status == 202 and body == {"replayed": [c]}, body
    done_c = srv.wait_status(c, "completed")
    assert done_c["replays"] == 1
    status, body, _ = srv.call(replay_c, token=OPERATOR, body={})
    assert status == 409 and "already replayed" in body["error"]
    # a payload holding masked values (as the console shows secrets) is never sent back
    status, body, _ = srv.call(
        replay_c, token=OPERATOR, body={"payload": {"auth": "***"}, "again": True}
    )
    assert status == 409 and "masked" in body["error"]

    # `dlq list` shows both columns; `dlq replay` refuses the same way and says why
    listing = sf("dlq", "list", srv.topology, "--broker", srv.broker, "--json")
    states = {r["execution_id"]: r for r in map(json.loads, listing.stdout.splitlines())}
    assert states[b]["compensated"] == "compensated" and states[b]["replayed"] == 0
    assert states[c]["replayed"] == 1 and states[c]["compensated"] == ""
    table = sf("dlq", "list", srv.topology, "--broker", srv.broker).stdout
    assert "COMPENSATED" in table and "REPLAYED" in table and "1x" in table
    refused = sf("dlq", "replay", srv.topology, saga["id"], "--broker", srv.broker)
    assert refused.returncode == 2 and "--allow-compensated" in refused.stderr
    again = sf("dlq", "replay", srv.topology, plain["id"], "--broker", srv.broker)
    assert again.returncode == 2 and "--again" in again.stderr

    # -- re-run: the same input, a new execution
    status, body, _ = srv.call(f"/api/v1/executions/{a}/rerun", token=OPERATOR, body={})
    assert status == 202 and body["rerun_of"] == a
    srv.wait_status(body["execution_id"], "completed")
    assert srv.call(f"/api/v1/executions/{a}/rerun", body={})[0] == 403

    # -- the CLI reads the same store from the topic
    out = sf("executions", "list", srv.topology, "--broker", srv.broker, "--json",
             "--status", "completed")  # fmt: skip
    assert out.returncode == 0, out.stderr
    listed = {r["id"] for r in map(json.loads, out.stdout.splitlines())}
    assert {a, c, body["execution_id"]} <= listed and b not in listed
    table = sf("executions", "list", srv.topology, "--broker", srv.broker).stdout
    assert "EXECUTION" in table and b in table and "compensated" in table
    shown_b = sf("executions", "show", srv.topology, b, "--broker", srv.broker)
    assert shown_b.returncode == 0, shown_b.stderr
    assert f"execution {b} (orders)" in shown_b.stdout
    assert re.search(r"✓ reserve\s+\+\s*\d+ms", shown_b.stdout)
    assert "↺ compensated" in shown_b.stdout and "dead letter in" in shown_b.stdout
    bad = sf("executions", "list", srv.topology, "--since", "soon", "--broker", srv.broker)
    assert bad.returncode == 2 and "--since" in bad.stderr
    missing = sf("executions", "show", srv.topology, "nope", "--broker", srv.broker)
    assert missing.returncode == 2 and "no execution nope" in missing.stderr

    # -- visible runs: serve printed one line per finished execution and the log step
    log = srv.log.read_text()
    assert re.search(rf"execution {a} orders completed in \d+ms", log), log
    assert re.search(rf"execution {b} orders compensated in \d+ms", log), log
    assert "order A-1 received" in log

    # -- instances: listed with their secret config values masked
    key = sf("instance", "key").stdout.strip()
    deployed = sf("instance", "deploy", srv.topology, "--instance", "acme", "--broker",
                  srv.broker, *srv.config, env={"STREAMFLOW_SECRET_KEY": key})  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    [acme] = srv.call("/api/v1/integration")[1]["instances"]
    assert acme["instance"] == "acme" and acme["config"]["api_token"] == "***"
    assert acme["config"]["target"].startswith("http://127.0.0.1:")

    # -- no secret anywhere: every API answer, the pages, the CLI's output
    texts = [log]
    for path in (
        "/api/v1/integration", "/api/v1/executions?limit=1000", "/api/v1/stats",
        "/api/v1/flows/orders/dead-letters", "/console/", "/console/static/console.js",
        *(f"/api/v1/executions/{e}" for e in (a, b, c)),
        *(f"/api/v1/flows/orders/dead-letters/{d['id']}" for d in srv.wait_letters(2)),
    ):  # fmt: skip
        for token in (VIEWER, OPERATOR):
            status, _, text = srv.call(path, token=token)
            assert status == 200, (path, text)
            texts.append(text)
    texts += [out.stdout, table, shown_b.stdout, listing.stdout]
    for secret in SECRETS:
        assert not [t for t in texts if secret in t], secret
    # what was masked was there to mask: A-1's input password and the echoed token
    a_row = srv.call(f"/api/v1/executions/{a}")[1]
    assert a_row["timeline"][0]["payload"]["password"] == "***"
    # --trace-payloads: every step's payload is in the timeline (masked the same way)
    stamped = [e for e in a_row["timeline"] if e["step"] == "stamp" and e["event"] == "step"]
    assert stamped[0]["payload"] == {**ORDERS[0], "password": "***", "source": "shop"}
    letter = srv.call(f"/api/v1/flows/orders/dead-letters/{saga['id']}")[1]
    assert letter["envelope"]["steps"]["reserve"]["body"]["auth"] == "Bearer ***"


def test_gateway_alone_serves_the_console_and_follow_prints_new_ones(tmp_path: Path) -> None:
    """`gateway` (no agents) serves the same API; `executions list --follow` prints an
    execution that starts after it began; without the token there is no console."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from tests.e2e.consolekit import REPO, TOPOLOGY, Target

    topology = tmp_path / "integration.yaml"
    topology.write_text(TOPOLOGY.format(name="console-alone"))
    broker = f"local://{tmp_path / 'broker'}"
    assert sf("deploy", topology, "--broker", broker).returncode == 0
    follow = subprocess.Popen(
        [sys.executable, "-m", "streamflow.cli.main", "executions", "list", str(topology),
         "--follow", "--json", "--broker", broker],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(follow.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    try:
        with Target().running() as target:
            srv = Served(topology, broker, target, tmp_path / "gateway.log")
            env = {**os.environ, "STREAMFLOW_CONSOLE_TOKEN": VIEWER}
            srv.proc = subprocess.Popen(
                [sys.executable, "-m", "streamflow.cli.main", "gateway", str(topology),
                 "--port", "0", "--broker", broker, *srv.config],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=srv.log.open("wb"), env=env,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 60
                while not (m := re.search(r"console (http://\S+)/console/", srv.log.read_text())):
                    assert srv.proc.poll() is None and time.monotonic() < deadline, (
                        srv.log.read_text()
                    )
                    time.sleep(0.2)
                srv.base = m.group(1)
                [eid] = srv.produce([{"id": "Z-9", "qty": 1}])
                row = srv.wait_status(eid, "running")  # no agents here: it only started
                assert row["timeline"][0]["payload"]["id"] == "Z-9"
                assert srv.call("/api/v1/whoami")[1]["role"] == "viewer"
                status, _, _ = srv.call(f"/api/v1/executions/{eid}/rerun", token=OPERATOR, body={})
                assert status == 401  # no operator token configured: it is no token at all
                deadline = time.monotonic() + 30
                while not any(eid in line for line in lines) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert [json.loads(x)["status"] for x in lines if eid in x][:1] == ["running"]
            finally:
                srv.stop()
    finally:
        follow.terminate()
        follow.wait(10)
        reader.join(10)
    # without the token: no console routes at all
    with Target().running() as target:
        srv = Served(topology, broker, target, tmp_path / "serve.log")
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamflow.cli.main", "gateway", str(topology), "--port", "0",
             "--broker", broker, *srv.config],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=srv.log.open("wb"),
            env={k: v for k, v in os.environ.items() if not k.startswith("STREAMFLOW_CONSOLE")},
        )  # fmt: skip
        srv.proc = proc
        try:
            deadline = time.monotonic() + 60
            while not (m := re.search(r"gateway of \S+ on (http://\S+) ", srv.log.read_text())):
                assert proc.poll() is None and time.monotonic() < deadline, srv.log.read_text()
                time.sleep(0.2)
            srv.base = m.group(1)
            assert "/console/" not in srv.log.read_text()
            assert srv.call("/api/v1/whoami")[0] == 404
            assert srv.call("/console/")[0] == 404
        finally:
            srv.stop()
