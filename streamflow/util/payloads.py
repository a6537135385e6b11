"""Event payloads from files and stdin: a JSON document (an array is many events) or
NDJSON (one event per line). Used by `run`, `produce` and flow tests."""

from __future__ import annotations

from typing import Any

from streamflow import exactjson
from streamflow.errors import ConfigError


def parse_payloads(data: bytes, name: str) -> list[Any]:
    text = data.strip()
    if not text:
        return []
    try:
        doc = exactjson.loads(text)
        return doc if isinstance(doc, list) else [doc]
    except exactjson.JSONDecodeError:
        pass
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(exactjson.loads(line))
            except exactjson.JSONDecodeError as exc:
                raise ConfigError(f"{name}:{n}: not JSON: {exc}") from None
    return out
