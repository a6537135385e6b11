"""A circuit breaker: stop calling a target that keeps failing, probe it, resume.

closed --(failure_threshold consecutive failures)--> open
open --(reset_timeout elapsed)--> half-open (up to half_open_calls trial calls)
half-open --(a trial succeeds)--> closed;  --(a trial fails)--> open again

Pure logic with an injectable clock; the runtime pauses an agent's partitions while the
breaker of its step is open instead of burning retries.
"""

from __future__ import annotations

from collections.abc import Callable

from streamflow.clock import SYSTEM_CLOCK, Clock
from streamflow.topology.models import BreakerConfig

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    def __init__(
        self,
        config: BreakerConfig,
        on_change: Callable[[str, str], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.on_change = on_change
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trials = 0

    def _set(self, state: str) -> None:
        if state != self.state:
            old, self.state = self.state, state
            if self.on_change is not None:
                self.on_change(old, state)

    def before_call(self) -> float | None:
        """None if a call may go ahead, else seconds until it may be tried."""
        if self.state == OPEN:
            left = self.opened_at + self.config.reset_timeout - self.clock.monotonic()
            if left > 0:
                return left
            self.trials = 0
            self._set(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self.trials >= self.config.half_open_calls:
                return max(0.05, self.config.reset_timeout / 10)
            self.trials += 1
        return None

    def success(self) -> None:
        self.failures = 0
        self._set(CLOSED)

    def failure(self) -> None:
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.config.failure_threshold:
            self.opened_at = self.clock.monotonic()
            self._set(OPEN)
