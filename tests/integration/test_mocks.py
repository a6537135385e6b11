"""Mock HTTP services: real loopback servers from a small YAML, recording every call."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from streamflow.errors import ConfigError
from streamflow.testing.mocks import MockServices

SPEC: dict[str, Any] = {
    "services": {
        "cms": {
            "config": "cms_url",
            "routes": [
                {
                    "method": "POST",
                    "path": "/articles",
                    "status": 201,
                    "headers": {"X-Trace": "abc", "X-Title": "${request.json.title}"},
                    "json": {
                        "id": "${uuid()}",
                        "title": "${request.json.title}",
                        "upper": "${upper(request.json.title)}",
                        "tag": "${request.query.tag}",
                    },
                },
                {
                    "method": "GET",
                    "path": "/customers/{id}/orders/{order}",
                    "json": {
                        "customer": "${request.params.id}",
                        "order": "${request.params.order}",
                        "method": "${request.method}",
                    },
                },
                {"path": "/flaky", "status": 503, "headers": {"Retry-After": 1}, "times": 2},
                {"path": "/flaky", "body": "ok after ${len(request.body)} bytes"},
                {"path": "/slow", "delay": "200ms", "body": "done"},
                {"method": "delete", "path": "/articles/{id}", "status": 204},
                {"path": "/count", "json": {"n": "${int(request.body)}"}},
            ],
        },
        "crm": {"routes": [{"path": "/ping", "json": None}]},
    }
}


@pytest.fixture
async def mocks() -> AsyncIterator[MockServices]:
    async with MockServices.from_dict(SPEC) as m:
        yield m


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_base_urls_and_config_values(mocks: MockServices) -> None:
    cms, crm = mocks.base_url("cms"), mocks.base_url("crm")
    assert cms.startswith("http://127.0.0.1:") and crm.startswith("http://127.0.0.1:")
    assert cms != crm
    assert mocks.config_values() == {"cms_url": cms}
    with pytest.raises(KeyError, match="nope"):
        mocks.base_url("nope")


async def test_templated_json_status_and_headers(
    mocks: MockServices, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = mocks.base_url("cms") + "/articles?tag=news"
    async with http.post(url, json={"title": "Hello"}, headers={"Authorization": "s3cret"}) as r:
        assert r.status == 201
        assert r.headers["X-Trace"] == "abc"
        assert r.headers["X-Title"] == "Hello"
        assert r.content_type == "application/json"
        body = await r.json()
    assert body["title"] == "Hello" and body["upper"] == "HELLO" and body["tag"] == "news"
    assert isinstance(body["id"], str) and len(body["id"]) == 36

    [call] = mocks.calls
    assert (call.service, call.method, call.path, call.status) == ("cms", "POST", "/articles", 201)
    assert call.query == {"tag": "news"}
    assert call.json == {"title": "Hello"}
    assert json.loads(call.body) == {"title": "Hello"}
    assert call.headers["Authorization"] == "s3cret"
    assert "s3cret" not in repr(call)  # headers are kept out of repr
    assert call.ts <= time.time()
    assert "s3cret" not in caplog.text  # request headers are never logged


async def test_render_failure_is_500(mocks: MockServices, http: aiohttp.ClientSession) -> None:
    async with http.post(mocks.base_url("cms") + "/count", data="12") as r:
        assert r.status == 200
        assert await r.json() == {"n": 12}
    async with http.post(mocks.base_url("cms") + "/count", data="abc") as r:
        assert r.status == 500
        assert "template failed" in (await r.json())["error"]
    assert [c.status for c in mocks.calls_to("cms", "POST", "/count")] == [200, 500]


async def test_path_params(mocks: MockServices, http: aiohttp.ClientSession) -> None:
    async with http.get(mocks.base_url("cms") + "/customers/c-42/orders/7") as r:
        assert r.status == 200
        assert await r.json() == {"customer": "c-42", "order": "7", "method": "GET"}
    async with http.delete(mocks.base_url("cms") + "/articles/9") as r:
        assert r.status == 204
    # a param segment never matches an empty segment
    async with http.get(mocks.base_url("cms") + "/customers//orders/7") as r:
        assert r.status == 404


async def test_times_then_next_route(mocks: MockServices, http: aiohttp.ClientSession) -> None:
    url = mocks.base_url("cms") + "/flaky"
    statuses = []
    for _ in range(4):
        async with http.put(url, data=b"abcd") as r:
            statuses.append(r.status)
            if r.status == 503:
                assert r.headers["Retry-After"] == "1"
            else:
                assert await r.text() == "ok after 4 bytes"
                assert r.content_type == "text/plain"
    assert statuses == [503, 503, 200, 200]
    assert [c.status for c in mocks.calls_to("cms", path="/flaky")] == statuses
    mocks.reset()
    assert mocks.calls == []
    async with http.get(url) as r:
        assert r.status == 503


async def test_delay_is_a_lower_bound(mocks: MockServices, http: aiohttp.ClientSession) -> None:
    start = time.monotonic()
    async with http.get(mocks.base_url("cms") + "/slow") as r:
        assert await r.text() == "done"
    assert time.monotonic() - start >= 0.19


async def test_unmatched_is_404_and_recorded(
    mocks: MockServices, http: aiohttp.ClientSession
) -> None:
    async with http.get(mocks.base_url("cms") + "/nothing-here") as r:
        assert r.status == 404
        body = await r.json()
    assert body["error"] == "no route matched"
    assert body["path"] == "/nothing-here"
    # method mismatch: /articles is POST only
    async with http.get(mocks.base_url("cms") + "/articles") as r:
        assert r.status == 404
    assert [(c.method, c.path, c.status) for c in mocks.calls] == [
        ("GET", "/nothing-here", 404),
        ("GET", "/articles", 404),
    ]


async def test_recording_across_services(mocks: MockServices, http: aiohttp.ClientSession) -> None:
    async with http.get(mocks.base_url("crm") + "/ping") as r:
        assert r.status == 200
        assert await r.text() == "null"
    async with http.get(mocks.base_url("cms") + "/customers/1/orders/2") as r:
        assert r.status == 200
    async with http.get(mocks.base_url("cms") + "/customers/3/orders/4") as r:
        assert r.status == 200
    assert [c.service for c in mocks.calls] == ["crm", "cms", "cms"]
    assert len(mocks.calls_to("crm")) == 1
    assert len(mocks.calls_to("cms", "get")) == 2
    assert len(mocks.calls_to("cms", "POST")) == 0
    assert len(mocks.calls_to("cms", path="/customers/{id}/orders/{order}")) == 2
    assert [c.path for c in mocks.calls_to("cms", "GET", "/customers/3/orders/4")] == [
        "/customers/3/orders/4"
    ]


async def test_from_yaml_file(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    f = tmp_path / "mocks.yaml"
    f.write_text(
        """\
