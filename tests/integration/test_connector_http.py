"""http step extensions against real aiohttp servers on loopback: OAuth2 (a real token
endpoint that counts token requests), response cache, for_each, connections, limits."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiohttp import web

from streamflow.errors import PoisonMessageError, RetriableError, ValidationFailed

SECRET = "cl1ent-s3cret-value"
OAUTH_CONFIG = {
    "api": {"type": "string"},
    "client_secret": {"type": "string", "secret": True},
}


class TokenEndpoint:
    """Issues tok-1, tok-2, ... to client 'app' with the right secret; an API that
    accepts only tokens issued here (and not revoked)."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.revoked: set[str] = set()
        self.forms: list[dict[str, str]] = []
        self.refresh_tokens = {"r-0"}

    async def __call__(self, call: Any) -> web.Response:
        if call.path == "/oauth/token":
            form = call.form
            self.forms.append(form)
            if form.get("grant_type") == "refresh_token":
                if form.get("refresh_token") not in self.refresh_tokens:
                    return web.json_response({"error": "invalid_grant"}, status=400)
            elif form.get("client_id") != "app" or form.get("client_secret") != SECRET:
                return web.json_response({"error": "invalid_client"}, status=401)
            token = f"tok-{len(self.issued) + 1}"
            self.issued.append(token)
            body = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
            if form.get("grant_type") == "refresh_token":
                body["refresh_token"] = f"r-{len(self.issued)}"
                self.refresh_tokens = {body["refresh_token"]}
            return web.json_response(body)
        auth = call.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if token not in self.issued or token in self.revoked:
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"ok": True, "path": call.path, "token": token})


def oauth_step(step_id: str, **extra: Any) -> dict[str, Any]:
    step: dict[str, Any] = {
        "id": step_id,
        "type": "http",
        "method": "POST",
        "url": "${config.api}/customers",
        "json": "${payload}",
        "auth": {
            "type": "oauth2",
            "token_url": "${config.api}/oauth/token",
            "client_id": "app",
            "client_secret": "${config.client_secret}",
            "scope": "customers:write",
        },
    }
    step.update(extra)
    return step


async def test_oauth2_token_is_cached_and_shared(step_runner: Any, http_server: Any) -> None:
    tokens = TokenEndpoint()
    server = await http_server(tokens)
    runner = await step_runner(
        [oauth_step("a"), oauth_step("b", url="${config.api}/other")],
        config=OAUTH_CONFIG,
        values={"api": server.url, "client_secret": SECRET},
    )
    for i in range(3):
        assert (await runner.run("a", {"n": i})).result["status"] == 200
    assert (await runner.run("b", {})).result["body"]["path"] == "/other"
    assert len(server.to("/oauth/token")) == 1  # one token for both steps
    assert tokens.forms[0] == {
        "grant_type": "client_credentials",
        "client_id": "app",
        "client_secret": SECRET,
        "scope": "customers:write",
    }
    assert {c.headers["Authorization"] for c in server.calls if c.path != "/oauth/token"} == {
        "Bearer tok-1"
    }


async def test_oauth2_refreshes_before_expiry(step_runner: Any, http_server: Any) -> None:
    # expires_in (20s) is inside the refresh margin (30s): each call needs a new token
    tokens = TokenEndpoint(expires_in=20)
    server = await http_server(tokens)
    runner = await step_runner(
        [oauth_step("a")], config=OAUTH_CONFIG, values={"api": server.url, "client_secret": SECRET}
    )
    for _ in range(3):
        await runner.run("a", {})
    assert tokens.issued == ["tok-1", "tok-2", "tok-3"]
    assert [c.headers["Authorization"] for c in server.to("/customers")] == [
        "Bearer tok-1",
        "Bearer tok-2",
        "Bearer tok-3",
    ]


async def test_oauth2_401_gets_a_new_token_once(step_runner: Any, http_server: Any) -> None:
    tokens = TokenEndpoint()
    server = await http_server(tokens)
    runner = await step_runner(
        [oauth_step("a")], config=OAUTH_CONFIG, values={"api": server.url, "client_secret": SECRET}
    )
    await runner.run("a", {})
    tokens.revoked.add("tok-1")  # revoked early, though not expired
    out = await runner.run("a", {})
    assert out.result["body"]["token"] == "tok-2"
    assert len(server.to("/oauth/token")) == 2


async def test_oauth2_refresh_token_grant_rotates(step_runner: Any, http_server: Any) -> None:
    tokens = TokenEndpoint(expires_in=1)
    server = await http_server(tokens)
    step = oauth_step("a")
    step["auth"] = {
        "type": "oauth2",
        "token_url": "${config.api}/oauth/token",
        "client_id": "app",
        "grant": "refresh_token",
        "refresh_token": "r-0",
        "client_auth": "basic",
    }
    runner = await step_runner(
        [step], config=OAUTH_CONFIG, values={"api": server.url, "client_secret": SECRET}
    )
    await runner.run("a", {})
    await runner.run("a", {})  # expired: refreshed with the rotated refresh token r-1
    assert [f["refresh_token"] for f in tokens.forms] == ["r-0", "r-1"]
    assert server.to("/oauth/token")[0].headers["Authorization"].startswith("Basic ")


