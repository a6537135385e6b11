"""Config models of the trigger types (what starts a flow).

A trigger's fields may use ``${config.*}`` and ``${env.*}`` (rendered once, when the
trigger starts); fields marked ``Secret`` may use secret config variables. A file
a trigger names (a webhook's JSON Schema, a watched folder, an SQLite database) is
relative to the topology file's folder. What runs each type lives in ``streamflow.runtime``
(``gateway``/``webhook``, ``schedule``, ``poller``, ``filewatch``); see docs/triggers.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamflow import exactjson
from streamflow.connectors.paginate import Paginate
from streamflow.connectors.stores import Idempotency
from streamflow.errors import ValidationFailed
from streamflow.topology.models import Duration, Model, Secret, TriggerConfig
from streamflow.topology.registry import trigger_type
from streamflow.topology.source import decode_utf8, safe_load

_HEADER = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


def _directory(info: ValidationInfo) -> Path:
    """The topology file's folder (the working directory outside a topology)."""
    ctx = info.context if isinstance(info.context, dict) else {}
    directory = ctx.get("directory")
    return Path(directory) if directory is not None else Path.cwd()


def _header_name(value: str) -> str:
    if not _HEADER.match(value):
        raise ValueError(f"{value!r} is not an HTTP header name")
    return value


@trigger_type("manual", category="lifecycle", since="0.1.0")
class ManualTrigger(TriggerConfig):
    """Events come from `streamflow run --input` or `streamflow produce`."""

    type: Literal["manual"]


# --------------------------------------------------------------------------- webhook


class WebhookSignature(Model):
    """HMAC of the request body, sent by the caller in a header."""

    header: str = Field(description="request header carrying the signature")
    secret: str = Field(description="shared secret, usually ${config.<secret variable>}")
    algorithm: Literal["hmac-sha256", "hmac-sha1"] = "hmac-sha256"
    encoding: Literal["hex", "base64"] = Field("hex", description="how the digest is written")
    prefix: str = Field("", description="text before the digest, e.g. 'sha256='")
    timestamp_header: str | None = Field(
        None,
        description="header with the send time (Unix seconds); the signed content is then "
        "'<timestamp>.<body>' and requests outside `tolerance` are refused",
    )
    tolerance: Duration = Field(300.0, description="accepted clock difference (replay window)")

    @field_validator("header", "timestamp_header")
    @classmethod
    def _names(cls, v: str | None) -> str | None:
        return v if v is None else _header_name(v)


class WebhookAuth(Model):
    """A bearer token (`Authorization: Bearer …`) or an API key in a header."""

    type: Literal["bearer", "api_key"]
    token: str | None = Field(None, description="bearer: the expected token")
    header: str = Field("X-API-Key", description="api_key: the header carrying the key")
    value: str | None = Field(None, description="api_key: the expected key")

    @model_validator(mode="after")
    def _complete(self) -> WebhookAuth:
        if self.type == "bearer" and not self.token:
            raise ValueError("auth type bearer needs `token`")
        if self.type == "api_key" and not self.value:
            raise ValueError("auth type api_key needs `value`")
        _header_name(self.header)
        return self


