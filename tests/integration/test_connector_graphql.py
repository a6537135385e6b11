"""The graphql step against a real aiohttp server with a hand-written resolver."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from streamflow.connectors.graphql import GraphQLError
from streamflow.errors import PoisonMessageError, RetriableError

CUSTOMERS = [{"id": str(i), "name": f"c{i}"} for i in range(1, 6)]
CONFIG = {"api": {"type": "string"}, "token": {"type": "string", "secret": True}}


async def resolver(call: Any) -> web.Response:
    """Just enough GraphQL: customers(first, after) as a cursor connection, a
    createCustomer mutation that rejects bad emails, and an outage."""
    if call.headers.get("Authorization") != "Bearer gql-t0ken":
        return web.json_response({"errors": [{"message": "not authenticated"}]}, status=401)
    doc = call.json
    query, variables = doc["query"], doc.get("variables") or {}
    if "outage" in query:
        return web.json_response({"errors": [{"message": "down"}]}, status=503,
                                 headers={"Retry-After": "3"})  # fmt: skip
    if query.lstrip().startswith("mutation"):
        email = variables.get("email", "")
        if "@" not in email:
            return web.json_response({
                "data": {"createCustomer": None},
                "errors": [{"message": f"invalid email {email!r}", "path": ["createCustomer"],
                            "extensions": {"code": "BAD_USER_INPUT"}}],
            })  # fmt: skip
        return web.json_response({"data": {"createCustomer": {"id": "99", "email": email}}})
    first = int(variables.get("first", 2))
    start = int(variables["after"]) if variables.get("after") else 0
    page = CUSTOMERS[start : start + first]
    end = start + len(page)
    return web.json_response({
        "data": {"customers": {
            "nodes": page,
            "pageInfo": {"endCursor": str(end), "hasNextPage": end < len(CUSTOMERS)},
        }}
    })  # fmt: skip


STEPS = """
- id: create
  type: graphql
  url: ${config.api}/graphql
  auth: {type: bearer, token: "${config.token}"}
  query: |
    mutation Create($email: String!) { createCustomer(email: $email) { id email } }
  variables: {email: "${payload.email}"}
  operation_name: Create
  replace_payload: true
- id: all
  type: graphql
  url: ${config.api}/graphql
  auth: {type: bearer, token: "${config.token}"}
  query: >-
    query($first: Int, $after: String) { customers(first: $first, after: $after)
    { nodes { id name } pageInfo { endCursor hasNextPage } } }
  variables: {first: 2}
  paginate:
    path: data.customers.nodes
    cursor: data.customers.pageInfo.endCursor
    has_next: data.customers.pageInfo.hasNextPage
    max_pages: 10
- id: two-pages
  type: graphql
  url: ${config.api}/graphql
  auth: {type: bearer, token: "${config.token}"}
  query: >-
    query($first: Int, $after: String) { customers(first: $first, after: $after)
    { nodes { id } pageInfo { endCursor hasNextPage } } }
  variables: {first: 2}
  paginate: {path: data.customers.nodes, cursor: data.customers.pageInfo.endCursor,
             has_next: data.customers.pageInfo.hasNextPage, max_pages: 2}
- id: outage
  type: graphql
  url: ${config.api}/graphql
  auth: {type: bearer, token: "${config.token}"}
  query: "query { outage }"
- id: anonymous
  type: graphql
  url: ${config.api}/graphql
  query: "query { customers { nodes { id } } }"
"""


async def make(step_runner: Any, http_server: Any) -> tuple[Any, Any]:
    server = await http_server(resolver)
    runner = await step_runner(STEPS, config=CONFIG,
                               values={"api": server.url, "token": "gql-t0ken"})  # fmt: skip
    return runner, server


async def test_mutation_with_variables(step_runner: Any, http_server: Any) -> None:
    runner, server = await make(step_runner, http_server)
    out = await runner.run("create", {"email": "a@x.io"})
    assert out.payload == {"createCustomer": {"id": "99", "email": "a@x.io"}}
    assert out.result["status"] == 200
    sent = server.calls[0].json
    assert sent["variables"] == {"email": "a@x.io"}
    assert sent["operationName"] == "Create"


async def test_errors_fail_the_event_and_carry_the_errors(
    step_runner: Any, http_server: Any
) -> None:
    runner, _ = await make(step_runner, http_server)
    with pytest.raises(GraphQLError, match="invalid email 'nope'") as info:
        await runner.run("create", {"email": "nope"})
    assert isinstance(info.value, PoisonMessageError)
    assert info.value.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    with pytest.raises(GraphQLError, match="not authenticated"):
        await runner.run("anonymous", {})


async def test_5xx_is_retriable_with_retry_after(step_runner: Any, http_server: Any) -> None:
    runner, _ = await make(step_runner, http_server)
    with pytest.raises(RetriableError, match="503") as info:
        await runner.run("outage", {})
    assert info.value.retry_after == 3


async def test_cursor_paging_collects_every_page(step_runner: Any, http_server: Any) -> None:
    runner, server = await make(step_runner, http_server)
    out = await runner.run("all", {})
    assert [c["id"] for c in out.result["items"]] == ["1", "2", "3", "4", "5"]
    assert out.result["pages"] == 3
    assert [c.json["variables"].get("after") for c in server.calls] == [None, "2", "4"]
    out = await runner.run("two-pages", {})
    assert [c["id"] for c in out.result["items"]] == ["1", "2", "3", "4"]
    assert out.result["pages"] == 2


async def test_unreachable_endpoint_is_retriable(step_runner: Any) -> None:
    from tests.integration.conftest import free_port

    runner = await step_runner(
        [{"id": "q", "type": "graphql", "url": f"http://127.0.0.1:{free_port()}/graphql",
          "query": "{ x }", "timeout": "3s"}]
    )  # fmt: skip
    with pytest.raises(RetriableError, match="connection refused"):
        await runner.run("q", {})


async def test_a_template_in_the_document_is_refused_at_validate(step_runner: Any) -> None:
    """Like sql's query: (F9): the document is sent as written, so `${…}` would be literal."""
    from streamflow.errors import ValidationFailed

    step = {"id": "g", "type": "graphql", "url": "http://127.0.0.1:1/graphql",
            "query": 'query { order(id: "${payload.id}") { id } }'}  # fmt: skip
    with pytest.raises(ValidationFailed, match="declare a variable"):
        await step_runner([step])
