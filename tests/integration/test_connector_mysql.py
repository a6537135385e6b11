"""The ``sql`` step and the SQL poll trigger on a real MariaDB (``scripts/mariadb.sh``),
plus the supported-schemes check: every operation PostgreSQL has, with values bound,
exact DECIMALs, and failures classified."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed
from streamflow.runtime.app import App
from streamflow.steps.base import Resources
from streamflow.topology.loader import load_integration
from streamflow.transport import open_transport
from streamflow.util.secrets import Masker
from streamflow.util.sqldb import Statement, compile_sql, database
from tests.integration.servers import free_port
from tests.integration.test_poll import ids, poll_integration, poll_until


@pytest.fixture
async def mysql_db(mysql_url: str) -> AsyncIterator[tuple[str, Any]]:
    """(DSN of a fresh database, an asyncmy connection to it); dropped afterwards."""
    import asyncmy

    name = f"t_{uuid.uuid4().hex[:10]}"
    base = mysql_url.rsplit("/", 1)[0]
    port = int(base.rsplit(":", 1)[1])
    conn = await asyncmy.connect(
        host="127.0.0.1", port=port, user="streamflow", password="streamflow", autocommit=True
    )
    async with conn.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}`")
        await cur.execute(f"USE `{name}`")
    try:
        yield f"{base}/{name}", conn
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE `{name}`")
        await conn.ensure_closed()


async def sql(conn: Any, text: str, args: Any = None) -> list[tuple[Any, ...]]:
    async with conn.cursor() as cur:
        await cur.execute(text, args)
        return [tuple(r) for r in await cur.fetchall()] if cur.description else []


async def test_query_binds_named_and_positional_params_and_keeps_literals(
    mysql_db: tuple[str, Any], step_runner: Any
) -> None:
    dsn, conn = mysql_db
    await sql(conn, "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(50), note TEXT)")
    await sql(conn, "INSERT INTO people VALUES (1, 'Ada', '100%'), (2, 'O''Brien; DROP', ':x')")
    runner = await step_runner(
        [
            {"id": "named", "type": "sql", "dsn": dsn,
             "query": "SELECT id, name, note, '50% :not_a_param' AS lit FROM people "
                      "WHERE name = :name OR id = :id ORDER BY id",
             "params": {"name": "${payload.name}", "id": "${payload.id}"}},
            {"id": "positional", "type": "sql", "dsn": dsn, "result": "first",
             "query": "SELECT `name` FROM people WHERE id = $2 AND name <> $1",
             "params": ["${payload.name}", "${payload.id}"]},
        ]
    )  # fmt: skip
    hostile = "x' OR '1'='1"
    out = await runner.run("named", {"name": hostile, "id": 2})
    assert out.result["rows"] == [
        {"id": 2, "name": "O'Brien; DROP", "note": ":x", "lit": "50% :not_a_param"}
    ]
    out = await runner.run("positional", {"name": hostile, "id": 1})
    assert out.result == {"row": {"name": "Ada"}, "count": 1}
    assert await sql(conn, "SELECT COUNT(*) FROM people") == [(2,)]


async def test_insert_upsert_and_batch_insert(mysql_db: tuple[str, Any], step_runner: Any) -> None:
    dsn, conn = mysql_db
    await sql(
        conn,
        "CREATE TABLE customers (id INT PRIMARY KEY, email VARCHAR(80) UNIQUE, "
        "name VARCHAR(80), tags JSON, balance DECIMAL(38,10))",
    )
    runner = await step_runner(
        [
            {"id": "ins", "type": "sql", "dsn": dsn, "operation": "insert",
             "table": "customers", "values": "${payload}"},
            {"id": "up", "type": "sql", "dsn": dsn, "operation": "upsert",
             "table": "customers", "values": "${payload}", "conflict": ["id"],
             "returning": True, "result": "first"},
            {"id": "keep", "type": "sql", "dsn": dsn, "operation": "upsert",
             "table": "customers", "values": "${payload}", "conflict": ["id"],
             "on_conflict": "ignore"},
            {"id": "batch", "type": "sql", "dsn": dsn, "operation": "batch_insert",
             "table": "customers", "rows": "${payload}", "batch_size": 2,
             "conflict": ["id"], "update": ["name"]},
        ]
    )  # fmt: skip
    big = "1234567890123456789012345678.0123456789"
    out = await runner.run(
        "ins", {"id": 1, "email": "a@x.io", "name": "Ada", "tags": ["x"], "balance": big}
    )
    assert out.result == {"count": 1}
    tiny = "-0.0000000001"
    out = await runner.run("up", {"id": 1, "email": "a@x.io", "name": "Ada L.", "balance": tiny})
    assert out.result["row"]["name"] == "Ada L."  # MariaDB's INSERT ... RETURNING
    await runner.run("keep", {"id": 1, "email": "a@x.io", "name": "ignored"})
    rows = [{"id": i, "email": f"{i}@x.io", "name": f"n{i}"} for i in range(2, 7)]
    out = await runner.run("batch", [*rows, {"id": 1, "email": "a@x.io", "name": "Ada B."}])
    assert out.result["count"] >= 6  # MySQL counts an updated row twice
    got = await sql(conn, "SELECT id, name, tags, balance FROM customers ORDER BY id")
    assert [r[:2] for r in got] == [(1, "Ada B."), *[(i, f"n{i}") for i in range(2, 7)]]
    assert got[0][3] == Decimal("-0.0000000001")
    assert got[0][2] == '["x"]'
    await sql(conn, "UPDATE customers SET balance = %s WHERE id = 2", (Decimal(big),))
    db = await database(Resources(), dsn, 2, Masker())
    query = Statement("", "", [2], True, "SELECT balance FROM customers WHERE id = %s")
    [res] = await db.run([query], 5)
    assert res.rows == [(Decimal(big),)]  # exact, as the driver returns it


async def test_failures_are_classified_and_the_pool_survives(
    mysql_db: tuple[str, Any], step_runner: Any
) -> None:
    dsn, conn = mysql_db
    await sql(conn, "CREATE TABLE t (id INT PRIMARY KEY, n INT NOT NULL)")
    await sql(conn, "INSERT INTO t VALUES (1, 1)")
    runner = await step_runner(
        [
            {"id": "ins", "type": "sql", "dsn": dsn, "operation": "insert", "table": "t",
             "values": "${payload}"},
            {"id": "bad_sql", "type": "sql", "dsn": dsn, "query": "SELEC 1"},
            {"id": "no_table", "type": "sql", "dsn": dsn, "query": "SELECT * FROM nope"},
            {"id": "slow", "type": "sql", "dsn": dsn, "query": "SELECT SLEEP(5)",
             "timeout": "500ms"},
            {"id": "two", "type": "sql", "dsn": dsn, "operation": "batch_insert",
             "table": "t", "rows": "${payload}"},
        ]
    )  # fmt: skip
    await runner.run("ins", {"id": 5, "n": 5})  # the pool's first connection
    [(_, before)] = await sql(conn, "SHOW GLOBAL STATUS LIKE 'Connections'")
    for step, payload in [
        ("ins", {"id": 1, "n": 2}),  # duplicate key
        ("ins", {"id": 2, "n": "abc"}),  # not an integer (strict mode)
        ("ins", {"id": 3, "n": None}),  # NOT NULL
        ("bad_sql", {}),
        ("no_table", {}),
    ]:
        with pytest.raises(PoisonMessageError, match=r"MySQL error \d+: ") as err:
            await runner.run(step, payload)
        assert "Error: (" not in str(err.value)  # the server's words, not a Python tuple
    [(_, after)] = await sql(conn, "SHOW GLOBAL STATUS LIKE 'Connections'")
    assert int(after) == int(before)  # rolled back and reused, not reconnected
    with pytest.raises(RetriableError, match="no answer within"):
        await runner.run("slow", {})
    # all or nothing: the second row fails, the first is rolled back
    with pytest.raises(PoisonMessageError):
        await runner.run("two", [{"id": 10, "n": 1}, {"id": 1, "n": 1}])
    assert await sql(conn, "SELECT id FROM t ORDER BY id") == [(1,), (5,)]
    out = await runner.run("ins", {"id": 4, "n": 4})  # the pool still works
    assert out.result == {"count": 1}


async def test_unreachable_server_and_wrong_password_are_retriable_and_masked(
    mysql_url: str, step_runner: Any
) -> None:
    port = mysql_url.rsplit(":", 1)[1].split("/", maxsplit=1)[0]
    secret = "pw-never-shown-42"
    runner = await step_runner(
        [{"id": "s", "type": "sql", "dsn": "${config.dsn}", "query": "SELECT 1",
          "timeout": "5s"}],
        config={"dsn": {"type": "string", "secret": True}},
        values={"dsn": f"mysql://streamflow:{secret}@127.0.0.1:{port}/streamflow"},
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("s", {})
    assert secret not in str(info.value) and "Access denied" in str(info.value)
    runner = await step_runner(
        [{"id": "s", "type": "sql", "dsn": f"mysql://u:{secret}@127.0.0.1:{free_port()}/db",
          "query": "SELECT 1", "timeout": "5s"}]
    )  # fmt: skip
    with pytest.raises(RetriableError, match="MySQL error 2003: Can't connect") as info:
        await runner.run("s", {})
    assert secret not in str(info.value)


async def test_named_connection_with_pool_settings(
    mysql_db: tuple[str, Any], step_runner: Any
) -> None:
    dsn, _ = mysql_db
    runner = await step_runner(
        [{"id": "q", "type": "sql", "connection": "shop", "query": "SELECT 1 + 1 AS two",
          "result": "first"}],
        connections={"shop": {"type": "mysql", "dsn": dsn, "pool_size": 3,
                              "pool": {"min_size": 2, "idle_timeout": "1m",
                                       "acquire_timeout": "2s", "keepalive": True}}},
    )  # fmt: skip
    out = await runner.run("q", {})
    assert out.result["row"] == {"two": 2}
    db = await database(runner.resources, dsn, 10, Masker())
    assert db.pool.maxsize == 3 and db.pool.minsize == 2  # type: ignore[attr-defined]


def test_compile_sql_mysql_text() -> None:
    q = compile_sql("SELECT '%' || :a, `odd:name`, :b, :a FROM t WHERE x LIKE '50%'")
    assert q.mysql == "SELECT '%%' || %s, `odd:name`, %s, %s FROM t WHERE x LIKE '50%%'"
    assert q.mysql_refs == (1, 2, 1)
    assert compile_sql("SELECT $2, $1, $2").mysql_refs == (2, 1, 2)


@pytest.mark.parametrize(
    ("dsn", "where"),
    [
        ("mssql://sa:pw@127.0.0.1/db", "'mssql://127.0.0.1/db'"),
        ("oracle://u@h/db", "'oracle://h/db'"),
        ("just-a-path.db", "'://just-a-path.db'"),
    ],
)
def test_unsupported_schemes_fail_validation_with_file_and_line(
    tmp_path: Path, dsn: str, where: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"""apiVersion: streamflow/v1
