"""The databases behind the ``sql`` step: PostgreSQL (asyncpg pool), MySQL/MariaDB (asyncmy
pool, ``mysqldb.py``) and SQLite (stdlib). ``DATABASES`` is the one list of DSN schemes.

A step call hands its database a list of ``Statement`` and gets one ``Result`` each; the
whole list runs in one transaction (all or nothing). Values are always bound parameters:
``compile_sql`` finds the placeholders of a query (``:name`` or ``$1``, never inside
string literals, quoted identifiers or comments) and rewrites them to each driver's style
(``$1`` for asyncpg, ``?1``/``:name`` for sqlite3, ``%s`` for asyncmy).
Pools are shared per DSN through ``StepContext.resources``.

Failures are classified for the retry policy: connection problems, timeouts, lock and
serialization conflicts are ``RetriableError``; constraint violations, bad data and bad
SQL (syntax, unknown table or column) are ``PoisonMessageError``. Messages never carry
the DSN's password.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from streamflow import exactjson
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import Resources
from streamflow.util.secrets import Masker, safe_dsn

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_NAME_START = re.compile(r"[A-Za-z_]")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+")
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_RETRIABLE_STATES = ("08", "40", "53", "55P03", "57", "58", "XX")
_POISON_STATES = ("21", "22", "23", "2F", "42", "44")


# --------------------------------------------------------------------------- SQL text


@dataclass(frozen=True)
class CompiledSql:
    """One query in both drivers' placeholder styles."""

    postgres: str
    sqlite: str
    names: tuple[str, ...] = ()  # named style: parameter order of the postgres text
    positional: int = 0  # positional style: highest $N used
    mysql: str = ""  # %s placeholders (a literal % doubled)
    mysql_refs: tuple[int, ...] = ()  # per %s: the 1-based $N of the postgres text


def compile_sql(sql: str) -> CompiledSql:  # noqa: PLR0915 (one scanner, kept in one piece)
    """Find the placeholders of ``sql``; raise ValueError on a mix of styles."""
    pg: list[str] = []
    lite: list[str] = []
    my: list[str] = []
    refs: list[int] = []
    names: list[str] = []
    highest = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""
        end = i + 1
        if ch in "'\"`":  # string literal or quoted identifier ('' / "" / `` escape)
            end = i + 1
            while end < n:
                if sql[end] == ch:
                    if end + 1 < n and sql[end + 1] == ch:
                        end += 2
                        continue
                    break
                end += 1
            end = min(end + 1, n)
        elif ch == "-" and nxt == "-":
            j = sql.find("\n", i)
            end = n if j < 0 else j
        elif ch == "/" and nxt == "*":
            j = sql.find("*/", i + 2)
            end = n if j < 0 else j + 2
        elif ch == "$" and (m := _DOLLAR_TAG.match(sql, i)) and not _NUMBER.match(nxt):
            close = sql.find(m.group(0), m.end())  # $tag$ ... $tag$ (PostgreSQL)
            end = n if close < 0 else close + len(m.group(0))
        elif ch == "$" and (m := _NUMBER.match(sql, i + 1)):
            if names:
                raise ValueError("use either :name or $1 placeholders, not both")
            number = int(m.group(0))
            if number < 1:
                raise ValueError("positional placeholders start at $1")
            highest = max(highest, number)
            pg.append(f"${number}")
            lite.append(f"?{number}")
            my.append("%s")
            refs.append(number)
            i = m.end()
            continue
        elif (
            ch == ":"
            and nxt != ":"
            and (i == 0 or sql[i - 1] != ":")
            and _NAME_START.match(nxt)
            and (m := _NAME.match(sql, i + 1))
        ):
            if highest:
                raise ValueError("use either :name or $1 placeholders, not both")
            name = m.group(0)
            if name not in names:
                names.append(name)
            pg.append(f"${names.index(name) + 1}")
            lite.append(f":{name}")
            my.append("%s")
            refs.append(names.index(name) + 1)
            i = m.end()
            continue
        chunk = sql[i:end]
        pg.append(chunk)
        lite.append(chunk)
        my.append(chunk.replace("%", "%%"))
        i = end
    return CompiledSql("".join(pg), "".join(lite), tuple(names), highest, "".join(my), tuple(refs))


def quote_ident(name: str, quote: str = '"') -> str:
    """``schema.table`` / ``column`` -> quoted identifier (``quote="`"`` for MySQL);
    ValueError if not a plain name."""
    parts = name.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENT.match(p) for p in parts):
        raise ValueError(f"{name!r} is not a plain table or column name")
    return ".".join(f"{quote}{p}{quote}" for p in parts)


# --------------------------------------------------------------------------- statements


@dataclass
class Statement:
    """One SQL statement in each driver's form (``$1`` placeholders for postgres, ``?1``
    for sqlite, ``%s`` for mysql) with its arguments in ``$N`` order; ``fetch`` returns
    its rows. ``mysql_refs`` maps each ``%s`` to its ``$N`` (None: in order)."""

    postgres: str
    sqlite: str
    args: Sequence[Any]
    fetch: bool = False
    mysql: str = ""
    mysql_refs: tuple[int, ...] | None = None


