"""The envelope: what travels on every StreamFlow topic.

An envelope carries one execution (one trigger event travelling through a flow) from
step to step. ``encode``/``decode`` turn it into a Kafka record's value and headers:

- ``encoding: json`` (the default): the record's **value is the payload alone** - the
  user's data as JSON, as a user would produce it - and everything else (execution id,
  flow, step, attempt, instance, times, trace, trigger, step results, saga, meta) travels
  in one header, ``sf-env``, as a compact JSON object (fields at their default are left
  out). A decoded envelope keeps the value's bytes and parses them on the first read of
  ``payload``: a step that never reads it, and a hop that forwards it untouched (a retry,
  a replay, a dead letter), neither parses nor re-encodes it. A payload that is not JSON
  raises ``PayloadError`` (a ``PoisonMessageError``) when first read.
  A record without the header is the whole envelope as one JSON document, the format
  before 0.x: such records, still on step, retry or DLQ topics after an upgrade, decode.
- ``encoding: avro``: the value is the whole envelope as one Avro record
  (``schemas/envelope.avsc``; the payload and step results travel as JSON text inside it
  because their shape is the user's), no header; decoded at once.

Both go through ``streamflow.exactjson``: integers of any size and ``Decimal`` values
round-trip exactly.
"""

from __future__ import annotations

import io
import time
import uuid
from functools import cache
from importlib import resources
from typing import Any, Literal, NamedTuple, Protocol

import orjson

from streamflow import exactjson
from streamflow.errors import PoisonMessageError

Encoding = Literal["json", "avro"]
Headers = list[tuple[str, bytes]]  # as streamflow.transport.base.Headers
ENVELOPE_VERSION = 1
"""The version of the whole-envelope document (Avro, and JSON before the ``sf-env`` header)."""
HEADER = "sf-env"
"""The header holding an envelope's metadata (``encoding: json``)."""
HEADER_VERSION = 2
CARRIED = frozenset({HEADER, "traceparent"})
"""Headers that belong to the envelope: a record forwarded as it is (retry relay, re-keying,
a dead letter of the record as received) keeps them."""

_UNREAD: Any = object()  # the payload has not been parsed from its bytes yet


class PayloadError(PoisonMessageError):
    """The record's value (the payload) is not JSON: raised when the payload is first read."""


