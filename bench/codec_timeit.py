"""Envelope codec cost, orjson alone vs streamflow.exactjson (ordinary data and big numbers).

Run: .venv/bin/python bench/codec_timeit.py   (prints microseconds per call, best of 5)
"""

from __future__ import annotations

import timeit
from decimal import Decimal

import orjson

from streamflow import exactjson
from streamflow.envelope import Envelope, new_execution_id

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


def best(stmt: str, n: int = 20000) -> float:
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
