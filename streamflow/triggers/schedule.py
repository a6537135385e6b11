"""The ``schedule`` trigger: cron expressions (with time zone) and fixed intervals.

Every gateway/serve process runs it; the leader of ``sf.<integration>.<flow>.schedule``
fires (see ``lease.py``). The state topic holds one record, ``last``: the latest tick that
was fired (or deliberately skipped). A tick's envelope, its ``started`` event and the new
``last`` are one transaction, so a tick is fired once or not at all, and its execution id
is ``<flow>-<tick epoch seconds>``: a duplicate would be visible at once.

Ticks:

* ``every: D`` — multiples of D since the Unix epoch (``every: 1h`` fires on the hour, UTC).
* ``cron: "m h dom mon dow"`` in ``timezone`` (croniter), across daylight-saving changes
  as Debian/Vixie cron: when clocks go forward, a time that does not exist that day fires
  at the jump (``30 2 * * *`` at 03:00 in Europe/Berlin); when clocks go back, a job with
  fixed hours fires once, in the first pass of the repeated hour, while a job whose hour
  field is a wildcard (``*``, ``*/2``) fires in both passes (it runs every hour).

Tolerance (documented in docs/triggers.md): while a leader runs, every tick fires, late if
the process was busy (at most ``BURST`` at once). When a term starts — after a restart,
a crash or a hand-over — ticks that passed since ``last`` were missed: the latest
``catch_up`` of them fire (default 1), older ones are skipped with a warning. A schedule
that never fired starts with the first tick after its first leader started.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
from croniter import croniter

from streamflow.envelope import Envelope
from streamflow.topology.expressions import compile_value
from streamflow.topology.triggers import ScheduleTrigger
from streamflow.transport.base import Record
from streamflow.triggers.lease import LeaderTrigger, Outgoing, envelope_messages

log = logging.getLogger("streamflow.trigger")
BURST = 100  # ticks a running leader fires at once when it fell behind
LAST = b"last"


class Ticks:
    """The tick times of a schedule, in epoch milliseconds (pure; no clock of its own)."""

    def __init__(self, trigger: ScheduleTrigger) -> None:
        self.cron = trigger.cron
        self.tz = ZoneInfo(trigger.timezone)
        self.every_ms = round(trigger.every * 1000) if trigger.every is not None else 0
        # fixed hours (not `*`, `*/n`): once a day even when the hour repeats (fall back)
        fields = (self.cron or "").split()
        self.fixed_hours = len(fields) >= 2 and not fields[1].startswith("*")

    def _at(self, ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, self.tz)

    def _repeat(self, ms: int) -> bool:
        """A tick in the second pass of a repeated (fall-back) hour that a fixed-time job
        already had in the first pass."""
        if not self.fixed_hours:
            return False
        at = self._at(ms)
        return at.fold == 1 and at.utcoffset() != at.replace(fold=0).utcoffset()

    def next_after(self, ms: int) -> int:
        """The first tick strictly after ``ms``."""
        if self.every_ms:
            return (ms // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        it = croniter(self.cron, self._at(ms))
        while True:
            tick = round(it.get_next(float) * 1000)
            if not self._repeat(tick):
                return tick

    def due(self, after_ms: int, upto_ms: int, limit: int) -> tuple[list[int], bool]:
        """The latest ``limit`` ticks in (after_ms, upto_ms], oldest first, and whether
        older ticks in that range were left out."""
        if self.every_ms:
            e = self.every_ms
            last = upto_ms // e * e
            first = self.next_after(after_ms)
            if first > last:
                return [], False
            count = (last - first) // e + 1
            take = min(count, limit)
            return [last - i * e for i in range(take)][::-1], count > take
        assert self.cron is not None
        it = croniter(self.cron, self._at(upto_ms + 1))
        out: list[int] = []
        while True:
            tick = round(it.get_prev(float) * 1000)
            if tick <= after_ms:
                return out[::-1], False
            if self._repeat(tick):
                continue
            if len(out) >= limit:
                return out[::-1], True
            out.append(tick)

    def iso(self, ms: int) -> str:
        return self._at(ms).isoformat(timespec="seconds")


def tick_id(flow: str, tick_ms: int) -> str:
    seconds = tick_ms // 1000 if tick_ms % 1000 == 0 else f"{tick_ms / 1000:.3f}"
    return f"{flow}-{seconds}"


class ScheduleRunner(LeaderTrigger):
    kind = "schedule"

    def setup(self) -> None:
        self.trigger = trigger = self.config(ScheduleTrigger)
        self.ticks = Ticks(trigger)
        self.payload = compile_value(trigger.payload) if trigger.payload is not None else None
        self.last_ms: int | None = None
        self.starting = True

    def reset(self) -> None:
        self.last_ms = None

    def apply(self, rec: Record) -> None:
        if rec.key == LAST:
            tick = int(orjson.loads(rec.value)["tick_ms"])
            self.last_ms = tick if self.last_ms is None else max(self.last_ms, tick)

    def on_term(self) -> None:
        self.starting = True

    async def work(self) -> float:
        now = self.clock.now_ms()
        if self.starting:
            return await self._start(now)
        assert self.last_ms is not None
        nxt = self.ticks.next_after(self.last_ms)
        if nxt > now:
            return (nxt - now) / 1000
        ticks, skipped = self.ticks.due(self.last_ms, now, BURST)
        if skipped:
            log.warning(
                "%s: fell behind; skipped ticks before %s", self.topic, self.ticks.iso(ticks[0])
            )
        return 0.0 if await self._fire(ticks, ticks[-1], now) else 1.0

    async def _start(self, now: int) -> float:
        """A new term: record where a new schedule starts, or catch up on missed ticks."""
        if self.last_ms is None:
            ok = await self._fire([], now, now)
            log.info("%s: new schedule; first tick %s", self.topic, self._next_iso(now))
        else:
            ticks, skipped = self.ticks.due(self.last_ms, now, self.trigger.catch_up)
            if skipped:
                log.warning(
                    "%s: missed ticks after %s were skipped (catch_up: %d)",
                    self.topic,
                    self.ticks.iso(self.last_ms),
                    self.trigger.catch_up,
                )
            if not ticks and not skipped:
                self.starting = False
                return 0.0
            if ticks:
                log.info("%s: catching up %d missed tick(s)", self.topic, len(ticks))
            # skipped ticks are older than the fired ones; `last` moves past both
            last = ticks[-1] if ticks else self.ticks.due(self.last_ms, now, 1)[0][-1]
            ok = await self._fire(ticks, last, now)
        if ok:
            self.starting = False
        return 0.0 if ok else 1.0

    def _next_iso(self, ms: int) -> str:
        return self.ticks.iso(self.ticks.next_after(ms))

    async def _fire(self, ticks: list[int], last: int, now: int) -> bool:
        messages: list[Outgoing] = []
        for tick in ticks:
            messages.extend(envelope_messages(self.ingress, self._envelope(tick, now)))
        messages.append(self.state_record(LAST, {"tick_ms": last, "fired": len(ticks), "ts": now}))
        if not await self.lease.commit(messages):
            return False
        self.last_ms = last
        if ticks:
            self.firings.inc(len(ticks))
            log.info("%s: fired %s", self.topic, ", ".join(self.ticks.iso(t) for t in ticks))
        return True

    def _envelope(self, tick: int, now: int) -> Envelope:
        iso = self.ticks.iso(tick)
        epoch = tick // 1000 if tick % 1000 == 0 else tick / 1000
        trigger = {
            "type": "schedule",
            "tick": iso,
            "epoch": epoch,
            "fired_ms": now,
            "late_ms": max(0, now - tick),
            **({"cron": self.trigger.cron} if self.trigger.cron else {"every": self.trigger.every}),
        }
        payload = (
            self.payload.render(self.scope)
            if self.payload is not None
            else {"tick": iso, "epoch": epoch}
        )
        return self.ingress.envelope(
            payload, trigger=trigger, execution_id=tick_id(self.flow, tick)
        )
