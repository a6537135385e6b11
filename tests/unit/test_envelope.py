"""The envelope: JSON (payload as the value, metadata in the ``sf-env`` header) and Avro
round-trips, the format before the header, the lazy payload, the Avro schema, and poison
detection."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest

from streamflow.envelope import ENVELOPE_VERSION, Encoding, Envelope, decode, encode
from streamflow.errors import PoisonMessageError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "envelope.avsc"
PACKAGED_SCHEMA = ROOT / "streamflow" / "envelope.avsc"
ENCODINGS: list[Encoding] = ["json", "avro"]


def schema_from_file() -> Any:
    return fastavro.parse_schema(orjson.loads(SCHEMA_FILE.read_text()))


def full_envelope() -> Envelope:
    return Envelope(
        execution_id="0f3c9a2e5b7d4c1a8e6f2b9d0c4a7e13",
        integration="acme-erp",
        flow="sync-customers",
        step="push",
        instance="cust-42",
        attempt=3,
        created_ms=1_718_000_000_123,
        trace="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        trigger={"type": "webhook", "headers": {"x-acme": "1"}, "received_ms": 1},
        payload={
            "customer": {"id": 7, "first_name": "Zoë", "last_name": "Ødegård", "tags": ["a", "b"]},
            "emoji": "✓ 🚀",
            "cjk": "顧客",
            "amount": 12.5,
            "big": 2**62,
            "negative": -1,
            "flag": False,
            "nothing": None,
            "empty": {},
            "list": [1, [2, [3, {"deep": [None, True]}]]],
        },
        steps={"to-progix": {"externalId": 7}, "push": {"status": 201, "body": {"id": "x"}}},
        saga=[{"step": "push", "compensate": {"url": "http://h/customers/x"}}, {"step": "b"}],
        meta={"execution_id": "e", "started_ms": 5, "labels": ["ü"]},
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_keeps_every_field(encoding: Encoding) -> None:
    env = full_envelope()
    value, headers = encode(env, encoding)
    assert isinstance(value, bytes)
    back = decode(value, headers, encoding)
    assert back == env
    assert back.to_dict() == env.to_dict()


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "payload",
    [None, 0, "", "just text ünïcödé", [1, "two", None], {"a": {"b": {"c": [{"d": "é"}]}}}, 1.5],
)
def test_round_trip_of_any_payload_shape(encoding: Encoding, payload: Any) -> None:
    env = Envelope(execution_id="e1", integration="i", flow="f", step="s", payload=payload)
    back = decode(*encode(env, encoding), encoding)
    assert back.payload == payload
    assert type(back.payload) is type(payload)
    assert back == env


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_defaults_survive_a_round_trip(encoding: Encoding) -> None:
    env = Envelope(execution_id="e1", integration="i", flow="f", step="s", payload=None)
    back = decode(*encode(env, encoding), encoding)
    assert (back.instance, back.attempt, back.trace) == ("", 1, "")
    assert (back.trigger, back.steps, back.saga, back.meta) == ({}, {}, [], {})
    assert back.created_ms == env.created_ms > 0


def test_to_dict_is_the_versioned_whole_envelope() -> None:
    d = full_envelope().to_dict()
    assert d["v"] == ENVELOPE_VERSION == 1
    assert d["payload"]["customer"]["first_name"] == "Zoë"
    assert set(d) == {
        "v",
        "execution_id",
        "integration",
        "flow",
        "instance",
        "step",
        "attempt",
        "created_ms",
        "trace",
        "trigger",
        "steps",
        "saga",
        "meta",
        "payload",
    }


def test_json_decoding_fills_defaults_for_optional_fields() -> None:
    data = orjson.dumps({"execution_id": "e", "integration": "i", "flow": "f", "step": "s"})
    env = decode(data, None)
    assert env.payload is None
    assert (env.instance, env.attempt, env.created_ms, env.trace) == ("", 1, 0, "")
    assert (env.trigger, env.steps, env.saga, env.meta) == ({}, {}, [], {})


def test_json_decoding_turns_null_collections_into_empty_ones() -> None:
    data = orjson.dumps(
        {
            "execution_id": "e",
            "integration": "i",
            "flow": "f",
            "step": "s",
            "steps": None,
            "saga": None,
            "meta": None,
            "trigger": None,
        }
    )
    env = decode(data, [])
    assert (env.trigger, env.steps, env.saga, env.meta) == ({}, {}, [], {})


# --- the Avro schema --------------------------------------------------------------------


def test_schema_file_parses_and_is_the_packaged_one() -> None:
    schema = schema_from_file()
    assert schema["name"] == "io.streamflow.Envelope"
    names = [f["name"] for f in schema["fields"]]
    assert names[:2] == ["v", "execution_id"]
    assert set(names) == set(full_envelope().to_dict())
    # envelope.py reads the copy shipped inside the package: it must not drift
    assert PACKAGED_SCHEMA.read_text() == SCHEMA_FILE.read_text()


def test_avro_bytes_follow_schemas_envelope_avsc() -> None:
    schema = schema_from_file()
    env = full_envelope()
    value, headers = encode(env, "avro")
    assert headers == []  # the whole envelope is the Avro record
    record: Any = fastavro.schemaless_reader(io.BytesIO(value), schema, None)
    assert record["v"] == 1
    assert record["execution_id"] == env.execution_id
    assert record["attempt"] == 3
    assert record["created_ms"] == env.created_ms
    # user-shaped parts travel as JSON text
    assert orjson.loads(record["payload"]) == env.payload
    assert orjson.loads(record["saga"]) == env.saga

    # and a record written by any Avro writer with that schema decodes
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        schema,
        {
            "execution_id": "x",
            "integration": "i",
            "flow": "f",
            "step": "s",
            "created_ms": 9,
            "trigger": "{}",
            "steps": '{"a":1}',
            "saga": "[]",
            "meta": "{}",
            "payload": '{"k":"ü"}',
        },
    )
    back = decode(buf.getvalue(), None, "avro")
    assert (back.execution_id, back.attempt, back.instance, back.created_ms) == ("x", 1, "", 9)
    assert back.steps == {"a": 1}
    assert back.payload == {"k": "ü"}


def test_avro_is_not_json() -> None:
    env = full_envelope()
    with pytest.raises(PoisonMessageError):
        decode(*encode(env, "avro"), "json")
    assert encode(env, "avro") != encode(env, "json")


# --- poison ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"", b"{", b"not json", b"\xff\xfe\x00", b'{"execution_id": "e",}', b"{'a': 1}"]
)
def test_invalid_json_is_poison(data: bytes) -> None:
    with pytest.raises(PoisonMessageError, match="not valid JSON"):
        decode(data, None)


@pytest.mark.parametrize("data", [b"[1, 2]", b'"envelope"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_poison(data: bytes) -> None:
    with pytest.raises(PoisonMessageError, match="not a JSON object"):
        decode(data, None)


@pytest.mark.parametrize("missing", ["execution_id", "integration", "flow", "step"])
def test_missing_required_fields_are_poison(missing: str) -> None:
    d = {"execution_id": "e", "integration": "i", "flow": "f", "step": "s", "payload": 1}
    del d[missing]
    with pytest.raises(PoisonMessageError, match=f"not a StreamFlow envelope: missing '{missing}'"):
        decode(orjson.dumps(d), None)
    with pytest.raises(PoisonMessageError):
        Envelope.from_dict(d)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xff\xff\xff",
        b"\x02",
        b"\x02\x02x",
        orjson.dumps({"execution_id": "e"}),
        bytes(range(256)),
    ],
)
def test_garbage_avro_is_poison(data: bytes) -> None:
    with pytest.raises(PoisonMessageError, match="not valid Avro"):
        decode(data, None, "avro")


def test_avro_with_non_json_text_fields_is_poison() -> None:
    schema = schema_from_file()
    buf = io.BytesIO()
    fastavro.schemaless_writer(
        buf,
        schema,
        {
            "execution_id": "x",
            "integration": "i",
            "flow": "f",
            "step": "s",
            "created_ms": 9,
            "trigger": "{}",
            "steps": "{}",
            "saga": "[]",
            "meta": "{}",
            "payload": "{not json",
        },
    )
    with pytest.raises(PoisonMessageError, match="not valid Avro"):
        decode(buf.getvalue(), None, "avro")


def test_truncated_avro_is_poison() -> None:
    data = encode(full_envelope(), "avro").value
    with pytest.raises(PoisonMessageError):
        decode(data[: len(data) // 2], None, "avro")
