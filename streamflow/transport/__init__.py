"""Transports: the broker seam (``base.Transport``) and its drivers."""

from __future__ import annotations

from streamflow.errors import ConfigError
from streamflow.transport.base import Transport

DEFAULT_BROKER = "local://.streamflow"


def open_transport(url: str = DEFAULT_BROKER) -> Transport:
    """``local://DIR`` (embedded, the default) or ``kafka://HOST:PORT[,…]``."""
    if url.startswith("local://"):
        from streamflow.transport.local import LocalTransport

        return LocalTransport(url.removeprefix("local://") or ".streamflow")
    if url.startswith("kafka://"):
        from streamflow.transport.kafka import KafkaTransport

        return KafkaTransport(url.removeprefix("kafka://"))
    raise ConfigError(f"unknown broker URL {url!r}: use local://DIR or kafka://HOST:PORT[,…]")
