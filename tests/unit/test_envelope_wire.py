"""The envelope on the wire (``encoding: json``): the payload alone is the record's value,
the metadata one ``sf-env`` header; the payload is parsed on first read, and written back
as it arrived while nobody read it; records of the format before the header still decode."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from streamflow import exactjson
from streamflow.envelope import (
    HEADER,
    Envelope,
    PayloadError,
    carried,
    decode,
    encode,
    header_of,
)
from streamflow.errors import PoisonMessageError


def envelope(payload: Any = None, **fields: Any) -> Envelope:
    base: dict[str, Any] = {"created_ms": 1_718_000_000_123}
    base.update(fields)
    return Envelope("e1", "acme", "orders", "push", payload, **base)


def test_the_value_is_the_payload_and_the_metadata_one_header() -> None:
    payload = {"id": 7, "name": "Zoë", "items": [1, 2]}
    env = envelope(payload, attempt=2, steps={"a": {"x": 1}}, meta={"k": "v"})
    value, headers = encode(env)
    assert orjson.loads(value) == payload  # what a user would produce
    assert [k for k, _ in headers] == [HEADER]
    head = orjson.loads(headers[0][1])
    assert "payload" not in head
    assert head == {
        "v": 2,
        "execution_id": "e1",
        "integration": "acme",
        "flow": "orders",
        "step": "push",
        "created_ms": 1_718_000_000_123,
        "attempt": 2,
        "steps": {"a": {"x": 1}},
        "meta": {"k": "v"},
    }


def test_fields_at_their_default_stay_out_of_the_header() -> None:
    _, headers = encode(envelope({"a": 1}))
    head = orjson.loads(headers[0][1])
    assert set(head) == {"v", "execution_id", "integration", "flow", "step", "created_ms"}
    assert "trace" not in head  # tracing off: no trace context travels


def test_numbers_stay_exact_in_value_and_header() -> None:
    exact = {"big": 2**70, "d": Decimal("12345678901234567.89")}
    env = envelope(exact, steps={"s": {"n": -(2**65)}})
    back = decode(*encode(env))
    assert back.payload == exact
    assert back.steps == {"s": {"n": -(2**65)}}


def test_an_unread_payload_is_neither_parsed_nor_encoded_again() -> None:
    value, headers = encode(envelope({"id": 1, "n": [1, 2, 3]}))
    back = decode(value, headers)
    assert back.raw_payload is value  # kept, not parsed
    back.step, back.attempt = "next", 3  # a hop: metadata changes, the payload does not
    back.meta["replayed"] = 1
    again, head = encode(back)
    assert again is value  # the same bytes object: no parse, no encode
    assert orjson.loads(header_of(head) or b"")["step"] == "next"
    # bytes that are not JSON at all go through untouched while nobody reads them
    poison = decode(b"\xff not json", headers)
    assert encode(poison).value == b"\xff not json"


def test_a_read_payload_is_encoded_again_with_its_changes() -> None:
    value, headers = encode(envelope({"id": 1}))
    back = decode(value, headers)
    back.payload["id"] = 2  # changed in place after reading it
    assert orjson.loads(encode(back).value) == {"id": 2}
    back.payload = [1, 2]  # replaced
    assert back.raw_payload is None
    assert orjson.loads(encode(back).value) == [1, 2]


def test_reuse_bytes_holds_until_the_payload_is_read() -> None:
    raw = b'{"id": 1,  "spaced": true}'
    env = envelope(exactjson.loads(raw))
    env.reuse_bytes(raw)
    assert encode(env).value is raw
    env.payload["id"] = 5  # a reader may change it: the bytes are no longer trusted
    assert orjson.loads(encode(env).value) == {"id": 5, "spaced": True}


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"\xff\xfe", b"{'a': 1}"])
def test_a_payload_that_is_not_json_is_poison_when_first_read(value: bytes) -> None:
    _, headers = encode(envelope({"id": 1}))
    env = decode(value, headers)  # the metadata reads fine: no error yet
    assert (env.execution_id, env.step) == ("e1", "push")
    with pytest.raises(PayloadError, match="the payload is not valid JSON"):
        _ = env.payload
    with pytest.raises(PoisonMessageError):  # again, and it is poison (dead-lettered)
        _ = env.payload
    assert encode(env).value == value  # its dead letter holds the bytes as they arrived
    shown = env.shown()
    assert "payload" not in shown
    assert shown["payload_error"].startswith("the payload is not valid JSON")
    assert shown["execution_id"] == "e1"


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"{", "header sf-env is not valid JSON"),
        (b"[1]", "header sf-env is not a JSON object"),
        (b'{"execution_id": "e", "flow": "f", "step": "s"}', "missing 'integration'"),
    ],
)
def test_a_header_that_is_not_an_envelope_is_poison(head: bytes, why: str) -> None:
    with pytest.raises(PoisonMessageError, match=why):
        decode(b"{}", [(HEADER, head)])


def test_a_record_of_the_format_before_the_header_decodes() -> None:
    """Records written as one whole-envelope JSON document (no sf-env header) that are
    still on step, retry or DLQ topics after an upgrade: read the same."""
    env = envelope({"id": 7}, attempt=2, saga=[{"step": "a", "payload": {"id": 7}}])
    old = exactjson.dumps(env.to_dict())
    for headers in (None, [], [("sf-due", b"1"), ("sf-error", b"x"), ("sf-step", b"push")]):
        back = decode(old, headers)
        assert back == env
        assert back.payload == {"id": 7} and back.attempt == 2
    # and when it travels on, it does in the new format
    value, headers = encode(decode(old, None))
    assert orjson.loads(value) == {"id": 7}
    assert header_of(headers) is not None


def test_avro_keeps_the_whole_envelope_in_the_value_and_ignores_headers() -> None:
    env = envelope({"id": 7}, steps={"s": 1})
    value, headers = encode(env, "avro")
    assert headers == []
    back = decode(value, [(HEADER, b"not even json")], "avro")
    assert back == env


def test_carried_keeps_the_envelopes_own_headers_only() -> None:
    headers = [("sf-due", b"1"), (HEADER, b"{}"), ("traceparent", b"00-x"), ("sf-error", b"e")]
    assert carried(headers) == [(HEADER, b"{}"), ("traceparent", b"00-x")]
    assert carried(None) == []


def test_equality_and_repr_do_not_need_the_dataclass() -> None:
    a, b = envelope({"x": 1}), envelope({"x": 1})
    assert a == b and a != envelope({"x": 2})
    lazy = decode(*encode(a))
    assert "<unread>" in repr(lazy)
    assert lazy == a


def test_a_payload_too_deep_to_show_inside_a_document_is_shown_as_text() -> None:
    deep: Any = 1
    for _ in range(252):  # travels alone as a value; not inside two more levels
        deep = [deep]
    env = decode(*encode(envelope(deep)))
    shown = env.shown()
    assert "payload" not in shown
    assert shown["payload_error"].startswith("the payload cannot be shown inside the envelope")
    assert shown["payload_raw"].startswith("[[[[")
    exactjson.dumps({"a": {"b": shown}})  # what the CLI and the console write
    assert envelope({"ok": 1}).shown()["payload"] == {"ok": 1}