@dataclass
class Result:
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    count: int = 0  # rows returned, or rows affected


class Database(Protocol):
    kind: str

    async def run(self, statements: Sequence[Statement], timeout: float) -> list[Result]: ...


DATABASES: dict[str, str] = {
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "sqlite": "sqlite",
}
"""DSN scheme -> the database it names: the only place that says which databases exist
(validate, startup and ``database`` all ask ``database_kind``)."""


def database_kind(dsn: str) -> str:
    """The database a DSN names (a key's value of DATABASES); ConfigError if unsupported."""
    scheme = dsn.split(":", 1)[0].lower() if ":" in dsn else ""
    kind = DATABASES.get(scheme)
    if kind is None:
        schemes = ", ".join(f"{s}://" for s in sorted(set(DATABASES)))
        raise ConfigError(
            f"unsupported database {safe_dsn(dsn)!r}: the DSN must start with one of {schemes}"
        )
    return kind


def check_dsn(dsn: str | None, scope: Mapping[str, Any]) -> None:
    """At validate and startup: a DSN written literally, or rendered from ``config``/``env``
    only, must name a supported database (ConfigError). One that depends on the event is
    checked when it is used."""
    if not dsn:
        return
    if "${" in dsn:
        from streamflow.topology.expressions import compile_value

        template = compile_value(dsn)
        if any(ref[0] not in scope for ref in template.references):
            return
        dsn = str(template.render(scope) or "")
        if not dsn:
            return
    database_kind(dsn)


async def database(
    resources: Resources, dsn: str, pool_size: int, masker: Masker, pool: Any = None
) -> Database:
    """The App-wide database of ``dsn`` (a pool is created on first use); ``pool`` is a
    ``PoolSettings`` (MySQL). ConfigError for a scheme not in ``DATABASES``."""
    kind = database_kind(dsn)
    if kind == "mysql":
        from streamflow.util.mysqldb import MysqlDatabase

        async def create_my() -> Database:
            return await MysqlDatabase.connect(dsn, pool_size, masker, pool)

        async def close_my(db: Database) -> None:
            assert isinstance(db, MysqlDatabase)
            await db.close()

        return await resources.aget(f"sql\x00{dsn}", create_my, close_my)
    if kind == "postgresql":

        async def create_pg() -> Database:
            return await PostgresDatabase.connect(dsn, pool_size, masker)

        async def close_pg(db: Database) -> None:
            assert isinstance(db, PostgresDatabase)
            await db.close()

        return await resources.aget(f"sql\x00{dsn}", create_pg, close_pg)
    if kind == "sqlite":
        path = sqlite_path(dsn)

        async def create_lite() -> Database:
            return SqliteDatabase(path, masker)

        async def close_lite(db: Database) -> None:
            assert isinstance(db, SqliteDatabase)
            await db.close()

        return await resources.aget(f"sql\x00sqlite\x00{path}", create_lite, close_lite)
    raise AssertionError(kind)


def sqlite_path(dsn: str) -> str:
    """``sqlite:///rel/path``, ``sqlite:////abs/path``, ``sqlite://:memory:``."""
    rest = dsn.split(":", 1)[1]
    if rest in ("//:memory:", "///:memory:"):
        return ":memory:"
    if not rest.startswith("///"):
        raise ConfigError("an SQLite DSN is sqlite:///relative/path or sqlite:////absolute/path")
    return rest[3:]


