"""Reading event payloads (JSON or NDJSON) and config values for the CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from streamflow.errors import ConfigError
from streamflow.topology.models import Integration
from streamflow.topology.values import parse_assignments, read_config_file, resolve_config
from streamflow.util.payloads import parse_payloads


def read_payloads(source: str) -> list[Any]:
    """A JSON document (an array is many events) or NDJSON (one event per line)."""
    name = "<stdin>" if source == "-" else source
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read input: {exc.strerror}") from None
    return parse_payloads(data, name)


def config_values(
    args: argparse.Namespace,
    integration: Integration,
    extra: dict[str, Any] | None = None,
    *,
    allow_missing: bool = False,
) -> dict[str, Any]:
    supplied: dict[str, Any] = dict(extra or {})
    if getattr(args, "config_file", None):
        supplied.update(read_config_file(args.config_file))
    supplied.update(parse_assignments(getattr(args, "config", []) or []))
    return resolve_config(integration.config, supplied, allow_missing=allow_missing)
