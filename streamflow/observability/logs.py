"""Logging: text or JSON lines, every line with integration/flow/step/execution id when
known, and every secret value StreamFlow knows of masked before a line is written.

No per-event logging happens on the hot path at the default level (WARNING): agents log
transitions (assignments, breaker changes, dead letters), not events.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from streamflow import exactjson
from streamflow.util.secrets import PROCESS

_masker = PROCESS  # every secret (and derived form) any masker of this process learnt
CONTEXT_FIELDS = ("integration", "flow", "step", "execution_id", "instance")


def register_secrets(values: Iterable[Any]) -> None:
    """Secret values (config variables marked secret, instance secrets) to mask in logs."""
    _masker.add(*(v for v in values if isinstance(v, str)))


def mask(text: str) -> str:
    return _masker.mask(text)


class MaskingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _masker.mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = value
        if record.exc_info:
            line["exception"] = _masker.mask(self.formatException(record.exc_info))
        return exactjson.dumps(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = " ".join(
            f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if getattr(record, n, None)
        )
        return f"{text} [{context}]" if context else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str = "WARNING", fmt: str = "text") -> None:
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _StderrHandler)] + [handler]
    root.setLevel(level.upper())
