"""The ``graphql`` step: a query or mutation with variables, POSTed as JSON.

The result (``steps.<id>``) is ``{status, data}``; with ``replace_payload: true`` the
``data`` becomes the payload. A response carrying ``errors`` fails the event for good
(``GraphQLError``, a ``PoisonMessageError`` whose ``errors`` holds them); connection
problems, timeouts and the ``retry_on`` statuses (408, 425, 429, 5xx) are retriable.

``paginate`` follows a cursor connection: after each page the value at ``cursor`` is sent
as the variable ``variable`` for the next one, while ``has_next`` is true (up to
``max_pages``). The items at ``path`` of every page are collected: the result is
``{status, items, pages}``. Paths are dotted, from the response root (``data.…``).
Auth, headers and connections work as for the ``http`` step (oauth2 included), and so
does ``rate_limit`` (each page waits for its slot).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, model_validator

from streamflow import exactjson
from streamflow.connectors.auth import HttpAuth
from streamflow.connectors.cache import RateLimit, RateLimiter
from streamflow.connectors.connections import ConnectedStep, FieldsOf, http_fields
from streamflow.connectors.http import DEFAULT_RETRY_ON
from streamflow.connectors.httpclient import HttpCaller, join_url, retry_after, safe_url
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import ROOTS, compile_value
from streamflow.topology.models import Duration, Model, Secret
from streamflow.topology.registry import step_type

_KINDS = ("http",)
_MAX_ERROR_TEXT = 1000


class GraphQLError(PoisonMessageError):
    """The server answered with ``errors``; they are kept in ``errors``."""

    def __init__(self, message: str, errors: list[Any]) -> None:
        super().__init__(message)
        self.errors = errors


class CursorPaginate(Model):
    path: str = Field(description="the items of one page, e.g. data.customers.nodes")
    cursor: str = Field(description="the next cursor, e.g. data.customers.pageInfo.endCursor")
    has_next: str = Field(description="e.g. data.customers.pageInfo.hasNextPage")
    variable: str = Field("after", description="the query variable that takes the cursor")
    max_pages: int = Field(100, ge=1, le=100_000, description="stop after this many pages")


class GraphqlConfig(ConnectedStep):
    """Send a GraphQL query or mutation; `errors` in the answer fail the event."""

    type: Literal["graphql"]
    connection: str | None = Field(None, description="a `connections:` entry of type http")
    url: str = Field("", description="the endpoint (or a path joined to base_url)")
    base_url: str | None = None
    query: str = Field(description="the GraphQL document")
    operation_name: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict, description="variable templates")
    headers: Annotated[dict[str, str], Secret] = Field(default_factory=dict)
    auth: Annotated[HttpAuth | None, Secret] = Field(None, description="as for the http step")
    timeout: Duration = 30.0
    retry_on: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))
    paginate: CursorPaginate | None = Field(None, description="follow a cursor connection")
    replace_payload: bool = Field(False, description="data (or the items) become the payload")
    max_concurrency: int | None = Field(None, ge=1, le=10_000)
    rate_limit: RateLimit | None = Field(
        None, description="{requests, per, store: memory|redis, connection}: wait for a slot"
    )

    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return http_fields

    @model_validator(mode="after")
    def _endpoint(self) -> GraphqlConfig:
        if not self.url and not self.base_url:
            raise ValueError("set url (the GraphQL endpoint) or connection")
        if "${" in self.query:  # the document is sent as written, like sql's query:
            raise ValueError(
                "query: ${...} is not rendered in the GraphQL document; declare a variable "
                '($name in the query) and give variables: {name: "${payload...}"}'
            )
        return self


def dig(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if isinstance(doc, Mapping):
            doc = doc.get(key)
        elif isinstance(doc, list) and key.lstrip("-").isdigit():
            i = int(key)
            doc = doc[i] if -len(doc) <= i < len(doc) else None
        else:
            return None
    return doc


@step_type(
    "graphql",
    GraphqlConfig,
    category="http",
    since="0.1.0",
    example="""- id: orders
  type: graphql
  url: ${config.shop_url}/graphql
  auth: {type: bearer, token: "${config.shop_token}"}
  query: |
    query Orders($customer: ID!, $after: String) {
      orders(customer: $customer, first: 50, after: $after) {
        nodes { id total }
        pageInfo { endCursor hasNextPage }
      }
    }
  variables: {customer: "${payload.customer_id}"}
  paginate:
    path: data.orders.nodes
    cursor: data.orders.pageInfo.endCursor
    has_next: data.orders.pageInfo.hasNextPage
    variable: after
    max_pages: 20""",
)
class GraphqlStep(AsyncStep):
    def __init__(self, config: GraphqlConfig, ctx: StepContext) -> None:
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
        self.url = compile_value(config.url)
        self.base_url = compile_value(config.base_url)
        self.variables = compile_value(config.variables)
        self.headers = compile_value(config.headers)
        self.retry_on = frozenset(config.retry_on)
        self.limiter = (
            RateLimiter(config.rate_limit, ctx, config.connection, ROOTS)
            if config.rate_limit
            else None
        )

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        url = join_url(self.base_url.render(scope), str(self.url.render(scope)))
        variables = dict(self.variables.render(scope))
        page = self.cfg.paginate
        if page is None:
            status, body = await self.post(url, variables, scope)
            result = {"status": status, "data": body.get("data")}
            payload = result["data"] if self.cfg.replace_payload else env.payload
            return Outcome(payload, result, note=str(status))
        items: list[Any] = []
        pages = 0
        status = 0
        while pages < page.max_pages:
            status, body = await self.post(url, variables, scope)
            pages += 1
            found = dig(body, page.path)
            if isinstance(found, list):
                items.extend(found)
            elif found is not None:
                raise PoisonMessageError(f"{page.path} is not a list")
            cursor = dig(body, page.cursor)
            if not dig(body, page.has_next) or cursor is None:
                break
            if cursor == variables.get(page.variable):
                raise PoisonMessageError("the cursor did not move")
            variables[page.variable] = cursor
        result = {"status": status, "items": items, "pages": pages}
        payload = items if self.cfg.replace_payload else env.payload
        return Outcome(payload, result, note=f"{len(items)} item(s) in {pages} page(s)")

    async def post(
        self, url: str, variables: dict[str, Any], scope: Mapping[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        doc: dict[str, Any] = {"query": self.cfg.query, "variables": variables}
        if self.cfg.operation_name:
            doc["operationName"] = self.cfg.operation_name
        headers = {k: str(v) for k, v in self.headers.render(scope).items()}
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Accept", "application/json")
        if self.limiter is not None:
            await self.limiter.wait(scope)
        resp = await self.caller.send("POST", url, headers, {}, exactjson.dumps(doc), scope)
        body = resp.body if isinstance(resp.body, dict) else {}
        errors = body.get("errors")
        where = f"POST {safe_url(url)}"
        if resp.status in self.retry_on:
            msg = self.caller.mask(f"{where} answered {resp.status}")
            raise RetriableError(msg, retry_after(resp.headers.get("Retry-After")))
        if errors:
            errs = errors if isinstance(errors, list) else [errors]
            text = "; ".join(
                str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errs
            )
            msg = self.caller.mask(f"{where}: GraphQL errors: {text}")[:_MAX_ERROR_TEXT]
            raise GraphQLError(msg, errs)
        if not 200 <= resp.status < 300 or "data" not in body:
            raise PoisonMessageError(
                self.caller.mask(f"{where} answered {resp.status} without GraphQL data")
            )
        return resp.status, body