@trigger_type(
    "webhook",
    category="http",
    since="0.1.0",
    example="""trigger:
  type: webhook
  signature: {header: X-Signature, secret: "${config.webhook_secret}", prefix: "sha256=",
              timestamp_header: X-Timestamp, tolerance: 5m}
  schema: schemas/order.json     # 422 with the validation errors
  max_body: 256000               # 413 above""",
)
class WebhookTrigger(TriggerConfig):
    """POST /webhooks/<integration>/<flow>: each accepted request starts an execution."""

    type: Literal["webhook"]
    methods: list[Literal["POST", "PUT", "PATCH", "GET", "DELETE"]] = ["POST"]
    signature: Annotated[WebhookSignature | None, Secret] = None
    auth: Annotated[WebhookAuth | None, Secret] = Field(
        None, description="bearer token or API key check"
    )
    schema_: dict[str, Any] | str | None = Field(
        None,
        alias="schema",
        description="JSON Schema of the body, inline or a file (JSON/YAML) under the "
        "topology's folder, e.g. schemas/order.json; failures answer 422",
    )
    max_body: int = Field(1_048_576, ge=1, description="bytes; larger requests get 413")
    response: Literal["async", "sync"] = Field(
        "async",
        description="async: 202 once the event is on the broker; sync: wait for the "
        "execution to end (up to `timeout`) and answer with its output",
    )
    timeout: Duration = Field(30.0, description="sync: how long to wait for the execution")
    idempotency: Idempotency | None = Field(
        default_factory=Idempotency,
        description="Idempotency-Key: a repeated key within ttl (24h) runs once; {ttl, store: "
        "memory|redis, connection}; null: every request runs",
    )

    @field_validator("schema_", mode="after")
    @classmethod
    def _schema(cls, v: dict[str, Any] | str | None, info: ValidationInfo) -> Any:
        """A schema file is read now (errors point at the YAML); the model keeps the dict."""
        if v is None:
            return None
        if isinstance(v, str):
            directory = _directory(info).resolve()
            path = (directory / v).resolve()
            if not path.is_relative_to(directory):
                raise ValueError(f"schema file {v} is outside the topology's folder")
            try:  # YAML with the topology's limits (nesting, aliases); both must be UTF-8
                text = decode_utf8(path.read_bytes(), str(path))
                v = exactjson.loads(text) if path.suffix == ".json" else safe_load(text, str(path))
            except exactjson.JSONDecodeError as exc:
                raise ValueError(f"schema file {v} is not JSON: {exc}") from None
            except OSError as exc:
                raise ValueError(f"cannot read schema file {v}: {exc.strerror}") from None
            except ValidationFailed as exc:
                raise ValueError(f"cannot read schema file: {exc}") from None
            if not isinstance(v, dict):
                raise ValueError(f"schema file {path.name} does not hold a JSON Schema object")
        from jsonschema import SchemaError, validators

        try:
            validators.validator_for(v).check_schema(v)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return v


# --------------------------------------------------------------------------- schedule


@trigger_type(
    "schedule",
    category="time",
    since="0.1.0",
    example="""trigger: {type: schedule, cron: "0 6 * * 1-5", timezone: Asia/Tokyo}
trigger: {type: schedule, every: 30s, payload: {report: daily}}""",
)
class ScheduleTrigger(TriggerConfig):
    """Fires on a cron expression (with time zone) or a fixed interval, once per tick across every gateway process."""  # noqa: E501

    type: Literal["schedule"]
    cron: str | None = Field(None, description="5 fields (minute hour day month weekday)")
    every: Duration | None = Field(
        None, description="fixed interval (>= 1s), aligned to the Unix epoch: 1h fires hourly"
    )
    timezone: str = Field("UTC", description="time zone of the cron expression")
    payload: Any = Field(None, description="the event (default: {tick, epoch})")
    catch_up: int = Field(
        1,
        ge=0,
        le=10_000,
        description="after downtime or a leader change, fire at most this many missed "
        "ticks (the latest); older missed ticks are skipped and logged",
    )

    @model_validator(mode="after")
    def _when(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule has exactly one of `cron` or `every`")
        if self.every is not None and self.every < 1:
            raise ValueError("`every` is at least 1s")
        if self.cron is not None:
            from croniter import croniter

            if len(self.cron.split()) != 5 and not self.cron.startswith("@"):
                raise ValueError(
                    f"cron {self.cron!r} needs 5 fields: minute hour day-of-month month weekday"
                )
            if not croniter.is_valid(self.cron):
                raise ValueError(f"{self.cron!r} is not a valid cron expression")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        return self


# --------------------------------------------------------------------------- kafka


@trigger_type("kafka", category="messaging", since="0.1.0")
class KafkaTrigger(TriggerConfig):
    """Consume an external Kafka topic into the flow."""

    type: Literal["kafka"]
    topic: str
    group: str | None = Field(
        None, description="consumer group (default: the flow's trigger agent)"
    )
    format: Literal["json", "text", "bytes"] = "json"


# --------------------------------------------------------------------------- poll


class PollHttp(Model):
    """GET (or POST) a JSON endpoint; the records are a list in the response."""

    url: str
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict, description="query parameters")
    items: str | None = Field(
        None, description="dotted path to the list in the response, e.g. data.items"
    )
    timeout: Duration = 30.0
    paginate: Paginate | None = Field(
        None,
        description="read every page at each poll: style link (Link header), next, cursor, "
        "page, offset; see the http step",
    )
    emit: Literal["record", "page"] = Field(
        "record", description="page: one event per page with its new records {page, items}"
    )


