"""What every contestant shares: the data set, the pipelines' meaning, the names.

Only the standard library here: the peer scripts (run in their own virtualenvs) import
nothing of StreamFlow, and this module is imported by the harness and by throughput.py.

The pipelines, written once per contestant in its own idiom:

- **1-step**: ``{id, user, total: amount * 1.2, note, ts}`` (a transform)
- **3-step**: the 1-step transform, then keep ``total >= 0`` (every event passes), then
  ``{id, gross: total, who: upper(user), ts}``

Input and output are JSON; the output key is the input key (the user id). ``ts`` is
carried through so the latency phase can stamp the send time into the event.
"""

from __future__ import annotations

import json
import random
from typing import Any

SEED = 42
EVENT_BYTES = 500  # target size of one serialized input event
PARTITIONS = 6
BATCH = 1000  # records per poll, the same for the ceiling and every StreamFlow flow
USERS = 1000


def event(i: int, rnd: random.Random, ts: int = 0) -> dict[str, Any]:
    """One input event of about EVENT_BYTES bytes (``ts``: send time in ns, 0 in the backlog)."""
    base = {
        "id": i,
        "user": f"user-{rnd.randrange(USERS):04d}",
        "amount": round(rnd.random() * 500, 2),
        "currency": rnd.choice(("EUR", "USD", "GBP", "CHF")),
        "country": rnd.choice(("DE", "FR", "US", "GB", "CH", "NL", "SE")),
        "ts": ts,
        "note": "",
    }
    size = max(0, EVENT_BYTES - len(json.dumps(base, separators=(",", ":"))))
    start = rnd.randrange(len(_TEXT) - size)
    base["note"] = _TEXT[start : start + size]
    return base


# filler text for ``note``: fixed (its own seed), sliced at random offsets per event
_TEXT = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz     ", k=65_536))


def encoded(event_: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) of an event as produced to the input topic."""
    value = json.dumps(event_, separators=(",", ":")).encode()
    return str(event_["user"]).encode(), value


def dataset(n: int, seed: int = SEED) -> list[tuple[bytes, bytes]]:
    """N keyed events, identical for every contestant and every run with the same seed."""
    rnd = random.Random(seed)
    return [encoded(event(i, rnd)) for i in range(n)]
