"""The contract every registered step type (and connection type) keeps.

For each type: its ``example`` validates, its config round-trips through
``model_dump``/``model_validate``, it has a docstring. For each type with secret fields:
a failing call (a refused login, an unreachable server, an error that quotes the secret)
raises an error whose message, and every log line written meanwhile, is free of the
secret. A new step type with secret fields must add its case to ``SECRET_CASES``, a new
connection type with secret fields its case to ``CONNECTION_CASES``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from streamflow.errors import StreamFlowError
from streamflow.topology.models import Secret, marked
from streamflow.topology.registry import CONNECTIONS, STEPS, load_all
from tests.integration.conftest import free_port

load_all()
SECRET = "sup3r-s3cret-XYZ"
STEP_TYPES = sorted(STEPS)


def example_of(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(STEPS[name].example)
    assert isinstance(doc, list) and len(doc) == 1, f"{name}: example is one list item"
    step = doc[0]
    assert isinstance(step, dict)
    return step


@pytest.mark.parametrize("name", STEP_TYPES)
def test_example_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    model = STEPS[name].config
    assert (model.__doc__ or "").strip(), f"{name} has no docstring"
    step = example_of(name)
    assert step["type"] == name
    context = {"directory": tmp_path, "connections": {}}
    cfg = model.model_validate(step, context=context)
    dumped = cfg.model_dump(by_alias=True)
    again = model.model_validate(dumped, context=context)
    assert again.model_dump(by_alias=True) == dumped
    assert again == cfg


@pytest.mark.parametrize("name", sorted(CONNECTIONS))
def test_connection_types_round_trip(name: str) -> None:
    model = CONNECTIONS[name].config
    assert (model.__doc__ or "").strip()
    minimal = {
        "http": {"type": "http", "base_url": "http://127.0.0.1:1",
                 "auth": {"type": "bearer", "token": "t"}},
        "postgres": {"type": "postgres", "dsn": "postgresql://u:p@127.0.0.1:1/db"},
        "mysql": {"type": "mysql", "dsn": "mysql://u:p@127.0.0.1:1/db",
                  "pool": {"min_size": 0, "max_size": 4, "acquire_timeout": "2s"}},
        "redis": {"type": "redis", "url": "redis://:p@127.0.0.1:1/0", "pool": {"max_size": 3}},
        "sqlite": {"type": "sqlite", "path": "x.db"},
        "smtp": {"type": "smtp", "host": "127.0.0.1", "from": "a@x.io"},
        "s3": {"type": "s3", "endpoint_url": "http://127.0.0.1:1", "region": "eu-west-1",
               "access_key_id": "k", "secret_access_key": "s", "addressing_style": "path"},
        "azure_blob": {"type": "azure_blob", "account_url": "http://127.0.0.1:1/acct",
                       "account_name": "acct", "account_key": "a2V5"},
        "rabbitmq": {"type": "rabbitmq", "url": "amqp://u:p@127.0.0.1:1/", "pool_size": 2},
        "mongodb": {"type": "mongodb", "url": "mongodb://u:p@127.0.0.1:1/db",
                    "max_pool_size": 5, "acquire_timeout": "2s"},
    }[name]  # fmt: skip
    cfg = model.model_validate(minimal)
    assert model.model_validate(cfg.model_dump(by_alias=True)) == cfg


# --------------------------------------------------------------------------- secrets

Case = Callable[[Any, Any, Any], Awaitable[Any]]


async def _echo_server(http_server: Any) -> Any:
    """Answers 500 for /fail, and GraphQL errors quoting the Authorization header."""

    async def handler(call: Any) -> web.Response:
        if call.path == "/graphql":
            return web.json_response(
                {"errors": [{"message": f"bad credentials {call.headers.get('Authorization')}"}]}
            )
        return web.json_response({"echo": dict(call.query)}, status=500)

    return await http_server(handler)


async def http_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _echo_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "http", "url": "${config.api}/fail",
          "query": {"key": "${config.secret}"},
          "auth": {"type": "bearer", "token": "${config.secret}"}, "retry_on": []}],
        config={"api": {"type": "string"}, "secret": {"type": "string", "secret": True}},
        values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def scatter_gather_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _echo_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "scatter_gather", "targets": "${['a', 'b']}",
          "url": "${config.api}/fail/${item}", "query": {"key": "${config.secret}"},
          "auth": {"type": "bearer", "token": "${config.secret}"}, "retry_on": []}],
        config={"api": {"type": "string"}, "secret": {"type": "string", "secret": True}},
        values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def graphql_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _echo_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "graphql", "url": "${config.api}/graphql", "query": "{ x }",
          "headers": {"X-Token": "${config.secret}"},
          "auth": {"type": "bearer", "token": "${config.secret}"}}],
        config={"api": {"type": "string"}, "secret": {"type": "string", "secret": True}},
        values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def sql_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    dsn = f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/db"
    runner = await step_runner(
        [{"id": "s", "type": "sql", "dsn": "${config.dsn}", "query": "SELECT 1", "timeout": "5s"}],
        config={"dsn": {"type": "string", "secret": True}},
        values={"dsn": dsn},
    )
    return await runner.run("s", {})


async def email_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = smtp(auth=True)
    runner = await step_runner(
        [{"id": "s", "type": "email", "host": "127.0.0.1", "port": server.port,
          "security": "none", "username": "${config.user}", "password": "${config.secret}",
          "from": "a@x.io", "to": "b@x.io", "subject": "s", "text": "t"}],
        config={"user": {"type": "string", "secret": True},
                "secret": {"type": "string", "secret": True}},
        values={"user": "mailer", "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def _quoting_server(http_server: Any) -> Any:
    """Answers every call with an XML error (as S3 and Azure do) quoting the request's
    credentials: its Authorization, security token and query string."""

    async def handler(call: Any) -> web.Response:
        headers = call.headers
        quoted = " ".join(
            [headers.get("Authorization", ""), headers.get("X-Amz-Security-Token", ""),
             str(call.query)]
        )  # fmt: skip
        body = f"<Error><Code>AccessDenied</Code><Message>refused {quoted}</Message></Error>"
        return web.Response(status=403, text=body, content_type="application/xml")

    return await http_server(handler)


_SECRET_CONFIG = {"secret": {"type": "string", "secret": True}, "api": {"type": "string"}}


async def s3_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _quoting_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "s3", "operation": "put", "bucket": "bkt", "key": "k",
          "endpoint_url": "${config.api}", "addressing_style": "path",
          "access_key_id": "${config.secret}", "secret_access_key": "${config.secret}",
          "session_token": "${config.secret}"}],
        config=_SECRET_CONFIG, values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {"x": 1})


async def azure_blob_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _quoting_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "azure_blob", "operation": "put", "container": "ccc",
          "blob": "k", "account_url": "${config.api}/acct",
          "sas_token": "sv=1&sig=${config.secret}"}],
        config=_SECRET_CONFIG, values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {"x": 1})


async def azure_blob_key_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    """An account key that is not base64: the SDK's complaint must not quote it."""
    runner = await step_runner(
        [{"id": "s", "type": "azure_blob", "container": "ccc", "blob": "k",
          "connection_string": "DefaultEndpointsProtocol=http;AccountName=acct;"
          "AccountKey=${config.secret};BlobEndpoint=${config.api}/acct;"}],
        config=_SECRET_CONFIG, values={"api": "http://127.0.0.1:1", "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def aws_sigv4_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _quoting_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "http", "url": "${config.api}/2015-03-31/functions/f/invocations",
          "method": "POST", "json": {"a": 1}, "retry_on": [],
          "auth": {"type": "aws_sigv4", "service": "lambda", "region": "eu-west-1",
                   "access_key_id": "${config.secret}", "secret_access_key": "${config.secret}",
                   "session_token": "${config.secret}"}}],
        config=_SECRET_CONFIG, values={"api": server.url, "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def mysql_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "sql", "connection": "shop", "query": "SELECT 1", "timeout": "5s"}],
        config={"dsn": {"type": "string", "secret": True}},
        values={"dsn": f"mysql://app:{SECRET}@127.0.0.1:{free_port()}/db"},
        connections={"shop": {"type": "mysql", "dsn": "${config.dsn}"}},
    )
    return await runner.run("s", {})


