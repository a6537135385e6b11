"""Config models of the trigger types (what starts a flow)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from streamflow.topology.models import Duration, Model, TriggerConfig
from streamflow.topology.registry import trigger_config


@trigger_config("manual")
class ManualTrigger(TriggerConfig):
    """Events come from `streamflow run --input` or `streamflow produce`."""

    type: Literal["manual"]


class WebhookSignature(Model):
    header: str = Field(description="request header carrying the signature")
    secret: str = Field(description="shared secret, usually ${config.<secret variable>}")
    algorithm: Literal["hmac-sha256", "hmac-sha1"] = "hmac-sha256"
    prefix: str = Field("", description="text before the hex digest, e.g. 'sha256='")
    timestamp_header: str | None = None
    tolerance: Duration = 300.0


@trigger_config("webhook")
class WebhookTrigger(TriggerConfig):
    """POST /webhooks/<integration>/<flow>: each accepted request starts an execution."""

    type: Literal["webhook"]
    methods: list[Literal["POST", "PUT", "PATCH", "GET", "DELETE"]] = ["POST"]
    signature: WebhookSignature | None = None
    schema_: dict[str, Any] | str | None = Field(
        None, alias="schema", description="JSON Schema of the body, inline or a file under schemas/"
    )
    max_body: int = Field(1_048_576, ge=1, description="bytes; larger requests get 413")
    secret_fields: ClassVar[frozenset[str]] = frozenset({"signature"})


@trigger_config("schedule")
class ScheduleTrigger(TriggerConfig):
    """Fires on a cron expression (with time zone) or a fixed interval."""

    type: Literal["schedule"]
    cron: str | None = None
    every: Duration | None = None
    timezone: str = "UTC"
    payload: Any = None


@trigger_config("kafka")
class KafkaTrigger(TriggerConfig):
    """Consume an external Kafka topic into the flow."""

    type: Literal["kafka"]
    topic: str
    group: str | None = Field(
        None, description="consumer group (default: the flow's trigger agent)"
    )
    format: Literal["json", "text", "bytes"] = "json"
