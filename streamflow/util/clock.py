"""Where the runtime reads the time: a ``Clock`` that tests can replace.

Only the schedule trigger takes one today (``ScheduleRunner(clock=...)``), so its DST
behaviour is tested by moving a clock, not by sleeping. Other parts still read
``time`` directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time: Unix epoch milliseconds (UTC)."""
        ...


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK: Clock = SystemClock()