kind: Integration
name: bad-db
flows:
  - name: f
    trigger: {{type: poll, every: 1m, sql: {{dsn: "{dsn}", query: "SELECT 1"}}, mode: hash}}
    steps:
      - id: save
        type: sql
        dsn: "{dsn}"
        query: SELECT 1
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    text = str(info.value)
    assert "bad.yaml:6:" in text and "bad.yaml:8:" in text, text
    assert f"unsupported database {where}" in text
    schemes = "mariadb://, mysql://, postgres://, postgresql://, sqlite://"
    assert f"the DSN must start with one of {schemes}" in text
    assert ":pw@" not in text


async def test_poll_trigger_reads_a_mariadb_table_with_a_cursor(
    tmp_path: Path, mysql_db: tuple[str, Any]
) -> None:
    dsn, conn = mysql_db
    await sql(conn, "CREATE TABLE orders (id INT PRIMARY KEY, total DECIMAL(10,2))")
    await sql(conn, "INSERT INTO orders VALUES (1, 9.50), (2, 20.00)")
    mariadb_dsn = "mariadb" + dsn.removeprefix("mysql")
    integration = poll_integration(
        tmp_path,
        "poll-mysql",
        f"{{type: poll, every: 200ms, sql: {{dsn: '{mariadb_dsn}', "
        "query: 'SELECT id, total FROM orders WHERE id > :cursor ORDER BY id'}, "
        "cursor: {field: id, initial: 0}}",
    )
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    App(integration, transport, {}).deploy()
    first = await poll_until(integration, transport, lambda e: len(e) >= 2)
    assert ids(first) == [1, 2]
    await sql(conn, "INSERT INTO orders VALUES (3, 1.25)")
    second = await poll_until(integration, transport, lambda e: len(e) >= 3)
    assert ids(second) == [1, 2, 3]
    assert second[2].payload["total"] == pytest.approx(1.25)
    transport.close()


def test_a_mysql_connection_needs_a_mysql_dsn(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        """apiVersion: streamflow/v1
kind: Integration
name: c
connections:
  db: {type: mysql, dsn: "mssql://u:p@h/db"}
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: a, type: sql, connection: db, query: SELECT 1}
"""
    )
    with pytest.raises(ValidationFailed) as info:
        load_integration(path)
    assert "c.yaml:5:" in str(info.value)
    assert "starts with mysql:// or mariadb://" in str(info.value)
