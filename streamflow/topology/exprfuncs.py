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


# --------------------------------------------------------------- runtime helpers
def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal) and o.is_finite():
        return orjson.Fragment(str(o))  # exact digits
    return dict(o) if isinstance(o, Mapping) else str(o)


def _dumps(v: Any) -> str:
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


def _mul(a: Any, b: Any) -> Any:
    for seq, n in ((a, b), (b, a)):
        if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX:
            raise ValueError(f"repetition result too large (> {_MAX})")
    return a * b


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
    "replace": (_strfn(lambda s, old, new: s.replace(text(old), text(new))), 3, 3),
    "startswith": (lambda s, p: s is not None and text(s).startswith(text(p)), 2, 2),
    "endswith": (lambda s, p: s is not None and text(s).endswith(text(p)), 2, 2),
    "contains": (_contains, 2, 2),
    "split": (lambda s, sep=None: [] if s is None else text(s).split(sep), 1, 2),
    "join": (lambda xs, sep: "" if xs is None else text(sep).join(map(text, xs)), 2, 2),
    "concat": (lambda *xs: "".join(map(text, xs)), 1, None),
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
    "sum": (lambda xs: 0 if xs is None else sum(xs), 1, 1),
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
    ast.Add: _exact(op.add),
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
