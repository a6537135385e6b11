"""MySQL and MariaDB behind the ``sql`` step and the SQL poll trigger (asyncmy pool).

DSN: ``mysql://user:password@host:3306/database`` (``mariadb://`` is the same); query
parameters ``charset`` (default utf8mb4) and ``connect_timeout`` (seconds). A step call
is one transaction (``BEGIN`` ... ``COMMIT``, rolled back on any failure); values are
always bound (asyncmy's ``%s``; a literal ``%`` in the query is escaped by
``compile_sql``). DECIMAL columns come back as ``decimal.Decimal`` and text bound to
them is converted by the server, exactly.

Errors are classified by MySQL error number: lost or refused connections, lock wait
timeouts, deadlocks, a read-only server, a full disk and server shutdown are
``RetriableError``; duplicate keys, foreign keys, bad values, bad SQL, unknown tables
and columns are ``PoisonMessageError``. Messages never carry the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from streamflow import exactjson
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.util.pools import PoolSettings
from streamflow.util.secrets import Masker, safe_dsn
from streamflow.util.sqldb import Result, Statement

# server errors worth another try: connection/resources/locks/read-only/shutdown
RETRIABLE_ERRNOS = frozenset({
    1021, 1030, 1037, 1038, 1040, 1041, 1043, 1045, 1053, 1077, 1078, 1079, 1080, 1114,
    1129, 1130, 1152, 1153, 1154, 1155, 1156, 1157, 1158, 1159, 1160, 1161, 1184, 1203,
    1205, 1213, 1226, 1290, 1317, 1614, 1792, 1836, 1927, 1969, 3024, 4031,
})  # fmt: skip
_CLIENT_ERRNOS = range(2000, 3000)  # CR_* errors: the client lost or never had the server


def parse_dsn(dsn: str) -> dict[str, Any]:
    """``mysql://user:pw@host:port/db?charset=utf8mb4&connect_timeout=10`` -> connect kwargs."""
    try:
        parts = urlsplit(dsn)
        port = parts.port or 3306
    except ValueError as exc:
        raise ConfigError(f"bad MySQL DSN {safe_dsn(dsn)!r}: {exc}") from None
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": port,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or None,
        "charset": "utf8mb4",
        "connect_timeout": 10,
    }
    for key, value in parse_qsl(parts.query):
        if key == "charset":
            kwargs["charset"] = value
        elif key == "connect_timeout":
            kwargs["connect_timeout"] = float(value)
        else:
            raise ConfigError(
                f"MySQL DSN {safe_dsn(dsn)!r}: unknown parameter {key!r} "
                "(known: charset, connect_timeout)"
            )
    return kwargs


def bind_mysql(value: Any) -> Any:
    """Payload values -> what asyncmy escapes: mappings and lists as JSON text."""
    if isinstance(value, dict | list):
        return exactjson.dumps_text(value)
    return value


class MysqlDatabase:
    """An asyncmy pool for one DSN; ``run`` is one transaction on one connection."""

    kind = "mysql"

    def __init__(self, pool: Any, dsn: str, masker: Masker, settings: PoolSettings) -> None:
        self.pool = pool
        self.where = safe_dsn(dsn)
        self.masker = masker
        self.acquire_timeout = settings.acquire_timeout
        self.keepalive = settings.keepalive

    @classmethod
    async def connect(
        cls, dsn: str, pool_size: int, masker: Masker, settings: PoolSettings | None = None
    ) -> MysqlDatabase:
        import asyncmy

        settings = settings or PoolSettings()
        kwargs = parse_dsn(dsn)
        maxsize = settings.max_size or pool_size
        try:
            pool = await asyncmy.create_pool(
                minsize=min(settings.min_size, maxsize),
                maxsize=maxsize,
                pool_recycle=int(settings.idle_timeout),
                autocommit=False,
                **kwargs,
            )
        except Exception as exc:
            raise classify_mysql(exc, safe_dsn(dsn), masker) from None
        return cls(pool, dsn, masker, settings)

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()

    async def run(self, statements: Sequence[Statement], timeout: float) -> list[Result]:
        conn: Any = None
        try:
            async with asyncio.timeout(timeout):
                conn = await self._acquire(timeout)
                await conn.begin()
                out = [await self._one(conn, st) for st in statements]
                await conn.commit()
                return out
        except BaseException as exc:
            if conn is not None:
                await self._after_failure(conn, exc)
            if isinstance(exc, PoisonMessageError | RetriableError) or not isinstance(
                exc, Exception
            ):
                raise
            if isinstance(exc, TimeoutError):
                raise RetriableError(f"{self.where}: no answer within {timeout:g}s") from None
            raise classify_mysql(exc, self.where, self.masker) from None
        finally:
            if conn is not None:
                self.pool.release(conn)  # a closed connection is not pooled again

    async def _acquire(self, timeout: float) -> Any:
        wait = self.acquire_timeout or timeout
        try:
            async with asyncio.timeout(wait):
                conn = await self.pool.acquire()
        except TimeoutError:
            raise RetriableError(
                f"{self.where}: no free pool connection within {wait:g}s"
            ) from None
        if self.keepalive:
            _keepalive(conn)
        return conn

    @staticmethod
    async def _after_failure(conn: Any, exc: BaseException) -> None:
        """Roll back (the connection goes back to the pool); after a timeout or a
        cancellation, or if the rollback fails, close it (the server rolls back)."""
        if isinstance(exc, TimeoutError | asyncio.CancelledError):
            conn.close()
            return
        try:
            async with asyncio.timeout(5):
                await conn.rollback()
        except Exception:
            conn.close()

    @staticmethod
    async def _one(conn: Any, st: Statement) -> Result:
        refs = st.mysql_refs
        args = list(st.args) if refs is None else [st.args[i - 1] for i in refs]
        async with conn.cursor() as cur:
            await cur.execute(st.mysql, tuple(bind_mysql(a) for a in args))
            if cur.description:
                rows = [tuple(r) for r in await cur.fetchall()]
                return Result([d[0] for d in cur.description], rows, len(rows))
            return Result([], [], max(int(cur.rowcount or 0), 0))


def _keepalive(conn: Any) -> None:
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


def classify_mysql(exc: BaseException, where: str, masker: Masker) -> Exception:
    """asyncmy / socket errors -> RetriableError or PoisonMessageError (masked text)."""
    from asyncmy import errors

    text = masker.mask(f"{where}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, errors.MySQLError):
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if errno and len(exc.args) == 2:  # (2003, "Can't connect ..."): not a Python tuple
            text = masker.mask(f"{where}: MySQL error {errno}: {exc.args[1]}")
        if errno in RETRIABLE_ERRNOS or errno in _CLIENT_ERRNOS or errno == 0:
            return RetriableError(text)
        if isinstance(exc, errors.InterfaceError):
            return RetriableError(text)
        return PoisonMessageError(text)  # bad SQL, bad value, constraint: never passes
    if isinstance(exc, OSError | ConnectionError | TimeoutError):
        return RetriableError(text)
    if isinstance(exc, TypeError | ValueError | OverflowError | ArithmeticError):
        return PoisonMessageError(text)  # a value the driver cannot encode
    return RetriableError(text)