async def redis_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _echo_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "http", "url": f"{server.url}/ok",
          "rate_limit": {"requests": 1, "per": "1s", "connection": "cache"}}],
        config={"url": {"type": "string", "secret": True},
                "pw": {"type": "string", "secret": True}},
        values={"url": f"redis://:{SECRET}@127.0.0.1:{free_port()}/0", "pw": SECRET},
        connections={"cache": {"type": "redis", "url": "${config.url}",
                               "password": "${config.pw}", "timeout": "1s"}},
    )  # fmt: skip
    return await runner.run("s", {})


async def rabbitmq_publish_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "rabbitmq_publish", "url": "${config.url}", "routing_key": "q",
          "headers": {"x-token": "${config.secret}"}, "timeout": "3s"}],
        config={"url": {"type": "string", "secret": True},
                "secret": {"type": "string", "secret": True}},
        values={"url": f"amqp://app:{SECRET}@127.0.0.1:{free_port()}/", "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def s3_connection_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _quoting_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "s3", "connection": "store", "operation": "put", "bucket": "bkt",
          "key": "k"}],
        config=_SECRET_CONFIG, values={"api": server.url, "secret": SECRET},
        connections={"store": {"type": "s3", "endpoint_url": "${config.api}",
                               "addressing_style": "path", "access_key_id": "${config.secret}",
                               "secret_access_key": "${config.secret}",
                               "session_token": "${config.secret}"}},
    )  # fmt: skip
    return await runner.run("s", {"x": 1})


