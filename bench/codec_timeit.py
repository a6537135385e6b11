"""Envelope codec cost, orjson alone vs streamflow.exactjson (ordinary data and big numbers),
and one hop between agents: the whole envelope as one document (the format before the
``sf-env`` header, still read) vs the payload as the value and the metadata in ``sf-env``.

Run: .venv/bin/python bench/codec_timeit.py   (prints microseconds per call, best of 5)
"""

from __future__ import annotations

import timeit
from collections.abc import Callable
from decimal import Decimal
from functools import partial

import orjson

from streamflow import exactjson
from streamflow.envelope import Envelope, decode, encode, new_execution_id

ORDINARY = Envelope(
    new_execution_id(), "shop", "orders", "enrich",
    {"order_id": "o-1042", "amount": 129.95, "qty": 3, "created_ms": 1764500000000,
     "customer": {"id": 981234, "name": "Ada", "tags": ["vip", "eu"]},
     "lines": [{"sku": f"SKU-{i}", "price": 9.5 + i, "qty": i} for i in range(8)]},
    steps={"lookup": {"status": 200, "body": {"ok": True, "score": 0.87}}},
)
COMPUTED = Envelope(new_execution_id(), "shop", "orders", "enrich",
                    {**ORDINARY.payload, "total": 0.1 + 0.2})  # 0.30000000000000004
BIG = Envelope(new_execution_id(), "shop", "orders", "enrich",
               {"id": 123456789012345678901234567890, "amount": Decimal("1234567890123456.78")})


def best(stmt: str | Callable[[], object], n: int = 20000) -> float:
    return min(timeit.repeat(stmt, number=n, repeat=5, globals=globals())) / n * 1e6


def pair(what: str, fast: str, exact: str) -> None:
    print(f"  {what}  orjson {best(fast):.2f} us   exactjson {best(exact):.2f} us")


if __name__ == "__main__":
    d = ORDINARY.to_dict()
    raw = orjson.dumps(d)
    big = BIG.to_dict()
    big_raw = exactjson.dumps(big)
    comp = orjson.dumps(COMPUTED.to_dict())
    print(f"ordinary envelope, {len(raw)} bytes")
    pair("dumps", "orjson.dumps(d)", "exactjson.dumps(d)")
    pair("loads", "orjson.loads(raw)", "exactjson.loads(raw)")
    print("ordinary envelope with a 17-digit computed float (0.1 + 0.2)")
    pair("loads", "orjson.loads(comp)", "exactjson.loads(comp)")
    print(f"big-number envelope, {len(big_raw)} bytes (orjson alone cannot write it)")
    print(f"  dumps  exactjson {best('exactjson.dumps(big)'):.2f} us")
    print(f"  loads  exactjson {best('exactjson.loads(big_raw)'):.2f} us")

    # one hop: decode what the previous agent wrote, (read the payload,) encode for the next
    old = exactjson.dumps(d)  # whole document, no header: decode's path for old records
    value, headers = encode(ORDINARY)

    def hop_old(read: bool) -> bytes:
        env = decode(old, None)
        if read:
            env.payload = dict(env.payload)
        env.step = "next"
        return exactjson.dumps(env.to_dict())

    def hop_new(read: bool) -> tuple[bytes, list[tuple[str, bytes]]]:
        env = decode(value, headers)
        if read:
            env.payload = dict(env.payload)
        env.step = "next"
        return encode(env)

    print(f"one hop: whole document {len(old)} B vs value {len(value)} B + sf-env "
          f"{len(headers[0][1])} B")  # fmt: skip
    for read in (True, False):
        what = "payload read and replaced" if read else "payload untouched   "
        print(f"  {what}  whole document {best(partial(hop_old, read)):.2f} us   "
              f"value + header {best(partial(hop_new, read)):.2f} us")  # fmt: skip
