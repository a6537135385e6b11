"""Named connections: settings entered once at the integration level, used by many steps.

```yaml
connections:
  crm:
    type: http
    base_url: ${config.crm_url}
    auth: {type: bearer, token: "${config.crm_token}"}
  db: {type: postgres, dsn: "${config.db_dsn}", pool_size: 5}
  mail: {type: smtp, host: smtp.example.com, username: bot, password: "${config.smtp_pw}"}
flows:
  - ...
    steps:
      - {id: push, type: http, connection: crm, method: POST, url: /customers, json: "${payload}"}
```

A step's ``connection: <name>`` fills the fields the step leaves unset from the connection
(headers are merged, the step's win). This happens when the topology is validated: the
loader hands step models a context ``{"directory", "connections"}``, and the step models
call ``fill_from_connection`` (a before-validator) and ``check_connection`` (for the error
message, pointed at the step's ``connection`` key). Connection fields may use secret config
variables in fields marked ``Secret``; their expressions may read only
``config`` and ``env`` (a connection is not per event).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from streamflow.connectors.auth import HttpAuth
from streamflow.topology.models import ConnectionConfig, Duration, Secret, StepConfig
from streamflow.topology.registry import connection_type
from streamflow.util.pools import PoolSettings


@connection_type("http", category="http", since="0.1.0")
class HttpConnection(ConnectionConfig):
    """An HTTP API: base URL, auth, default headers; for `http` and `graphql` steps."""

    type: Literal["http"]
    base_url: str = Field(description="prefix of relative step URLs, e.g. ${config.crm_url}")
    auth: Annotated[HttpAuth | None, Secret] = Field(
        None, description="as the http step's auth (oauth2 included)"
    )
    headers: Annotated[dict[str, str], Secret] = Field(
        default_factory=dict, description="sent with every request"
    )
    timeout: Duration | None = Field(None, description="default request timeout")
    pool_size: int | None = Field(
        None, ge=1, le=10_000, description="at most this many requests in flight (per App)"
    )


@connection_type("postgres", category="database", since="0.1.0")
class PostgresConnection(ConnectionConfig):
    """A PostgreSQL database (asyncpg pool); for `sql` steps."""

    type: Literal["postgres"]
    dsn: Annotated[str, Secret] = Field(
        description="postgresql://user:password@host:port/db, e.g. ${config.db_dsn}"
    )
    pool_size: int | None = Field(None, ge=1, le=1000, description="pool connections (default 10)")
    timeout: Duration | None = None


@connection_type("mysql", category="database", since="0.1.0")
class MysqlConnection(ConnectionConfig):
    """A MySQL or MariaDB database (asyncmy pool); for `sql` steps and SQL poll triggers."""

    type: Literal["mysql"]
    dsn: Annotated[str, Secret] = Field(
        description="mysql://user:password@host:3306/db, e.g. ${config.mysql_dsn}"
    )
    pool_size: int | None = Field(None, ge=1, le=1000, description="pool connections (default 10)")
    pool: PoolSettings | None = Field(
        None, description="min_size, max_size, idle_timeout, acquire_timeout, keepalive"
    )
    timeout: Duration | None = None

    @field_validator("dsn")
    @classmethod
    def _mysql_scheme(cls, v: str) -> str:
        scheme = v.split(":", 1)[0].lower()
        if "${" not in v and scheme not in ("mysql", "mariadb"):
            raise ValueError("a mysql connection's dsn starts with mysql:// or mariadb://")
        return v


@connection_type("redis", category="cache", since="0.1.0")
class RedisConnection(ConnectionConfig):
    """A Redis server (redis-py asyncio pool); for response caches, `dedupe` and shared
    rate limits (`store: redis`)."""

    type: Literal["redis"]
    url: Annotated[str, Secret] = Field(
        description="redis://[:password@]host:6379/0 (rediss:// for TLS), e.g. ${config.redis}"
    )
    username: Annotated[str | None, Secret] = Field(None, description="ACL user (Redis 6+)")
    password: Annotated[str | None, Secret] = Field(
        None, description="AUTH password (overrides the URL's)"
    )
    prefix: str = Field("sf:", description="every key this connection writes starts with this")
    timeout: Duration = Field(5.0, description="connect and per-command timeout")
    pool: PoolSettings | None = Field(
        None, description="max_size, idle_timeout (health check), acquire_timeout, keepalive"
    )


@connection_type("sqlite", category="database", since="0.1.0")
class SqliteConnection(ConnectionConfig):
    """An SQLite database file; for `sql` steps."""

    type: Literal["sqlite"]
    path: str = Field(description="database file; relative to the topology's folder")
    timeout: Duration | None = None


@connection_type("smtp", category="messaging", since="0.1.0")
class SmtpConnection(ConnectionConfig):
    """An SMTP server; for `email` steps."""

    type: Literal["smtp"]
    host: str
    port: int | str | None = Field(None, description="default 587, 465 for tls, 25; a template")
    security: Literal["starttls", "tls", "none"] | None = None
    username: Annotated[str | None, Secret] = None
    password: Annotated[str | None, Secret] = None
    from_: str | None = Field(None, alias="from", description="default sender")
    timeout: Duration | None = None


def context_directory(info: ValidationInfo) -> Path:
    """The topology file's folder (or the working directory outside a topology)."""
    ctx = info.context if isinstance(info.context, dict) else {}
    directory = ctx.get("directory")
    return Path(directory) if directory is not None else Path.cwd()


