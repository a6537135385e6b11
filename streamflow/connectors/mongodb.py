"""MongoDB (PyMongo's ``AsyncMongoClient``): the ``mongodb`` connection and step, and the
documents behind the ``poll`` trigger's ``mongodb`` source.

Operations: ``find`` / ``find_one`` (filter, projection, sort, skip, limit), ``insert_one``
/ ``insert_many``, ``update_one`` / ``update_many`` (an update document of ``$``
operators, optionally an upsert), ``replace_one``, ``delete_one`` / ``delete_many`` and
``aggregate`` (a pipeline). Filters, updates and pipelines are documents whose leaves may
be templates; **a value coming from the event never becomes an operator**: a template
that renders a mapping with a key starting with ``$`` fails the event (``PoisonMessageError``)
instead of turning ``{email: "${payload.email}"}`` into ``{email: {$ne: null}}``.

One client per URL and App (``StepContext.resources``); PyMongo pools its connections per
server (``max_pool_size``, ``min_pool_size``, ``max_idle_time``, ``acquire_timeout``).

Failures: network errors, server selection timeouts, a full pool, write-concern errors and
refused logins are ``RetriableError``; a duplicate key, a document the server refuses, a
malformed query and an operation the server does not implement are ``PoisonMessageError``.
Messages never carry the URL's password. Documents come back as JSON: ObjectId -> hex
string, dates -> ISO 8601 text (UTC), binary -> base64, Decimal128 -> text.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from streamflow.connectors.connections import ConnectedStep, FieldsOf
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, Resources, StepContext
from streamflow.topology.expressions import Template, compile_value
from streamflow.topology.models import ConnectionConfig, Duration, Secret
from streamflow.topology.registry import (
    connection_type,
    step_type,
)
from streamflow.util.secrets import Masker, safe_dsn

_KINDS = ("mongodb",)
Operation = Literal[
    "find",
    "find_one",
    "insert_one",
    "insert_many",
    "update_one",
    "update_many",
    "replace_one",
    "delete_one",
    "delete_many",
    "aggregate",
]
_RETRIABLE_CODES = {6, 7, 50, 89, 91, 189, 262, 11600, 11602, 13435, 13436, 10107, 18, 13}


@connection_type("mongodb", category="database", since="0.1.0")
class MongoConnection(ConnectionConfig):
    """A MongoDB deployment (PyMongo's async client); for `mongodb` steps and `poll` triggers."""

    type: Literal["mongodb"]
    url: Annotated[str, Secret] = Field(
        description="mongodb://user:password@host:27017/db?authSource=admin"
    )
    database: str | None = Field(None, description="default: the database named in the URL")
    max_pool_size: int | None = Field(
        None, ge=1, le=10_000, description="connections per server (PyMongo default 100)"
    )
    min_pool_size: int | None = Field(None, ge=0, le=10_000, description="kept open (default 0)")
    max_idle_time: Duration | None = Field(
        None, description="close pooled connections idle this long (default: never)"
    )
    acquire_timeout: Duration | None = Field(
        None, description="wait this long for a free pooled connection (default: the timeout)"
    )
    connect_timeout: Duration | None = Field(
        None, description="connect and select a server (default 10s)"
    )
    timeout: Duration | None = Field(None, description="whole operation (default 30s)")


def mongo_fields(conn: ConnectionConfig) -> dict[str, Any]:
    assert isinstance(conn, MongoConnection)
    return conn.model_dump(exclude={"type"}, exclude_none=True)


# --------------------------------------------------------------------------- client


def client_options(
    max_pool_size: int | None = None,
    min_pool_size: int | None = None,
    max_idle_time: float | None = None,
    acquire_timeout: float | None = None,
    connect_timeout: float | None = None,
) -> dict[str, Any]:
    """PyMongo keyword options of the pool settings (only those set)."""
    opts: dict[str, Any] = {"tz_aware": True, "appname": "streamflow"}
    connect = connect_timeout if connect_timeout is not None else 10.0
    opts["serverSelectionTimeoutMS"] = int(connect * 1000)
    opts["connectTimeoutMS"] = int(connect * 1000)
    if max_pool_size is not None:
        opts["maxPoolSize"] = max_pool_size
    if min_pool_size is not None:
        opts["minPoolSize"] = min_pool_size
    if max_idle_time is not None:
        opts["maxIdleTimeMS"] = int(max_idle_time * 1000)
    if acquire_timeout is not None:
        opts["waitQueueTimeoutMS"] = int(acquire_timeout * 1000)
    return opts


async def mongo_database(
    resources: Resources, url: str, database: str | None, options: Mapping[str, Any]
) -> Any:
    """The App-wide client of ``url`` (created on first use), then its database."""
    from pymongo import AsyncMongoClient
    from pymongo.errors import ConfigurationError as MongoConfigError

    key = f"mongodb\x00{url}\x00{sorted(options.items())}"

    async def create() -> Any:
        try:
            return AsyncMongoClient(url, **options)
        except MongoConfigError as exc:
            raise ConfigError(f"{safe_dsn(url)}: {exc}") from None

    async def close(client: Any) -> None:
        await client.close()

    client = await resources.aget(key, create, close)
    if database:
        return client[database]
    try:
        return client.get_default_database()
    except MongoConfigError:
        raise ConfigError(
            f"{safe_dsn(url)}: no database: set `database` or name it in the URL"
        ) from None


def classify(exc: BaseException, where: str, masker: Masker) -> Exception:
    """A PyMongo failure -> RetriableError or PoisonMessageError (masked)."""
    from bson.errors import BSONError
    from pymongo import errors

    text = masker.mask(f"{where}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, errors.ConnectionFailure | errors.WriteConcernError):
        return RetriableError(text)
    if isinstance(exc, errors.BulkWriteError):
        codes = {e.get("code") for e in exc.details.get("writeErrors", [])}
        return RetriableError(text) if codes <= _RETRIABLE_CODES else PoisonMessageError(text)
    if isinstance(exc, errors.OperationFailure):
        if exc.code in _RETRIABLE_CODES or exc.has_error_label("RetryableWriteError"):
            return RetriableError(text)
        return PoisonMessageError(text)  # duplicate key, bad query, not implemented, ...
    if isinstance(exc, BSONError | errors.InvalidOperation | errors.InvalidName):
        return PoisonMessageError(text)  # includes a document too large
    if isinstance(exc, TypeError | ValueError | OverflowError):
        return PoisonMessageError(text)
    if isinstance(exc, TimeoutError):
        return RetriableError(text)
    return RetriableError(text)


def to_json(value: Any) -> Any:
    """A BSON value (as PyMongo decodes it) -> what a payload can carry."""
    from bson import Binary, Decimal128, ObjectId, Timestamp

    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, Decimal128 | Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, Binary | bytes):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Timestamp):
        return {"t": value.time, "i": value.inc}
    return str(value)


