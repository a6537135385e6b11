"""The ``http`` step: call an HTTP API with aiohttp (one session per App).

The response is stored as ``steps.<id>`` (``status``, ``headers``, ``body`` parsed by
content type) and, with ``replace_payload: true``, becomes the payload. Failures are
classified for the retry policy: connection errors, timeouts and the ``retry_on``
statuses (default 408, 425, 429, 5xx; ``Retry-After`` honoured) are retriable; any other
status outside ``success_codes`` fails the event for good (dead-lettered, not retried).

Auth is ``bearer``, ``basic``, ``api_key`` or ``oauth2`` (client credentials or refresh
token; the token is cached per App and refreshed before it expires, see ``auth.py``).
``connection: <name>`` takes base URL, auth, headers, timeout and a concurrency limit
from the integration's ``connections:``; a relative ``url`` is joined to ``base_url``.

``for_each: ${payload.items}`` sends one request per item, in order (``${item}`` is the
current item); the result is ``{responses: [...], count}`` and each request carries its
own ``Idempotency-Key`` (``<execution>-<step>-<index>``). A failure fails the whole step,
so a retry sends every request again: the keys let the API see the repeats.

``cache: {ttl: 60s}`` keeps 2xx results in memory (per step) under ``key`` (default:
method, URL and query), so repeated lookups do not hit the API.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, ValidationInfo, model_validator

from streamflow.connectors.auth import HttpAuth
from streamflow.connectors.connections import ConnectedStep, FieldsOf, http_fields
from streamflow.connectors.httpclient import HttpCaller, join_url, retry_after, safe_url
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import ROOTS, compile_value
from streamflow.topology.models import Duration, Model
from streamflow.topology.registry import step_config, step_factory

__all__ = ["HttpAuth", "HttpConfig", "HttpStep"]

DEFAULT_RETRY_ON = (408, 425, 429, *range(500, 600))
_KINDS = ("http",)


class ResponseCache(Model):
    ttl: Duration = Field(description="how long a 2xx result is reused, e.g. 5m")
    key: str | None = Field(None, description="template; default: method, URL and query")
    max_entries: int = Field(1000, ge=1, le=1_000_000)


@step_config("http")
class HttpConfig(ConnectedStep):
    """Call an HTTP endpoint; the response is stored as steps.<id>."""

    type: Literal["http"]
    connection: str | None = Field(None, description="a `connections:` entry of type http")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(description="a template, e.g. ${config.api_url}/orders/${payload.id}")
    base_url: str | None = Field(None, description="prefix of a relative url")
    headers: dict[str, str] = Field(default_factory=dict, description="header templates")
    query: dict[str, Any] = Field(default_factory=dict, description="query parameter templates")
    json_: Any = Field(None, alias="json", description="JSON body (a template)")
    body: str | None = Field(None, description="raw body (a template)")
    form: dict[str, Any] | None = Field(None, description="form-encoded body")
    auth: HttpAuth | None = Field(
        None,
        description="type bearer (token), basic (username, password), api_key (name, value, "
        "in), oauth2 (token_url, client_id, client_secret, scope, grant, refresh_token)",
    )
    timeout: Duration = Field(30.0, description="whole request, e.g. 10s")
    success_codes: list[int] = Field(default_factory=list, description="default: any 2xx")
    retry_on: list[int] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        description="statuses retried (default 408, 425, 429, 5xx); other failures dead-letter",
    )
    replace_payload: bool = Field(False, description="the response body becomes the payload")
    idempotency_key: bool = Field(True, description="send Idempotency-Key: <execution>-<step>")
    for_each: str | None = Field(
        None, description="${...} giving a list: one request per item, read as ${item}"
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=10_000, description="requests in flight (per connection, else per step)"
    )
    cache: ResponseCache | None = Field(None, description="reuse 2xx results: {ttl, key}")
    secret_fields: ClassVar[frozenset[str]] = frozenset({"auth", "headers", "query"})
    expression_roots: ClassVar[frozenset[str]] = frozenset({"item"})
    example: ClassVar[str] = """- id: push
  type: http
  method: POST
  url: ${config.crm_url}/customers
  auth:
    type: oauth2
    token_url: ${config.crm_url}/oauth/token
    client_id: ${config.crm_client_id}
    client_secret: ${config.crm_client_secret}
    scope: customers:write
  json: ${payload}
  timeout: 10s
  retry: {max_attempts: 5, backoff: exponential, delay: 1s, max_delay: 30s}"""

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return http_fields

    @model_validator(mode="after")
    def _one_body(self) -> HttpConfig:
        if (self.json_ is not None) + (self.body is not None) + (self.form is not None) > 1:
            raise ValueError("use only one of json, body, form")
        return self


class HttpStep(AsyncStep):
    def __init__(self, config: HttpConfig, ctx: StepContext) -> None:
        if (config.json_ is not None) + (config.body is not None) + (config.form is not None) > 1:
            raise ConfigError("use only one of json, body, form")
        self.cfg = config
        self.ctx = ctx
        self.caller = HttpCaller(
            config.id,
            ctx,
            config.auth,
            config.timeout,
            limit_key=config.connection,
            limit=config.max_concurrency,
        )
        roots = ROOTS | config.expression_roots  # ${item} in for_each requests

        def template(value: Any) -> Any:
            return compile_value(value, roots=roots) if value is not None else None

        self.url = compile_value(config.url, roots=roots)
        self.base_url = compile_value(config.base_url, roots=roots)
        self.headers = compile_value(config.headers, roots=roots)
        self.query = compile_value(config.query, roots=roots)
        self.json = template(config.json_)
        self.body = template(config.body)
        self.form = template(config.form)
        self.for_each = compile_value(config.for_each) if config.for_each is not None else None
        self.retry_on = frozenset(config.retry_on)
        self.cache: OrderedDict[str, tuple[float, dict[str, Any]]] | None = None
        self.cache_key = None
        if config.cache is not None:
            self.cache = OrderedDict()
            self.cache_key = template(config.cache.key)

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        if self.for_each is None:
            result = await self.call(env, scope, None)
            payload = result["body"] if self.cfg.replace_payload else env.payload
            return Outcome(payload, result, note=str(result["status"]))
        items = self.for_each.render(scope)
        if items is None:
            items = []
        if not isinstance(items, list | tuple):
            raise PoisonMessageError("for_each did not give a list")
        responses = []
        for i, item in enumerate(items):
            responses.append(await self.call(env, {**scope, "item": item}, i))
        payload = [r["body"] for r in responses] if self.cfg.replace_payload else env.payload
        statuses = sorted({r["status"] for r in responses})
        note = f"{len(responses)} x {'/'.join(map(str, statuses))}" if responses else "0 items"
        return Outcome(payload, {"responses": responses, "count": len(responses)}, note=note)

    async def call(
        self, env: Envelope, scope: Mapping[str, Any], index: int | None
    ) -> dict[str, Any]:
        url = join_url(self.base_url.render(scope), str(self.url.render(scope)))
        headers = {k: str(v) for k, v in self.headers.render(scope).items()}
        query = {k: str(v) for k, v in self.query.render(scope).items() if v is not None}
        if self.cfg.idempotency_key:
            suffix = "" if index is None else f"-{index}"
            headers.setdefault("Idempotency-Key", f"{env.execution_id}-{self.cfg.id}{suffix}")
        key = None
        if self.cache is not None:
            key = self.key(url, query, scope)
            hit = self.cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                self.cache.move_to_end(key)
                return hit[1]
        data: Any = None
        if self.json is not None:
            data = orjson.dumps(self.json.render(scope))
            headers.setdefault("Content-Type", "application/json")
        elif self.body is not None:
            data = str(self.body.render(scope)).encode()
        elif self.form is not None:
            data = {k: str(v) for k, v in self.form.render(scope).items()}
        resp = await self.caller.send(self.cfg.method, url, headers, query, data, scope)
        status = resp.status
        ok = status in self.cfg.success_codes if self.cfg.success_codes else 200 <= status < 300
        if not ok:
            body = resp.as_result().get("body")
            detail = "" if body is None else f": {str(body)[:300]}"  # the server's reason
            msg = self.caller.mask(f"{self.cfg.method} {safe_url(url)} answered {status}{detail}")
            if status in self.retry_on:
                raise RetriableError(msg, retry_after(resp.headers.get("Retry-After")))
            raise PoisonMessageError(msg)
        result = resp.as_result()
        if self.cache is not None and key is not None and 200 <= status < 300:
            assert self.cfg.cache is not None
            self.cache[key] = (time.monotonic() + self.cfg.cache.ttl, result)
            self.cache.move_to_end(key)
            while len(self.cache) > self.cfg.cache.max_entries:
                self.cache.popitem(last=False)
        return result

    def key(self, url: str, query: dict[str, str], scope: Mapping[str, Any]) -> str:
        if self.cache_key is not None:
            return str(self.cache_key.render(scope))
        return f"{self.cfg.method} {url} {sorted(query.items())}"


@step_factory("http")
def _http(config: HttpConfig, ctx: StepContext) -> HttpStep:
    return HttpStep(config, ctx)