class PollSql(Model):
    """A query on PostgreSQL (postgresql://…), MySQL/MariaDB (mysql://…) or SQLite
    (sqlite:///path); one record per row."""

    dsn: str | None = Field(
        None, description="or `connection:` (a postgres/mysql/sqlite connection)"
    )
    connection: str | None = None
    query: str = Field(description="may use :cursor (the current cursor value)")
    timeout: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _from_connection(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("connection"), str):
            return data
        ctx = info.context if isinstance(info.context, dict) else {}
        conn = (ctx.get("connections") or {}).get(data["connection"])
        if conn is None or conn.type not in ("postgres", "mysql", "sqlite"):
            raise ValueError(f"unknown postgres/mysql/sqlite connection '{data['connection']}'")
        dsn = getattr(conn, "dsn", None)
        if conn.type == "sqlite":
            path = Path(conn.path)
            if "${" not in conn.path and not path.is_absolute():
                path = _directory(info) / path
            dsn = f"sqlite:///{path}"
        return {**data, "dsn": data.get("dsn") or dsn}

    @model_validator(mode="after")
    def _dsn(self) -> PollSql:
        if not self.dsn:
            raise ValueError("sql needs `dsn` or `connection`")
        from streamflow.errors import ConfigError
        from streamflow.util.sqldb import check_dsn

        try:
            check_dsn(self.dsn, {})  # a literal DSN: its database must be supported
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self


class PollMongo(Model):
    """A MongoDB collection (PyMongo's async client); one record per document."""

    url: str | None = Field(None, description="or `connection:` (a mongodb connection)")
    connection: str | None = None
    database: str | None = Field(None, description="default: the database named in the URL")
    collection: str
    filter: dict[str, Any] = Field(default_factory=dict, description="query document")
    projection: dict[str, Any] | None = None
    limit: int = Field(1000, ge=1, le=100_000, description="documents per poll")
    cursor_type: Literal["json", "objectid", "date"] = Field(
        "json",
        description="how the cursor is compared: as its JSON value (numbers, text), as an "
        "ObjectId (cursor field _id) or as a date (ISO text -> BSON date)",
    )
    timeout: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _from_connection(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("connection"), str):
            return data
        ctx = info.context if isinstance(info.context, dict) else {}
        conn = (ctx.get("connections") or {}).get(data["connection"])
        if conn is None or conn.type != "mongodb":
            raise ValueError(f"unknown mongodb connection '{data['connection']}'")
        return {
            **data,
            "url": data.get("url") or conn.url,
            "database": data.get("database") or conn.database,
        }

    @model_validator(mode="after")
    def _url(self) -> PollMongo:
        if not self.url:
            raise ValueError("mongodb needs `url` or `connection`")
        return self


class PollCursor(Model):
    """Emit records whose `field` is greater than the last emitted one."""

    field: str = Field(description="record field holding a growing value (id, updated_at)")
    initial: Any = Field(None, description="the cursor before the first poll")
    param: str | None = Field(None, description="http: query parameter carrying the cursor")


@trigger_type(
    "poll",
    category="polling",
    since="0.1.0",
    example="""trigger:
  type: poll
  every: 1m
  http:
    url: ${config.api}/orders
    items: data.items            # the list inside the JSON answer
    headers: {Authorization: "Bearer ${config.token}"}
  cursor: {field: updated_at, param: since}
trigger:
  type: poll
  every: 30s
  sql: {connection: db, query: "SELECT * FROM orders WHERE id > :cursor ORDER BY id"}
  cursor: {field: id, initial: 0}
trigger:
  type: poll
  every: 30s
  mongodb: {connection: mongo, collection: orders, filter: {status: paid}, cursor_type: date}
  cursor: {field: updated_at}    # the query adds updated_at >= cursor, sorted by it""",
)
class PollTrigger(TriggerConfig):
    """Poll an HTTP endpoint, an SQL query or a MongoDB collection; emit each new or changed record once."""  # noqa: E501

    type: Literal["poll"]
    every: Duration = Field(60.0, description="time between polls")
    http: Annotated[PollHttp | None, Secret] = Field(
        None, description="url, method, headers, params, items (path to the list), timeout"
    )
    sql: Annotated[PollSql | None, Secret] = Field(
        None,
        description="dsn (postgresql://…, mysql://… or sqlite:///path) or connection, query, "
        "timeout",
    )
    mongodb: Annotated[PollMongo | None, Secret] = Field(
        None,
        description="url or connection, database, collection, filter, projection, limit, "
        "cursor_type, timeout",
    )
    mode: Literal["cursor", "hash"] | None = Field(
        None, description="cursor (default with `cursor:`) or hash (new/changed content)"
    )
    cursor: PollCursor | None = Field(
        None, description="field (growing: id, updated_at), initial, param (http query name)"
    )
    key: str | None = Field(
        None, description="hash mode: record field identifying a record (changes re-emit it)"
    )
    skip_existing: bool = Field(
        False, description="the first poll only records what exists, emitting nothing"
    )
    expression_roots: ClassVar[frozenset[str]] = frozenset({"response"})  # http.paginate

    @model_validator(mode="after")
    def _source(self) -> PollTrigger:
        sources = [s for s in (self.http, self.sql, self.mongodb) if s is not None]
        if len(sources) != 1:
            raise ValueError("a poll trigger has exactly one of `http`, `sql` or `mongodb`")
        mode = self.effective_mode
        if mode == "cursor" and self.cursor is None:
            raise ValueError("mode cursor needs `cursor: {field: …}`")
        if mode == "hash" and self.cursor is not None:
            raise ValueError("`cursor` is for mode cursor; hash mode uses `key`")
        if (
            self.sql is not None
            and ":cursor" in self.sql.query
            and (self.cursor is None or self.cursor.initial is None)
        ):
            raise ValueError("a query using :cursor needs `cursor.initial` for the first poll")
        if self.every < 0.1:
            raise ValueError("`every` is at least 100ms")
        return self

    @property
    def effective_mode(self) -> Literal["cursor", "hash"]:
        return self.mode or ("cursor" if self.cursor is not None else "hash")


