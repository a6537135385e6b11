"""parse_xml / render_xml: the shape, round trips, and refusal of hostile documents."""

from __future__ import annotations

from typing import Any

import pytest

from streamflow.topology.expressions import ExpressionEvalError, compile_value
from streamflow.topology.exprxml import XmlError, parse_xml, render_xml


def ev(expr: str, **payload: Any) -> Any:
    return compile_value("${" + expr + "}").render({"payload": payload})


SOAP = """<?xml version="1.0" encoding="UTF-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"
               xmlns:m="urn:stock">
  <soap:Body>
    <m:GetPriceResponse currency="EUR">
      <m:Price>34.5</m:Price>
      <m:Tag>a</m:Tag><m:Tag>b</m:Tag>
      <m:Empty/>
      <!-- a comment -->
    </m:GetPriceResponse>
  </soap:Body>
</soap:Envelope>"""


def test_parse_shape() -> None:
    doc = parse_xml(SOAP)
    assert doc == {
        "Envelope": {
            "Body": {
                "GetPriceResponse": {
                    "@currency": "EUR",
                    "Price": "34.5",
                    "Tag": ["a", "b"],
                    "Empty": None,
                }
            }
        }
    }
    assert ev("parse_xml(payload.x).Envelope.Body.GetPriceResponse.Price", x=SOAP) == "34.5"
    assert parse_xml("<a x='1'>text<b/></a>") == {"a": {"@x": "1", "b": None, "#text": "text"}}
    assert parse_xml(b"<a>\xc3\xa9</a>") == {"a": "é"}
    assert parse_xml(None) is None


def test_render_shape_and_round_trip() -> None:
    value = {
        "soap:Envelope": {
            "@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/",
            "soap:Body": {"GetPrice": {"Item": ["a&b", "<c>"], "Qty": 2, "Gift": False,
                                       "Note": None}},
        }
    }  # fmt: skip
    text = render_xml(value)
    assert text == (
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">'
        "<soap:Body><GetPrice><Item>a&amp;b</Item><Item>&lt;c&gt;</Item><Qty>2</Qty>"
        "<Gift>false</Gift><Note /></GetPrice></soap:Body></soap:Envelope>"
    )
    back = parse_xml(text)
    assert back["Envelope"]["Body"]["GetPrice"]["Item"] == ["a&b", "<c>"]
    assert ev("render_xml(payload, 'order')", id=7, lines=[1, 2]) == (
        "<order><id>7</id><lines>1</lines><lines>2</lines></order>"
    )
    assert ev("render_xml({'a': {'@k': 'v\"'}})") == '<a k="v&quot;" />'


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"a b": 1}, "not an XML element name"),
        ({"a": {"@x y": 1}}, "not an XML attribute name"),
        ({"a": 1, "b": 2}, "one key"),
        ({"a": {"@x": [1]}}, "cannot be text"),
    ],
)
def test_render_refuses_what_is_not_xml(value: Any, error: str) -> None:
    with pytest.raises(XmlError, match=error):
        render_xml(value)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<lolz>&lol9;</lolz>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<r>&xxe;</r>"""
EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE r SYSTEM "http://127.0.0.1:1/evil.dtd"><r/>"""
PARAMETER = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:1/p.dtd"> %p;]><r/>"""


@pytest.mark.parametrize("doc", [BILLION_LAUGHS, EXTERNAL, EXTERNAL_DTD, PARAMETER])
def test_hostile_documents_are_refused(doc: str) -> None:
    with pytest.raises(XmlError, match="XML refused: a DTD"):
        parse_xml(doc)
    with pytest.raises(ExpressionEvalError, match="XML refused"):
        ev("parse_xml(payload.doc)", doc=doc)


def test_broken_and_too_deep_documents_fail_clearly() -> None:
    with pytest.raises(XmlError, match="not well-formed XML"):
        parse_xml("<a><b></a>")
    with pytest.raises(XmlError, match="nested deeper than 200"):
        parse_xml("<a>" * 300 + "</a>" * 300)
    deep: Any = "x"
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(XmlError, match="nested deeper"):
        render_xml(deep)
