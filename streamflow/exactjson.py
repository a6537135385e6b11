"""JSON that keeps every number exact: the one codec for user data (envelopes, bodies, records).

orjson is the fast path. It cannot write integers beyond 64 bits and reads them (and
decimals with more than ~15 significant digits) as lossy floats, so:

- ``dumps(obj) -> bytes`` writes :class:`decimal.Decimal` as its exact digits (``1.10`` stays
  ``1.10``) and, only when orjson refuses an integer beyond 64 bits, re-walks the value once
  and writes such integers as their digits. Ordinary data costs nothing extra.
- ``loads(data) -> Any`` parses with orjson unless the text holds a number orjson would
  round (a digit run of 19+ digits, or 16+ digits with a decimal point); only then it parses
  with the standard library: integers stay ``int`` (any size), decimals whose digits a float
  cannot hold become ``Decimal``, every other number stays ``float``.

Errors: ``dumps`` raises :class:`TypeError` (unsupported type, non-finite Decimal) or
:class:`ValueError` (an integer of more than 4300 digits); ``loads`` raises
:class:`JSONDecodeError` (a ``ValueError``) for text that is not JSON or holds a number of
more than 4300 digits. Messages are plain: no Python internals.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

__all__ = ["OPT_INDENT_2", "OPT_SORT_KEYS", "JSONDecodeError", "dumps", "dumps_text", "loads"]

JSONDecodeError = orjson.JSONDecodeError
OPT_INDENT_2 = orjson.OPT_INDENT_2
OPT_SORT_KEYS = orjson.OPT_SORT_KEYS
MAX_DIGITS = 4300  # CPython's int <-> str limit; a longer number is refused, not crashed on
# a number orjson may round has 17+ digits/points in a row (int64 has 19 digits, a double ~16)
_DIGITS = bytes.maketrans(b"0123456789.", b"###########")
_RUN = b"#" * 17
_EXP = re.compile(rb"[eE][-+]?[0-9]+")


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        if not o.is_finite():
            raise TypeError(f"the number {o} is not finite and has no JSON form")
        return orjson.Fragment(str(o))
    raise TypeError(f"a value of type {type(o).__name__} has no JSON form")


def _big_ints(v: Any) -> Any:
    t = type(v)
    if t is int:
        if -(2**63) <= v < 2**64:
            return v
        if v.bit_length() > MAX_DIGITS * 3.33:
            raise ValueError(f"an integer of more than {MAX_DIGITS} digits cannot be written")
        return orjson.Fragment(str(v))
    if t is dict:
        return {k: _big_ints(x) for k, x in v.items()}
    if t is list or t is tuple:
        return [_big_ints(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _big_ints(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def number(d: Decimal) -> int | float | Decimal | str:
    """An exact decimal (e.g. SQL ``numeric``) as the value ``loads`` would give for its
    JSON text, so a value has one type before and after it crosses a topic: an integer as
    ``int``, a decimal a double holds exactly (at most 15 digits) as ``float``, any other
    as ``Decimal``; NaN/Infinity as text."""
    if not d.is_finite():
        return str(d)
    if d == d.to_integral_value() and d.as_tuple().exponent == 0:
        return int(d)
    f = float(d)
    return f if Decimal(repr(f)) == d else d


def dumps(obj: Any, option: int = 0) -> bytes:
    """``obj`` as compact JSON bytes (orjson ``option`` flags allowed), numbers exact."""
    try:
        return orjson.dumps(obj, default=_default, option=option)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            raise TypeError(_plain(exc)) from None
    try:
        exact = _big_ints(obj)
    except RecursionError:
        raise TypeError("nested too deeply to write as JSON") from None
    return orjson.dumps(exact, default=_default, option=option)


def dumps_text(obj: Any, option: int = 0) -> str:
    return dumps(obj, option).decode()


def _plain(exc: Exception) -> str:
    msg = str(exc)
    return "a value with no JSON form" if not msg or "<" in msg else msg


def _float(s: str) -> float | Decimal:
    f = float(s)
    if not math.isfinite(f) or _digits(s) > 15:
        d = Decimal(s)
        if not (math.isfinite(f) and Decimal(repr(f)) == d):
            return d
    return f


def _digits(s: str) -> int:
    mant = s.lstrip("-").split("e")[0].split("E")[0].replace(".", "").lstrip("0")
    return len(mant)


def _int(s: str) -> int:
    if len(s) > MAX_DIGITS:
        raise JSONDecodeError(f"a number of more than {MAX_DIGITS} digits", s[:20] + "...", 0)
    return int(s)


def _constant(s: str) -> Any:
    raise JSONDecodeError(f"{s} is not a JSON number", s, 0)


def _rounds(raw: bytes, marked: bytes) -> bool:
    """True if a long number in ``raw`` (or a digit run in a string) would lose digits as
    int64/double; a float that orjson itself wrote (shortest round-trip form) does not."""
    start, n = marked.find(_RUN), len(marked)
    while start != -1:  # bytes.find, not a regex: re scans a char class slowly
        end = start + len(_RUN)
        while end < n and marked[end] == 35:  # '#'
            end += 1
        e = _EXP.match(raw, end)
        tok = raw[start : e.end() if e else end].decode()
        start = marked.find(_RUN, end)
        if "." not in tok and "e" not in tok and "E" not in tok:
            if len(tok) > 19 or int(tok) >= 2**63:
                return True
        elif tok.count(".") > 1:
            return True
        else:
            try:
                if Decimal(repr(float(tok))) != Decimal(tok):
                    return True
            except (ValueError, InvalidOperation):
                return True
    return False


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON text, keeping integers of any size and long decimals exact."""
    raw = data if type(data) is bytes else data.encode() if isinstance(data, str) else bytes(data)
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark is not part of the document
        raw = raw[3:]
    marked = raw.translate(_DIGITS)
    if _RUN not in marked or not _rounds(raw, marked):
        return orjson.loads(raw)
    try:
        return json.loads(raw, parse_float=_float, parse_int=_int, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        if isinstance(exc, JSONDecodeError):
            raise
        raise JSONDecodeError(exc.msg, exc.doc, exc.pos) from None
    except (ValueError, InvalidOperation) as exc:
        raise JSONDecodeError(_plain(exc), "", 0) from None
    except RecursionError:  # the exact path recurses; orjson stops at 1024 levels anyway
        raise JSONDecodeError("nested too deeply", "", 0) from None