services:
  billing:
    config: billing_url
    routes:
      - method: POST
        path: /invoices/{id}
        status: 202
        json: {id: "${request.params.id}", amount: "${request.json.amount * 2}"}
      - path: /fail
        status: 503
        headers: {Retry-After: "1"}
""",
        encoding="utf-8",
    )
    mocks = MockServices.from_file(f)
    async with mocks:
        base = mocks.base_url("billing")
        assert mocks.config_values() == {"billing_url": base}
        async with http.post(base + "/invoices/inv-1", json={"amount": 21}) as r:
            assert r.status == 202
            assert await r.json() == {"id": "inv-1", "amount": 42}
        async with http.get(base + "/fail") as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "1"
    assert [c.status for c in mocks.calls_to("billing")] == [202, 503]
    with pytest.raises(RuntimeError):
        mocks.base_url("billing")  # stopped


async def test_fixed_port(http: aiohttp.ClientSession) -> None:
    async with MockServices.from_dict({"services": {"a": {"routes": [{"path": "/"}]}}}) as probe:
        port = int(probe.base_url("a").rsplit(":", 1)[1])
    spec = {"services": {"a": {"port": port, "routes": [{"path": "/", "body": "hi"}]}}}
    async with MockServices.from_dict(spec) as m:
        assert m.base_url("a") == f"http://127.0.0.1:{port}"
        async with http.get(m.base_url("a") + "/") as r:
            assert await r.text() == "hi"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "services:\n  cms:\n    routes:\n      - path: /a\n        colour: red\n",
            "unknown key 'colour'",
        ),
        ("services:\n  cms:\n    routes:\n      - path: /a\n        status: ok\n", "status"),
        ("services:\n  cms:\n    routes:\n      - path: /a\n        status: '201'\n", "status"),
        ("services:\n  cms:\n    prot: 0\n", "unknown key 'prot'"),
        ("servics: {}\n", "unknown key 'servics'"),
        ("services:\n  cms:\n    routes:\n      - path: /a\n        json: '${nope.x}'\n", "json"),
        (
            "services:\n  cms:\n    routes:\n      - path: /a\n        json: 1\n        body: x\n",
            "only one of json and body",
        ),
        ("services:\n  cms:\n    routes:\n      - path: a/{x\n", "path"),
        ("services:\n  cms:\n    routes:\n      - path: /a\n        delay: soon\n", "delay"),
        ("- just a list\n", "mapping"),
    ],
)
def test_bad_file_raises_config_error(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "bad-mocks.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        MockServices.from_file(f)
    message = str(info.value)
    assert str(f) in message
    assert expected in message


def test_bad_file_points_at_the_line(tmp_path: Path) -> None:
    f = tmp_path / "mocks.yaml"
    f.write_text(
        "services:\n  cms:\n    routes:\n      - path: /a\n        status: ok\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"mocks\.yaml:5:\d+: services\.cms\.routes\[0\]\.status"):
        MockServices.from_file(f)


def test_bad_dict_names_source() -> None:
    with pytest.raises(ConfigError, match="my-mocks"):
        MockServices.from_dict(
            {"services": {"x": {"routes": [{"path": "/a", "times": 0}]}}}, source="my-mocks"
        )
