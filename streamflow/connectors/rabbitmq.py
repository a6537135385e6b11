"""RabbitMQ (AMQP 0-9-1, aio-pika): the ``rabbitmq`` connection, the ``rabbitmq`` trigger's
config and the ``rabbitmq_publish`` step.

One robust AMQP connection per URL and App (``StepContext.resources``) carries a pool of
channels in publisher-confirm mode (``pool_size``, default 10). A publish returns once the
broker confirmed the message (``Basic.Ack``); with ``mandatory: true`` (default) a message
no queue is bound to comes back and fails the step.

Failures are classified for the retry policy: a lost connection, a timeout waiting for the
confirm, a ``Basic.Nack`` (the broker could not take the message: a full queue with
``reject-publish``, an internal error) and a refused login are ``RetriableError``; an
unroutable message (``Basic.Return``), a missing exchange (``NOT_FOUND``), a denied
exchange (``ACCESS_REFUSED``) and a body or header that cannot be encoded are
``PoisonMessageError``. Messages never carry the URL's password.

The trigger that consumes a queue runs in ``streamflow.triggers.amqp``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamflow import exactjson
from streamflow.connectors.connections import (
    ConnectedStep,
    FieldsOf,
    check_connection,
    fill_from_connection,
)
from streamflow.connectors.files import fixed_prefix
from streamflow.envelope import Envelope
from streamflow.errors import ConfigError, PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, Resources, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import ConnectionConfig, Duration, Model, Secret, TriggerConfig
from streamflow.topology.registry import (
    connection_type,
    step_type,
    trigger_type,
)
from streamflow.util.secrets import Masker, safe_dsn

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection

_KINDS = ("rabbitmq",)
DEFAULT_HEARTBEAT = 60.0
DEFAULT_POOL = 10


@connection_type("rabbitmq", category="messaging", since="0.1.0")
class RabbitMQConnection(ConnectionConfig):
    """A RabbitMQ broker (AMQP 0-9-1); for `rabbitmq_publish` steps and `rabbitmq` triggers."""

    type: Literal["rabbitmq"]
    url: Annotated[str, Secret] = Field(
        description="amqp://user:password@host:5672/vhost (amqps:// for TLS), "
        "e.g. ${config.amqp_url}"
    )
    heartbeat: Duration | None = Field(
        None, description="AMQP heartbeat: a silent broker is dropped after it (default 60s)"
    )
    timeout: Duration | None = Field(
        None, description="connect, and wait for a publish confirm (default 30s)"
    )
    pool_size: int | None = Field(
        None, ge=1, le=1000, description="publishing channels per App (default 10)"
    )


def rabbitmq_fields(conn: ConnectionConfig) -> dict[str, Any]:
    assert isinstance(conn, RabbitMQConnection)
    return {
        "url": conn.url,
        "heartbeat": conn.heartbeat,
        "timeout": conn.timeout,
        "pool_size": conn.pool_size,
    }


def _trigger_fields(conn: ConnectionConfig) -> dict[str, Any]:
    fields = rabbitmq_fields(conn)
    return {k: fields[k] for k in ("url", "heartbeat", "timeout")}


def _check_url(url: str | None) -> None:
    if url is None:
        raise ValueError("set url (e.g. ${config.amqp_url}) or connection")
    if "${" not in url and not url.lower().startswith(("amqp://", "amqps://")):
        raise ValueError(f"{safe_dsn(url)!r} is not an amqp:// or amqps:// URL")


# --------------------------------------------------------------------------- trigger


class RabbitMQBinding(Model):
    """Bind the queue to an exchange (the exchange must exist)."""

    exchange: str
    routing_key: str = Field("", description="binding key; topic exchanges accept * and #")


@trigger_type(
    "rabbitmq",
    category="messaging",
    since="0.1.0",
    example="""trigger:
  type: rabbitmq
  connection: mq                   # or url: ${config.amqp_url}
  queue: orders
  bindings: [{exchange: shop, routing_key: "order.*"}]
  prefetch: 50
  format: json                     # unparsable messages go to the flow's DLQ""",
)
class RabbitMQTrigger(TriggerConfig):
    """Consume a RabbitMQ queue: every message becomes one event, acknowledged once the event is on the broker; every gateway process consumes (no leader)."""  # noqa: E501

    type: Literal["rabbitmq"]
    connection: str | None = Field(None, description="a `connections:` entry of type rabbitmq")
    url: Annotated[str | None, Secret] = Field(
        None, description="amqp://user:password@host:5672/vhost"
    )
    queue: str = Field(min_length=1, max_length=255, description="the queue consumed")
    declare: bool = Field(
        True,
        description="declare the queue (durable) if it does not exist; false: it must exist",
    )
    bindings: list[RabbitMQBinding] = Field(
        default_factory=list, description="exchange/routing_key bindings made at start"
    )
    prefetch: int = Field(
        50, ge=1, le=10_000, description="unacknowledged messages per process (basic.qos)"
    )
    format: Literal["json", "text", "bytes"] = Field(
        "json", description="how the body becomes the payload (bytes: hex text)"
    )
    heartbeat: Duration = Field(DEFAULT_HEARTBEAT, description="AMQP heartbeat")
    timeout: Duration = Field(30.0, description="connect; and wait for the events' delivery")

    @model_validator(mode="before")
    @classmethod
    def _from_connection(cls, data: Any, info: ValidationInfo) -> Any:
        return fill_from_connection(data, info, _KINDS, _trigger_fields)

    @field_validator("connection")
    @classmethod
    def _connection_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        check_connection(v, info, _KINDS)
        return v

    @model_validator(mode="after")
    def _complete(self) -> RabbitMQTrigger:
        _check_url(self.url)
        return self


