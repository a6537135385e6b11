"""The sql step against a real PostgreSQL server and a real SQLite file."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed
from streamflow.steps.base import Resources
from streamflow.util.secrets import Masker
from streamflow.util.sqldb import database

DB = {"db_dsn": {"type": "string", "secret": True}}

CUSTOMERS = """
CREATE TABLE {t} (
  id integer PRIMARY KEY,
  email text NOT NULL UNIQUE,
  first_name text,
  score numeric,
  joined date,
  tags jsonb
)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def customers(pg: Any, pg_schema: str) -> str:
    table = f"{pg_schema}.customers"
    await pg.execute(CUSTOMERS.format(t=table))
    return table


async def test_query_with_named_and_positional_params(
    step_runner: Any, pg: Any, customers: str, postgres_url: str
) -> None:
    await pg.execute(
        f"INSERT INTO {customers} (id, email, first_name) VALUES (1, 'a@x.io', 'Ann'), "
        "(2, 'b@x.io', 'Bob')"
    )
    runner = await step_runner(
        f"""
        - id: named
          type: sql
          dsn: ${{config.db_dsn}}
          query: >-
            SELECT id, email, first_name FROM {customers}
            WHERE email = :email -- :not_a_param
          params: {{email: "${{payload.email}}"}}
          camel_case: true
          exclude: [email]
        - id: positional
          type: sql
          dsn: ${{config.db_dsn}}
          query: "SELECT id, ':x' AS lit FROM {customers} WHERE id >= $1 ORDER BY id"
          params: ["${{payload.min}}"]
        """,
        config=DB,
        values={"db_dsn": postgres_url},
    )
    out = await runner.run("named", {"email": "b@x.io"})
    assert out.result == {"rows": [{"id": 2, "firstName": "Bob"}], "count": 1}
    assert out.payload == {"email": "b@x.io"}  # the payload is kept unless replace_payload
    out = await runner.run("positional", {"min": "1"})  # CSV text coerced to the int column
    assert out.result == {"rows": [{"id": 1, "lit": ":x"}, {"id": 2, "lit": ":x"}], "count": 2}


async def test_values_are_bound_never_spliced(
    step_runner: Any, pg: Any, customers: str, postgres_url: str
) -> None:
    evil = "x'); DROP TABLE customers; --"
    runner = await step_runner(
        f"""
        - id: ins
          type: sql
          dsn: ${{config.db_dsn}}
          operation: insert
          table: {customers}
          values: {{id: "${{payload.id}}", email: "${{payload.email}}", tags: "${{payload.tags}}"}}
        """,
        config=DB,
        values={"db_dsn": postgres_url},
    )
    out = await runner.run("ins", {"id": 7, "email": evil, "tags": {"vip": True, "n": [1, 2]}})
    assert out.result == {"count": 1}
    row = await pg.fetchrow(f"SELECT email, tags FROM {customers} WHERE id = 7")
    assert row["email"] == evil
    assert row["tags"] == '{"n": [1, 2], "vip": true}'


async def test_upsert_update_and_ignore(
    step_runner: Any, pg: Any, customers: str, postgres_url: str
) -> None:
    runner = await step_runner(
        f"""
        - id: up
          type: sql
          dsn: ${{config.db_dsn}}
          operation: upsert
          table: {customers}
          values: ${{payload}}
          conflict: [id]
          returning: true
          result: first
          camel_case: true
        - id: keep
          type: sql
          dsn: ${{config.db_dsn}}
          operation: upsert
          on_conflict: ignore
          table: {customers}
          values: ${{payload}}
          conflict: [id]
        """,
        config=DB,
        values={"db_dsn": postgres_url},
    )
    first = {
        "id": "5", "email": "e@x.io", "first_name": "Eve", "score": "9.5", "joined": "2024-02-01"
    }  # fmt: skip
    out = await runner.run("up", first)
    assert out.result["row"] == {
        "id": 5,
        "email": "e@x.io",
        "firstName": "Eve",
        "score": 9.5,
        "joined": "2024-02-01",
        "tags": None,
    }
    out = await runner.run("up", {**first, "first_name": "Eva"})
    assert out.result["row"]["firstName"] == "Eva"
    out = await runner.run("keep", {**first, "first_name": "Evelyn"})
    assert out.result == {"count": 0}
    assert await pg.fetchval(f"SELECT first_name FROM {customers} WHERE id = 5") == "Eva"
    assert await pg.fetchval(f"SELECT count(*) FROM {customers}") == 1