def new_execution_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Envelope:
    """One execution's state between steps. ``payload`` is parsed from the record's bytes
    when first read (``PayloadError`` if they are not JSON); assigning it replaces them."""

    __slots__ = (
        "_payload",
        "_raw",
        "attempt",
        "created_ms",
        "execution_id",
        "flow",
        "instance",
        "integration",
        "meta",
        "saga",
        "step",
        "steps",
        "trace",
        "trigger",
    )
    execution_id: str
    integration: str
    flow: str
    step: str
    instance: str
    attempt: int
    created_ms: int
    trace: str
    trigger: dict[str, Any]
    steps: dict[str, Any]
    saga: list[dict[str, Any]]
    meta: dict[str, Any]

    def __init__(
        self,
        execution_id: str,
        integration: str,
        flow: str,
        step: str,
        payload: Any,
        instance: str = "",
        attempt: int = 1,
        created_ms: int | None = None,
        trace: str = "",
        trigger: dict[str, Any] | None = None,
        steps: dict[str, Any] | None = None,
        saga: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.execution_id = execution_id
        self.integration = integration
        self.flow = flow
        self.step = step
        self._payload = payload
        self._raw: bytes | None = None
        self.instance = instance
        self.attempt = attempt
        self.created_ms = now_ms() if created_ms is None else created_ms
        self.trace = trace
        self.trigger = {} if trigger is None else trigger
        self.steps = {} if steps is None else steps
        self.saga = [] if saga is None else saga
        self.meta = {} if meta is None else meta

    @property
    def payload(self) -> Any:
        p = self._payload
        if p is _UNREAD:
            raw = self._raw
            assert raw is not None
            try:
                p = exactjson.loads(raw)
            except exactjson.JSONDecodeError as exc:
                raise PayloadError(f"the payload is not valid JSON: {exc}") from None
            self._payload = p
        self._raw = None  # whoever reads it may change it in place: encode it again
        return p

    @payload.setter
    def payload(self, value: Any) -> None:
        self._payload = value
        self._raw = None

    @property
    def raw_payload(self) -> bytes | None:
        """The payload's bytes as they arrived while it was never read, else None."""
        return self._raw

    def reuse_bytes(self, raw: bytes) -> None:
        """``raw`` is the JSON text the payload was parsed from: until ``payload`` is read
        again, ``encode`` writes it as it is instead of encoding the payload again."""
        self._raw = raw

    def metadata(self) -> dict[str, Any]:
        """Every field but the payload (as ``to_dict``, without ``v``)."""
        return {
            "execution_id": self.execution_id,
            "integration": self.integration,
            "flow": self.flow,
            "instance": self.instance,
            "step": self.step,
            "attempt": self.attempt,
            "created_ms": self.created_ms,
            "trace": self.trace,
            "trigger": self.trigger,
            "steps": self.steps,
            "saga": self.saga,
            "meta": self.meta,
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole envelope as one document (reads the payload)."""
        return {"v": ENVELOPE_VERSION, **self.metadata(), "payload": self.payload}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        try:
            return cls(
                d["execution_id"],
                d["integration"],
                d["flow"],
                d["step"],
                d.get("payload"),
                d.get("instance", ""),
                d.get("attempt", 1),
                d.get("created_ms", 0),
                d.get("trace", ""),
                d.get("trigger") or {},
                d.get("steps") or {},
                d.get("saga") or [],
                d.get("meta") or {},
            )
        except (KeyError, TypeError) as exc:
            raise PoisonMessageError(f"not a StreamFlow envelope: missing {exc}") from exc

    def shown(self) -> dict[str, Any]:
        """``to_dict`` for people (CLI, console: a document nested in another): a payload
        that is not JSON, or too deep to show inside that document, is shown as
        ``payload_error`` and ``payload_raw`` (its first 2,000 bytes as text)."""
        head = {"v": ENVELOPE_VERSION, **self.metadata()}
        try:
            payload = self.payload
            exactjson.dumps({"outer": {"envelope": {"payload": payload}}})  # fits shown
        except PayloadError as exc:
            why, raw = str(exc), self._raw or b""
        except (TypeError, ValueError) as exc:  # deeper than the JSON encoder writes
            why = f"the payload cannot be shown inside the envelope: {exc}"
            try:
                raw = exactjson.dumps(payload)
            except (TypeError, ValueError):
                raw = b""
        else:
            return {**head, "payload": payload}
        text = raw[:2000].decode("utf-8", "replace")
        return {**head, "payload_error": why, "payload_raw": text}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Envelope):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        shown = "<unread>" if self._payload is _UNREAD else repr(self._payload)
        return (
            f"Envelope(execution_id={self.execution_id!r}, flow={self.flow!r}, "
            f"step={self.step!r}, attempt={self.attempt}, payload={shown})"
        )


class Wire(NamedTuple):
    """An envelope as a Kafka record: its value and the headers that go with it."""

    value: bytes
    headers: Headers


def encode(env: Envelope, encoding: Encoding = "json") -> Wire:
    """``env`` as a record's value and headers (see the module's docstring). Raises
    ``TypeError``/``ValueError`` when a value has no JSON form (e.g. nested too deeply)."""
    if encoding == "json":
        raw = env._raw
        value = raw if raw is not None else exactjson.dumps(env._payload)
        return Wire(value, [(HEADER, exactjson.dumps(_header(env)))])
    return Wire(_encode_avro(env), [])


def _header(env: Envelope) -> dict[str, Any]:
    """The ``sf-env`` object: fields at their default are left out (cheaper per hop)."""
    d: dict[str, Any] = {
        "v": HEADER_VERSION,
        "execution_id": env.execution_id,
        "integration": env.integration,
        "flow": env.flow,
        "step": env.step,
        "created_ms": env.created_ms,
    }
    if env.attempt != 1:
        d["attempt"] = env.attempt
    if env.instance:
        d["instance"] = env.instance
    if env.trace:
        d["trace"] = env.trace
    if env.trigger:
        d["trigger"] = env.trigger
    if env.steps:
        d["steps"] = env.steps
    if env.saga:
        d["saga"] = env.saga
    if env.meta:
        d["meta"] = env.meta
    return d


def header_of(headers: Headers | None) -> bytes | None:
    """The ``sf-env`` header's value among ``headers``, or None."""
    if headers:
        for k, v in headers:
            if k == HEADER:
                return v
    return None


def carried(headers: Headers | None) -> Headers:
    """The envelope's own headers among ``headers`` (``CARRIED``)."""
    return [(k, v) for k, v in headers if k in CARRIED] if headers else []


def decode(value: bytes, headers: Headers | None, encoding: Encoding = "json") -> Envelope:
    """The envelope of a record (its value and headers). Raises ``PoisonMessageError`` when
    the record is not an envelope; with ``encoding: json`` the payload is parsed later,
    on first read (``PayloadError``)."""
    if encoding == "avro":
        return _decode_avro(value)
    head = header_of(headers)
    if head is None:  # the whole envelope in the value (the format before the header)
        return Envelope.from_dict(_object(value, "envelope"))
    d = _object(head, f"header {HEADER}")
    env = _NEW(Envelope)  # the slots set here, not through __init__ (once per hop)
    try:
        env.execution_id = d["execution_id"]
        env.integration = d["integration"]
        env.flow = d["flow"]
        env.step = d["step"]
    except KeyError as exc:
        raise PoisonMessageError(f"not a StreamFlow envelope: missing {exc}") from None
    env._payload = _UNREAD
    env._raw = value
    get = d.get
    env.instance = get("instance", "")
    env.attempt = get("attempt", 1)
    env.created_ms = get("created_ms", 0)
    env.trace = get("trace", "")
    env.trigger = get("trigger") or {}
    env.steps = get("steps") or {}
    env.saga = get("saga") or []
    env.meta = get("meta") or {}
    return env


_NEW = object.__new__


class RecordLike(Protocol):
    """A transport ``Record`` or anything else with a record's value and headers."""

    @property
    def value(self) -> bytes: ...

    @property
    def headers(self) -> Headers: ...


def decode_record(rec: RecordLike, encoding: Encoding = "json") -> Envelope:
    """``decode`` of a transport ``Record`` (or anything with ``value`` and ``headers``)."""
    return decode(rec.value, rec.headers, encoding)


def _object(data: bytes, what: str) -> dict[str, Any]:
    try:
        d = exactjson.loads(data)
    except exactjson.JSONDecodeError as exc:
        raise PoisonMessageError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise PoisonMessageError(f"{what} is not a JSON object")
    return d


_JSON_FIELDS = ("trigger", "steps", "saga", "meta", "payload")


@cache
def _avro_schema() -> Any:
    import fastavro

    text = resources.files("streamflow").joinpath("envelope.avsc").read_text()
    return fastavro.parse_schema(orjson.loads(text))


def _encode_avro(env: Envelope) -> bytes:
    import fastavro

    d = env.to_dict()
    for k in _JSON_FIELDS:
        d[k] = exactjson.dumps_text(d[k])
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _avro_schema(), d)
    return buf.getvalue()


def _decode_avro(data: bytes) -> Envelope:
    import fastavro

    try:
        d = fastavro.schemaless_reader(io.BytesIO(data), _avro_schema(), None)
        assert isinstance(d, dict)
        for k in _JSON_FIELDS:
            d[k] = exactjson.loads(d[k])
    except Exception as exc:
        raise PoisonMessageError(f"envelope is not valid Avro: {exc}") from exc
    return Envelope.from_dict(d)
