"""The ``sql`` step: query or write PostgreSQL, MySQL/MariaDB and SQLite, values always bound.

Operations: ``query`` (any SQL; ``:name`` placeholders with ``params`` a mapping, or ``$1``
with ``params`` a list), ``insert`` and ``upsert`` (one row from ``values``), and
``batch_insert`` (many rows from ``rows``, ``batch_size`` per statement, optionally as an
upsert). Table and column names are checked to be plain names and quoted; values never
become SQL text. One step call is one transaction. On MySQL an upsert is ``INSERT ...
ON DUPLICATE KEY UPDATE`` (any unique key of the table matches, not only ``conflict``).

The result (``steps.<id>``) is shaped by ``result``: ``rows`` -> ``{rows, count}``,
``first`` -> ``{row, count}``, ``count`` -> ``{count}``, ``none`` -> nothing stored; column
names can be turned to camelCase and columns excluded. With ``replace_payload: true`` the
rows (or row, or count) become the payload.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from streamflow.connectors.connections import (
    ConnectedStep,
    FieldsOf,
    context_directory,
    sql_fields,
)
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, Secret
from streamflow.topology.registry import step_type
from streamflow.util.pools import PoolSettings
from streamflow.util.secrets import Masker
from streamflow.util.sqldb import (
    CompiledSql,
    Result,
    Statement,
    check_dsn,
    compile_sql,
    database,
    quote_ident,
    to_json_value,
)

_KINDS = ("postgres", "mysql", "sqlite")
_MAX_PARAMS = 30_000  # below PostgreSQL's 32767 bound parameters per statement


class SqlConfig(ConnectedStep):
    """Run SQL on PostgreSQL, MySQL/MariaDB or SQLite, values bound; one transaction a call."""

    type: Literal["sql"]
    connection: str | None = Field(
        None, description="a `connections:` entry (postgres, mysql, sqlite)"
    )
    dsn: Annotated[str | None, Secret] = Field(
        None,
        description="postgresql://user:pw@host:5432/db, mysql://user:pw@host:3306/db or "
        "sqlite:///path (a config variable)",
    )
    operation: Literal["query", "insert", "upsert", "batch_insert"] = "query"
    query: str | None = Field(None, description="query: SQL with :name or $1 placeholders")
    params: dict[str, Any] | list[Any] | None = Field(
        None, description="query: values for the placeholders (templates; always bound)"
    )
    table: str | None = Field(None, description="insert/upsert/batch_insert: table name")
    values: dict[str, Any] | str | None = Field(
        None, description="insert/upsert: column -> template, or one ${...} giving a mapping"
    )
    rows: str | None = Field(None, description="batch_insert: ${...} giving a list of mappings")
    columns: list[str] | None = Field(
        None, description="batch_insert: columns to write (default: keys of the first row)"
    )
    batch_size: int = Field(500, ge=1, le=10_000, description="batch_insert: rows per statement")
    conflict: list[str] = Field(
        default_factory=list, description="upsert (or batch_insert): the unique columns"
    )
    on_conflict: Literal["update", "ignore"] = Field(
        "update", description="upsert: update the other columns, or leave the row alone"
    )
    update: list[str] | None = Field(
        None, description="upsert: columns updated on conflict (default: all but `conflict`)"
    )
    returning: bool = Field(False, description="insert/upsert: return the written rows")
    result: Literal["rows", "first", "count", "none"] | None = Field(
        None, description="what steps.<id> holds (default: rows for query, count otherwise)"
    )
    camel_case: bool = Field(False, description="first_name -> firstName in returned rows")
    exclude: list[str] = Field(default_factory=list, description="columns left out of rows")
    replace_payload: bool = Field(False, description="the shaped result becomes the payload")
    timeout: Duration = Field(30.0, description="whole transaction")
    pool_size: int | None = Field(
        None, ge=1, le=1000, description="PostgreSQL/MySQL pool (default 10)"
    )
    pool: PoolSettings | None = Field(
        None, description="MySQL: {min_size, max_size, idle_timeout, acquire_timeout, keepalive}"
    )

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return sql_fields(context_directory(info))

    @model_validator(mode="after")
    def _complete(self) -> SqlConfig:
        if self.dsn is None:
            raise ValueError("set dsn (e.g. ${config.db_dsn}) or connection")
        try:
            check_dsn(self.dsn, {})  # a literal DSN: its database must be supported
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        op = self.operation
        needs = {
            "query": ("query",),
            "insert": ("table", "values"),
            "upsert": ("table", "values"),
            "batch_insert": ("table", "rows"),
        }[op]
        missing = [f for f in needs if getattr(self, f) is None]
        if missing:
            raise ValueError(f"operation {op} needs {', '.join(missing)}")
        if op == "upsert" and not self.conflict:
            raise ValueError("operation upsert needs conflict: [the unique columns]")
        if op == "query":
            assert self.query is not None
            _no_template(self.query)
            sql = compile_sql(self.query)
            if sql.names and not isinstance(self.params, dict):
                raise ValueError(f"the query uses :{sql.names[0]}; give params as a mapping")
            if sql.names:
                assert isinstance(self.params, dict)
                absent = [n for n in sql.names if n not in self.params]
                if absent:
                    raise ValueError(f"params has no value for :{', :'.join(absent)}")
            if sql.positional and not (
                isinstance(self.params, list) and len(self.params) >= sql.positional
            ):
                raise ValueError(f"the query uses ${sql.positional}; give that many params")
        names = [*self.conflict, *(self.update or ()), *(self.columns or ())]
        for name in [self.table or "x", *names]:
            quote_ident(name)
        if isinstance(self.values, dict):
            for name in self.values:
                quote_ident(name)
        return self


@step_type(
    "sql",
    SqlConfig,
    category="database",
    since="0.1.0",
    example="""- id: save
  type: sql
  dsn: ${config.db_dsn}
  operation: upsert
  table: customers
  values: {id: "${payload.id}", email: "${lower(payload.email)}", name: "${payload.name}"}
  conflict: [id]
  on_conflict: update
  returning: true
  result: first
  camel_case: true""",
)
class SqlStep(AsyncStep):
    def __init__(self, config: SqlConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        # at startup: a DSN from config values must name a supported database (exit 2)
        check_dsn(config.dsn, {"config": ctx.config, "env": ctx.env})
        self.dsn = compile_value(config.dsn)
        self.sql: CompiledSql | None = compile_sql(config.query) if config.query else None
        self.params = compile_value(config.params)
        self.values = compile_value(config.values)
        self.rows = compile_value(config.rows)
        self.shape = config.result or ("rows" if config.operation == "query" else "count")
        self.masker = Masker()
        self.exclude = frozenset(config.exclude)

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        dsn = str(self.dsn.render(scope) or "")
        if not dsn:
            raise ConfigError("the dsn is empty")
        self.masker.add_dsn(dsn)
        db = await database(
            self.ctx.resources, dsn, self.cfg.pool_size or 10, self.masker, self.cfg.pool
        )
        statements = self.statements(scope)
        results = await db.run(statements, self.cfg.timeout)
        result, shaped = self.shape_result(results)
        payload = shaped if self.cfg.replace_payload else env.payload
        note = f"{result.get('count', 0) if isinstance(result, dict) else 0} row(s)"
        return Outcome(payload, result, note=note)

    # -- statements ------------------------------------------------------------------------
    def statements(self, scope: Mapping[str, Any]) -> list[Statement]:
        op = self.cfg.operation
        if op == "query":
            assert self.sql is not None
            params = self.params.render(scope)
            if self.sql.names:
                args: list[Any] = [params[n] for n in self.sql.names]
            else:
                args = list(params or [])[: self.sql.positional]
            sql = self.sql
            return [Statement(sql.postgres, sql.sqlite, args, True, sql.mysql, sql.mysql_refs)]
        if op in ("insert", "upsert"):
            row = self.values.render(scope)
            if not isinstance(row, Mapping) or not row:
                raise PoisonMessageError("values is not a non-empty mapping")
            columns = list(row)
            return [self.insert(columns, [[row[c] for c in columns]], op == "upsert")]
        rows = self.rows.render(scope)
        if rows is None:
            rows = []
        if not isinstance(rows, Sequence) or isinstance(rows, str):
            raise PoisonMessageError("rows is not a list")
        if not rows:
            return []
        if not all(isinstance(r, Mapping) for r in rows):
            raise PoisonMessageError("every row must be a mapping")
        columns = list(self.cfg.columns or rows[0])
        size = max(1, min(self.cfg.batch_size, _MAX_PARAMS // max(1, len(columns))))
        upsert = bool(self.cfg.conflict)
        return [
            self.insert(columns, [[r.get(c) for c in columns] for r in rows[i : i + size]], upsert)
            for i in range(0, len(rows), size)
        ]

    def insert(self, columns: list[str], rows: list[list[Any]], upsert: bool) -> Statement:
        assert self.cfg.table is not None
        try:
            cols = [quote_ident(c) for c in columns]
        except ValueError as exc:
            raise PoisonMessageError(f"{exc}") from None
        pg_rows: list[str] = []
        lite_rows: list[str] = []
        args: list[Any] = []
        for row in rows:
            first = len(args) + 1
            pg_rows.append("(" + ", ".join(f"${first + j}" for j in range(len(row))) + ")")
            lite_rows.append("(" + ", ".join(f"?{first + j}" for j in range(len(row))) + ")")
            args.extend(row)
        my_rows = "(" + ", ".join(["%s"] * len(columns)) + ")"
        head = f"INSERT INTO {quote_ident(self.cfg.table)} ({', '.join(cols)}) VALUES "
        tail = ""
        if upsert:
            target = ", ".join(quote_ident(c) for c in self.cfg.conflict)
            update = self.cfg.update
            if update is None:
                update = [c for c in columns if c not in self.cfg.conflict]
            if self.cfg.on_conflict == "ignore" or not update:
                tail = f" ON CONFLICT ({target}) DO NOTHING"
            else:
                sets = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in update)
                tail = f" ON CONFLICT ({target}) DO UPDATE SET {sets}"
        if self.cfg.returning:
            tail += " RETURNING *"
        return Statement(
            head + ", ".join(pg_rows) + tail,
            head + ", ".join(lite_rows) + tail,
            args,
            fetch=self.cfg.returning,
            mysql=self.mysql_insert(columns, ", ".join([my_rows] * len(rows)), upsert),
        )

    def mysql_insert(self, columns: list[str], values: str, upsert: bool) -> str:
        """The MySQL text: backtick names, %s values, ON DUPLICATE KEY UPDATE (MariaDB
        also takes RETURNING; MySQL refuses it)."""
        assert self.cfg.table is not None
        cols = ", ".join(quote_ident(c, "`") for c in columns)
        text = f"INSERT INTO {quote_ident(self.cfg.table, '`')} ({cols}) VALUES {values}"
        if upsert:
            update = self.cfg.update
            if update is None:
                update = [c for c in columns if c not in self.cfg.conflict]
            if self.cfg.on_conflict == "ignore" or not update:
                first = quote_ident(self.cfg.conflict[0], "`")
                text += f" ON DUPLICATE KEY UPDATE {first} = {first}"  # a no-op: kept as is
            else:
                text += " ON DUPLICATE KEY UPDATE " + ", ".join(
                    f"{quote_ident(c, '`')} = VALUES({quote_ident(c, '`')})" for c in update
                )
        if self.cfg.returning:
            text += " RETURNING *"
        return text

    # -- results ---------------------------------------------------------------------------
    def shape_result(self, results: list[Result]) -> tuple[Any, Any]:
        count = sum(r.count for r in results)
        if self.shape == "none":
            return None, None
        if self.shape == "count":
            return {"count": count}, count
        rows = [self.row(r.columns, values) for r in results for values in r.rows]
        if self.shape == "first":
            first = rows[0] if rows else None
            return {"row": first, "count": count}, first
        return {"rows": rows, "count": count}, rows

    def row(self, columns: list[str], values: tuple[Any, ...]) -> dict[str, Any]:
        out = {}
        for name, value in zip(columns, values, strict=True):
            if name in self.exclude:
                continue
            out[camel(name) if self.cfg.camel_case else name] = to_json_value(value)
        return out


_TEMPLATE = re.compile(r"\$\{([^}]*)\}?")


def _no_template(query: str) -> None:
    """``query:`` is SQL sent as written (never templated, so never injectable): a ``${…}``
    in it would reach the database literally. Point to the bound ``params`` instead."""
    m = _TEMPLATE.search(query)
    if m is not None:
        expr = m.group(1).strip() or "payload.x"
        name = re.sub(r"\W+", "_", expr.split(".")[-1]).strip("_") or "value"
        raise ValueError(
            f"query: ${{{expr}}} is not rendered in SQL text (values are never spliced into "
            f'SQL); write a placeholder :{name} and give params: {{{name}: "${{{expr}}}"}}'
        )


def camel(name: str) -> str:
    """``first_name`` -> ``firstName`` (leading underscores kept)."""
    stripped = name.lstrip("_")
    head, *rest = stripped.split("_")
    return name[: len(name) - len(stripped)] + head + "".join(p[:1].upper() + p[1:] for p in rest)