# --------------------------------------------------------------------------- client


class AmqpClient:
    """One robust connection and at most ``size`` confirm-mode channels (shared per URL).
    A channel the broker closed (e.g. after publishing to a missing exchange) is dropped
    and a new one opened on next use."""

    def __init__(self, connection: AbstractRobustConnection, size: int) -> None:
        self.connection = connection
        self.slots = asyncio.Semaphore(size)
        self.idle: list[AbstractChannel] = []

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[AbstractChannel]:
        async with self.slots:
            while self.idle and self.idle[-1].is_closed:
                self.idle.pop()
            if self.idle:
                channel = self.idle.pop()
            else:
                channel = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            try:
                yield channel
            finally:
                if not channel.is_closed:
                    self.idle.append(channel)

    async def close(self) -> None:
        for channel in self.idle:
            with contextlib.suppress(Exception):
                await channel.close()
        self.idle = []
        await self.connection.close()


def with_heartbeat(url: str, heartbeat: float) -> str:
    """The URL with ``?heartbeat=`` unless it sets one."""
    from yarl import URL

    parsed = URL(url)
    if "heartbeat" in parsed.query:
        return url
    return str(parsed.update_query(heartbeat=max(1, round(heartbeat))))


async def connect(url: str, heartbeat: float, timeout: float, masker: Masker) -> Any:
    """A robust aio-pika connection (it reconnects by itself after the first one)."""
    import aio_pika

    try:
        return await aio_pika.connect_robust(with_heartbeat(url, heartbeat), timeout=timeout)
    except Exception as exc:
        raise classify(exc, safe_dsn(url), masker) from None


async def amqp_client(
    resources: Resources, url: str, heartbeat: float, timeout: float, size: int, masker: Masker
) -> AmqpClient:
    """The App-wide client of ``url`` (connected on first use)."""

    async def create() -> AmqpClient:
        return AmqpClient(await connect(url, heartbeat, timeout, masker), size)

    async def close(client: AmqpClient) -> None:
        await client.close()

    return await resources.aget(f"amqp\x00{url}\x00{heartbeat}", create, close)


def classify(exc: BaseException, where: str, masker: Masker) -> Exception:
    """An aio-pika/aiormq failure -> RetriableError or PoisonMessageError (masked)."""
    import aiormq.exceptions as amqp

    text = masker.mask(f"{where}: {exc.__class__.__name__}: {exc}")
    if isinstance(exc, amqp.PublishError):
        return PoisonMessageError(f"{text} (no queue is bound for this routing key)")
    if isinstance(exc, amqp.DeliveryError):
        return RetriableError(f"{text} (the broker refused the message)")
    if isinstance(exc, amqp.ChannelNotFoundEntity | amqp.ChannelAccessRefused):
        return PoisonMessageError(text)
    if isinstance(exc, amqp.ChannelPreconditionFailed | amqp.ConnectionFrameError):
        return PoisonMessageError(text)
    if isinstance(exc, TypeError | ValueError | UnicodeError | OverflowError):
        return PoisonMessageError(text)
    return RetriableError(text)  # connection, timeout, auth, resource alarms: may pass


def amqp_value(value: Any) -> Any:
    """A header value from the broker -> what a payload can carry."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): amqp_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [amqp_value(v) for v in value]
    if value is None or isinstance(value, str | bool | int | float):
        return value
    return str(value)


# --------------------------------------------------------------------------- publish


class RabbitMQPublishConfig(ConnectedStep):
    """Publish a message to a RabbitMQ exchange and wait for the broker's confirm."""

    type: Literal["rabbitmq_publish"]
    connection: str | None = Field(None, description="a `connections:` entry of type rabbitmq")
    url: Annotated[str | None, Secret] = Field(
        None, description="amqp://user:password@host:5672/vhost"
    )
    exchange: str = Field("", description="exchange name, a template ('': the default exchange)")
    routing_key: str = Field(description="a template; the queue's name on the default exchange")
    body: Any = Field("${payload}", description="a template: the message body")
    format: Literal["json", "text"] = Field(
        "json", description="json: the body as JSON; text: as UTF-8 text"
    )
    headers: Annotated[dict[str, Any], Secret] = Field(
        default_factory=dict, description="AMQP headers (templates)"
    )
    persistent: bool = Field(True, description="delivery_mode 2: survives a broker restart")
    mandatory: bool = Field(True, description="fail when no queue is bound for the routing key")
    message_id: str | None = Field(
        None, description="default <execution_id>-<step id>: the same on every retry"
    )
    correlation_id: str | None = Field(None, description="a template")
    reply_to: str | None = None
    priority: int | None = Field(None, ge=0, le=255)
    expiration: Duration | None = Field(None, description="per-message TTL")
    timeout: Duration = Field(30.0, description="wait for the broker's confirm")
    heartbeat: Duration = DEFAULT_HEARTBEAT
    pool_size: int | None = Field(
        None, ge=1, le=1000, description="publishing channels per App (default 10)"
    )
    connection_kinds: ClassVar[tuple[str, ...]] = _KINDS

    @classmethod
    def connection_fields(cls, info: ValidationInfo) -> FieldsOf:
        return rabbitmq_fields

    @model_validator(mode="after")
    def _complete(self) -> RabbitMQPublishConfig:
        _check_url(self.url)
        return self


