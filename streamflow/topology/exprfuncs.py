"""The runtime side of ``${…}`` expressions: the fixed function set, operators and value
helpers that compiled expressions call (see ``expressions.py`` for the grammar)."""

from __future__ import annotations

import ast
import base64 as _b64
import hashlib
import operator as op
import time
import uuid as _uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson

from streamflow import exactjson
from streamflow.topology.exprdates import ARG_CHECKS, DATE_FUNCS
from streamflow.topology.exprxml import parse_xml, render_xml

__all__ = ["ARG_CHECKS", "BINOPS", "CMPOPS", "FUNCS", "lookup", "text"]

_MAX = 1_000_000  # cap for 'x' * n and [..] * n
_MAX_PLACES = 1000  # round(x, n): |n| at most

DEFAULT_MAX_VALUE = 1_000_000
"""Default bound on every value an expression builds (characters of a string; for a list or
object, about the bytes of its JSON). A flow sets its own with ``max_value_size``."""
VALUE_LIMIT: ContextVar[int] = ContextVar("streamflow_value_limit", default=DEFAULT_MAX_VALUE)
"""The bound in force: each agent sets its flow's, for the records it processes."""


class ValueTooLarge(ValueError):
    """An expression would build a value over the limit: that record fails (poison)."""


def _too_large(what: str, size: int, limit: int) -> ValueTooLarge:
    return ValueTooLarge(
        f"value too large: {what} would be {size:,} long, over the {limit:,} limit on "
        "values built by expressions (the flow's max_value_size)"
    )


def size_of(v: Any, budget: int) -> int:
    """About the size of ``v`` as JSON (str: its length), counted only up to ``budget``:
    the walk stops as soon as it is exceeded (a list repeating one big value stays cheap)."""
    total = 0
    stack = [v]
    while stack:
        x = stack.pop()
        if type(x) is str or isinstance(x, (str, bytes)):
            total += len(x) + 2
        elif isinstance(x, Mapping):
            total += 2 + len(x)
            if total <= budget:
                for k, val in x.items():
                    stack.append(k)
                    stack.append(val)
        elif isinstance(x, (list, tuple)):
            total += 2 + len(x)
            if total <= budget:
                stack.extend(x)
        else:
            total += 8
        if total > budget:
            return total
    return total


def bounded_text(s: str) -> str:
    """``s``, if within the limit (an interpolated string)."""
    limit = VALUE_LIMIT.get()
    if len(s) > limit:
        raise _too_large("the interpolated text", len(s), limit)
    return s


def _check(what: str, v: Any) -> Any:
    limit = VALUE_LIMIT.get()
    size = len(v) if type(v) is str else size_of(v, limit)
    if size > limit:
        raise _too_large(what, size, limit)
    return v


# --------------------------------------------------------------- runtime helpers
def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal) and o.is_finite():
        return orjson.Fragment(str(o))  # exact digits
    return dict(o) if isinstance(o, Mapping) else str(o)


