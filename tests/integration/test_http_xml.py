"""http step XML: an envelope in (`xml:`), the answer parsed (`response_format: xml`),
SOAP faults failing the step, against a real SOAP-speaking aiohttp server on loopback."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.topology.exprxml import parse_xml

CONFIG = {"api": {"type": "string"}}
NS = "http://schemas.xmlsoap.org/soap/envelope/"


def envelope(body: str) -> str:
    return f'<soap:Envelope xmlns:soap="{NS}"><soap:Body>{body}</soap:Body></soap:Envelope>'


async def stock_service(call: Any) -> web.Response:
    """GetPrice of a known item answers its price; unknown: a Client fault; 'boom': a
    Server fault; 'dtd': an answer carrying a DTD."""
    doc = parse_xml(call.body)
    item = doc["Envelope"]["Body"]["GetPrice"]["Item"]
    if item == "boom":
        fault = "<soap:Fault><faultcode>soap:Server</faultcode><faultstring>db down</faultstring></soap:Fault>"  # noqa: E501
        return web.Response(text=envelope(fault), status=500, content_type="text/xml")
    if item == "dtd":
        text = '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "b">]><r>&a;</r>'
        return web.Response(text=text, content_type="text/xml")
    if item != "ACME":
        fault = f"<soap:Fault><faultcode>soap:Client</faultcode><faultstring>unknown item {item}</faultstring></soap:Fault>"  # noqa: E501
        return web.Response(text=envelope(fault), status=500, content_type="text/xml")
    answer = '<m:GetPriceResponse xmlns:m="urn:stock"><m:Price>34.5</m:Price></m:GetPriceResponse>'
    return web.Response(text=envelope(answer), content_type="text/xml")


STEP = {
    "id": "price",
    "type": "http",
    "method": "POST",
    "url": "${config.api}/stock",
    "headers": {"SOAPAction": "urn:stock#GetPrice", "Content-Type": "text/xml; charset=utf-8"},
    "xml": {
        "soap:Envelope": {
            "@xmlns:soap": NS,
            "soap:Body": {"GetPrice": {"Item": "${payload.item}"}},
        }
    },
    "response_format": "xml",
}


async def runner_and_server(step_runner: Any, http_server: Any) -> tuple[Any, Any]:
    server = await http_server(stock_service)
    runner = await step_runner([STEP], config=CONFIG, values={"api": server.url})
    return runner, server


async def test_an_envelope_in_and_the_answer_parsed(step_runner: Any, http_server: Any) -> None:
    runner, server = await runner_and_server(step_runner, http_server)
    out = await runner.run("price", {"item": "ACME"})
    body = out.result["body"]
    assert body["Envelope"]["Body"]["GetPriceResponse"]["Price"] == "34.5"
    [call] = server.calls
    assert call.headers["Content-Type"] == "text/xml; charset=utf-8"
    assert call.headers["SOAPAction"] == "urn:stock#GetPrice"
    assert call.body.decode().startswith(f'<soap:Envelope xmlns:soap="{NS}"><soap:Body>')


async def test_a_client_fault_fails_the_step_for_good(step_runner: Any, http_server: Any) -> None:
    runner, _ = await runner_and_server(step_runner, http_server)
    with pytest.raises(PoisonMessageError, match="SOAP fault soap:Client: unknown item NOPE"):
        await runner.run("price", {"item": "NOPE"})


async def test_a_server_fault_is_retried(step_runner: Any, http_server: Any) -> None:
    runner, _ = await runner_and_server(step_runner, http_server)
    with pytest.raises(RetriableError, match="SOAP fault soap:Server: db down"):
        await runner.run("price", {"item": "boom"})


async def test_an_answer_with_a_dtd_is_refused(step_runner: Any, http_server: Any) -> None:
    runner, _ = await runner_and_server(step_runner, http_server)
    with pytest.raises(PoisonMessageError, match="XML refused: a DTD"):
        await runner.run("price", {"item": "dtd"})


async def test_xml_text_body_and_other_formats(step_runner: Any, http_server: Any) -> None:
    async def echo(call: Any) -> web.Response:
        return web.Response(body=call.body, content_type="application/octet-stream")

    server = await http_server(echo)
    steps = [
        {"id": "t", "type": "http", "method": "POST", "url": "${config.api}/e",
         "xml": "<a>${payload.v}</a>", "response_format": "xml"},
        {"id": "j", "type": "http", "method": "POST", "url": "${config.api}/e",
         "body": '{"v": 1}', "response_format": "json"},
        {"id": "bad", "type": "http", "method": "POST", "url": "${config.api}/e",
         "body": "not json", "response_format": "json"},
    ]  # fmt: skip
    runner = await step_runner(steps, config=CONFIG, values={"api": server.url})
    assert (await runner.run("t", {"v": "x"})).result["body"] == {"a": "x"}
    assert server.calls[0].headers["Content-Type"] == "application/xml; charset=utf-8"
    assert (await runner.run("j", {})).result["body"] == {"v": 1}
    with pytest.raises(PoisonMessageError, match="the answer is not json"):
        await runner.run("bad", {})
