"""Numbers keep every digit on every path they take (BH06, BH07): the codec, the envelope
on both encodings, CLI/file inputs, Kafka-trigger records, HTTP answers and request bodies,
the kafka and file steps, SQL rows (SQLite and PostgreSQL numeric), and expressions.

Each value below is one that a 64-bit integer or a double cannot hold.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from streamflow import exactjson
from streamflow.envelope import Envelope, decode, encode
from streamflow.topology.expressions import compile_value
from streamflow.util.payloads import parse_payloads

BIG = 123456789012345678901234567890  # 30 digits: beyond 64 bits
U64 = 18446744073709551615  # the largest orjson writes natively
NEG = -9223372036854775809  # one below int64
LEDGER = Decimal("1234567890123456.78")  # 18 significant digits: a double keeps 16
CENTS = Decimal("19.90")  # the scale is kept too
EXACT_TEXT = b'{"id":123456789012345678901234567890,"ledger":1234567890123456.78,"tenth":0.1}'
VALUES: dict[str, Any] = {"big": BIG, "u64": U64, "neg": NEG, "ledger": LEDGER}


def same(a: Any, b: Any) -> bool:
    """Equal with the same types (1.0 == Decimal('1.0') is not enough)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b and str(a) == str(b)


# ----------------------------------------------------------------------------- codec


def test_codec_reads_and_writes_every_digit() -> None:
    doc = exactjson.loads(EXACT_TEXT)
    assert same(doc, {"id": BIG, "ledger": LEDGER, "tenth": 0.1})
    assert exactjson.dumps(doc) == EXACT_TEXT
    assert exactjson.dumps(VALUES) == (
        b'{"big":123456789012345678901234567890,"u64":18446744073709551615,'
        b'"neg":-9223372036854775809,"ledger":1234567890123456.78}'
    )
    # a Decimal is written with its scale; read back, a number a double holds exactly
    # (at most 15 digits) is a float again: the same value, not the same type
    assert exactjson.dumps({"cents": CENTS}) == b'{"cents":19.90}'
    assert exactjson.loads(exactjson.dumps({"cents": CENTS})) == {"cents": 19.9}
    # ordinary numbers stay the types orjson gives (the fast path)
    assert same(exactjson.loads(b"[1, -2, 0.5, 0.30000000000000004, 1e-07]"),
                [1, -2, 0.5, 0.30000000000000004, 1e-07])  # fmt: skip
    # a long digit run inside a string is text, untouched
    assert exactjson.loads(b'{"ref":"123456789012345678901234567890"}') == {
        "ref": "123456789012345678901234567890"
    }


def test_codec_refuses_what_json_cannot_hold_with_plain_messages() -> None:
    with pytest.raises(exactjson.JSONDecodeError, match="more than 4300 digits"):
        exactjson.loads(b"[" + b"9" * 5000 + b"]")
    for text in (b"[NaN]", b"[Infinity]", b"[1, 12345678901234567890123, nan]"):
        with pytest.raises(exactjson.JSONDecodeError):
            exactjson.loads(text)
    deep = b"[" * 100_000 + b"123456789012345678901234567890" + b"]" * 100_000
    with pytest.raises(exactjson.JSONDecodeError, match="nested too deeply"):
        exactjson.loads(deep)  # the exact path, not only orjson's, is bounded
    with pytest.raises(ValueError, match="more than 4300 digits") as info:
        exactjson.dumps([10**5000])
    assert "sys." not in str(info.value)
    with pytest.raises(TypeError, match="not JSON serializable"):
        exactjson.dumps(Decimal("NaN"))


@pytest.mark.parametrize("encoding", ["json", "avro"])
def test_the_envelope_keeps_numbers_on_both_encodings(encoding: Any) -> None:
    env = Envelope(
        "e1", "i", "f", "s", dict(VALUES),
        steps={"lookup": {"rows": [{"amount": LEDGER}]}}, meta={"id": BIG},
    )  # fmt: skip
    back = decode(*encode(env, encoding), encoding)
    assert same(back.payload, VALUES)
    assert same(back.steps, {"lookup": {"rows": [{"amount": LEDGER}]}})
    assert same(back.meta, {"id": BIG})


