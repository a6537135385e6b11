"""The ``http`` step: call an HTTP API with aiohttp (one session per App).

The response is stored as ``steps.<id>`` (``status``, ``headers``, ``body`` parsed by
content type) and, with ``replace_payload: true``, becomes the payload. Failures are
classified for the retry policy: connection errors, timeouts and the ``retry_on``
statuses (default 408, 425, 429, 5xx; ``Retry-After`` honoured) are retriable; any other
status outside ``success_codes`` fails the event for good (dead-lettered, not retried).

Auth is ``bearer``, ``basic``, ``api_key``, ``oauth2`` (client credentials or refresh
token; the token is cached per App and refreshed before it expires, see ``auth.py``) or
``aws_sigv4`` (AWS Signature Version 4, for any AWS API).
``connection: <name>`` takes base URL, auth, headers, timeout and a concurrency limit
from the integration's ``connections:``; a relative ``url`` is joined to ``base_url``.

``for_each: ${payload.items}`` sends one request per item (``${item}`` is the current item),
``max_concurrency`` of them at a time (default 1: in order); the result is ``{responses:
[...], count, failed}`` in item order and each request carries its own ``Idempotency-Key``
(``<execution>-<step>-<index>``). ``on_item_error: fail`` (default) fails the step when an
item fails, after the other items finished; the answers already received travel with the
retry (in ``meta``), so a retry sends only the items that failed. ``on_item_error:
continue`` records a failed item as ``{index, error}`` in its place (``failed`` counts them)
and goes on.

``cache: {ttl: 60s}`` keeps 2xx results in memory (per step) under ``key`` (default:
method, URL and query), so repeated lookups do not hit the API; with ``store: redis`` and
a redis ``connection`` they are shared by every worker (memory first, then Redis). One
process makes one call for concurrent misses of a key. ``rate_limit: {requests: 100,
per: 1s}`` waits for a slot before each request (``store: redis``: shared by every
worker; see ``cache.py``).

``paginate:`` reads every page of a list endpoint (``Link`` header, a next URL or cursor in
the body, page or offset numbers; see ``paginate.py``): the result is ``{status, headers,
items, pages, complete}`` (``headers``/``status`` of the last page) and, with
``replace_payload``, the items become the payload. In its templates ``response`` (and
``steps.<this step>``) is the page just read. A failing page fails the step; a retry reads
from the first page again.

``xml:`` sends an XML body (a ``{root: value}`` rendered like ``render_xml``, or text) and
``response_format: xml`` parses the answer safely (no DTDs, no entities, no network; see
``exprxml.py``); a SOAP Fault in it fails the step (``faultcode``/``Code`` and reason in the
message), retried only for a Server/Receiver fault with a ``retry_on`` status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from streamflow import exactjson
from streamflow.connectors.auth import HttpAuth
from streamflow.connectors.cache import RateLimit, RateLimiter, ResponseCache, TwoLevelCache
from streamflow.connectors.connections import ConnectedStep, FieldsOf, http_fields
from streamflow.connectors.httpclient import (
    HttpCaller,
    Response,
    join_url,
    retry_after,
    safe_url,
)
from streamflow.connectors.paginate import Pager, Paginate, PaginationError
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import ROOTS, ExpressionEvalError, compile_value
from streamflow.topology.exprxml import XmlError, parse_xml, render_xml
from streamflow.topology.models import Duration, ReadsOwnResult, Secret
from streamflow.topology.registry import step_type

__all__ = ["HttpAuth", "HttpConfig", "HttpStep", "ResponseCache"]

log = logging.getLogger("streamflow.step")
DEFAULT_RETRY_ON = (408, 425, 429, *range(500, 600))
_KINDS = ("http",)


class HttpConfig(ConnectedStep):
    """Call an HTTP endpoint; the response is stored as steps.<id>."""

    type: Literal["http"]
    connection: str | None = Field(None, description="a `connections:` entry of type http")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: str = Field(description="a template, e.g. ${config.api_url}/orders/${payload.id}")
    base_url: str | None = Field(None, description="prefix of a relative url")
    headers: Annotated[dict[str, str], Secret] = Field(
        default_factory=dict, description="header templates"
    )
    query: Annotated[dict[str, Any], Secret] = Field(
        default_factory=dict, description="query parameter templates"
    )
    json_: Any = Field(None, alias="json", description="JSON body (a template)")
    body: str | None = Field(None, description="raw body (a template)")
    form: dict[str, Any] | None = Field(None, description="form-encoded body")
    xml: Any = Field(
        None,
        description="XML body: {root: value} rendered like render_xml(), or XML text "
        "(Content-Type application/xml unless set)",
    )
    response_format: Literal["auto", "json", "xml", "text"] = Field(
        "auto",
        description="how the answer's body is read: auto (JSON by content type, else text), "
        "json, xml (parse_xml shape; a SOAP Fault fails the step), text",
    )
    auth: Annotated[HttpAuth | None, Secret] = Field(
        None,
        description="type bearer (token), basic (username, password), api_key (name, value, "
        "in), oauth2 (token_url, client_id, client_secret, scope, grant, refresh_token), "
        "aws_sigv4 (service, region, access_key_id, secret_access_key, session_token)",
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
    on_item_error: Literal["fail", "continue"] = Field(
        "fail",
        description="for_each: fail the step when an item fails (a retry sends only the failed "
        "items), or continue with {index, error} in the failed item's place",
    )
    cache: ResponseCache | None = Field(
        None, description="reuse 2xx results: {ttl, key, store: memory|redis, connection}"
    )
    rate_limit: RateLimit | None = Field(
        None, description="{requests, per, store: memory|redis, connection}: wait for a slot"
    )
    paginate: Annotated[Paginate | None, ReadsOwnResult] = Field(
        None,
        description="read every page: style link (Link header), next (URL), cursor, page, "
        "offset; items, max_pages; the result is {status, headers, items, pages, complete}",
    )
    expression_roots: ClassVar[frozenset[str]] = frozenset({"item", "response"})

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return http_fields

    @model_validator(mode="after")
    def _one_body(self) -> HttpConfig:
        bodies = (self.json_, self.body, self.form, self.xml)
        if sum(b is not None for b in bodies) > 1:
            raise ValueError("use only one of json, body, form, xml")
        if self.paginate is not None and self.for_each is not None:
            raise ValueError("paginate and for_each do not combine (one walk per event)")
        if self.paginate is not None and self.cache is not None:
            raise ValueError("paginate and cache do not combine")
        return self


@step_type(
    "http",
    HttpConfig,
    category="http",
    since="0.1.0",
    example="""- id: push
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
  retry: {max_attempts: 5, backoff: exponential, delay: 1s, max_delay: 30s}""",
)
class HttpStep(AsyncStep):
    def __init__(self, config: HttpConfig, ctx: StepContext) -> None:
        bodies = (config.json_, config.body, config.form, config.xml)
        if sum(b is not None for b in bodies) > 1:
            raise ConfigError("use only one of json, body, form, xml")
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
        self.xml = template(config.xml)
        self.for_each = compile_value(config.for_each) if config.for_each is not None else None
        self.retry_on = frozenset(config.retry_on)
        self.pager = Pager(config.paginate, roots) if config.paginate is not None else None
        self.cache = (
            TwoLevelCache(config.cache, ctx, roots, lock_ttl=config.timeout + 1.0)
            if config.cache
            else None
        )
        self.limiter = (
            RateLimiter(config.rate_limit, ctx, config.connection, roots)
            if config.rate_limit
            else None
        )

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        if self.pager is not None:
            result = await self.walk(env, scope)
            payload = result["items"] if self.cfg.replace_payload else env.payload
            n, pages = len(result["items"]), result["pages"]
            more = "" if result["complete"] else " (max_pages reached)"
            return Outcome(payload, result, note=f"{n} item(s) in {pages} page(s){more}")
        if self.for_each is None:
            result = await self.call(env, scope, None)
            payload = result["body"] if self.cfg.replace_payload else env.payload
            return Outcome(payload, result, note=str(result["status"]))
        items = self.for_each.render(scope)
        if items is None:
            items = []
        if not isinstance(items, list | tuple):
            raise PoisonMessageError("for_each did not give a list")
        responses = await self.each(env, scope, list(items))
        failed = sum(1 for r in responses if "error" in r)
        payload = [r.get("body") for r in responses] if self.cfg.replace_payload else env.payload
        statuses = sorted({str(r.get("status", "error")) for r in responses})
        note = f"{len(responses)} x {'/'.join(statuses)}" if responses else "0 items"
        result = {"responses": responses, "count": len(responses), "failed": failed}
        return Outcome(payload, result, note=note)

    async def each(
        self,
        env: Envelope,
        scope: Mapping[str, Any],
        items: list[Any],
        within: float | None = None,
    ) -> list[Any]:
        """One request per item, ``max_concurrency`` at a time. Answers of an earlier attempt
        (kept in ``env.meta`` when it failed) are reused: only failed items are sent again.
        ``within`` (seconds): requests still unanswered then are cancelled and fail as late
        (``TimeoutError``)."""
        key = f"for_each.{self.cfg.id}"
        done: dict[str, Any] = env.meta.pop(key, None) or {}
        results: list[Any] = [done.get(str(i)) for i in range(len(items))]
        gate = asyncio.Semaphore(self.cfg.max_concurrency or 1)

        async def one(i: int) -> None:
            async with gate:
                results[i] = await self.call(env, {**scope, "item": items[i]}, i)

        todo = [i for i, r in enumerate(results) if r is None]
        tasks = [asyncio.ensure_future(one(i)) for i in todo]
        late: set[int] = set()
        if within is not None and tasks:
            _, pending = await asyncio.wait(tasks, timeout=within)
            for i, t in zip(todo, tasks, strict=True):
                if t in pending:
                    t.cancel()
                    late.add(i)
        outcomes: list[Any] = list(await asyncio.gather(*tasks, return_exceptions=True))
        for n, i in enumerate(todo):
            if i in late:
                outcomes[n] = TimeoutError(f"no answer within {within:g}s (late: dropped)")
        errors = [(i, e) for i, e in zip(todo, outcomes, strict=True) if e is not None]
        for _, e in errors:
            if not isinstance(e, Exception):  # cancellation and the like: not ours to keep
                raise e
        if not errors:
            return results
        if self.cfg.on_item_error == "continue":
            for i, e in errors:
                results[i] = {"index": i, "error": str(e) or type(e).__name__}
            return results
        env.meta[key] = {str(i): r for i, r in enumerate(results) if r is not None}
        bad = f"{len(errors)} of {len(items)} for_each item(s) failed"
        for i, e in errors:  # one that would fail the same way again decides: dead letter
            if isinstance(e, PoisonMessageError | ExpressionEvalError):
                raise PoisonMessageError(f"{bad}; item {i}: {e}") from e
        i, e = errors[0]
        after = e.retry_after if isinstance(e, RetriableError) else None
        raise RetriableError(f"{bad}; item {i}: {str(e) or type(e).__name__}", after) from e

    async def call(
        self, env: Envelope, scope: Mapping[str, Any], index: int | None
    ) -> dict[str, Any]:
        url = join_url(self.base_url.render(scope), str(self.url.render(scope)))
        query = {k: str(v) for k, v in self.query.render(scope).items() if v is not None}
        suffix = "" if index is None else f"-{index}"
        if self.cache is None:
            return (await self.fetch(env, scope, suffix, url, query)).as_result()
        key = self.cache.key(f"{self.cfg.method} {url} {sorted(query.items())}", scope)

        async def load() -> dict[str, Any]:
            return (await self.fetch(env, scope, suffix, url, query)).as_result()

        def cacheable(result: dict[str, Any]) -> bool:
            return 200 <= int(result["status"]) < 300

        return await self.cache.get_or_load(key, scope, load, cacheable)

    async def fetch(
        self, env: Envelope, scope: Mapping[str, Any], suffix: str, url: str, query: dict[str, str]
    ) -> Response:
        """One request (after a rate-limit slot); a status outside success_codes raises
        (retriable or poison)."""
        if self.limiter is not None:
            await self.limiter.wait(scope)
        headers = {k: str(v) for k, v in self.headers.render(scope).items()}
        if self.cfg.idempotency_key:
            headers.setdefault("Idempotency-Key", f"{env.execution_id}-{self.cfg.id}{suffix}")
        data: Any = None
        if self.json is not None:
            data = exactjson.dumps(self.json.render(scope))
            headers.setdefault("Content-Type", "application/json")
        elif self.body is not None:
            data = str(self.body.render(scope)).encode()
        elif self.form is not None:
            data = {k: str(v) for k, v in self.form.render(scope).items()}
        elif self.xml is not None:
            doc = self.xml.render(scope)
            try:
                text = doc if isinstance(doc, str) else render_xml(doc)
            except XmlError as exc:
                raise PoisonMessageError(f"xml body: {exc}") from None
            data = text.encode()
            headers.setdefault("Content-Type", "application/xml; charset=utf-8")
        resp = await self.caller.send(self.cfg.method, url, headers, query, data, scope)
        if self.cfg.response_format != "auto":
            resp.body = read_body(resp, self.cfg.response_format)
            if self.cfg.response_format == "xml":
                self.check_fault(resp, url)
        status = resp.status
        ok = status in self.cfg.success_codes if self.cfg.success_codes else 200 <= status < 300
        if not ok:
            body = resp.body
            # the server's reason, as JSON text (never a Python repr)
            reason = body if isinstance(body, str) else exactjson.dumps_text(body)
            detail = "" if body is None else f": {reason[:300]}"
            msg = self.caller.mask(f"{self.cfg.method} {safe_url(url)} answered {status}{detail}")
            if status in self.retry_on:
                raise RetriableError(msg, retry_after(resp.headers.get("Retry-After")))
            raise PoisonMessageError(msg)
        return resp

    def check_fault(self, resp: Response, url: str) -> None:
        """A SOAP Fault (1.1 or 1.2) fails the step: retried when it is the server's
        (Server/Receiver) and the status is in retry_on, else dead-lettered."""
        fault = soap_fault(resp.body)
        if fault is None:
            return
        code, reason = fault
        msg = self.caller.mask(
            f"{self.cfg.method} {safe_url(url)} answered a SOAP fault {code}: {reason}"
        )[:1000]
        server_side = code.rsplit(":", 1)[-1] in ("Server", "Receiver")
        if server_side and resp.status in self.retry_on:
            raise RetriableError(msg, retry_after(resp.headers.get("Retry-After")))
        raise PoisonMessageError(msg)

    async def walk(self, env: Envelope, scope: Mapping[str, Any]) -> dict[str, Any]:
        """Every page (see paginate.py): {status, headers, items, pages, complete}."""
        assert self.pager is not None
        url = join_url(self.base_url.render(scope), str(self.url.render(scope)))
        query = {k: str(v) for k, v in self.query.render(scope).items() if v is not None}
        state = self.pager.begin(url, query)
        items: list[Any] = []
        own = self.cfg.id

        def page_scope(response: Mapping[str, Any]) -> Mapping[str, Any]:
            steps = {**(scope.get("steps") or {}), own: response}
            return {**scope, "steps": steps, "response": response}

        while True:
            req = state.request
            resp = await self.fetch(env, scope, f"-p{state.number + 1}", req.url, req.query)
            result = resp.as_result()
            try:
                found = self.pager.items(resp.body)
                items.extend(found)
                more = self.pager.advance(state, result, resp.next_link, found, page_scope)
            except PaginationError as exc:
                raise PoisonMessageError(
                    self.caller.mask(f"page {state.number + 1}: {exc}")
                ) from None
            if not more:
                complete = True
                break
            if state.number >= self.pager.cfg.max_pages:
                complete = False
                log.warning("step %s: stopped after max_pages=%d", own, state.number)
                break
        return {
            "status": result["status"],
            "headers": result["headers"],
            "items": items,
            "pages": state.number,
            "complete": complete,
        }


def read_body(resp: Response, fmt: str) -> Any:
    """The body per ``response_format`` (json/xml/text); unreadable -> PoisonMessageError
    when the status says success (an error answer keeps its text for the message)."""
    if not resp.raw:
        return None
    try:
        if fmt == "json":
            return exactjson.loads(resp.raw)
        if fmt == "xml":
            return parse_xml(resp.raw)
    except (exactjson.JSONDecodeError, XmlError) as exc:
        if 200 <= resp.status < 300:
            raise PoisonMessageError(f"the answer is not {fmt}: {exc}") from None
    return resp.raw.decode(errors="replace")


def soap_fault(body: Any) -> tuple[str, str] | None:
    """(code, reason) of a SOAP 1.1/1.2 Fault in a parse_xml body, else None."""
    if not isinstance(body, dict):
        return None
    env = body.get("Envelope")
    inner = env.get("Body") if isinstance(env, dict) else None
    fault = inner.get("Fault") if isinstance(inner, dict) else None
    if not isinstance(fault, dict):
        return None
    code: Any = fault.get("faultcode")  # 1.1
    reason: Any = fault.get("faultstring")
    if code is None:  # 1.2: Code/Value, Reason/Text
        c, r = fault.get("Code"), fault.get("Reason")
        code = c.get("Value") if isinstance(c, dict) else c
        reason = r.get("Text") if isinstance(r, dict) else r
        if isinstance(reason, list):
            reason = reason[0]
        if isinstance(reason, dict):
            reason = reason.get("#text")
    return str(code or "unknown"), str(reason or "")