async def test_oauth2_refused_credentials_are_masked(
    step_runner: Any, http_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await http_server(TokenEndpoint())
    wrong = "wr0ng-s3cret-value"
    runner = await step_runner(
        [oauth_step("a")], config=OAUTH_CONFIG, values={"api": server.url, "client_secret": wrong}
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RetriableError, match="answered 401 \\(invalid_client\\)") as info:
        await runner.run("a", {})
    assert wrong not in str(info.value)
    assert wrong not in caplog.text
    assert server.to("/customers") == []


async def test_static_auth_kinds(step_runner: Any, http_server: Any) -> None:
    async def echo(call: Any) -> web.Response:
        return web.json_response(
            {
                "auth": call.headers.get("Authorization"),
                "key": call.headers.get("X-Key"),
                "q": call.query,
            }
        )

    server = await http_server(echo)
    runner = await step_runner(
        """
        - id: basic
          type: http
          url: ${config.api}/x
          auth: {type: basic, username: u, password: p}
        - id: header
          type: http
          url: ${config.api}/x
          auth: {type: api_key, name: X-Key, value: k1}
        - id: query
          type: http
          url: ${config.api}/x
          auth: {type: api_key, name: key, value: k2, in: query}
        """,
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )  # fmt: skip
    assert (await runner.run("basic", {})).result["body"]["auth"] == "Basic dTpw"
    assert (await runner.run("header", {})).result["body"]["key"] == "k1"
    assert (await runner.run("query", {})).result["body"]["q"] == {"key": "k2"}


async def test_response_cache_on_2xx_only(step_runner: Any, http_server: Any) -> None:
    async def lookup(call: Any) -> web.Response:
        if call.path.endswith("/missing"):
            return web.json_response({"error": "nope"}, status=404)
        return web.json_response({"id": call.path.rsplit("/", 1)[1], "n": len(server.calls)})

    server = await http_server(lookup)
    runner = await step_runner(
        """
        - id: get
          type: http
          url: ${config.api}/customers/${payload.id}
          cache: {ttl: 5m}
        """,
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )
    first = await runner.run("get", {"id": "1"})
    again = await runner.run("get", {"id": "1"})
    other = await runner.run("get", {"id": "2"})
    assert again.result == first.result
    assert other.result["body"]["id"] == "2"
    assert [c.path for c in server.calls] == ["/customers/1", "/customers/2"]
    for _ in range(2):
        with pytest.raises(PoisonMessageError, match="404"):
            await runner.run("get", {"id": "missing"})
    assert len(server.to("/customers/missing")) == 2  # errors are not cached


async def test_for_each_posts_every_item(step_runner: Any, http_server: Any) -> None:
    async def create(call: Any) -> web.Response:
        return web.json_response({"created": call.json["email"]}, status=201)

    server = await http_server(create)
    runner = await step_runner(
        """
        - id: push
          type: http
          method: POST
          url: ${config.api}/customers
          for_each: ${payload.records}
          json: {email: "${item.email}", source: "${payload.source}"}
        """,
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )
    out = await runner.run(
        "push", {"source": "csv", "records": [{"email": "a@x.io"}, {"email": "b@x.io"}]}
    )
    assert out.result["count"] == 2
    assert [r["body"]["created"] for r in out.result["responses"]] == ["a@x.io", "b@x.io"]
    assert [c.json for c in server.calls] == [
        {"email": "a@x.io", "source": "csv"},
        {"email": "b@x.io", "source": "csv"},
    ]
    keys = [c.headers["Idempotency-Key"] for c in server.calls]
    assert len(set(keys)) == 2 and keys[0].endswith("-push-0") and keys[1].endswith("-push-1")


async def test_named_http_connection_with_limit(step_runner: Any, http_server: Any) -> None:
    in_flight = {"now": 0, "max": 0}

    async def slow(call: Any) -> web.Response:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0.02)
        in_flight["now"] -= 1
        return web.json_response(
            {"auth": call.headers.get("Authorization"), "h": call.headers.get("X-Tenant")}
        )

    server = await http_server(slow)
    runner = await step_runner(
        """
        - {id: a, type: http, connection: crm, url: /things}
        - {id: b, type: http, connection: crm, url: things/b, headers: {X-Tenant: mine}}
        """,
        config={"api": {"type": "string"}, "token": {"type": "string", "secret": True}},
        values={"api": server.url + "/v1/", "token": "t0ken-value"},
        connections={"crm": {"type": "http", "base_url": "${config.api}", "pool_size": 1,
                             "headers": {"X-Tenant": "acme"},
                             "auth": {"type": "bearer", "token": "${config.token}"}}},
    )  # fmt: skip
    outs = await asyncio.gather(*(runner.run("a" if i % 2 else "b", {}) for i in range(6)))
    assert in_flight["max"] == 1  # pool_size 1: one request at a time, across both steps
    assert {c.path for c in server.calls} == {"/v1/things", "/v1/things/b"}
    assert {o.result["body"]["auth"] for o in outs} == {"Bearer t0ken-value"}
    assert sorted({o.result["body"]["h"] for o in outs}) == ["acme", "mine"]