# ----------------------------------------------------------------------------- inputs


def test_cli_and_file_inputs_keep_numbers() -> None:
    assert same(parse_payloads(EXACT_TEXT, "x"), [exactjson.loads(EXACT_TEXT)])
    ndjson = EXACT_TEXT + b"\n" + b'{"id": 18446744073709551616}\n'
    assert same(parse_payloads(ndjson, "x")[1], {"id": 2**64})


def test_kafka_trigger_records_keep_numbers() -> None:
    from streamflow.runtime.trigger import KafkaTriggerProcessor
    from streamflow.transport.base import Record

    agent = object.__new__(KafkaTriggerProcessor)
    agent.format = "json"
    payload = agent._payload(Record("t", 0, 0, None, EXACT_TEXT))
    assert same(payload, {"id": BIG, "ledger": LEDGER, "tenth": 0.1})


# ----------------------------------------------------------------------------- expressions


def test_expressions_compute_exactly() -> None:
    scope = {"payload": {"id": BIG, "ledger": LEDGER, "rate": 1.5}}

    def render(text: str) -> Any:
        return compile_value(text).render(scope)

    assert render("${payload.id + 1}") == BIG + 1
    assert same(render("${payload.ledger * 2}"), Decimal("2469135780246913.56"))
    assert same(render("${payload.ledger * payload.rate}"), Decimal("1851851835185185.170"))
    assert same(render("${round(payload.ledger, 1)}"), Decimal("1234567890123456.8"))
    assert render("${payload.ledger > 1234567890123456.7}") is True
    assert render("id=${payload.id} ledger=${payload.ledger}") == (
        "id=123456789012345678901234567890 ledger=1234567890123456.78"
    )
    assert render("${json(payload)}") == (
        '{"id":123456789012345678901234567890,"ledger":1234567890123456.78,"rate":1.5}'
    )
    assert same(render("${parse_json('[123456789012345678901234567890]')}"), [BIG])


# ----------------------------------------------------------------------------- steps


async def test_http_answers_and_request_bodies_keep_numbers(
    step_runner: Any, http_server: Any
) -> None:
    async def echo(call: Any) -> web.Response:
        return web.Response(body=call.body or EXACT_TEXT, content_type="application/json")

    server = await http_server(echo)
    runner = await step_runner(
        f"""
        - id: get
          type: http
          method: GET
          url: {server.url}/n
        - id: post
          type: http
          method: POST
          url: {server.url}/n
          json: {{id: "${{payload.id}}", ledger: "${{payload.ledger}}"}}
        """
    )
    out = await runner.run("get", {})
    assert same(out.result["body"], {"id": BIG, "ledger": LEDGER, "tenth": 0.1})
    out = await runner.run("post", {"id": BIG, "ledger": LEDGER})
    assert server.calls[-1].body == (
        b'{"id":123456789012345678901234567890,"ledger":1234567890123456.78}'
    )
    assert same(out.result["body"], {"id": BIG, "ledger": LEDGER})


async def test_files_write_and_read_numbers_exactly(step_runner: Any, tmp_path: Path) -> None:
    runner = await step_runner(
        """
        - {id: write, type: file_write, path: out/n.json, content: "${payload}"}
        - {id: lines, type: file_write, path: out/n.ndjson, content: "${payload}", mode: append}
        - {id: read, type: file_read, path: out/n.json}
        - {id: read_lines, type: file_read, path: out/n.ndjson}
        """
    )
    await runner.run("write", VALUES)
    await runner.run("lines", VALUES)
    assert (tmp_path / "out" / "n.json").read_bytes() == exactjson.dumps(VALUES) + b"\n"
    assert same((await runner.run("read", {})).payload["records"], [VALUES])
    assert same((await runner.run("read_lines", {})).payload["records"], [VALUES])