async def test_batch_insert_in_batches_and_one_transaction(
    step_runner: Any, pg: Any, customers: str, postgres_url: str
) -> None:
    runner = await step_runner(
        f"""
        - id: load
          type: sql
          dsn: ${{config.db_dsn}}
          operation: batch_insert
          table: {customers}
          rows: ${{payload.records}}
          columns: [id, email, first_name]
          conflict: [id]
          batch_size: 2
          replace_payload: true
        """,
        config=DB,
        values={"db_dsn": postgres_url},
    )
    records = [{"id": str(i), "email": f"u{i}@x.io", "first_name": f"U{i}"} for i in range(5)]
    out = await runner.run("load", {"records": records})
    assert out.result == {"count": 5}
    assert out.payload == 5
    assert await pg.fetchval(f"SELECT count(*) FROM {customers}") == 5

    # an upsert of the same ids updates; a duplicate email in the batch violates UNIQUE,
    # and the whole call is rolled back: nothing of the earlier batches stays
    changed = [{**r, "first_name": "changed"} for r in records]
    changed[4]["email"] = "u0@x.io"
    with pytest.raises(PoisonMessageError, match=r"unique|duplicate"):
        await runner.run("load", {"records": changed})
    assert await pg.fetchval(f"SELECT count(*) FROM {customers} WHERE first_name = 'changed'") == 0


async def test_failures_are_classified_and_the_password_masked(
    step_runner: Any, customers: str, postgres_url: str
) -> None:
    dead = f"postgresql://app:hunter2-secret@127.0.0.1:{free_port()}/nowhere"
    runner = await step_runner(
        f"""
        - id: bad-sql
          type: sql
          dsn: ${{config.db_dsn}}
          query: "SELEC 1"
        - id: no-table
          type: sql
          dsn: ${{config.db_dsn}}
          query: "SELECT * FROM {customers}_missing"
        - id: null-email
          type: sql
          dsn: ${{config.db_dsn}}
          operation: insert
          table: {customers}
          values: {{id: 1}}
        - id: bad-number
          type: sql
          dsn: ${{config.db_dsn}}
          operation: insert
          table: {customers}
          values: {{id: "not a number", email: x}}
        - id: down
          type: sql
          dsn: ${{config.other}}
          query: "SELECT 1"
          timeout: 5s
        """,
        config={**DB, "other": {"type": "string", "secret": True}},
        values={"db_dsn": postgres_url, "other": dead},
    )
    with pytest.raises(PoisonMessageError, match="syntax"):
        await runner.run("bad-sql", {})
    with pytest.raises(PoisonMessageError, match="does not exist"):
        await runner.run("no-table", {})
    with pytest.raises(PoisonMessageError, match=r"not-null|null value"):
        await runner.run("null-email", {})
    with pytest.raises(PoisonMessageError, match="int4"):
        await runner.run("bad-number", {})
    with pytest.raises(RetriableError) as info:
        await runner.run("down", {})
    assert "hunter2-secret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)


async def test_pool_is_shared_per_dsn(postgres_url: str) -> None:
    resources = Resources()
    try:
        a = await database(resources, postgres_url, 2, Masker())
        b = await database(resources, postgres_url, 2, Masker())
        assert a is b
        other = await database(resources, postgres_url + "?application_name=x", 2, Masker())
        assert other is not a
    finally:
        await resources.aclose()


async def test_named_connection(
    step_runner: Any, pg: Any, customers: str, postgres_url: str
) -> None:
    runner = await step_runner(
        f"""
        - id: count
          type: sql
          connection: db
          query: "SELECT count(*) AS n FROM {customers}"
          result: first
        """,
        config=DB,
        values={"db_dsn": postgres_url},
        connections={"db": {"type": "postgres", "dsn": "${config.db_dsn}", "pool_size": 2}},
    )
    out = await runner.run("count", {})
    assert out.result == {"row": {"n": 0}, "count": 1}


# --------------------------------------------------------------------------- SQLite


async def test_sqlite_operations(step_runner: Any, tmp_path: Path) -> None:
    db = tmp_path / "data" / "app.db"
    runner = await step_runner(
        """
        - id: create
          type: sql
          dsn: ${config.db}
          query: >-
            CREATE TABLE IF NOT EXISTS items
            (id INTEGER PRIMARY KEY, name TEXT NOT NULL, meta TEXT)
        - id: load
          type: sql
          dsn: ${config.db}
          operation: batch_insert
          table: items
          rows: ${payload.items}
          batch_size: 2
        - id: up
          type: sql
          dsn: ${config.db}
          operation: upsert
          table: items
          values: {id: "${payload.id}", name: "${payload.name}", meta: "${payload.meta}"}
          conflict: [id]
          returning: true
          result: first
        - id: find
          type: sql
          dsn: ${config.db}
          query: "SELECT id, name FROM items WHERE name LIKE :pattern ORDER BY id"
          params: {pattern: "${payload.pattern}"}
        - id: dup
          type: sql
          dsn: ${config.db}
          operation: insert
          table: items
          values: {id: 1, name: dup}
        """,
        config={"db": {"type": "string"}},
        values={"db": f"sqlite:///{db}"},
    )
    await runner.run("create", {})
    out = await runner.run("load", {"items": [{"id": i, "name": f"n{i}"} for i in range(1, 6)]})
    assert out.result == {"count": 5}
    out = await runner.run("up", {"id": 3, "name": "three", "meta": {"a": 1}})
    assert out.result == {"row": {"id": 3, "name": "three", "meta": '{"a":1}'}, "count": 1}
    out = await runner.run("find", {"pattern": "n%"})
    assert [r["id"] for r in out.result["rows"]] == [1, 2, 4, 5]
    with pytest.raises(PoisonMessageError, match="UNIQUE"):
        await runner.run("dup", {})