# --------------------------------------------------------------------------- file


class CsvFormat(Model):
    delimiter: str = Field(",", min_length=1, max_length=1)
    quotechar: str = Field('"', min_length=1, max_length=1)
    header: bool = Field(True, description="the first row names the columns")


@trigger_type(
    "file",
    category="storage",
    since="0.1.0",
    example="""trigger:
  type: file
  path: inbox                    # relative to the topology's folder
  pattern: "*.csv"
  format: csv
  split: true                    # one event per row
  ready_suffix: .done            # take orders.csv once orders.csv.done exists""",
)
class FileTrigger(TriggerConfig):
    """Watch a folder: each new file matching `pattern` becomes one event (one per record with `split`), then moves to `processed/`."""  # noqa: E501

    type: Literal["file"]
    path: str = Field(description="the watched folder; relative to the topology's folder")
    pattern: str = Field("*", description="glob of file names, e.g. *.csv")
    recursive: bool = Field(
        False, description="watch subfolders too (not hidden ones, processed_dir, failed_dir)"
    )
    format: Literal["json", "ndjson", "csv", "text", "none"] = Field(
        "json", description="how the content is parsed; none: the payload is the file's facts"
    )
    csv: CsvFormat = Field(
        default_factory=CsvFormat, description="delimiter, quotechar, header (true)"
    )
    split: bool = Field(False, description="one event per record (array item, line, row)")
    every: Duration = Field(1.0, description="time between scans of the folder")
    ready_suffix: str | None = Field(
        None,
        description="take `x.csv` only once `x.csv<suffix>` exists (e.g. .done); without "
        "it a file is taken when its size and time did not change between two scans",
    )
    after: Literal["move", "delete", "keep"] = Field(
        "move", description="what happens to an emitted file (keep: the state topic remembers)"
    )
    processed_dir: str = Field("processed", description="move: where to (inside `path`)")
    failed_dir: str = Field("failed", description="where files that cannot be parsed go")
    max_bytes: int = Field(
        1_000_000, ge=1, description="larger files fail (format none has no limit)"
    )
    encoding: str = "utf-8"

    @field_validator("processed_dir", "failed_dir", mode="after")
    @classmethod
    def _inside(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts or "${" in v:
            raise ValueError(f"{v!r} must be a folder inside path (no '..', not absolute)")
        return v

    @field_validator("path", mode="after")
    @classmethod
    def _folder(cls, v: str, info: ValidationInfo) -> str:
        if "${" in v or Path(v).is_absolute():
            return v
        return str(_directory(info) / v)


@trigger_type("deploy", category="lifecycle", since="0.1.0", example="""trigger: {type: deploy}""")
class DeployTrigger(TriggerConfig):
    """Runs when an instance is deployed (`streamflow instance deploy`): the payload has
    `instance`, `integration`, `version`, `config` (secrets masked) and `webhook_urls`
    (the instance's URL of every webhook flow, by flow name) - e.g. to register them."""

    type: Literal["deploy"]


@trigger_type("remove", category="lifecycle", since="0.1.0", example="""trigger: {type: remove}""")
class RemoveTrigger(TriggerConfig):
    """Runs when an instance is removed (`streamflow instance remove`), with the same
    payload as `deploy` and the instance's config still readable - e.g. to unregister
    its webhooks. The instance's webhooks answer 404 from then on."""

    type: Literal["remove"]