async def test_sqlite_rows_keep_numbers(step_runner: Any, tmp_path: Path) -> None:
    runner = await step_runner(
        """
        - id: make
          type: sql
          dsn: ${config.db}
          query: CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, big TEXT, amount TEXT)
        - id: put
          type: sql
          dsn: ${config.db}
          operation: insert
          table: t
          values: {id: 1, big: "${payload.big}", amount: "${payload.ledger}"}
        - id: get
          type: sql
          dsn: ${config.db}
          query: SELECT big, amount FROM t
          result: first
        """,
        config={"db": {"type": "string"}},
        values={"db": f"sqlite:///{tmp_path / 'n.db'}"},
    )
    await runner.run("make", {})
    await runner.run("put", VALUES)
    out = await runner.run("get", {})
    assert out.result["row"] == {"big": str(BIG), "amount": str(LEDGER)}  # TEXT keeps the digits


async def test_postgres_numeric_rows_are_exact(
    step_runner: Any, pg: Any, pg_schema: str, postgres_url: str
) -> None:
    table = f"{pg_schema}.ledger"
    await pg.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, amount numeric(18,2), big numeric(38,0),"
        " free numeric, doc jsonb)"
    )
    runner = await step_runner(
        f"""
        - id: put
          type: sql
          dsn: ${{config.db_dsn}}
          operation: insert
          table: {table}
          values: {{id: 1, amount: "${{payload.ledger}}", big: "${{payload.big}}",
                   free: "${{payload.cents}}", doc: "${{payload.doc}}"}}
        - id: get
          type: sql
          dsn: ${{config.db_dsn}}
          query: SELECT amount, big, free, doc FROM {table}
          result: first
        """,
        config={"db_dsn": {"type": "string", "secret": True}},
        values={"db_dsn": postgres_url},
    )
    await runner.run("put", {**VALUES, "cents": CENTS, "doc": VALUES})
    row = (await runner.run("get", {})).result["row"]
    assert same(row["amount"], LEDGER)
    assert same(row["big"], BIG)
    assert same(row["free"], 19.9)  # a double holds it: the type it has after any hop
    assert same(row["doc"], VALUES)
    env = Envelope("e", "i", "f", "s", row)
    assert same(decode(*encode(env)).payload, row)


def test_poll_cursors_and_state_records_keep_numbers() -> None:
    """A poll cursor over 30-digit ids (or exact decimals) orders and persists exactly."""
    from streamflow.triggers.poller import order_key

    assert order_key(BIG) < order_key(BIG + 1)
    assert order_key(LEDGER) < order_key(Decimal("1234567890123456.79"))
    assert order_key(1) < order_key(1.5) < order_key(LEDGER)
    state = {"value": BIG + 1, "seen": []}
    assert same(exactjson.loads(exactjson.dumps(state)), state)


# ----------------------------------------------------------------------------- executions


async def test_execution_history_cli_and_console_keep_numbers(capsys: Any) -> None:
    """The executions store, `executions list|show --json` and the console API keep digits.

    The store read its timeline back with orjson (30-digit ids became floats); the console and
    the CLI wrote with the standard json module (a Decimal crashed them)."""
    import argparse

    from aiohttp.test_utils import TestClient, TestServer

    from streamflow.cli import executions as cli
    from streamflow.observability import history
    from streamflow.observability.events import ExecutionEvent
    from streamflow.triggers import console

    store = history.ExecutionStore({"f": "sf.i.f.dlq"})
    store.apply([ExecutionEvent("e1", "f", "completed", ts=1, payload=VALUES)])
    row = store.get("e1")
    assert row is not None and same(row.timeline[0]["payload"], VALUES)
    answer = console._json(row.to_json())
    assert isinstance(answer, web.Response) and answer.body is not None
    assert same(exactjson.loads(bytes(answer.body))["timeline"][0]["payload"], VALUES)

    args = argparse.Namespace(
        id="e1", json=True, limit=10, flow=None, status=None, instance=None, since=None
    )
    cli._show(store, args, None)
    cli._list(store, args, None)
    shown, listed = capsys.readouterr().out.splitlines()
    assert same(exactjson.loads(shown)["payload"], VALUES)
    assert exactjson.loads(listed)["id"] == "e1"

    # an operator's edited payload (console replay body) is read with every digit
    async def body(request: web.Request) -> web.Response:
        got = await console.Console._body(None, request)  # type: ignore[arg-type]
        return web.Response(text=exactjson.dumps_text(got))

    app = web.Application()
    app.router.add_post("/b", body)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/b", data=exactjson.dumps({"payload": VALUES}))
        assert same(exactjson.loads(await resp.read())["payload"], VALUES)


