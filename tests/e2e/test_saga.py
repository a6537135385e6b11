"""The order saga example (``topologies/order-saga``) against real HTTP servers: shipping
fails for good, so the payment is refunded and then the inventory released - the reverse
order of the steps they undo - each exactly once, with the ids the original calls got."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from streamflow.envelope import decode_record
from streamflow.runtime.runner import Execution, RunResult
from streamflow.testing import run_flow
from streamflow.testing.mocks import MockServices, RecordedCall
from streamflow.transport.base import Record
from streamflow.transport.local import LocalTransport

REPO = Path(__file__).resolve().parents[2]
SAGA = REPO / "topologies" / "order-saga"
TOPOLOGY = SAGA / "integration.yaml"
MOCKS = SAGA / "mocks.yaml"
DLQ = "sf.order-saga.place-order.dlq"
ORDERS = [
    {"order_id": "A-1", "items": [{"sku": "X", "qty": 1}], "amount": 99.5},
    {"order_id": "B-2", "items": [{"sku": "Y", "qty": 3}], "amount": 12.0},
]


def sf(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mocks_doc() -> dict[str, Any]:
    doc = yaml.safe_load(MOCKS.read_text())
    assert isinstance(doc, dict)
    return doc


def read_topic(broker: Path, topic: str) -> list[Record]:
    transport = LocalTransport(broker)
    try:
        return transport.read_all(topic)
    finally:
        transport.close()


def steps_of(ex: Execution) -> list[tuple[str, str]]:
    return [(ev.event, ev.step) for ev in ex.events if ev.event != "retry"]


def paths(calls: list[RecordedCall]) -> list[str]:
    return [f"{c.method} {c.path}" for c in calls]


async def run_saga(
    doc: dict[str, Any], orders: list[dict[str, Any]], broker: Path
) -> tuple[RunResult, MockServices]:
    mocks = MockServices.from_dict(doc, source="mocks")
    async with mocks:
        result = await run_flow(
            TOPOLOGY, orders, config=mocks.config_values(), directory=broker, timeout=60
        )
    return result, mocks


# --------------------------------------------------------------------------- the CLI


def test_order_saga_example_with_the_cli(tmp_path: Path) -> None:
    broker = tmp_path / "broker"
    run = sf(
        "run", TOPOLOGY, "--mocks", MOCKS, "--input", SAGA / "events.ndjson",
        "--broker", f"local://{broker}",
    )  # fmt: skip
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    assert run.returncode == 1, run.stdout + run.stderr  # compensated is not a success
    assert "1 execution in" in run.stdout and "1 compensated" in run.stdout
    # the mock summary lists calls in the order they first came
    mock_lines = [line.strip() for line in run.stdout.splitlines() if "mock " in line]
    assert mock_lines == [
        "mock inventory POST /reservations -> 201  x1",
        "mock payments POST /charges -> 201  x1",
        "mock shipping POST /shipments -> 503  x2",
        "mock payments POST /charges/CH-A-1/refund -> 200  x1",
        "mock inventory DELETE /reservations/RES-A-1 -> 200  x1",
    ]

    # the same run as JSON events: the compensations in reverse order, then the end
    broker2 = tmp_path / "broker2"
    run = sf(
        "run", TOPOLOGY, "--mocks", MOCKS, "--input", SAGA / "events.ndjson",
        "--broker", f"local://{broker2}", "--json",
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    events = [(d["event"], d["step"], d["note"]) for d in lines if "event" in d]
    assert events[-3:] == [
        ("step", "refund-payment", "compensated charge-payment"),
        ("step", "release-inventory", "compensated reserve-inventory"),
        ("compensated", "release-inventory", ""),
    ]
    assert ("failed", "ship", "compensating") in events
    assert lines[-1]["summary"] == {"compensated": 1}

    # the failed step is a dead letter as well, visible to `dlq list`
    listing = sf("dlq", "list", TOPOLOGY, "--broker", f"local://{broker}", "--json")
    assert listing.returncode == 0, listing.stderr
    [row] = [json.loads(line) for line in listing.stdout.splitlines()]
    assert row["step"] == "ship"
    assert row["error_type"] == "RetriableError"
    assert "503" in row["error"]


# --------------------------------------------------------------------------- in process


async def test_compensations_run_in_reverse_order_once_each(tmp_path: Path) -> None:
    result, mocks = await run_saga(mocks_doc(), ORDERS, tmp_path / "broker")
    assert result.by_status() == {"compensated": len(ORDERS)}
    for ex in result.executions:
        order = ex.input["order_id"]
        refunds = mocks.calls_to("payments", "POST", f"/charges/CH-{order}/refund")
        releases = mocks.calls_to("inventory", "DELETE", f"/reservations/RES-{order}")
        assert len(refunds) == 1 and len(releases) == 1
        assert refunds[0].ts <= releases[0].ts
        assert refunds[0].json == {"reason": "shipping failed"}
        # every call of this order, in the order the services received them
        mine = [
            c
            for c in mocks.calls
            if order in c.path or (isinstance(c.json, dict) and c.json.get("order") == order)
        ]
        assert paths(mine) == [
            "POST /reservations",
            "POST /charges",
            "POST /shipments",
            "POST /shipments",  # ship: max_attempts 2
            f"POST /charges/CH-{order}/refund",
            f"DELETE /reservations/RES-{order}",
        ]
        assert steps_of(ex) == [
            ("started", "reserve-inventory"),
            ("step", "reserve-inventory"),
            ("step", "charge-payment"),
            ("failed", "ship"),
            ("step", "refund-payment"),
            ("step", "release-inventory"),
            ("compensated", "release-inventory"),
        ]
        assert "503" in ex.error
    # nothing else was called: no refund or release of an order twice or of another id
    assert len(mocks.calls_to("payments", "POST", "/charges/{id}/refund")) == len(ORDERS)
    assert len(mocks.calls_to("inventory", "DELETE", "/reservations/{id}")) == len(ORDERS)


async def test_only_completed_steps_are_compensated(tmp_path: Path) -> None:
    doc = mocks_doc()
    # the charge fails for good (a 402 is not retried): nothing to refund, only release
    doc["services"]["payments"]["routes"][0] = {
        "method": "POST",
        "path": "/charges",
        "status": 402,
        "json": {"error": "card declined"},
    }
    result, mocks = await run_saga(doc, ORDERS[:1], tmp_path / "broker")
    [ex] = result.executions
    assert ex.status == "compensated"
    assert "402" in ex.error
    assert mocks.calls_to("shipping") == []
    assert mocks.calls_to("payments", "POST", "/charges/{id}/refund") == []
    assert paths(mocks.calls_to("inventory", "DELETE")) == ["DELETE /reservations/RES-A-1"]


async def test_a_successful_order_is_not_compensated(tmp_path: Path) -> None:
    doc = mocks_doc()
    doc["services"]["shipping"]["routes"] = [
        {"method": "POST", "path": "/shipments", "status": 201, "json": {"id": "SH-1"}}
    ]
    result, mocks = await run_saga(doc, ORDERS, tmp_path / "broker")
    assert result.by_status() == {"completed": len(ORDERS)}
    assert mocks.calls_to("payments", "POST", "/charges/{id}/refund") == []
    assert mocks.calls_to("inventory", "DELETE") == []
    assert read_topic(tmp_path / "broker", DLQ) == []


async def test_a_compensation_that_fails_for_good_is_dead_lettered(tmp_path: Path) -> None:
    doc = copy.deepcopy(mocks_doc())
    doc["services"]["payments"]["routes"][1] = {
        "method": "POST",
        "path": "/charges/{id}/refund",
        "status": 500,
        "json": {"error": "ledger offline"},
    }
    broker = tmp_path / "broker"
    result, mocks = await run_saga(doc, ORDERS[:1], broker)
    [ex] = result.executions
    assert ex.status == "compensation_failed"
    assert "500" in ex.error
    refunds = mocks.calls_to("payments", "POST", "/charges/CH-A-1/refund")
    assert len(refunds) == 3  # the compensation's own retry policy (default: 3 attempts)
    assert ("compensation_failed", "refund-payment") in steps_of(ex)

    letters = {r.header("sf-step"): r for r in read_topic(broker, DLQ)}
    assert set(letters) == {b"ship", b"refund-payment"}  # never dropped
    refund = letters[b"refund-payment"]
    headers = {k: v.decode() for k, v in refund.headers}
    assert headers["sf-execution-id"] == ex.execution_id
    assert headers["sf-error-type"] == "RetriableError"
    assert "500" in headers["sf-error"]
    assert headers["sf-attempt"] == "3"
    assert headers["sf-origin-topic"] == "sf.order-saga.place-order.compensate"
    env = decode_record(refund)
    assert env.execution_id == ex.execution_id
    assert env.step == "refund-payment"
    # the dead letter keeps what was still to undo, the failed compensation on top
    assert [entry["step"] for entry in env.saga] == ["reserve-inventory", "charge-payment"]
    assert env.steps["charge-payment"]["body"] == {"id": "CH-A-1"}
    assert env.steps["reserve-inventory"]["body"] == {"id": "RES-A-1"}