async def azure_blob_connection_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    server = await _quoting_server(http_server)
    runner = await step_runner(
        [{"id": "s", "type": "azure_blob", "connection": "blobs", "operation": "put",
          "container": "ccc", "blob": "k"}],
        config=_SECRET_CONFIG, values={"api": server.url, "secret": SECRET},
        connections={"blobs": {"type": "azure_blob", "account_url": "${config.api}/acct",
                               "sas_token": "sv=1&sig=${config.secret}"}},
    )  # fmt: skip
    return await runner.run("s", {"x": 1})


async def mongodb_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "mongodb", "url": "${config.url}", "collection": "c",
          "connect_timeout": "1s"}],
        config={"url": {"type": "string", "secret": True}},
        values={"url": f"mongodb://app:{SECRET}@127.0.0.1:{free_port()}/db"},
    )  # fmt: skip
    return await runner.run("s", {})


async def rabbitmq_connection_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "rabbitmq_publish", "connection": "mq", "routing_key": "q",
          "timeout": "3s"}],
        config={"url": {"type": "string", "secret": True}},
        values={"url": f"amqp://app:{SECRET}@127.0.0.1:{free_port()}/"},
        connections={"mq": {"type": "rabbitmq", "url": "${config.url}"}},
    )  # fmt: skip
    return await runner.run("s", {"x": 1})


async def mongodb_connection_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "mongodb", "connection": "db", "collection": "c"}],
        config={"url": {"type": "string", "secret": True}},
        values={"url": f"mongodb://app:{SECRET}@127.0.0.1:{free_port()}/db"},
        connections={"db": {"type": "mongodb", "url": "${config.url}", "connect_timeout": "1s"}},
    )  # fmt: skip
    return await runner.run("s", {})


SECRET_CASES: dict[str, Case] = {
    "http": http_case,
    "graphql": graphql_case,
    "sql": sql_case,
    "email": email_case,
    "s3": s3_case,
    "azure_blob": azure_blob_case,
    "rabbitmq_publish": rabbitmq_publish_case,
    "mongodb": mongodb_case,
    "scatter_gather": scatter_gather_case,
}
# more cases for the same step types: other credentials that can leak the same way
EXTRA_SECRET_CASES: dict[str, Case] = {
    "azure_blob (account key)": azure_blob_key_case,
    "http (aws_sigv4)": aws_sigv4_case,
    "s3 (connection)": s3_connection_case,
    "azure_blob (connection)": azure_blob_connection_case,
    "rabbitmq_publish (connection)": rabbitmq_connection_case,
    "mongodb (connection)": mongodb_connection_case,
}
# connection types with secret fields -> the case that uses one
CONNECTION_CASES: dict[str, Case] = {
    "http": http_case,
    "postgres": sql_case,
    "smtp": email_case,
    "mysql": mysql_case,
    "redis": redis_case,
    "s3": s3_connection_case,
    "azure_blob": azure_blob_connection_case,
    "rabbitmq": rabbitmq_connection_case,
    "mongodb": mongodb_connection_case,
}
# secret fields that never reach an error: they are delivered where they belong
NO_ERROR_PATH = {"kafka_publish": "headers go onto the published message, never into errors"}