@step_type(
    "rabbitmq_publish",
    RabbitMQPublishConfig,
    category="messaging",
    since="0.1.0",
    example="""- id: notify
  type: rabbitmq_publish
  url: ${config.amqp_url}           # or connection: <a rabbitmq connection>
  exchange: shop
  routing_key: order.${payload.status}
  body: {order: "${payload.id}", total: "${payload.total}"}
  headers: {x-source: streamflow}""",
)
class RabbitMQPublishStep(AsyncStep):
    def __init__(self, config: RabbitMQPublishConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.url = compile_value(config.url)
        self.routing_key = compile_value(config.routing_key)
        self.exchange = compile_value(config.exchange)
        self.body = compile_value(config.body)
        self.headers = compile_value(config.headers)
        # header values written by the deployer (text, config, env) may be credentials; a
        # value from the event is data: masking it hid words and grew the masker per event
        self.fixed_headers = frozenset(
            k for k, v in config.headers.items() if isinstance(v, str) and fixed_prefix(v) is None
        )
        self.message_id = compile_value(config.message_id)
        self.correlation_id = compile_value(config.correlation_id)
        self.masker = Masker()

    def message(self, env: Envelope, scope: Mapping[str, Any]) -> Any:
        import aio_pika

        body = self.body.render(scope)
        try:
            if self.cfg.format == "text":
                data = ("" if body is None else str(body)).encode()
                content_type = "text/plain"
            else:
                data = exactjson.dumps(body)
                content_type = "application/json"
        except (TypeError, ValueError) as exc:
            raise PoisonMessageError(f"body: {exc}") from None
        headers = self.headers.render(scope) or {}
        message_id = self.message_id.render(scope) or f"{env.execution_id}-{self.cfg.id}"
        correlation = self.correlation_id.render(scope)
        try:
            return aio_pika.Message(
                data,
                headers=headers,
                content_type=content_type,
                content_encoding="utf-8",
                delivery_mode=(
                    aio_pika.DeliveryMode.PERSISTENT
                    if self.cfg.persistent
                    else aio_pika.DeliveryMode.NOT_PERSISTENT
                ),
                message_id=str(message_id),
                correlation_id=None if correlation is None else str(correlation),
                reply_to=self.cfg.reply_to,
                priority=self.cfg.priority,
                expiration=self.cfg.expiration,
                timestamp=dt.datetime.now(dt.UTC),
                app_id="streamflow",
            )
        except (TypeError, ValueError) as exc:
            raise PoisonMessageError(f"{self.masker.mask(str(exc))}") from None

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        url = str(self.url.render(scope) or "")
        if not url:
            raise ConfigError("the url is empty")
        self.masker.add_dsn(url)
        headers = self.headers.render(scope) or {}
        self.masker.add(
            *(v for k, v in headers.items() if k in self.fixed_headers and isinstance(v, str))
        )
        routing_key = str(self.routing_key.render(scope) or "")
        exchange_name = str(self.exchange.render(scope) or "")
        message = self.message(env, scope)
        where = f"{safe_dsn(url)} exchange {exchange_name or '(default)'!r}"
        client = await amqp_client(
            self.ctx.resources,
            url,
            self.cfg.heartbeat,
            self.cfg.timeout,
            self.cfg.pool_size or DEFAULT_POOL,
            self.masker,
        )
        try:
            async with asyncio.timeout(self.cfg.timeout), client.channel() as channel:
                exchange = (
                    channel.default_exchange
                    if not exchange_name
                    else await channel.get_exchange(exchange_name, ensure=False)
                )
                await exchange.publish(
                    message, routing_key, mandatory=self.cfg.mandatory, timeout=self.cfg.timeout
                )
        except TimeoutError:
            raise RetriableError(
                f"{where}: no confirm within {self.cfg.timeout:g}s (it may still arrive)"
            ) from None
        except (PoisonMessageError, RetriableError):
            raise
        except Exception as exc:
            raise classify(exc, where, self.masker) from None
        result = {
            "exchange": exchange_name,
            "routing_key": routing_key,
            "message_id": message.message_id,
            "confirmed": True,
        }
        return Outcome(env.payload, result, note=f"-> {exchange_name or '(default)'}")
