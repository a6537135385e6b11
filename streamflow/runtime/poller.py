"""The ``poll`` trigger: an HTTP endpoint or an SQL query, every ``every``; each new or
changed record becomes one event, once.

The leader of ``sf.<integration>.<flow>.cursor`` polls (see ``lease.py``). What was
emitted is kept on that compacted topic, in the same transaction as the envelopes, so a
restart (or a new leader) neither emits a record again nor skips one:

* ``cursor`` mode: record ``cursor`` = ``{value, seen}``: the highest ``cursor.field``
  emitted, and the content hashes of the records holding exactly that value. A record is
  new when its field is greater than the cursor, or equal to it and not yet seen (so a
  row written later with the same timestamp is not lost).
* ``hash`` mode: one record ``h:<key>`` per record key (the ``key`` field, else the
  content hash): a record is emitted when its key is new or its content hash changed.

Execution ids are derived from the record's content (``<flow>-<hash>``), so a duplicate
is visible. A failed poll (connection error, HTTP error status, bad JSON, SQL error) is
logged and tried again at the next interval; it never moves the cursor.
"""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal
from typing import Any

import aiohttp

from streamflow import exactjson
from streamflow.connectors.secrets import Masker
from streamflow.connectors.sqldb import Statement, compile_sql, database, to_json_value
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError
from streamflow.runtime.ingest import FlowIngress
from streamflow.runtime.lease import LeaderTrigger, Outgoing, envelope_messages, now_ms
from streamflow.steps.base import Resources
from streamflow.topology.expressions import compile_value
from streamflow.topology.triggers import PollTrigger
from streamflow.transport.base import Record, Transport

log = logging.getLogger("streamflow.trigger")
CURSOR = b"cursor"
POLLED = b"polled"
HASH_PREFIX = b"h:"


class PollError(Exception):
    """This poll failed; the next one may work."""


def content_hash(record: Any) -> str:
    return hashlib.sha256(exactjson.dumps(record, option=exactjson.OPT_SORT_KEYS)).hexdigest()[:32]


def order_key(value: Any) -> tuple[int, Any]:
    """Numbers compare as numbers, text as text (ISO timestamps sort correctly)."""
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return (0, value)  # exact: 30-digit ids differing in the last digit stay ordered
    if isinstance(value, str):
        return (1, value)
    return (2, exactjson.dumps(value, option=exactjson.OPT_SORT_KEYS).decode())


