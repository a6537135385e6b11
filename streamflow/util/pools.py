"""Pool settings shared by the connectors whose drivers pool connections.

``pool: {min_size, max_size, idle_timeout, acquire_timeout, keepalive}`` on a connection
(or a step). Each driver maps what it has; docs/connectors.md has the table per driver.
"""

from __future__ import annotations

from pydantic import Field

from streamflow.topology.models import Duration, Model


class PoolSettings(Model):
    """How a connector keeps its connections (fields a driver lacks are ignored by it)."""

    min_size: int = Field(1, ge=0, le=1000, description="connections opened up front and kept")
    max_size: int | None = Field(
        None, ge=1, le=10_000, description="at most this many (default: pool_size, else 10)"
    )
    idle_timeout: Duration = Field(
        300.0, description="a connection unused this long is closed and replaced, e.g. 5m"
    )
    acquire_timeout: Duration | None = Field(
        None, description="wait at most this long for a free connection (default: the timeout)"
    )
    keepalive: bool = Field(True, description="TCP keep-alive on the sockets (where supported)")