# --------------------------------------------------------------------------- documents


class SafeDoc:
    """A document whose string leaves may be templates; rendering refuses a template value
    that would bring in operators (a mapping with a ``$`` key) from the event."""

    def __init__(self, doc: Any) -> None:
        self.doc = doc
        self.tree = self._compile(doc)

    @classmethod
    def _compile(cls, doc: Any) -> Any:
        if isinstance(doc, dict):
            return {k: cls._compile(v) for k, v in doc.items()}
        if isinstance(doc, list):
            return [cls._compile(v) for v in doc]
        if isinstance(doc, str) and "${" in doc:
            return compile_value(doc)
        return doc

    def render(self, scope: Mapping[str, Any], where: str) -> Any:
        return self._render(self.tree, scope, where)

    @classmethod
    def _render(cls, node: Any, scope: Mapping[str, Any], where: str) -> Any:
        if isinstance(node, dict):
            return {k: cls._render(v, scope, where) for k, v in node.items()}
        if isinstance(node, list):
            return [cls._render(v, scope, where) for v in node]
        if isinstance(node, Template):
            value = node.render(scope)
            operator = _operator_in(value)
            if operator is not None:
                raise PoisonMessageError(
                    f"{where}: a value from the event holds the operator {operator!r}; "
                    "event data never becomes a query operator"
                )
            return value
        return node


def _operator_in(value: Any) -> str | None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(k, str) and k.startswith("$"):
                return k
            found = _operator_in(v)
            if found is not None:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _operator_in(v)
            if found is not None:
                return found
    return None


def sort_spec(sort: Mapping[str, Any] | None) -> list[tuple[str, int]] | None:
    if not sort:
        return None
    return [(k, 1 if v in (1, "asc", "ascending") else -1) for k, v in sort.items()]


# --------------------------------------------------------------------------- step


