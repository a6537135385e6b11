"""List functions of ``${…}`` expressions: map, filter, pluck, sort_by, min_by, max_by,
sum, group_by (see ``expressions.py`` for the grammar).

No lambdas: a per-item expression is a constant string, ``map(payload.lines, 'item.qty *
item.price')``, compiled once when the topology loads (``item`` is the element; the other
roots — payload, steps, ... — are visible too). ``pluck(list, 'a.b')`` reads a dotted path.
Nulls: a null list gives ``[]`` (``min_by``/``max_by``: null); ``sort_by``, ``min_by`` and
``max_by`` put null keys last and ignore them; keys of mixed types (text and numbers) raise
``ExpressionEvalError``. ``group_by`` keys are texts (like interpolation renders them).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from typing import Any

from streamflow.topology.exprfuncs import BINOPS, lookup, text

__all__ = ["ITEM_ROOT", "LIST_FUNCS", "PER_ITEM_ARG"]

ITEM_ROOT = "item"
Sub = Callable[[Any], Any]  # the compiled per-item expression, called with one element
MAX_ITEMS = 1_000_000


def _items(xs: Any, name: str) -> list[Any]:
    if xs is None:
        return []
    if isinstance(xs, dict):
        raise TypeError(f"{name}() needs a list, got an object (use values(x) for its values)")
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"{name}() needs a list, got {type(xs).__name__}")
    if len(xs) > MAX_ITEMS:
        raise ValueError(f"{name}(): more than {MAX_ITEMS} items")
    return list(xs)


def _map(xs: Any, f: Sub) -> list[Any]:
    return [f(x) for x in _items(xs, "map")]


def _filter(xs: Any, f: Sub) -> list[Any]:
    return [x for x in _items(xs, "filter") if f(x)]


def _pluck(xs: Any, path: Any) -> list[Any]:
    parts = text(path).split(".")
    keys: list[str | int] = [int(k) if k.lstrip("-").isdigit() else k for k in parts]
    out = []
    for x in _items(xs, "pluck"):
        v = x
        for k in keys:
            v = lookup(v, k)
            if v is None:
                break
        out.append(v)
    return out


def _keyed(xs: Any, f: Sub, name: str) -> list[tuple[Any, Any]]:
    return [(f(x), x) for x in _items(xs, name)]


def _sort_by(xs: Any, f: Sub) -> list[Any]:
    pairs = _keyed(xs, f, "sort_by")
    known = [p for p in pairs if p[0] is not None]
    known.sort(key=lambda p: p[0])  # stable: equal keys keep their order
    return [x for _, x in known] + [x for k, x in pairs if k is None]


def _extreme(pick: Callable[..., Any], name: str) -> Callable[[Any, Sub], Any]:
    def run(xs: Any, f: Sub) -> Any:
        known = [p for p in _keyed(xs, f, name) if p[0] is not None]
        return pick(known, key=lambda p: p[0])[1] if known else None

    return run


def _sum(xs: Any, f: Sub | None = None) -> Any:
    values: Iterable[Any] = _items(xs, "sum")
    if f is not None:
        values = (f(x) for x in values)
    add = BINOPS[ast.Add]  # exact: a Decimal (SQL numeric) mixes with floats, stays Decimal
    total: Any = 0
    for v in values:
        if v is not None:
            total = add(total, v)
    return total


def _group_by(xs: Any, f: Sub) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for k, x in _keyed(xs, f, "group_by"):
        groups.setdefault(text(k), []).append(x)
    return groups


# name: (fn, min args, max args); PER_ITEM_ARG says which argument is a per-item expression
LIST_FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "map": (_map, 2, 2),
    "filter": (_filter, 2, 2),
    "pluck": (_pluck, 2, 2),
    "sort_by": (_sort_by, 2, 2),
    "min_by": (_extreme(min, "min_by"), 2, 2),
    "max_by": (_extreme(max, "max_by"), 2, 2),
    "sum": (_sum, 1, 2),
    "group_by": (_group_by, 2, 2),
}
PER_ITEM_ARG: dict[str, int] = {
    "map": 1,
    "filter": 1,
    "sort_by": 1,
    "min_by": 1,
    "max_by": 1,
    "sum": 1,
    "group_by": 1,
}