async def test_flow_tests_compare_published_and_written_numbers_exactly(tmp_path: Path) -> None:
    """`streamflow test` read kafka_publish values with orjson (a 30-digit id became a float
    and never matched) and written files with json (long decimals rounded)."""
    from streamflow.testing.cases.loading import load_test_files
    from streamflow.testing.cases.running import run_test_files

    (tmp_path / "events.ndjson").write_bytes(EXACT_TEXT + b"\n")
    (tmp_path / "integration.yaml").write_text(
        """
apiVersion: streamflow/v1
kind: Integration
name: exact
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: out, type: file_write, path: out.json, format: json, content: "${payload}"}
      - {id: pub, type: kafka_publish, topic: exact.out, value: "${payload}"}
"""
    )
    (tmp_path / "tests.yaml").write_text(
        f"""
integration: integration.yaml
cases:
  - name: digits
    flow: f
    events_file: events.ndjson
    expect:
      status: completed
      published: [{{topic: exact.out, value: {{id: {BIG}, tenth: 0.1}}, count: 1}}]
      files:
        out.json: {{content: {{id: {BIG}, ledger: 1234567890123456.78}}}}
  - name: another digit is a difference
    flow: f
    events_file: events.ndjson
    expect:
      published: [{{topic: exact.out, value: {{id: {BIG + 1}}}}}]
"""
    )
    ok, differs = await run_test_files(load_test_files([tmp_path]))
    assert ok.passed, ok.details()
    assert not differs.passed and str(BIG) in differs.details(), differs.details()


def test_dlq_edit_in_editor_keeps_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dlq replay --edit` wrote the payload with json.dump (a Decimal crashed it) and read the
    edit back with json.loads (long decimals rounded)."""
    from streamflow.cli.dlqcmd import _edit_in_editor

    editor = tmp_path / "editor.sh"  # an editor that changes one field and keeps the rest
    editor.write_text('#!/bin/sh\nsed -i \'s/"tenth": 0.1/"tenth": 0.25/\' "$1"\n')
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    edited = _edit_in_editor({**VALUES, "tenth": 0.1})
    assert same(edited, {**VALUES, "tenth": 0.25})


def test_webhook_schema_errors_quote_exact_numbers_as_json() -> None:
    """A 422's messages showed exact decimals as Python reprs (Decimal('...'))."""
    from jsonschema import Draft202012Validator

    from streamflow.triggers.webhook import schema_errors

    schema = {
        "type": "object",
        "properties": {
            "amount": {"type": "number", "maximum": 10},
            "name": {"type": "string"},
            "kind": {"enum": [1, 2]},
        },
    }
    body = exactjson.loads(
        b'{"amount":1234567890123456.78,"name":123456789012345678901234567890,'
        b'"kind":{"x":0.10000000000000000001}}'
    )
    errors = schema_errors(Draft202012Validator(schema), body)
    assert errors == [
        {"path": "/amount", "message": "1234567890123456.78 is greater than the maximum of 10"},
        {"path": "/kind", "message": '{"x":0.10000000000000000001} is not one of [1, 2]'},
        {"path": "/name", "message": "123456789012345678901234567890 is not of type 'string'"},
    ]
