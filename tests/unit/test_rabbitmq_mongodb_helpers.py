"""Pure helpers of the RabbitMQ and MongoDB connectors (no server needed; the connectors
themselves are tested against real servers in tests/integration)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from bson import Binary, Decimal128, ObjectId

from streamflow.connectors.mongodb import SafeDoc, cursor_value, sort_spec, to_json
from streamflow.connectors.rabbitmq import amqp_value, with_heartbeat
from streamflow.errors import PoisonMessageError
from streamflow.triggers.amqp import parse_body


def test_parse_body_formats() -> None:
    assert parse_body(b'{"a": [1, 2.5, "x"]}', "json") == {"a": [1, 2.5, "x"]}
    assert parse_body("café".encode(), "text") == "café"
    assert parse_body(b"\xff\x00", "bytes") == "ff00"
    assert parse_body(b'{"id": 18446744073709551615}', "json") == {"id": 2**64 - 1}
    assert parse_body(b'{"s": "12345678901234567890123"}', "json") == {
        "s": "12345678901234567890123"
    }  # digits inside a string are text


@pytest.mark.parametrize(
    ("body", "fmt", "reason"),
    [
        (b"{oops", "json", "not valid JSON"),
        (b"\xff", "text", "not UTF-8"),
        (b"\xff", "json", "not UTF-8"),
    ],
)
def test_parse_body_refuses_what_it_cannot_carry(body: bytes, fmt: str, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=reason):
        parse_body(body, fmt)


def test_parse_body_keeps_big_numbers_exact() -> None:
    assert parse_body(b'{"id": 123456789012345678901234567890}', "json") == {
        "id": 123456789012345678901234567890
    }
    assert parse_body(b"[-9999999999999999999, 0.12345678901234567890]", "json") == [
        -9999999999999999999,
        Decimal("0.12345678901234567890"),
    ]


def test_amqp_values_become_json() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert amqp_value({"b": b"x", "d": Decimal("1.5"), "t": when, "l": [bytearray(b"y")]}) == {
        "b": "x",
        "d": "1.5",
        "t": "2026-01-02T03:04:05+00:00",
        "l": ["y"],
    }


def test_heartbeat_is_added_unless_the_url_sets_one() -> None:
    assert with_heartbeat("amqp://u:p@h:5672/v", 30) == "amqp://u:p@h:5672/v?heartbeat=30"
    assert with_heartbeat("amqp://h/?heartbeat=5", 30) == "amqp://h/?heartbeat=5"


def test_safe_doc_binds_values_and_refuses_operators_from_the_event() -> None:
    doc = SafeDoc({"email": "${payload.email}", "age": {"$gt": "${payload.age}"}, "n": 1})
    scope = {"payload": {"email": "a@x.io", "age": 30}}
    assert doc.render(scope, "s") == {"email": "a@x.io", "age": {"$gt": 30}, "n": 1}
    for hostile in ({"$ne": None}, {"x": [{"$where": "1"}]}, [{"$gt": ""}]):
        with pytest.raises(PoisonMessageError, match="never becomes a query operator"):
            doc.render({"payload": {"email": hostile, "age": 1}}, "s")
    ok = {"payload": {"email": {"plain": "mapping"}, "age": 1}}
    assert doc.render(ok, "s")["email"] == {"plain": "mapping"}


def test_bson_values_become_json() -> None:
    oid = ObjectId("65a1b2c3d4e5f60718293a4b")
    naive = dt.datetime(2026, 1, 1, 12, 0)
    doc = {"_id": oid, "at": naive, "d": Decimal128("1.10"), "b": Binary(b"\x01\x02"), "n": None}
    assert to_json(doc) == {
        "_id": "65a1b2c3d4e5f60718293a4b",
        "at": "2026-01-01T12:00:00+00:00",
        "d": "1.10",
        "b": "AQI=",
        "n": None,
    }


def test_cursor_values_and_sort() -> None:
    assert cursor_value(5, "json") == 5
    assert cursor_value("65a1b2c3d4e5f60718293a4b", "objectid") == ObjectId(
        "65a1b2c3d4e5f60718293a4b"
    )
    assert cursor_value("2026-01-01T00:01:00Z", "date") == dt.datetime(
        2026, 1, 1, 0, 1, tzinfo=dt.UTC
    )
    assert cursor_value(None, "date") is None
    assert sort_spec({"a": "asc", "b": -1, "c": "desc"}) == [("a", 1), ("b", -1), ("c", -1)]
