"""The contract every registered step type (and connection type) keeps.

For each type: its ``example`` validates, its config round-trips through
``model_dump``/``model_validate``, it has a docstring. For each type with secret fields:
a failing call (a refused login, an unreachable server, an error that quotes the secret)
raises an error whose message, and every log line written meanwhile, is free of the
secret. A new type with secret fields must add its case to ``SECRET_CASES``.
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
from streamflow.topology.registry import CONNECTIONS, STEPS, load_builtins
from tests.integration.conftest import free_port

load_builtins()
SECRET = "sup3r-s3cret-XYZ"
STEP_TYPES = sorted(STEPS)


def example_of(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(STEPS[name].config.example)
    assert isinstance(doc, list) and len(doc) == 1, f"{name}: example is one list item"
    step = doc[0]
    assert isinstance(step, dict)
    return step


@pytest.mark.parametrize("name", STEP_TYPES)
def test_example_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    model = STEPS[name].config
    assert (model.__doc__ or "").strip(), f"{name} has no docstring"
    assert STEPS[name].factory is not None, f"{name} has no factory"
    step = example_of(name)
    assert step["type"] == name
    context = {"directory": tmp_path, "connections": {}}
    cfg = model.model_validate(step, context=context)
    dumped = cfg.model_dump(by_alias=True)
    again = model.model_validate(dumped, context=context)
    assert again.model_dump(by_alias=True) == dumped
    assert again == cfg
    assert set(model.secret_fields) <= set(model.model_fields), f"{name}: unknown secret field"


@pytest.mark.parametrize("name", sorted(CONNECTIONS))
def test_connection_types_round_trip(name: str) -> None:
    model = CONNECTIONS[name]
    assert (model.__doc__ or "").strip()
    minimal = {
        "http": {"type": "http", "base_url": "http://127.0.0.1:1",
                 "auth": {"type": "bearer", "token": "t"}},
        "postgres": {"type": "postgres", "dsn": "postgresql://u:p@127.0.0.1:1/db"},
        "sqlite": {"type": "sqlite", "path": "x.db"},
        "smtp": {"type": "smtp", "host": "127.0.0.1", "from": "a@x.io"},
        "rabbitmq": {"type": "rabbitmq", "url": "amqp://u:p@127.0.0.1:1/", "pool_size": 2},
        "mongodb": {"type": "mongodb", "url": "mongodb://u:p@127.0.0.1:1/db",
                    "max_pool_size": 5, "acquire_timeout": "2s"},
    }[name]  # fmt: skip
    cfg = model.model_validate(minimal)
    assert model.model_validate(cfg.model_dump(by_alias=True)) == cfg
    assert set(model.secret_fields) <= set(model.model_fields)


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


async def rabbitmq_publish_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "rabbitmq_publish", "url": "${config.url}", "routing_key": "q",
          "headers": {"x-token": "${config.secret}"}, "timeout": "3s"}],
        config={"url": {"type": "string", "secret": True},
                "secret": {"type": "string", "secret": True}},
        values={"url": f"amqp://app:{SECRET}@127.0.0.1:{free_port()}/", "secret": SECRET},
    )  # fmt: skip
    return await runner.run("s", {})


async def mongodb_case(step_runner: Any, http_server: Any, smtp: Any) -> Any:
    runner = await step_runner(
        [{"id": "s", "type": "mongodb", "url": "${config.url}", "collection": "c",
          "connect_timeout": "1s"}],
        config={"url": {"type": "string", "secret": True}},
        values={"url": f"mongodb://app:{SECRET}@127.0.0.1:{free_port()}/db"},
    )  # fmt: skip
    return await runner.run("s", {})


SECRET_CASES: dict[str, Case] = {
    "http": http_case,
    "graphql": graphql_case,
    "sql": sql_case,
    "email": email_case,
    "rabbitmq_publish": rabbitmq_publish_case,
    "mongodb": mongodb_case,
}
# secret fields that never reach an error: they are delivered where they belong
NO_ERROR_PATH = {"kafka_publish": "headers go onto the published message, never into errors"}


def test_every_type_with_secret_fields_has_a_case() -> None:
    with_secrets = {n for n in STEP_TYPES if STEPS[n].config.secret_fields}
    assert with_secrets == set(SECRET_CASES) | set(NO_ERROR_PATH)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize("name", sorted(SECRET_CASES))
async def test_secrets_never_in_errors_or_logs(
    name: str,
    step_runner: Any,
    http_server: Any,
    smtp_server_factory: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StreamFlowError) as info:
        await SECRET_CASES[name](step_runner, http_server, smtp_server_factory)
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value.args)
    assert SECRET not in caplog.text