async def test_connection_validation(step_runner: Any) -> None:
    with pytest.raises(ValidationFailed, match="unknown connection 'nope'"):
        await step_runner([{"id": "a", "type": "http", "connection": "nope", "url": "/x"}])
    with pytest.raises(
        ValidationFailed,
        match=r"connections\.crm\.auth: auth type oauth2 needs token_url",
    ):
        await step_runner(
            [{"id": "a", "type": "http", "connection": "crm", "url": "/x"}],
            connections={"crm": {"type": "http", "base_url": "http://x",
                                 "auth": {"type": "oauth2", "client_id": "c"}}},
        )  # fmt: skip
    with pytest.raises(ValidationFailed, match="secret config variable 's' may not be used"):
        await step_runner(
            [{"id": "a", "type": "http", "connection": "crm", "url": "/x"}],
            config={"s": {"type": "string", "secret": True}},
            connections={"crm": {"type": "http", "base_url": "http://x/${config.s}"}},
        )
    with pytest.raises(ValidationFailed, match=r"unknown name 'payload'|payload"):
        await step_runner(
            [{"id": "a", "type": "http", "connection": "crm", "url": "/x"}],
            connections={"crm": {"type": "http", "base_url": "${payload.x}"}},
        )


async def test_a_line_break_in_a_header_value_is_bad_input(
    step_runner: Any, http_server: Any
) -> None:
    """F8: aiohttp refuses CR/LF in headers (injection); the step says so in plain words
    (no library path) and the event is not retried (dead letter)."""
    server = await http_server(lambda call: _ok())
    runner = await step_runner(
        f"""
        - id: h
          type: http
          method: POST
          url: {server.url}/p
          headers: {{X-Name: "${{payload.name}}"}}
        """
    )
    with pytest.raises(PoisonMessageError) as info:
        await runner.run("h", {"name": "a\r\nX-Injected: yes"})
    assert "line break (CR/LF)" in str(info.value)
    assert ".pyx" not in str(info.value) and "aiohttp" not in str(info.value)
    assert server.calls == []


async def _ok() -> web.Response:
    return web.json_response({})


async def test_no_answer_is_told_in_words_not_library_class_names(step_runner: Any) -> None:
    """A request that got no answer said `failed: ClientConnectorError`; it now says why, and
    stays retriable. Real sockets on loopback: nothing listening, a server that hangs up at
    once, one that cuts its body short."""
    from tests.integration.conftest import free_port

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (hang_up, cut_short)]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    try:
        runner = await step_runner(
            [{"id": "refused", "type": "http", "url": f"http://127.0.0.1:{free_port()}/x"},
             {"id": "hangup", "type": "http", "url": f"http://127.0.0.1:{ports[0]}/x"},
             {"id": "cut", "type": "http", "url": f"http://127.0.0.1:{ports[1]}/x"}]
        )  # fmt: skip
        for step, reason in (
            ("refused", "connection refused"),
            ("hangup", "closed the connection without an answer"),
            ("cut", "cut off before its end"),
        ):
            with pytest.raises(RetriableError, match=reason) as err:
                await runner.run(step, {})
            assert "Client" not in str(err.value) and "Error" not in str(err.value)
    finally:
        for s in servers:
            s.close()


def _for_each_step(**extra: Any) -> list[dict[str, Any]]:
    step: dict[str, Any] = {
        "id": "push",
        "type": "http",
        "method": "POST",
        "url": "${config.api}/items/${item.n}",
        "for_each": "${payload.items}",
        "json": "${item}",
    }
    step.update(extra)
    return [step]


async def test_for_each_honours_max_concurrency(step_runner: Any, http_server: Any) -> None:
    in_flight = {"now": 0, "max": 0}

    async def slow(call: Any) -> web.Response:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        await asyncio.sleep(0.05)
        in_flight["now"] -= 1
        return web.json_response({"n": call.json["n"]})

    server = await http_server(slow)
    for limit, want in ((3, 3), (None, 1)):
        in_flight["max"] = 0
        extra = {"max_concurrency": limit} if limit else {}
        runner = await step_runner(
            _for_each_step(**extra), config={"api": {"type": "string"}}, values={"api": server.url}
        )
        out = await runner.run("push", {"items": [{"n": i} for i in range(7)]})
        assert in_flight["max"] == want
        # answers stay in item order whatever order they arrived in
        assert [r["body"]["n"] for r in out.result["responses"]] == list(range(7))


