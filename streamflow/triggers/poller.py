"""The ``poll`` trigger: an HTTP endpoint, an SQL query or a MongoDB collection, every
``every``; each new or changed record becomes one event, once.

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
is visible. With ``http.paginate`` every page is read at each poll (see ``paginate.py``)
and the records of all pages are compared as one list; ``http.emit: page`` gives one
event per page holding that page's new records (``{page, items}``) instead of one per
record. A failed poll (connection error, HTTP error status, bad JSON, SQL error) is
logged and tried again at the next interval; it never moves the cursor.

A MongoDB source in cursor mode queries ``filter`` and ``<cursor.field> >= cursor``, sorted
by the field, at most ``limit`` documents (see ``connectors.mongodb.poll_documents``).
"""

from __future__ import annotations

import hashlib
import logging
from decimal import Decimal
from typing import Any

import aiohttp

from streamflow import exactjson
from streamflow.connectors.httpclient import safe_url
from streamflow.connectors.mongodb import poll_documents
from streamflow.connectors.paginate import Pager, PaginationError
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError
from streamflow.steps.base import Resources
from streamflow.topology.expressions import ExpressionEvalError, compile_value
from streamflow.topology.triggers import PollTrigger
from streamflow.transport.base import Record
from streamflow.triggers.lease import LeaderTrigger, Outgoing, envelope_messages
from streamflow.util.secrets import Masker
from streamflow.util.sqldb import Statement, compile_sql, database, to_json_value

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

    def setup(self) -> None:
        self.trigger = trigger = self.config(PollTrigger)
        self.mode = trigger.effective_mode
        self.resources = Resources()
        self.session: aiohttp.ClientSession | None = None
        self.masker = Masker()
        self.http: dict[str, Any] = {}
        self.pager: Pager | None = None
        self.emit = trigger.http.emit if trigger.http is not None else "record"
        self.page_of: dict[int, int] = {}  # id(record) -> its page, for emit: page
        self.events = 0
        if trigger.http is not None:
            dump = trigger.http.model_dump(exclude={"paginate", "emit"})
            self.http = compile_value(dump).render(self.scope)
            self.masker.add(*self.http["headers"].values())
            if trigger.http.paginate is not None:
                page = trigger.http.paginate
                if page.items is None and trigger.http.items:
                    page = page.model_copy(update={"items": trigger.http.items})
                self.pager = Pager(page, frozenset({"config", "env", "response"}))
        self.dsn = ""
        if trigger.sql is not None:
            self.dsn = str(compile_value(trigger.sql.dsn).render(self.scope))
            self.masker.add_dsn(self.dsn)
            self.sql = compile_sql(trigger.sql.query)
            extra = set(self.sql.names) - {"cursor"}
            if extra or self.sql.positional:
                raise ConfigError(
                    f"flow {self.flow}: a poll query may use only the :cursor parameter"
                )
        self.mongo: dict[str, Any] = {}
        if trigger.mongodb is not None:
            self.mongo = compile_value(trigger.mongodb.model_dump()).render(self.scope)
            self.masker.add_dsn(self.mongo["url"])
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
        now = self.clock.now_ms() / 1000
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
        return max(0.0, self.next_poll - self.clock.now_ms() / 1000)

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
        pending: list[tuple[Any, dict[str, Any], str]] = []
        for _, h, rec in emit:
            trigger = {"type": "poll", "source": self._source, "cursor": dig(rec, field)}
            pending.append((rec, trigger, f"{self.flow}-{h[:24]}"))
        messages = self._envelopes(pending)
        messages.append(self.state_record(CURSOR, {"value": cursor, "seen": sorted(seen)}))
        messages.append(self.state_record(POLLED, {"ts": self.clock.now_ms()}))
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
        pending: list[tuple[Any, dict[str, Any], str]] = []
        for key, (h, rec, before) in emit.items():
            trigger = {
                "type": "poll",
                "source": self._source,
                "key": key,
                "changed": before is not None,
            }
            ident = hashlib.sha256(f"{key}\x00{before}\x00{h}".encode()).hexdigest()[:24]
            pending.append((rec, trigger, f"{self.flow}-{ident}"))
        messages = self._envelopes(pending)
        for key, (h, _, _) in changed.items():
            messages.append(self.state_record(HASH_PREFIX + key.encode(), {"hash": h}))
        messages.append(self.state_record(POLLED, {"ts": self.clock.now_ms()}))
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

    def _envelopes(self, pending: list[tuple[Any, dict[str, Any], str]]) -> list[Outgoing]:
        """One envelope per new record, or (``emit: page``) one per page holding its new
        records: ``{page, items}``, its id derived from the records' ids."""
        messages: list[Outgoing] = []
        if self.emit != "page":
            for rec, trigger, ident in pending:
                messages.extend(self._messages(rec, trigger, ident))
            return messages
        pages: dict[int, list[tuple[Any, str]]] = {}
        for rec, _, ident in pending:
            pages.setdefault(self.page_of.get(id(rec), 1), []).append((rec, ident))
        for number, recs in sorted(pages.items()):
            digest = hashlib.sha256("\x00".join(i for _, i in recs).encode()).hexdigest()[:24]
            trigger = {"type": "poll", "source": "http", "page": number, "count": len(recs)}
            payload = {"page": number, "items": [r for r, _ in recs]}
            messages.extend(self._messages(payload, trigger, f"{self.flow}-p{digest}"))
        self.events = len(pages)
        return messages

    def _count(self, n: int) -> None:
        if n and self.emit == "page":
            log.info("%s: emitted %d record(s) in %d page event(s)", self.topic, n, self.events)
            self.firings.inc(self.events)
            return
        if n:
            self.firings.inc(n)
            log.info("%s: emitted %d record(s)", self.topic, n)

    @property
    def _source(self) -> str:
        if self.trigger.mongodb is not None:
            return "mongodb"
        return "http" if self.trigger.http is not None else "sql"

    # -- sources ---------------------------------------------------------------------

    async def fetch(self) -> list[Any]:
        if self.trigger.http is not None:
            return await self._fetch_http()
        if self.trigger.mongodb is not None:
            return await self._fetch_mongo()
        return await self._fetch_sql()

    async def _fetch_http(self) -> list[Any]:
        params = dict(self.http["params"])
        cursor = self.trigger.cursor
        if cursor is not None and cursor.param and self.cursor is not None:
            params[cursor.param] = str(self.cursor)
        url = self.http["url"]
        self.page_of = {}
        if self.pager is None:
            _, _, doc, _ = await self._get(url, params)
            items = dig(doc, self.http["items"]) if self.http["items"] else doc
            if not isinstance(items, list):
                where = f" at {self.http['items']}" if self.http["items"] else ""
                raise PollError(f"{url}: no list of records{where}")
            return items
        state = self.pager.begin(url, params)
        records: list[Any] = []
        while True:
            req = state.request
            status, headers, doc, link = await self._get(req.url, req.query)
            response = {"status": status, "headers": headers, "body": doc}
            try:
                found = self.pager.items(doc)
                for rec in found:
                    self.page_of[id(rec)] = state.number + 1
                records.extend(found)
                more = self.pager.advance(
                    state, response, link, found, lambda r: {**self.scope, "response": r}
                )
            except PaginationError as exc:
                raise PollError(f"{url}: page {state.number + 1}: {exc}") from None
            except ExpressionEvalError as exc:
                raise PollError(f"{url}: page {state.number + 1}: {exc}") from None
            if not more:
                return records
            if state.number >= self.pager.cfg.max_pages:
                log.warning("%s: stopped after max_pages=%d", self.topic, state.number)
                return records

    async def _get(
        self, url: str, params: dict[str, str]
    ) -> tuple[int, dict[str, str], Any, str | None]:
        """One request: (status, headers, JSON body, the Link header's next target)."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.request(
                self.http["method"],
                url,
                headers=self.http["headers"],
                params=params,
                timeout=aiohttp.ClientTimeout(total=self.http["timeout"]),
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise PollError(f"{safe_url(url)} answered {resp.status}")
                nxt = resp.links.get("next")
                link = str(nxt.get("url")) if nxt is not None and nxt.get("url") else None
                headers = {str(k): v for k, v in resp.headers.items()}
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PollError(f"{safe_url(url)}: {exc.__class__.__name__}: {exc}") from None
        try:
            return status, headers, exactjson.loads(body), link
        except exactjson.JSONDecodeError as exc:
            raise PollError(f"{safe_url(url)}: the answer is not JSON: {exc}") from None

    async def _fetch_sql(self) -> list[Any]:
        assert self.trigger.sql is not None
        q = self.sql
        args = [self.cursor] if "cursor" in q.names else []
        try:
            db = await database(self.resources, self.dsn, 2, self.masker)
            [result] = await db.run(
                [Statement(q.postgres, q.sqlite, args, True, q.mysql, q.mysql_refs)],
                self.trigger.sql.timeout,
            )
        except Exception as exc:
            raise PollError(str(exc)) from None
        return [
            {col: to_json_value(v) for col, v in zip(result.columns, row, strict=True)}
            for row in result.rows
        ]

    async def _fetch_mongo(self) -> list[Any]:
        field = self.trigger.cursor.field if self.mode == "cursor" and self.trigger.cursor else None
        try:
            return await poll_documents(self.resources, self.mongo, field, self.cursor, self.masker)
        except Exception as exc:
            raise PollError(str(exc)) from None

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.resources.aclose()