def test_every_type_with_secret_fields_has_a_case() -> None:
    with_secrets = {n for n in STEP_TYPES if marked(STEPS[n].config, Secret)}
    assert with_secrets == set(SECRET_CASES) | set(NO_ERROR_PATH)


def test_every_connection_type_with_secret_fields_has_a_case() -> None:
    with_secrets = {n for n, entry in CONNECTIONS.items() if marked(entry.config, Secret)}
    assert with_secrets == set(CONNECTION_CASES)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(
    "name", sorted({*SECRET_CASES, "mysql", "redis"}) + sorted(EXTRA_SECRET_CASES)
)
async def test_secrets_never_in_errors_or_logs(
    name: str,
    step_runner: Any,
    http_server: Any,
    smtp_server_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    case = SECRET_CASES.get(name) or EXTRA_SECRET_CASES.get(name) or CONNECTION_CASES[name]
    with pytest.raises(StreamFlowError) as info:
        await case(step_runner, http_server, smtp_server_factory)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.args)
    assert SECRET not in caplog.text


# --------------------------------------------------------------------------- stream triggers

STREAM_TRIGGERS = ("sse", "websocket")


@pytest.mark.parametrize("name", STREAM_TRIGGERS)
def test_stream_trigger_examples_validate(name: str) -> None:
    from streamflow.topology.registry import TRIGGERS

    model = TRIGGERS[name].config
    assert (model.__doc__ or "").strip()
    for block in TRIGGERS[name].example.split("trigger:")[1:]:
        cfg = model.model_validate(yaml.safe_load(block))
        assert model.model_validate(cfg.model_dump(by_alias=True)) == cfg


@pytest.mark.parametrize("name", STREAM_TRIGGERS)
async def test_stream_trigger_secrets_never_in_logs(
    name: str, http_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that refuses the connection and quotes the credentials back: the token
    (header and URL query) is in no log line while the trigger reconnects."""
    import asyncio

    from streamflow.ingress import FlowIngress
    from streamflow.topology.loader import load_integration
    from streamflow.topology.plan import compile_plan
    from streamflow.topology.values import resolve_config
    from streamflow.transport import open_transport
    from streamflow.triggers.streams import StreamRunner

    async def refuse(call: Any) -> web.Response:
        return web.json_response({"denied": call.headers.get("Authorization")}, status=401)

    server = await http_server(refuse)
    scheme = "ws" if name == "websocket" else "http"
    url = server.url.replace("http", scheme, 1) + "/stream?token=${config.secret}"
    path = tmp_path / "i.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "streamflow/v1", "kind": "Integration", "name": "contract",
        "config": {"secret": {"type": "string", "secret": True}},
        "flows": [{"name": "live", "trigger": {
            "type": name, "url": url, "backoff": "100ms",
            "headers": {"Authorization": "Bearer ${config.secret}"}},
            "steps": [{"id": "k", "type": "transform", "output": "${payload}"}]}],
    }))  # fmt: skip
    integration = load_integration(path)
    config = resolve_config(integration.config, {"secret": SECRET})
    transport = open_transport(f"local://{tmp_path}/store")
    flow = integration.flows["live"]
    runner = StreamRunner(FlowIngress(integration, flow, compile_plan(integration), config),
                          transport)  # fmt: skip
    caplog.set_level(logging.DEBUG)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.1)
        if len(server.calls) >= 2:
            break
    stop.set()
    await task
    transport.close()
    assert len(server.calls) >= 2  # refused, and tried again
    assert server.calls[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert "401" in caplog.text
    assert SECRET not in caplog.text
