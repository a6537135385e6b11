"""BH05: a UTF-8 byte-order mark (Excel's "CSV UTF-8", Notepad) is never part of the text,
wherever StreamFlow reads a file or a body: file_read, the file trigger, JSON inputs and
bodies, HTTP answers in text, JSON Schema and config files, the topology YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from streamflow import exactjson, textio
from streamflow.connectors.httpclient import parse_body
from streamflow.topology.loader import load_integration
from streamflow.topology.triggers import FileTrigger
from streamflow.topology.values import read_config_file
from streamflow.triggers.filewatch import parse
from streamflow.util.payloads import parse_payloads

BOM = b"\xef\xbb\xbf"
CSV = BOM + b"id,name\r\n1,Ann\r\n2,Bob\r\n"
JSON = BOM + b'{"id": 1}'


async def test_file_read_drops_the_bom(step_runner: Any, tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_bytes(CSV)
    (tmp_path / "d.json").write_bytes(JSON)
    (tmp_path / "e.ndjson").write_bytes(JSON + b"\n" + b'{"id": 2}\n')
    (tmp_path / "u16.csv").write_bytes("id,name\n1,Ann\n".encode("utf-16"))  # its own BOM
    runner = await step_runner(
        """
        - {id: csv, type: file_read, path: c.csv}
        - {id: json, type: file_read, path: d.json}
        - {id: ndjson, type: file_read, path: e.ndjson}
        - {id: u16, type: file_read, path: u16.csv, encoding: utf-16}
        - {id: spelled, type: file_read, path: c.csv, encoding: UTF8}
        """
    )
    rows = [{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bob"}]
    assert (await runner.run("csv", {})).payload["records"] == rows
    assert (await runner.run("spelled", {})).payload["records"] == rows
    assert (await runner.run("json", {})).payload["records"] == [{"id": 1}]
    assert (await runner.run("ndjson", {})).payload["records"] == [{"id": 1}, {"id": 2}]
    assert (await runner.run("u16", {})).payload["records"] == [{"id": "1", "name": "Ann"}]


def test_the_file_trigger_drops_the_bom(tmp_path: Path) -> None:
    csv = FileTrigger(type="file", path=str(tmp_path), format="csv", split=True)
    assert parse(CSV, csv) == [{"id": "1", "name": "Ann"}, {"id": "2", "name": "Bob"}]
    js = FileTrigger(type="file", path=str(tmp_path), format="json")
    assert parse(JSON, js) == [{"id": 1}]
    text = FileTrigger(type="file", path=str(tmp_path), format="text")
    assert parse(BOM + b"hello", text) == ["hello"]


def test_json_inputs_and_bodies_drop_the_bom() -> None:
    assert exactjson.loads(JSON) == {"id": 1}
    assert exactjson.loads(JSON.decode("utf-8")) == {"id": 1}  # '\ufeff' in a str too
    assert parse_payloads(JSON + b"\n" + b'{"id": 2}', "events.ndjson") == [{"id": 1}, {"id": 2}]
    assert parse_body(JSON, "application/json") == {"id": 1}
    assert parse_body(BOM + b"plain", "text/plain") == "plain"
    assert textio.decode(BOM + b"x") == "x"
    assert textio.without_bom(BOM + b"x") == b"x"


def test_topology_schema_and_values_files_drop_the_bom(tmp_path: Path) -> None:
    (tmp_path / "schema.json").write_bytes(BOM + b'{"type": "object"}')
    (tmp_path / "i.yaml").write_bytes(
        BOM + b"apiVersion: streamflow/v1\nkind: Integration\nname: bom\nflows:\n"
        b"  - name: f\n    trigger: {type: webhook, schema: schema.json}\n"
        b"    steps: [{id: t, type: transform, output: {a: 1}}]\n"
    )
    (tmp_path / "values.yaml").write_bytes(BOM + b"x: 1\n")
    integration = load_integration(tmp_path / "i.yaml")
    assert integration.name == "bom"
    assert read_config_file(tmp_path / "values.yaml") == {"x": 1}


async def test_an_http_answer_in_text_with_a_bom(step_runner: Any, http_server: Any) -> None:
    async def answer(call: Any) -> web.Response:
        return web.Response(body=BOM + b'{"ok": true}', content_type="application/json")

    server = await http_server(answer)
    runner = await step_runner(f"- {{id: get, type: http, method: GET, url: {server.url}/x}}")
    assert (await runner.run("get", {})).result["body"] == {"ok": True}