async def test_sqlite_connection_path_is_relative_to_the_topology(
    step_runner: Any, tmp_path: Path
) -> None:
    runner = await step_runner(
        """
        - {id: mk, type: sql, connection: local, query: "CREATE TABLE t (x INTEGER)"}
        """,
        connections={"local": {"type": "sqlite", "path": "state/local.db"}},
        directory=tmp_path / "topo",
    )
    await runner.run("mk", {})
    assert (tmp_path / "topo" / "state" / "local.db").is_file()


# --------------------------------------------------------------------------- validation


async def test_validation_errors_point_at_the_step(step_runner: Any) -> None:
    cases = [
        ({"query": "SELECT :a", "params": {"b": 1}}, "no value for :a"),
        ({"query": "SELECT $2", "params": [1]}, "give that many params"),
        ({"query": "SELECT :a, $1", "params": {"a": 1}}, "not both"),
        ({"operation": "upsert", "table": "t", "values": {"a": 1}}, "needs conflict"),
        ({"operation": "insert", "table": "t; drop", "values": {"a": 1}}, "not a plain"),
        ({"operation": "insert", "table": "t", "values": {"a b": 1}}, "not a plain"),
        ({"connection": "nope", "query": "SELECT 1"}, "unknown connection 'nope'"),
        # F9: a template in the SQL text would be sent literally: refused, pointing to params
        (
            {"query": "SELECT * FROM t WHERE b = '${payload.b}'"},
            r'placeholder :b and give params: \{b: "\$\{payload.b\}"\}',
        ),
        ({"query": "SELECT ${ config.table }.x"}, "placeholder :table"),
    ]
    for extra, message in cases:
        step: dict[str, Any] = {"id": "s", "type": "sql", "dsn": "${config.db_dsn}", **extra}
        if "connection" in extra:
            step.pop("dsn")
        with pytest.raises(ValidationFailed, match=message):
            await step_runner([step], config=DB)


async def test_secret_dsn_only_in_secret_fields(step_runner: Any) -> None:
    with pytest.raises(ValidationFailed, match="secret config variable 'db_dsn' may not be used"):
        await step_runner(
            [
                {
                    "id": "s",
                    "type": "sql",
                    "dsn": "sqlite:///x.db",
                    "query": "SELECT :a",
                    "params": {"a": "${config.db_dsn}"},
                }
            ],
            config=DB,
        )


async def test_timeout_is_retriable_and_the_pool_recovers(
    step_runner: Any, postgres_url: str
) -> None:
    runner = await step_runner(
        """
        - {id: slow, type: sql, dsn: "${config.db_dsn}", query: "SELECT pg_sleep(30)",
           timeout: 300ms, pool_size: 1}
        - {id: quick, type: sql, dsn: "${config.db_dsn}", query: "SELECT 1 AS one",
           pool_size: 1, result: first}
        """,
        config=DB,
        values={"db_dsn": postgres_url},
    )
    with pytest.raises(RetriableError, match=r"no answer within 0\.3s"):
        await runner.run("slow", {})
    assert (await runner.run("quick", {})).result == {"row": {"one": 1}, "count": 1}


async def test_an_error_names_the_database_when_its_url_has_no_password(
    step_runner: Any,
) -> None:
    """A DSN without a password (trust, PGPASSWORD, a socket) was masked whole: `***: ...`."""
    port = free_port()
    runner = await step_runner(
        [{"id": "down", "type": "sql", "dsn": f"postgresql://127.0.0.1:{port}/nowhere",
          "query": "SELECT 1", "timeout": "5s"}]
    )  # fmt: skip
    with pytest.raises(RetriableError) as info:
        await runner.run("down", {})
    assert str(info.value).startswith(f"postgresql://127.0.0.1:{port}/nowhere: "), info.value
