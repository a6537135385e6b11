"""Retry policy arithmetic: how long to wait before attempt n+1."""

from __future__ import annotations

import random

from streamflow.topology.models import RetryPolicy

DEFAULT_POLICY = RetryPolicy()


def backoff_delay(policy: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based)."""
    if policy.backoff == "fixed":
        delay = policy.delay
    elif policy.backoff == "linear":
        delay = policy.delay * attempt
    else:
        delay = policy.delay * (2 ** (attempt - 1))
    delay = min(delay, policy.max_delay)
    if policy.jitter:
        delay = random.uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(retry_after, policy.max_delay))
    return delay