async def test_for_each_continue_records_failed_items(step_runner: Any, http_server: Any) -> None:
    async def some_fail(call: Any) -> web.Response:
        if call.json["n"] % 2:
            return web.json_response({"error": "no"}, status=422)
        return web.json_response({"n": call.json["n"]})

    server = await http_server(some_fail)
    runner = await step_runner(
        _for_each_step(on_item_error="continue", max_concurrency=2),
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )
    out = await runner.run("push", {"items": [{"n": i} for i in range(4)]})
    assert out.result["count"] == 4 and out.result["failed"] == 2
    responses = out.result["responses"]
    assert responses[0]["body"] == {"n": 0} and responses[2]["body"] == {"n": 2}
    assert responses[1]["index"] == 1 and "422" in responses[1]["error"]
    assert "422" in responses[3]["error"]


async def test_for_each_retry_sends_only_the_failed_items(
    step_runner: Any, http_server: Any
) -> None:
    from streamflow.envelope import Envelope, decode, encode, new_execution_id

    down = {"n": 2}

    async def flaky(call: Any) -> web.Response:
        if call.json["n"] == down["n"]:
            return web.json_response({"error": "busy"}, status=503)
        if call.json["n"] == 99:
            return web.json_response({"error": "bad"}, status=400)
        return web.json_response({"n": call.json["n"]})

    server = await http_server(flaky)
    runner = await step_runner(
        _for_each_step(max_concurrency=4),
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )
    step = runner.step("push")
    items = [{"n": i} for i in range(5)]
    env = Envelope(new_execution_id(), runner.integration.name, "f", "push", {"items": items})
    with pytest.raises(RetriableError, match=r"1 of 5 for_each item\(s\) failed; item 2"):
        await step.process(env)  # type: ignore[misc]
    assert sorted(c.json["n"] for c in server.calls) == [0, 1, 2, 3, 4]
    # the retry travels through a topic: what the step kept must survive the encoding
    env = decode(*encode(env, "json"), "json")
    server.calls.clear()
    down["n"] = -1
    out = await step.process(env)  # type: ignore[misc]
    assert [c.json["n"] for c in server.calls] == [2]  # only the failed item again
    assert [r["body"]["n"] for r in out.result["responses"]] == [0, 1, 2, 3, 4]
    assert not any(k.startswith("for_each.") for k in env.meta)  # nothing left behind
    keys = {c.headers["Idempotency-Key"] for c in server.calls}
    assert keys == {f"{env.execution_id}-push-2"}

    # an item the API refuses for good dead-letters the event (retrying would not help)
    env = Envelope(
        new_execution_id(), runner.integration.name, "f", "push", {"items": [{"n": 1}, {"n": 99}]}
    )
    with pytest.raises(PoisonMessageError, match=r"item 1: .*400"):
        await step.process(env)  # type: ignore[misc]


async def test_scatter_gather_picks_from_the_answers_in_time(
    step_runner: Any, http_server: Any
) -> None:
    async def carrier(call: Any) -> web.Response:
        name = call.path.strip("/").split("/")[0]
        if name == "slow":
            await asyncio.sleep(8)
        if name == "down":
            return web.json_response({"error": "busy"}, status=503)
        prices = {"fast": 12.5, "cheap": 9.9, "slow": 1.0}
        return web.json_response({"price": prices[name]})

    server = await http_server(carrier)
    runner = await step_runner(
        """
        - id: quotes
          type: scatter_gather
          targets: ${payload.carriers}
          method: POST
          url: ${config.api}/${item}/quotes
          json: {kg: "${payload.kg}"}
          within: 2s
          pick: ${min_by(answers, 'item.body.price')}
          replace_payload: true
        """,
        config={"api": {"type": "string"}},
        values={"api": server.url},
    )
    out = await runner.run("quotes", {"kg": 2, "carriers": ["fast", "slow", "cheap", "down"]})
    assert out.payload == {"target": "cheap", "status": 200, "body": {"price": 9.9}}
    assert [a["target"] for a in out.result["answers"]] == ["fast", "cheap"]
    assert out.result["late"] == ["slow"]  # the cheapest, but too late: dropped
    assert {f["target"] for f in out.result["failed"]} == {"slow", "down"}
    assert len(server.calls) == 4  # one request per target, all at once

    with pytest.raises(RetriableError, match="0 answer\\(s\\) of 2: slow: no answer within 2s"):
        await runner.run("quotes", {"kg": 1, "carriers": ["slow", "down"]})