def dig(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.lstrip("-").isdigit():
            doc = doc[int(part)] if -len(doc) <= int(part) < len(doc) else None
        else:
            return None
    return doc


class PollRunner(LeaderTrigger):
    kind = "cursor"
    trigger_type = "poll"

    def __init__(
        self, ingress: FlowIngress, transport: Transport, env: dict[str, str] | None = None
    ) -> None:
        super().__init__(ingress, transport, env)
        trigger = ingress.flow.trigger
        assert isinstance(trigger, PollTrigger)
        self.trigger = trigger
        self.mode = trigger.effective_mode
        self.resources = Resources()
        self.session: aiohttp.ClientSession | None = None
        self.masker = Masker()
        self.http: dict[str, Any] = {}
        if trigger.http is not None:
            self.http = compile_value(trigger.http.model_dump()).render(self.scope)
            self.masker.add(*self.http["headers"].values())
        self.dsn = ""
        if trigger.sql is not None:
            self.dsn = str(compile_value(trigger.sql.dsn).render(self.scope))
            self.masker.add(self.dsn)
            self.sql = compile_sql(trigger.sql.query)
            extra = set(self.sql.names) - {"cursor"}
            if extra or self.sql.positional:
                raise ConfigError(
                    f"flow {self.flow}: a poll query may use only the :cursor parameter"
                )
        self.next_poll = 0.0
        self.reset()

    # -- state -----------------------------------------------------------------------

    def reset(self) -> None:
        self.cursor: Any = self.trigger.cursor.initial if self.trigger.cursor else None
        self.seen: set[str] = set()
        self.hashes: dict[str, str] = {}
        self.polled = False

    def apply(self, rec: Record) -> None:
        value = exactjson.loads(rec.value)
        if rec.key == CURSOR:
            self.cursor, self.seen = value["value"], set(value["seen"])
        elif rec.key == POLLED:
            self.polled = True
        elif rec.key is not None and rec.key.startswith(HASH_PREFIX):
            self.hashes[rec.key[len(HASH_PREFIX) :].decode()] = value["hash"]

    def on_term(self) -> None:
        self.next_poll = 0.0  # a new leader polls at once

    # -- work ------------------------------------------------------------------------

    async def work(self) -> float:
        now = now_ms() / 1000
        if now < self.next_poll:
            return self.next_poll - now
        self.next_poll = now + self.trigger.every
        try:
            records = await self.fetch()
        except PollError as exc:
            log.warning("%s: poll failed: %s", self.topic, self.masker.mask(str(exc)))
            return self.trigger.every
        if self.mode == "cursor":
            ok = await self._emit_cursor(records)
        else:
            ok = await self._emit_hash(records)
        if not ok:
            self.next_poll = 0.0  # the transaction did not commit: poll again soon
            return 1.0
        return max(0.0, self.next_poll - now_ms() / 1000)

    async def _emit_cursor(self, records: list[Any]) -> bool:
        assert self.trigger.cursor is not None
        field = self.trigger.cursor.field
        current = order_key(self.cursor) if self.cursor is not None else None
        fresh: list[tuple[tuple[int, Any], str, Any]] = []
        for rec in records:
            value = dig(rec, field) if isinstance(rec, dict) else None
            if value is None:
                log.warning("%s: a record has no %s; passed over", self.topic, field)
                continue
            k, h = order_key(value), content_hash(rec)
            if current is None or k > current or (k == current and h not in self.seen):
                fresh.append((k, h, rec))
        fresh.sort(key=lambda t: t[0])
        if not fresh and self.polled:
            return True
        cursor, seen = self.cursor, set(self.seen)
        for _, h, rec in fresh:
            value = dig(rec, field)
            if value != cursor:
                cursor, seen = value, set()
            seen.add(h)
        emit = [] if self._baseline() else fresh
        messages: list[Outgoing] = []
        for _, h, rec in emit:
            trigger = {"type": "poll", "source": self._source, "cursor": dig(rec, field)}
            messages.extend(self._messages(rec, trigger, f"{self.flow}-{h[:24]}"))
        messages.append(self.state_record(CURSOR, {"value": cursor, "seen": sorted(seen)}))
        messages.append(self.state_record(POLLED, {"ts": now_ms()}))
        if not await self.lease.commit(messages):
            return False
        self.cursor, self.seen, self.polled = cursor, seen, True
        self._count(len(emit))
        return True

    async def _emit_hash(self, records: list[Any]) -> bool:
        changed: dict[str, tuple[str, Any, str | None]] = {}
        for rec in records:
            h = content_hash(rec)
            key = h if self.trigger.key is None else str(dig(rec, self.trigger.key))
            before = self.hashes.get(key)
            if before != h:
                changed[key] = (h, rec, before)
        if not changed and self.polled:
            return True
        emit = {} if self._baseline() else changed
        messages: list[Outgoing] = []
        for key, (h, rec, before) in emit.items():
            trigger = {
                "type": "poll",
                "source": self._source,
                "key": key,
                "changed": before is not None,
            }
            ident = hashlib.sha256(f"{key}\x00{before}\x00{h}".encode()).hexdigest()[:24]
            messages.extend(self._messages(rec, trigger, f"{self.flow}-{ident}"))
        for key, (h, _, _) in changed.items():
            messages.append(self.state_record(HASH_PREFIX + key.encode(), {"hash": h}))
        messages.append(self.state_record(POLLED, {"ts": now_ms()}))
        if not await self.lease.commit(messages):
            return False
        self.hashes.update({key: h for key, (h, _, _) in changed.items()})
        self.polled = True
        self._count(len(emit))
        return True

    def _baseline(self) -> bool:
        """skip_existing: the first poll records what exists without emitting it."""
        return self.trigger.skip_existing and not self.polled

    def _messages(self, rec: Any, trigger: dict[str, Any], execution_id: str) -> list[Outgoing]:
        env: Envelope = self.ingress.envelope(rec, trigger=trigger, execution_id=execution_id)
        return envelope_messages(self.ingress, env)

    def _count(self, n: int) -> None:
        if n:
            self.firings.inc(n)
            log.info("%s: emitted %d record(s)", self.topic, n)

    @property
    def _source(self) -> str:
        return "http" if self.trigger.http is not None else "sql"

    # -- sources ---------------------------------------------------------------------

    async def fetch(self) -> list[Any]:
        if self.trigger.http is not None:
            return await self._fetch_http()
        return await self._fetch_sql()

    async def _fetch_http(self) -> list[Any]:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        params = dict(self.http["params"])
        cursor = self.trigger.cursor
        if cursor is not None and cursor.param and self.cursor is not None:
            params[cursor.param] = str(self.cursor)
        try:
            async with self.session.request(
                self.http["method"],
                self.http["url"],
                headers=self.http["headers"],
                params=params,
                timeout=aiohttp.ClientTimeout(total=self.http["timeout"]),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise PollError(f"{self.http['url']} answered {resp.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PollError(f"{self.http['url']}: {exc.__class__.__name__}: {exc}") from None
        try:
            doc = exactjson.loads(body)
        except exactjson.JSONDecodeError as exc:
            raise PollError(f"{self.http['url']}: the answer is not JSON: {exc}") from None
        items = dig(doc, self.http["items"]) if self.http["items"] else doc
        if not isinstance(items, list):
            where = f" at {self.http['items']}" if self.http["items"] else ""
            raise PollError(f"{self.http['url']}: no list of records{where}")
        return items

    async def _fetch_sql(self) -> list[Any]:
        assert self.trigger.sql is not None
        args = [self.cursor] if "cursor" in self.sql.names else []
        try:
            db = await database(self.resources, self.dsn, 2, self.masker)
            [result] = await db.run(
                [Statement(self.sql.postgres, self.sql.sqlite, args, fetch=True)],
                self.trigger.sql.timeout,
            )
        except Exception as exc:
            raise PollError(str(exc)) from None
        return [
            {col: to_json_value(v) for col, v in zip(result.columns, row, strict=True)}
            for row in result.rows
        ]

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.resources.aclose()
