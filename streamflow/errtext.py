"""Plain words for Python errors that reach users (dead letters, execution events, CLI).

``plain(exc)`` says what was wrong without Python internals: no class reprs
(``[<class 'decimal.InvalidOperation'>]``), no interpreter advice
(``sys.set_int_max_str_digits()``), no library or source file paths, and JSON names for
types (``'int' and 'str'`` -> ``number and text``).
"""

from __future__ import annotations

import binascii
import decimal
import re

_TYPE_NAMES = {
    "int": "number", "float": "number", "Decimal": "number", "str": "text",
    "NoneType": "null", "dict": "object", "list": "array", "tuple": "array",
    "bool": "boolean", "bytes": "bytes",
}  # fmt: skip
_QUOTED_TYPE = re.compile(r"'(" + "|".join(_TYPE_NAMES) + r")'")
_INTERNALS = re.compile(r"<class '[^']*'>|<[a-zA-Z_.]+ object at 0x[0-9a-f]+>")
_PATH = re.compile(r"\s+at\s+\S+\.(?:py|pyx)(?::\d+)?")


def plain(exc: BaseException) -> str:
    """One line saying what went wrong, in the user's terms."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to process"
    if isinstance(exc, decimal.InvalidOperation | decimal.Overflow):
        return "the result is not a representable number"
    if isinstance(exc, OverflowError):
        return "a number too large"
    if isinstance(exc, UnicodeDecodeError):
        return f"the bytes are not {exc.encoding.upper()} text"
    if isinstance(exc, binascii.Error):
        return "not valid base64"
    text = str(exc)
    if "int_max_str_digits" in text or "Exceeds the limit (4300 digits)" in text:
        return "a number of more than 4300 digits"
    if isinstance(exc, TypeError):
        text = _QUOTED_TYPE.sub(lambda m: _TYPE_NAMES[m.group(1)], text)
        text = text.replace("operand type(s)", "operand types")
    text = _PATH.sub("", _INTERNALS.sub("a value", text)).strip()
    return text or exc.__class__.__name__


ENCODER_MAX_DEPTH = 254
"""Deepest nesting of arrays/objects the JSON encoder (orjson) writes: of a payload (a
record's value), and of the envelope's ``sf-env`` header (its own level included: a step
result or a saga entry holds a payload one to three levels down); a deeper value cannot
travel and fails its execution."""


def describe(exc: BaseException) -> str:
    """A reason a person can read, for an error the runtime contained."""
    text = str(exc) or exc.__class__.__name__
    if "Recursion limit reached" in text:
        return (
            f"a value is nested deeper than {ENCODER_MAX_DEPTH} levels (the JSON encoder's limit)"
        )
    return text