def _connections(info: ValidationInfo) -> dict[str, ConnectionConfig] | None:
    ctx = info.context if isinstance(info.context, dict) else {}
    conns = ctx.get("connections")
    return conns if isinstance(conns, dict) else None


def check_connection(name: str | None, info: ValidationInfo, kinds: tuple[str, ...]) -> None:
    """Field validator body: ``name`` must be a defined connection of one of ``kinds``."""
    conns = _connections(info)
    if name is None or conns is None:
        return
    conn = conns.get(name)
    if conn is None:
        known = ", ".join(sorted(conns)) or "none defined"
        raise PydanticCustomError(
            "unknown_connection",
            "unknown connection '{name}' (connections: {known})",
            {"name": name, "known": known},
        )
    if conn.type not in kinds:
        raise PydanticCustomError(
            "connection_type",
            "connection '{name}' is of type {kind}; this step needs {kinds}",
            {"name": name, "kind": conn.type, "kinds": " or ".join(kinds)},
        )


def fill_from_connection(
    data: Any,
    info: ValidationInfo,
    kinds: tuple[str, ...],
    fields: Callable[[ConnectionConfig], dict[str, Any]],
) -> Any:
    """Before-validator body: the step's unset fields come from its connection."""
    if not isinstance(data, dict) or not isinstance(data.get("connection"), str):
        return data
    conns = _connections(info)
    conn = conns.get(data["connection"]) if conns is not None else None
    if conn is None or conn.type not in kinds:
        return data  # check_connection reports it
    merged = dict(data)
    for key, value in fields(conn).items():
        if value is None:
            continue
        if key == "headers" and isinstance(merged.get(key), dict):
            merged[key] = {**value, **merged[key]}
        else:
            merged.setdefault(key, value)
    return merged


def http_fields(conn: ConnectionConfig) -> dict[str, Any]:
    assert isinstance(conn, HttpConnection)
    return {
        "base_url": conn.base_url,
        "auth": conn.auth.model_dump(by_alias=True, exclude_defaults=True) if conn.auth else None,
        "headers": dict(conn.headers) or None,
        "timeout": conn.timeout,
        "max_concurrency": conn.pool_size,
    }


def sql_fields(directory: Path) -> Callable[[ConnectionConfig], dict[str, Any]]:
    def fields(conn: ConnectionConfig) -> dict[str, Any]:
        if isinstance(conn, SqliteConnection):
            path = conn.path
            if "${" not in path and not Path(path).is_absolute():
                path = str(directory / path)
            return {"dsn": f"sqlite:///{path}", "timeout": conn.timeout}
        if isinstance(conn, MysqlConnection):
            return {
                "dsn": conn.dsn,
                "pool_size": conn.pool_size,
                "pool": conn.pool.model_dump() if conn.pool else None,
                "timeout": conn.timeout,
            }
        assert isinstance(conn, PostgresConnection)
        return {"dsn": conn.dsn, "pool_size": conn.pool_size, "timeout": conn.timeout}

    return fields


def smtp_fields(conn: ConnectionConfig) -> dict[str, Any]:
    assert isinstance(conn, SmtpConnection)
    return {
        "host": conn.host,
        "port": conn.port,
        "security": conn.security,
        "username": conn.username,
        "password": conn.password,
        "from": conn.from_,
        "timeout": conn.timeout,
    }


FieldsOf = Callable[[ConnectionConfig], dict[str, Any]]
"""What a connection gives a step: its settings as the step's field values."""


class ConnectedStep(StepConfig):
    """A step that may take its settings from a named connection (``connection: <name>``):
    the validators that resolve and check it, written once. Subclasses set
    ``connection_kinds`` and ``connection_fields``."""

    connection_kinds: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def connection_fields(
        cls, info: ValidationInfo
    ) -> Callable[[ConnectionConfig], dict[str, Any]]:
        raise NotImplementedError

    @model_validator(mode="before")
    @classmethod
    def _from_connection(cls, data: Any, info: ValidationInfo) -> Any:
        return fill_from_connection(data, info, cls.connection_kinds, cls.connection_fields(info))

    @field_validator("connection", check_fields=False)
    @classmethod
    def _connection_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        check_connection(v, info, cls.connection_kinds)
        return v