class MongoConfig(ConnectedStep):
    """Find, insert, update (upsert), delete or aggregate documents in a MongoDB collection."""

    type: Literal["mongodb"]
    connection: str | None = Field(None, description="a `connections:` entry of type mongodb")
    url: Annotated[str | None, Secret] = Field(
        None, description="mongodb://user:password@host:27017/db"
    )
    database: str | None = Field(None, description="default: the database named in the URL")
    collection: str = Field(min_length=1, description="a template")
    operation: Operation = "find"
    filter: dict[str, Any] = Field(
        default_factory=dict, description="find/update/replace/delete: query document"
    )
    projection: dict[str, Any] | None = Field(None, description="find: fields kept (1) or cut (0)")
    sort: dict[str, Literal[1, -1, "asc", "desc"]] | None = Field(
        None, description="find: field -> 1/asc or -1/desc, in order"
    )
    skip: int = Field(0, ge=0)
    limit: int = Field(1000, ge=0, le=1_000_000, description="find: at most this many (0: all)")
    document: dict[str, Any] | str | None = Field(
        None, description="insert_one/replace_one: the document, or one ${...} giving it"
    )
    documents: str | list[Any] | None = Field(
        None, description="insert_many: ${...} giving a list of documents"
    )
    update: dict[str, Any] | None = Field(
        None, description="update_*: operators, e.g. {$set: {...}, $inc: {n: 1}}"
    )
    upsert: bool = Field(False, description="update_*/replace_one: insert when nothing matches")
    pipeline: list[dict[str, Any]] | None = Field(None, description="aggregate: the stages")
    ordered: bool = Field(True, description="insert_many: stop at the first failing document")
    replace_payload: bool = Field(False, description="the result becomes the payload")
    timeout: Duration = Field(30.0, description="whole operation")
    max_pool_size: int | None = Field(None, ge=1, le=10_000, description="PyMongo default 100")
    min_pool_size: int | None = Field(None, ge=0, le=10_000)
    max_idle_time: Duration | None = None
    acquire_timeout: Duration | None = None
    connect_timeout: Duration | None = Field(None, description="default 10s")
    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return mongo_fields

    @model_validator(mode="after")
    def _complete(self) -> MongoConfig:
        if self.url is None:
            raise ValueError("set url (e.g. ${config.mongo_url}) or connection")
        if "${" not in self.url and not self.url.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError(f"{safe_dsn(self.url)!r} is not a mongodb:// URL")
        op = self.operation
        needs = {
            "insert_one": "document",
            "replace_one": "document",
            "insert_many": "documents",
            "update_one": "update",
            "update_many": "update",
            "aggregate": "pipeline",
        }.get(op)
        if needs is not None and getattr(self, needs) is None:
            raise ValueError(f"operation {op} needs {needs}")
        if op.startswith("update") and self.update is not None:
            plain = [k for k in self.update if not k.startswith("$")]
            if plain:
                raise ValueError(
                    f"update holds {plain[0]!r}: use operators ($set, $inc, ...); "
                    "replace_one replaces a whole document"
                )
        if op in ("delete_many", "update_many") and not self.filter:
            raise ValueError(f"{op} with an empty filter touches every document: give a filter")
        return self


