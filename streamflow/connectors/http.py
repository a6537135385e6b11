"""The ``http`` step: call an HTTP API with aiohttp (one session per agent).

The response is stored as ``steps.<id>`` (``status``, ``headers``, ``body`` parsed by
content type) and, with ``replace_payload: true``, becomes the payload. Failures are
classified for the retry policy: connection errors, timeouts and the ``retry_on``
statuses (default 408, 425, 429, 5xx; ``Retry-After`` honoured) are retriable; any other
status outside ``success_codes`` fails the event for good (dead-lettered, not retried).
"""

from __future__ import annotations

import base64
import email.utils
import time
from typing import Any, ClassVar, Literal

import aiohttp
import orjson
from pydantic import Field

from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import Duration, Model, StepConfig
from streamflow.topology.registry import step_config, step_factory

DEFAULT_RETRY_ON = (408, 425, 429, *range(500, 600))


class HttpAuth(Model):
    type: Literal["bearer", "basic", "api_key"]
    token: str | None = Field(None, description="bearer token")
    username: str | None = None
    password: str | None = None
    name: str = Field("X-API-Key", description="api_key: header or query parameter name")
    value: str | None = Field(None, description="api_key: the key")
    in_: Literal["header", "query"] = Field("header", alias="in")


@step_config("http")
class HttpConfig(StepConfig):
    """Call an HTTP endpoint; the response is stored as steps.<id>."""

    type: Literal["http"]
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(description="a template, e.g. ${config.api_url}/orders/${payload.id}")
    headers: dict[str, str] = Field(default_factory=dict, description="header templates")
    query: dict[str, Any] = Field(default_factory=dict, description="query parameter templates")
    json_: Any = Field(None, alias="json", description="JSON body (a template)")
    body: str | None = Field(None, description="raw body (a template)")
    form: dict[str, Any] | None = Field(None, description="form-encoded body")
    auth: HttpAuth | None = Field(
        None,
        description="type bearer (token), basic (username, password), api_key (name, value, in)",
    )
    timeout: Duration = Field(30.0, description="whole request, e.g. 10s")
    success_codes: list[int] = Field(default_factory=list, description="default: any 2xx")
    retry_on: list[int] = Field(
        default_factory=lambda: list(DEFAULT_RETRY_ON),
        description="statuses retried (default 408, 425, 429, 5xx); other failures dead-letter",
    )
    replace_payload: bool = Field(False, description="the response body becomes the payload")
    idempotency_key: bool = Field(True, description="send Idempotency-Key: <execution>-<step>")
    secret_fields: ClassVar[frozenset[str]] = frozenset({"auth", "headers", "query"})
    example: ClassVar[str] = """- id: push
  type: http
  method: POST
  url: ${config.crm_url}/customers
  auth: {type: bearer, token: "${config.crm_token}"}
  json: ${payload}
  timeout: 10s
  retry: {max_attempts: 5, backoff: exponential, delay: 1s, max_delay: 30s}"""


class HttpStep(AsyncStep):
    def __init__(self, config: HttpConfig, ctx: StepContext) -> None:
        if ctx.http_session is None:
            raise ConfigError(f"step {config.id}: no HTTP session available")
        if (config.json_ is not None) + (config.body is not None) + (config.form is not None) > 1:
            raise ConfigError(f"step {config.id}: use only one of json, body, form")
        self.cfg = config
        self.ctx = ctx
        self.session = ctx.http_session
        self.url = compile_value(config.url)
        self.headers = compile_value(config.headers)
        self.query = compile_value(config.query)
        self.json = compile_value(config.json_) if config.json_ is not None else None
        self.body = compile_value(config.body) if config.body is not None else None
        self.form = compile_value(config.form) if config.form is not None else None
        self.auth = compile_value(config.auth.model_dump(by_alias=True)) if config.auth else None
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.retry_on = frozenset(config.retry_on)

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        url = str(self.url.render(scope))
        headers = {k: str(v) for k, v in self.headers.render(scope).items()}
        query = {k: str(v) for k, v in self.query.render(scope).items() if v is not None}
        if self.cfg.idempotency_key:
            headers.setdefault("Idempotency-Key", f"{env.execution_id}-{self.cfg.id}")
        if self.auth is not None:
            _apply_auth(self.auth.render(scope), headers, query)
        data: Any = None
        if self.json is not None:
            data = orjson.dumps(self.json.render(scope))
            headers.setdefault("Content-Type", "application/json")
        elif self.body is not None:
            data = str(self.body.render(scope)).encode()
        elif self.form is not None:
            data = {k: str(v) for k, v in self.form.render(scope).items()}
        try:
            async with self.session().request(
                self.cfg.method, url, headers=headers, params=query, data=data, timeout=self.timeout
            ) as resp:
                raw = await resp.read()
                result = {
                    "status": resp.status,
                    "headers": {str(k): v for k, v in resp.headers.items()},
                    "body": _parse_body(raw, resp.content_type),
                }
        except TimeoutError as exc:
            raise RetriableError(
                f"{self.cfg.method} {_safe(url)} timed out after {self.cfg.timeout}s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise RetriableError(
                f"{self.cfg.method} {_safe(url)} failed: {exc.__class__.__name__}"
            ) from exc
        status = int(result["status"])
        ok = status in self.cfg.success_codes if self.cfg.success_codes else 200 <= status < 300
        if not ok:
            msg = f"{self.cfg.method} {_safe(url)} answered {status}"
            if status in self.retry_on:
                raise RetriableError(msg, _retry_after(result["headers"].get("Retry-After")))
            raise PoisonMessageError(msg)
        payload = result["body"] if self.cfg.replace_payload else env.payload
        return Outcome(payload, result, note=str(status))


def _apply_auth(auth: dict[str, Any], headers: dict[str, str], query: dict[str, str]) -> None:
    kind = auth["type"]
    if kind == "bearer":
        headers["Authorization"] = f"Bearer {auth['token']}"
    elif kind == "basic":
        cred = f"{auth['username']}:{auth['password'] or ''}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
    elif auth["in"] == "query":
        query[auth["name"]] = str(auth["value"])
    else:
        headers[auth["name"]] = str(auth["value"])


def _parse_body(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    if "json" in content_type:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode()


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _safe(url: str) -> str:
    """The URL without its query string (which may hold an API key)."""
    return url.split("?", 1)[0]


@step_factory("http")
def _http(config: HttpConfig, ctx: StepContext) -> HttpStep:
    return HttpStep(config, ctx)