def to_json_value(value: Any) -> Any:
    """Database values -> what a payload can carry."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):  # exact: int, float when a double holds it, else Decimal
        return exactjson.number(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    return str(value)


# --------------------------------------------------------------------------- PostgreSQL


def _coerce_pg(value: Any, type_name: str) -> Any:
    """Payload values (CSV text, JSON numbers) -> what asyncpg expects for the column."""
    if value is None:
        return None
    try:
        if type_name in ("int2", "int4", "int8"):
            if isinstance(value, str):
                return int(value.strip()) if value.strip() else None
            return int(value) if isinstance(value, float) and value.is_integer() else value
        if type_name in ("float4", "float8"):
            return float(value) if isinstance(value, str | int) else value
        if type_name == "numeric":
            return Decimal(str(value)) if isinstance(value, str | int | float) else value
        if type_name == "bool" and isinstance(value, str):
            return value.strip().lower() in ("true", "t", "1", "yes", "y", "on")
        if type_name in ("text", "varchar", "bpchar", "name") and not isinstance(value, str):
            return value if isinstance(value, dict | list) else str(value)
        if type_name == "date" and isinstance(value, str):
            return dt.date.fromisoformat(value.strip()[:10])
        if type_name in ("timestamp", "timestamptz") and isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if type_name == "timestamptz" and parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            if type_name == "timestamp" and parsed.tzinfo is not None:
                parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
            return parsed
        if type_name == "uuid" and isinstance(value, str):
            return uuid.UUID(value)
    except (ValueError, ArithmeticError) as exc:
        raise PoisonMessageError(f"value {value!r} does not fit a {type_name} column") from exc
    return value


class PostgresDatabase:
    kind = "postgres"

    def __init__(self, pool: Any, dsn: str, masker: Masker) -> None:
        self.pool = pool
        self.where = safe_dsn(dsn)
        self.masker = masker

    @classmethod
    async def connect(cls, dsn: str, pool_size: int, masker: Masker) -> PostgresDatabase:
        import asyncpg

        async def init(conn: Any) -> None:
            for name in ("json", "jsonb"):
                await conn.set_type_codec(
                    name,
                    encoder=exactjson.dumps_text,
                    decoder=exactjson.loads,
                    schema="pg_catalog",
                )

        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=pool_size, init=init, command_timeout=None
            )
        except Exception as exc:
            raise _classify(exc, safe_dsn(dsn), masker) from None
        return cls(pool, dsn, masker)

    async def close(self) -> None:
        await self.pool.close()

    async def run(self, statements: Sequence[Statement], timeout: float) -> list[Result]:
        try:
            async with asyncio.timeout(timeout):
                async with self.pool.acquire() as conn, conn.transaction():
                    return [await self._one(conn, st) for st in statements]
        except (PoisonMessageError, RetriableError):
            raise
        except TimeoutError:
            raise RetriableError(f"{self.where}: no answer within {timeout:g}s") from None
        except Exception as exc:
            raise _classify(exc, self.where, self.masker) from None

    @staticmethod
    async def _one(conn: Any, st: Statement) -> Result:
        stmt = await conn.prepare(st.postgres)
        types = [t.name for t in stmt.get_parameters()]
        args = [_coerce_pg(v, types[i]) if i < len(types) else v for i, v in enumerate(st.args)]
        records = await stmt.fetch(*args)
        columns = [a.name for a in stmt.get_attributes()]
        rows = [tuple(r) for r in records]
        if columns:
            return Result(columns, rows, len(rows))
        status = stmt.get_statusmsg() or ""  # e.g. "INSERT 0 3", "UPDATE 2"
        tail = status.rsplit(" ", 1)[-1]
        return Result([], [], int(tail) if tail.isdigit() else 0)


def _classify(exc: BaseException, where: str, masker: Masker) -> Exception:
    import asyncpg

    text = masker.mask(f"{where}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state.startswith(_POISON_STATES):
            return PoisonMessageError(text)
        if state.startswith(_RETRIABLE_STATES):
            return RetriableError(text)
        return RetriableError(text)  # auth, shutdown, resources: may pass
    if isinstance(exc, asyncpg.InterfaceError | OSError | ConnectionError | TimeoutError):
        return RetriableError(text)
    if isinstance(exc, asyncpg.DataError | TypeError | ValueError | OverflowError):
        return PoisonMessageError(text)  # a value asyncpg cannot encode for the column
    return RetriableError(text)


# --------------------------------------------------------------------------- SQLite


def _bind_sqlite(value: Any) -> Any:
    if isinstance(value, dict | list):
        return exactjson.dumps_text(value)
    if isinstance(value, Decimal) or (type(value) is int and not -(2**63) <= value < 2**63):
        return str(value)  # exact digits; SQLite's column affinity decides how to store them
    if isinstance(value, bool):
        return int(value)
    return value


class SqliteDatabase:
    """One connection, used by one thread: transactions run one after another."""

    kind = "sqlite"

    def __init__(self, path: str, masker: Masker) -> None:
        self.path = path
        self.masker = masker
        self.where = f"sqlite:///{path}"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-sqlite")
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA foreign_keys = ON")
        return self._conn

    def _run_sync(self, statements: Sequence[Statement]) -> list[Result]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = []
            for st in statements:
                cur = conn.execute(st.sqlite, [_bind_sqlite(v) for v in st.args])
                rows = [tuple(r) for r in cur.fetchall()]
                columns = [d[0] for d in cur.description or ()]
                count = len(rows) if cur.description else max(cur.rowcount, 0)
                out.append(Result(columns, rows, count))
            conn.execute("COMMIT")
            return out
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    async def run(self, statements: Sequence[Statement], timeout: float) -> list[Result]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run_sync, statements)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            if self._conn is not None:
                self._conn.interrupt()  # thread-safe; the statement fails, the tx rolls back
            await asyncio.gather(future, return_exceptions=True)
            raise RetriableError(f"{self.where}: no answer within {timeout:g}s") from None
        except sqlite3.Error as exc:
            raise _classify_sqlite(exc, self.where, self.masker) from None

    async def close(self) -> None:
        conn = self._conn

        def shut() -> None:
            if conn is not None:
                conn.close()

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)


def _classify_sqlite(exc: sqlite3.Error, where: str, masker: Masker) -> Exception:
    text = masker.mask(f"{where}: {exc.__class__.__name__}: {exc}")
    msg = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and (
        "locked" in msg or "busy" in msg or "unable to open" in msg or "disk i/o" in msg
    ):
        return RetriableError(text)
    if isinstance(
        exc,
        sqlite3.IntegrityError
        | sqlite3.ProgrammingError
        | sqlite3.DataError
        | sqlite3.InterfaceError
        | sqlite3.OperationalError,
    ):
        return PoisonMessageError(text)
    return RetriableError(text)