@step_type(
    "mongodb",
    MongoConfig,
    category="database",
    since="0.1.0",
    example="""- id: save
  type: mongodb
  url: ${config.mongo_url}          # or connection: <a mongodb connection>
  collection: orders
  operation: update_one
  filter: {_id: "${payload.id}"}
  update: {$set: {status: "${payload.status}", total: "${payload.total}"}, $inc: {revision: 1}}
  upsert: true""",
)
class MongoStep(AsyncStep):
    def __init__(self, config: MongoConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.url = compile_value(config.url)
        self.collection = compile_value(config.collection)
        self.database = compile_value(config.database)
        self.filter = SafeDoc(config.filter)
        self.update = SafeDoc(config.update)
        self.pipeline = SafeDoc(config.pipeline)
        self.document = compile_value(config.document)
        self.documents = compile_value(config.documents)
        self.options = client_options(
            config.max_pool_size,
            config.min_pool_size,
            config.max_idle_time,
            config.acquire_timeout,
            config.connect_timeout,
        )
        self.masker = Masker()

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        url = str(self.url.render(scope) or "")
        if not url:
            raise ConfigError("the url is empty")
        self.masker.add_dsn(url)
        name = str(self.collection.render(scope) or "")
        database = self.database.render(scope)
        where = f"{safe_dsn(url)} collection {name!r}"
        call = self.call(scope, f"collection {name!r}")
        try:
            db = await mongo_database(
                self.ctx.resources, url, None if database is None else str(database), self.options
            )
            async with asyncio.timeout(self.cfg.timeout):
                result = await call(db[name])
        except TimeoutError:
            raise RetriableError(f"{where}: no answer within {self.cfg.timeout:g}s") from None
        except (PoisonMessageError, RetriableError, ConfigError):
            raise
        except Exception as exc:
            raise classify(exc, where, self.masker) from None
        payload = result if self.cfg.replace_payload else env.payload
        return Outcome(payload, result, note=self.cfg.operation)

    def call(self, scope: Mapping[str, Any], where: str) -> Any:
        """The operation as a coroutine function of the collection (documents rendered)."""
        cfg = self.cfg
        op = cfg.operation
        if op in ("find", "find_one"):
            query = self.filter.render(scope, where)
            limit = 1 if op == "find_one" else cfg.limit

            async def find(coll: Any) -> Any:
                cursor = coll.find(query, cfg.projection, sort=sort_spec(cfg.sort))
                docs = await cursor.skip(cfg.skip).limit(limit).to_list(None)
                rows = [to_json(d) for d in docs]
                if op == "find_one":
                    return rows[0] if rows else None
                return {"documents": rows, "count": len(rows)}

            return find
        if op == "aggregate":
            stages = self.pipeline.render(scope, where)

            async def aggregate(coll: Any) -> Any:
                docs = await (await coll.aggregate(stages)).to_list(None)
                return {"documents": [to_json(d) for d in docs], "count": len(docs)}

            return aggregate
        if op in ("insert_one", "replace_one"):
            doc = self.document.render(scope)
            if not isinstance(doc, Mapping):
                raise PoisonMessageError(f"{where}: document is not a mapping")
            doc = dict(doc)
            if op == "insert_one":

                async def insert_one(coll: Any) -> Any:
                    res = await coll.insert_one(doc)
                    return {"inserted_id": to_json(res.inserted_id)}

                return insert_one
            query = self.filter.render(scope, where)

            async def replace_one(coll: Any) -> Any:
                res = await coll.replace_one(query, doc, upsert=cfg.upsert)
                return _update_result(res)

            return replace_one
        if op == "insert_many":
            docs = self.documents.render(scope)
            if not isinstance(docs, Sequence) or isinstance(docs, str):
                raise PoisonMessageError(f"{where}: documents is not a list")
            if not all(isinstance(d, Mapping) for d in docs):
                raise PoisonMessageError(f"{where}: every document must be a mapping")
            rows = [dict(d) for d in docs]

            async def insert_many(coll: Any) -> Any:
                if not rows:
                    return {"inserted_ids": [], "count": 0}
                res = await coll.insert_many(rows, ordered=cfg.ordered)
                ids = [to_json(i) for i in res.inserted_ids]
                return {"inserted_ids": ids, "count": len(ids)}

            return insert_many
        query = self.filter.render(scope, where)
        if op in ("update_one", "update_many"):
            update = self.update.render(scope, where)

            async def update_docs(coll: Any) -> Any:
                fn = coll.update_one if op == "update_one" else coll.update_many
                return _update_result(await fn(query, update, upsert=cfg.upsert))

            return update_docs

        async def delete(coll: Any) -> Any:
            fn = coll.delete_one if op == "delete_one" else coll.delete_many
            res = await fn(query)
            return {"deleted": res.deleted_count}

        return delete


def _update_result(res: Any) -> dict[str, Any]:
    return {
        "matched": res.matched_count,
        "modified": res.modified_count,
        "upserted_id": to_json(res.upserted_id),
    }


# --------------------------------------------------------------------------- poll source


def cursor_value(value: Any, kind: str) -> Any:
    """The poll cursor (kept as JSON) -> the BSON value compared in the query."""
    if value is None or kind == "json":
        return value
    if kind == "objectid":
        from bson import ObjectId

        return ObjectId(str(value))
    return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))


async def poll_documents(
    resources: Resources,
    source: Mapping[str, Any],
    cursor_field: str | None,
    cursor: Any,
    masker: Masker,
) -> list[Any]:
    """The documents of one poll: ``filter`` and, in cursor mode, ``field >= cursor``,
    sorted by the cursor field, at most ``limit``. ``source`` is the rendered
    ``PollMongo`` (url, database, collection, filter, projection, limit, cursor_type,
    timeout); raises RetriableError/PoisonMessageError/ConfigError."""
    url = source["url"]
    where = f"{safe_dsn(url)} collection {source['collection']!r}"
    query: dict[str, Any] = dict(source["filter"] or {})
    sort = None
    if cursor_field is not None:
        sort = [(cursor_field, 1)]
        if cursor is not None:
            bound = {cursor_field: {"$gte": cursor_value(cursor, source["cursor_type"])}}
            query = {"$and": [query, bound]} if query else bound
    options = client_options(connect_timeout=min(10.0, source["timeout"]))
    try:
        db = await mongo_database(resources, url, source["database"], options)
        async with asyncio.timeout(source["timeout"]):
            found = db[source["collection"]].find(query, source["projection"], sort=sort)
            docs = await found.limit(source["limit"]).to_list(None)
    except TimeoutError:
        raise RetriableError(f"{where}: no answer within {source['timeout']:g}s") from None
    except Exception as exc:
        raise classify(exc, where, masker) from None
    return [to_json(d) for d in docs]
