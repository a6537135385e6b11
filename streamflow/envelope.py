"""The envelope: what travels on every StreamFlow topic.

An envelope carries one execution (one trigger event travelling through a flow) from
step to step. It is plain data; ``encode``/``decode`` turn it into bytes with orjson
(default) or Avro (``schemas/envelope.avsc``; the payload and step results travel as
JSON text inside the Avro record because their shape is the user's). Both go through
``streamflow.exactjson``: integers of any size and ``Decimal`` values round-trip exactly.
"""

from __future__ import annotations

import io
import time
import uuid
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

import orjson

from streamflow import exactjson
from streamflow.errors import PoisonMessageError

Encoding = Literal["json", "avro"]
ENVELOPE_VERSION = 1


def new_execution_id() -> str:
    return uuid.uuid4().hex


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(slots=True)
class Envelope:
    execution_id: str
    integration: str
    flow: str
    step: str
    payload: Any
    instance: str = ""
    attempt: int = 1
    created_ms: int = field(default_factory=now_ms)
    trace: str = ""
    trigger: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    saga: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": ENVELOPE_VERSION,
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
            "payload": self.payload,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        try:
            return cls(
                execution_id=d["execution_id"],
                integration=d["integration"],
                flow=d["flow"],
                step=d["step"],
                payload=d.get("payload"),
                instance=d.get("instance", ""),
                attempt=d.get("attempt", 1),
                created_ms=d.get("created_ms", 0),
                trace=d.get("trace", ""),
                trigger=d.get("trigger") or {},
                steps=d.get("steps") or {},
                saga=d.get("saga") or [],
                meta=d.get("meta") or {},
            )
        except (KeyError, TypeError) as exc:
            raise PoisonMessageError(f"not a StreamFlow envelope: missing {exc}") from exc


def encode(env: Envelope, encoding: Encoding = "json") -> bytes:
    if encoding == "json":
        return exactjson.dumps(env.to_dict())  # numbers exact (big ints, Decimal)
    return _encode_avro(env)


def decode(data: bytes, encoding: Encoding = "json") -> Envelope:
    if encoding == "avro":
        return _decode_avro(data)
    try:
        d = exactjson.loads(data)
    except exactjson.JSONDecodeError as exc:
        raise PoisonMessageError(f"envelope is not valid JSON: {exc}") from exc
    if not isinstance(d, dict):
        raise PoisonMessageError("envelope is not a JSON object")
    return Envelope.from_dict(d)


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
