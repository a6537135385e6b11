"""Config models of the stream triggers ``sse`` (Server-Sent Events) and ``websocket``.

Both hold one long-lived connection per flow (the leader's, see ``triggers/streams.py``)
and start one execution per message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from streamflow.topology.models import Duration, Secret, TriggerConfig
from streamflow.topology.registry import trigger_type

StreamFormat = Literal["auto", "json", "text"]


class _StreamTrigger(TriggerConfig):
    url: Annotated[str, Secret] = Field(description="the stream's URL (a template of config/env)")
    headers: Annotated[dict[str, str], Secret] = Field(
        default_factory=dict, description="request headers, e.g. Authorization (secrets ok)"
    )
    format: StreamFormat = Field(
        "auto",
        description="auto: JSON when the message parses as JSON, else its text; json: a "
        "message that is not JSON is dead-lettered; text: always the text",
    )
    backoff: Duration = Field(1.0, description="first reconnection delay (doubles each time)")
    max_backoff: Duration = Field(60.0, description="longest reconnection delay")
    idle_timeout: Duration = Field(
        300.0,
        description="reconnect when nothing (not even a comment or ping) arrived for this long",
    )
    batch: int = Field(500, ge=1, le=100_000, description="messages committed together at most")

    @model_validator(mode="after")
    def _delays(self) -> _StreamTrigger:
        if self.backoff <= 0 or self.max_backoff < self.backoff:
            raise ValueError("backoff must be > 0 and max_backoff at least backoff")
        if self.idle_timeout < 1:
            raise ValueError("idle_timeout is at least 1s")
        return self


@trigger_type(
    "sse",
    category="http",
    since="0.1.0",
    example="""trigger:
  type: sse
  url: ${config.stream_url}/orders/stream
  headers: {Authorization: "Bearer ${config.token}"}
  events: [order.created, order.paid]   # default: every event type
  format: json""",
)
class SseTrigger(_StreamTrigger):
    """Follow a Server-Sent Events stream: one event per message, resumed with Last-Event-ID, one connection per flow across gateway processes."""  # noqa: E501

    type: Literal["sse"]
    events: list[str] | None = Field(
        None, description="event types taken (default: all; untyped messages are 'message')"
    )

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if "${" not in v and not v.startswith(("http://", "https://")):
            raise ValueError("an SSE url starts with http:// or https://")
        return v


@trigger_type(
    "websocket",
    category="http",
    since="0.1.0",
    example="""trigger:
  type: websocket
  url: wss://stream.example.com/v1
  subscribe: {op: subscribe, channel: trades}   # sent after every (re)connect
  heartbeat: 20s""",
)
class WebsocketTrigger(_StreamTrigger):
    """Follow a WebSocket: one event per message (text or binary), reconnecting with backoff, one connection per flow across gateway processes."""  # noqa: E501

    type: Literal["websocket"]
    subscribe: Any = Field(
        None,
        description="message(s) sent after each (re)connect: text, or JSON for other "
        "values; a list sends each item",
    )
    heartbeat: Duration = Field(30.0, description="ping interval; a missing pong reconnects")

    @field_validator("url")
    @classmethod
    def _ws(cls, v: str) -> str:
        if "${" not in v and not v.startswith(("ws://", "wss://")):
            raise ValueError("a websocket url starts with ws:// or wss://")
        return v
