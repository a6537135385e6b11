"""file_read of XLSX (a real workbook written by openpyxl) and XML; the file_list step on
a real folder tree; the file trigger's `recursive`."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook

from streamflow.errors import PoisonMessageError, ValidationFailed
from streamflow.topology.models import Integration
from streamflow.transport.base import Transport
from tests.integration.test_file_trigger import Watcher, emitted, setup  # noqa: F401 (fixture)


def workbook(path: Path) -> None:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Orders"
    ws.append(["id", "placed", "amount", "paid", None])
    ws.append([1, dt.datetime(2026, 3, 29, 3, 30), 12.5, True, None])
    ws.append([None, None, None, None, None])  # an empty row: passed over
    ws.append([2, dt.date(2026, 4, 1), 7, False, "extra"])
    other = wb.create_sheet("Notes")
    other.append(["just", "text"])
    wb.save(path)


async def test_read_xlsx(step_runner: Any, tmp_path: Path) -> None:
    workbook(tmp_path / "orders.xlsx")
    (tmp_path / "broken.xlsx").write_bytes(b"PK\x03\x04 not really a zip")
    runner = await step_runner(
        """
        - {id: first, type: file_read, path: orders.xlsx}
        - {id: notes, type: file_read, path: orders.xlsx, xlsx: {sheet: Notes, header: false}}
        - {id: byindex, type: file_read, path: orders.xlsx, xlsx: {sheet: 1, header: false}}
        - {id: nosheet, type: file_read, path: orders.xlsx, xlsx: {sheet: Nope}}
        - {id: broken, type: file_read, path: broken.xlsx}
        - {id: small, type: file_read, path: orders.xlsx, max_bytes: 6000}
        """
    )
    out = await runner.run("first", {})
    assert out.payload["records"] == [
        {"id": 1, "placed": "2026-03-29T03:30:00", "amount": 12.5, "paid": True,
         "column_5": None},
        {"id": 2, "placed": "2026-04-01T00:00:00", "amount": 7, "paid": False,
         "column_5": "extra"},
    ]  # fmt: skip
    assert (await runner.run("notes", {})).payload["records"] == [["just", "text"]]
    assert (await runner.run("byindex", {})).payload["records"] == [["just", "text"]]
    with pytest.raises(PoisonMessageError, match="no sheet 'Nope' \\(sheets: Orders, Notes\\)"):
        await runner.run("nosheet", {})
    with pytest.raises(PoisonMessageError, match="not an XLSX workbook"):
        await runner.run("broken", {})
    # the file is ~5 kB but unpacks to more: max_bytes bounds the unpacked size
    assert (tmp_path / "orders.xlsx").stat().st_size < 6000
    with pytest.raises(PoisonMessageError, match=r"unpacks to \d+ bytes, more than max_bytes"):
        await runner.run("small", {})


async def test_read_xml(step_runner: Any, tmp_path: Path) -> None:
    (tmp_path / "orders.xml").write_text(
        "<orders><order id='1'><sku>A</sku></order><order id='2'><sku>B</sku></order></orders>"
    )
    (tmp_path / "one.xml").write_text("<orders><order id='1'/></orders>")
    (tmp_path / "bomb.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;">]><r>&b;</r>'
    )
    runner = await step_runner(
        """
        - {id: many, type: file_read, path: orders.xml, records_path: orders.order}
        - {id: one, type: file_read, path: one.xml, records_path: orders.order}
        - {id: none, type: file_read, path: one.xml, records_path: orders.nothing}
        - {id: bomb, type: file_read, path: bomb.xml}
        """
    )
    assert (await runner.run("many", {})).payload["records"] == [
        {"@id": "1", "sku": "A"}, {"@id": "2", "sku": "B"}
    ]  # fmt: skip
    assert (await runner.run("one", {})).payload["records"] == [{"@id": "1"}]
    assert (await runner.run("none", {})).payload["records"] == []
    with pytest.raises(PoisonMessageError, match="XML refused: a DTD"):
        await runner.run("bomb", {})


def tree(base: Path) -> None:
    files = {"a.csv": 30, "b.csv": 10, "notes.txt": 5, "sub/c.csv": 20, "sub/deep/d.csv": 40,
             ".hidden.csv": 1, ".cache/e.csv": 1}  # fmt: skip
    for i, (name, size) in enumerate(files.items()):
        p = base / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * size)
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)


async def test_file_list(step_runner: Any, tmp_path: Path) -> None:
    tree(tmp_path / "in")
    outside = tmp_path / "secret.csv"
    outside.write_text("s")
    (tmp_path / "in" / "link.csv").symlink_to(outside)
    runner = await step_runner(
        """
        - {id: flat, type: file_list, path: in, pattern: "*.csv"}
        - {id: all, type: file_list, path: in, pattern: "*.csv", recursive: true, sort: size,
           descending: true, limit: 3, root: in}
        - {id: newest, type: file_list, path: "${payload.dir}", recursive: true, pattern: "?.csv",
           sort: modified, descending: true, limit: 1, replace_payload: false}
        - {id: escape, type: file_list, path: "${payload.dir}", root: in}
        - {id: missing, type: file_list, path: nowhere}
        - {id: missing-ok, type: file_list, path: nowhere, missing_ok: true}
        """
    )
    flat = (await runner.run("flat", {})).payload
    assert [f["relative"] for f in flat["files"]] == ["a.csv", "b.csv", "link.csv"]
    assert flat["files"][0] == {
        "path": str(tmp_path / "in" / "a.csv"), "relative": "a.csv", "name": "a.csv",
        "size": 30, "modified": "2023-11-14T22:13:20+00:00",
    }  # fmt: skip
    # the link resolves outside root: left out; hidden files and folders too
    every = (await runner.run("all", {})).payload
    assert [(f["relative"], f["size"]) for f in every["files"]] == [
        ("sub/deep/d.csv", 40), ("a.csv", 30), ("sub/c.csv", 20)
    ]  # fmt: skip
    assert every["truncated"] is True and every["count"] == 3
    out = await runner.run("newest", {"dir": "in"})
    assert out.payload == {"dir": "in"}
    assert [f["relative"] for f in out.result["files"]] == ["sub/deep/d.csv"]
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("escape", {"dir": "in/../.."})
    with pytest.raises(PoisonMessageError, match="no such folder"):
        await runner.run("missing", {})
    assert (await runner.run("missing-ok", {})).payload["files"] == []


async def test_file_list_event_folders_are_confined_by_default(
    step_runner: Any, tmp_path: Path
) -> None:
    """Without root:, a payload value cannot steer file_list out of the folder written before
    it (it listed /etc for customer "../../etc"), as file_read/file_write already were."""
    tree(tmp_path / "inbox" / "acme")
    runner = await step_runner(
        """
        - {id: todo, type: file_list, path: "inbox/${payload.customer}", pattern: "*.csv"}
        - {id: any, type: file_list, path: "${payload.dir}"}
        """
    )
    for customer in ("../..", "../../../../etc", "acme/../../.."):
        with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
            await runner.run("todo", {"customer": customer})
    listed = (await runner.run("todo", {"customer": "acme"})).payload
    assert [f["relative"] for f in listed["files"]] == ["a.csv", "b.csv"]
    with pytest.raises(PoisonMessageError, match="outside the allowed folder"):
        await runner.run("any", {"dir": "/etc"})
    assert (await runner.run("any", {"dir": "inbox"})).payload["folder"] == str(tmp_path / "inbox")


async def test_file_list_validation(step_runner: Any) -> None:
    with pytest.raises(ValidationFailed, match="sort"):
        await step_runner("- {id: l, type: file_list, sort: date}")
    with pytest.raises(ValidationFailed, match="limit"):
        await step_runner("- {id: l, type: file_list, limit: 0}")


async def test_file_trigger_recursive(
    tmp_path: Path,
    setup: Callable[[str], tuple[Integration, Transport, Watcher]],  # noqa: F811
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "eu" / "de").mkdir(parents=True)
    (inbox / ".tmp").mkdir()
    _, _, watcher = setup("{type: file, path: inbox, pattern: '*.json', every: 200ms, "
                          "recursive: true}")  # fmt: skip
    (inbox / "a.json").write_text(json.dumps({"n": 1}))
    (inbox / "eu" / "de" / "a.json").write_text(json.dumps({"n": 2}))  # same name, other folder
    (inbox / ".tmp" / "x.json").write_text(json.dumps({"n": 99}))
    watcher.start()
    envs = await watcher.until(lambda e: len(e) >= 2)
    await watcher.scans(3)  # processed/ is not watched: nothing is taken twice
    await watcher.stop()
    envs = emitted(watcher.transport, watcher.integration)
    assert sorted(e.payload["n"] for e in envs) == [1, 2]
    rel = sorted(e.trigger["relative"] for e in envs)
    assert rel == ["a.json", "eu/de/a.json"]
    assert (inbox / "processed" / "eu" / "de" / "a.json").exists()
    assert (inbox / "processed" / "a.json").exists()
    assert (inbox / ".tmp" / "x.json").exists()
