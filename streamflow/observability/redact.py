"""Secrets out of what is shown: payloads, errors and configs on their way to a screen.

``redact`` walks a JSON value: a mapping key that names a secret (``password``,
``token``, ``authorization``, ``api_key`` ...) gets ``***`` for its value, and every
string passes ``logs.mask`` (the secret values this process knows: config variables
marked secret, instance secrets; and passwords in URLs and ``password=`` pairs).
"""

from __future__ import annotations

import re
from typing import Any

from streamflow.observability.logs import mask
from streamflow.util.secrets import MASK

SECRET_KEY = re.compile(
    r"pass(word|wd)?$|^pwd$|secret|token|authori[sz]ation|api[-_]?key|credential|"
    r"private[-_]?key|cookie|signature|client[-_]?secret|dsn$",
    re.IGNORECASE,
)


def redact(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with secret-named fields and known secret values masked."""
    if depth > 64:
        return MASK
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {
            str(k): MASK
            if SECRET_KEY.search(str(k)) and v not in (None, "")
            else redact(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, depth + 1) for v in value]
    return value