def _dumps(v: Any) -> str:
    limit = VALUE_LIMIT.get()
    size = size_of(v, limit)
    if size > limit:
        raise _too_large("the JSON text", size, limit)
    try:
        return orjson.dumps(v, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # an integer beyond 64 bits: the exact (slower) path
        return exactjson.dumps_text(v, orjson.OPT_NON_STR_KEYS)


def text(v: Any) -> str:
    if type(v) is str:
        return v
    if v is None or v is True or v is False:
        return "" if v is None else "true" if v else "false"
    return _dumps(v) if isinstance(v, (Mapping, list, tuple)) else str(v)


def lookup(v: Any, k: Any) -> Any:
    try:
        if type(v) is dict:  # the hot case, without an ABC isinstance check
            return v.get(k)
        if isinstance(v, Mapping):
            return v.get(k)
        if type(k) is int and isinstance(v, (list, tuple, str)):
            return v[k]
    except (TypeError, IndexError):
        pass
    return None


def _contains(container: Any, item: Any) -> bool:
    try:
        return item in container
    except TypeError:
        return False


def _ordered(cmp: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def safe(a: Any, b: Any) -> Any:
        try:
            return cmp(a, b)
        except TypeError:  # e.g. null < 1
            return False

    return safe


def _exact(f: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``f`` that also mixes an exact Decimal (SQL numeric, long JSON decimals) with a float:
    the float is taken at its shortest decimal form and the result stays Decimal."""

    def mixed(a: Any, b: Any) -> Any:
        try:
            return f(a, b)
        except TypeError:
            if type(a) is Decimal and type(b) is float:
                return f(a, Decimal(repr(b)))
            if type(a) is float and type(b) is Decimal:
                return f(Decimal(repr(a)), b)
            raise

    return mixed


_NUMBERS = (int, float)


def _mul(a: Any, b: Any) -> Any:
    if type(a) in _NUMBERS and type(b) in _NUMBERS:  # the usual case: no repetition to bound
        return a * b
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and n > 1:
            limit = VALUE_LIMIT.get()
            one = len(seq) if isinstance(seq, str) else size_of(seq, limit // n + 1)
            if one * n > limit:
                raise _too_large("the repetition", one * n, limit)
    return a * b


def _add(a: Any, b: Any) -> Any:
    r = a + b  # both operands are bounded, so the result is at most twice the limit
    if type(r) is str:
        if len(r) > VALUE_LIMIT.get():
            raise _too_large("the concatenation", len(r), VALUE_LIMIT.get())
    elif isinstance(r, (list, tuple)):
        _check("the concatenation", r)
    return r


def _replace(s: str, old: Any, new: Any) -> str:
    old, new = text(old), text(new)
    count = s.count(old) if old else len(s) + 1
    size = len(s) + count * (len(new) - len(old))
    limit = VALUE_LIMIT.get()
    if size > limit:
        raise _too_large("the result of replace()", size, limit)
    return s.replace(old, new)


def _join(xs: Any, sep: Any) -> str:
    if xs is None:
        return ""
    parts = [text(x) for x in xs]
    glue = text(sep)
    size = sum(map(len, parts)) + len(glue) * max(0, len(parts) - 1)
    limit = VALUE_LIMIT.get()
    if size > limit:
        raise _too_large("the joined text", size, limit)
    return glue.join(parts)


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):  # no printf-style formatting
        raise TypeError("'%' is only supported for numbers")
    return a % b


def _strfn(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda s, *a: None if s is None else f(text(s), *a)


def _int(x: Any) -> Any:
    if isinstance(x, str):
        return int(x) if x.strip().lstrip("+-").isdigit() else int(float(x))
    return None if x is None else int(x)


def _round(x: Any, n: int | None = None) -> Any:
    if x is None:
        return None
    if n is not None and not -_MAX_PLACES <= n <= _MAX_PLACES:
        raise ValueError(f"round() places must be between -{_MAX_PLACES} and {_MAX_PLACES}")
    q = Decimal(str(x)).quantize(Decimal(1).scaleb(-(n or 0)), rounding=ROUND_HALF_UP)
    if n is None or n <= 0:
        return int(q)
    return q if isinstance(x, Decimal) else float(q)  # an exact input stays exact


_FALSY = frozenset({"", "false", "0", "no", "off", "null", "none"})
FUNCS: dict[str, tuple[Callable[..., Any], int, int | None]] = {  # name: (fn, min, max args)
    "now": (lambda: datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z", 0, 0),
    "now_ms": (lambda: time.time_ns() // 1_000_000, 0, 0),
    "uuid": (lambda: str(_uuid.uuid4()), 0, 0),
    "lower": (_strfn(str.lower), 1, 1),
    "upper": (_strfn(str.upper), 1, 1),
    "trim": (_strfn(str.strip), 1, 1),
    "substr": (_strfn(lambda s, a, b=None: s[a:b]), 2, 3),
    "replace": (_strfn(_replace), 3, 3),
    "startswith": (lambda s, p: s is not None and text(s).startswith(text(p)), 2, 2),
    "endswith": (lambda s, p: s is not None and text(s).endswith(text(p)), 2, 2),
    "contains": (_contains, 2, 2),
    # no text, no items: split('') is [] (str.split(',') would give [''])
    "split": (lambda s, sep=None: [] if s is None or text(s) == "" else text(s).split(sep), 1, 2),
    "join": (_join, 2, 2),
    "concat": (lambda *xs: _join(xs, ""), 1, None),
    "len": (lambda x: 0 if x is None else len(x), 1, 1),
    "keys": (lambda d: list(d.keys()) if isinstance(d, Mapping) else [], 1, 1),
    "values": (lambda d: list(d.values()) if isinstance(d, Mapping) else [], 1, 1),
    "str": (text, 1, 1),
    "int": (_int, 1, 1),
    "float": (lambda x: None if x is None else float(x), 1, 1),
    "bool": (lambda x: x.strip().lower() not in _FALSY if isinstance(x, str) else bool(x), 1, 1),
    "round": (_round, 1, 2),
    "abs": (abs, 1, 1),
    "min": (lambda *a: min(a[0]) if len(a) == 1 else min(a), 1, None),
    "max": (lambda *a: max(a[0]) if len(a) == 1 else max(a), 1, None),
    "default": (lambda x, fallback: fallback if x is None or x == "" else x, 2, 2),
    "coalesce": (lambda *xs: next((x for x in xs if x is not None), None), 1, None),
    "json": (_dumps, 1, 1),
    "parse_json": (lambda s: None if s is None else exactjson.loads(s), 1, 1),
    "sha256": (lambda s: hashlib.sha256(text(s).encode()).hexdigest(), 1, 1),
    "base64": (lambda s: _b64.b64encode(text(s).encode()).decode("ascii"), 1, 1),
    "unbase64": (lambda s: _b64.b64decode(text(s).strip() + "==").decode(), 1, 1),
}
FUNCS.update(DATE_FUNCS)
FUNCS["parse_xml"] = (parse_xml, 1, 1)
FUNCS["render_xml"] = (render_xml, 1, 2)
BINOPS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Add: _exact(_add),
    ast.Sub: _exact(op.sub),
    ast.Mult: _exact(_mul),
    ast.Div: _exact(op.truediv),
    ast.FloorDiv: _exact(op.floordiv),
    ast.Mod: _exact(_mod),
}
CMPOPS: dict[type[ast.AST], Callable[[Any, Any], Any]] = {
    ast.Eq: op.eq,
    ast.NotEq: op.ne,
    ast.Lt: _ordered(op.lt),
    ast.LtE: _ordered(op.le),
    ast.Gt: _ordered(op.gt),
    ast.GtE: _ordered(op.ge),
    ast.In: lambda a, b: _contains(b, a),
    ast.NotIn: lambda a, b: not _contains(b, a),
}
