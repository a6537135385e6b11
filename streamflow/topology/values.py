"""Config values: check and coerce what a user supplies against the config variables."""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from streamflow import exactjson
from streamflow.errors import ConfigError, ValidationFailed
from streamflow.topology.models import ConfigVar
from streamflow.topology.source import decode_utf8, safe_load


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (from ``--config``) -> mapping."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"--config expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()  # -: stdin
        data = safe_load(decode_utf8(raw, str(path)), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    except ValidationFailed as exc:  # where and what (syntax, nesting, alias bomb, not UTF-8)
        i = exc.issues[0]
        raise ConfigError(
            f"{path}: cannot read config file: line {i.line}, column {i.column}: {i.message}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file is a mapping of NAME: VALUE")
    return data


MISSING = "__missing__"  # key of the list of required variables left unset (allow_missing)


def resolve_config(
    variables: Mapping[str, ConfigVar],
    supplied: Mapping[str, Any],
    *,
    strict: bool = True,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Defaults applied, types coerced (strings from the command line), unknown and missing
    names refused with one message listing every problem. With ``allow_missing`` a required
    variable may stay unset (a worker whose events come from instances); the names left
    unset are listed under the ``MISSING`` key."""
    missing: list[str] = []
    problems = []
    unknown = sorted(set(supplied) - set(variables))
    if unknown and strict:
        problems.append(f"unknown config variable(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, var in variables.items():
        if name in supplied:
            try:
                values[name] = _coerce(supplied[name], var)
            except ValueError as exc:  # the message never holds the value: it may be secret
                problems.append(f"config variable '{name}': {exc}")
        elif var.default is not None:
            values[name] = var.default
        elif var.required is False:
            values[name] = None
        elif allow_missing:
            missing.append(name)
        else:
            problems.append(f"config variable '{name}' is required (no default)")
        if var.enum is not None and values.get(name) is not None and values[name] not in var.enum:
            problems.append(f"config variable '{name}' must be one of {var.enum}")
    if problems:
        raise ConfigError("; ".join(problems))
    if missing:
        values[MISSING] = missing
    return values


_ARTICLE = {"integer": "an integer", "number": "a number", "boolean": "a boolean",
            "object": "an object (a JSON mapping)", "array": "an array (a JSON list)"}  # fmt: skip


def _coerce(value: Any, var: ConfigVar) -> Any:
    """``value`` as ``var.type``; raises ValueError with a message that names the type but
    never repeats the value (it may be a secret)."""
    t = var.type
    if t == "string":
        return value if isinstance(value, str) else str(value)
    if isinstance(value, str):
        try:
            return _from_text(value.strip(), t)
        except (ValueError, RecursionError):
            shown = "a secret value" if var.secret else _shown(value)
            raise ValueError(f"{shown} is not {_ARTICLE[t]}") from None
    return check_type(value, t)


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


_JSON_NAMES = {bool: "a boolean", type(None): "null", dict: "an object", list: "an array",
               str: "text", int: "an integer", float: "a number"}  # fmt: skip


def _from_text(value: str, t: str) -> Any:
    if t == "integer":
        if not value.lstrip("+-").isdigit() or len(value) > 4300:
            raise ValueError
        return int(value)
    if t == "number":
        number = float(value)
        if not math.isfinite(number):  # nan, inf, 1e999
            raise ValueError
        return number
    if t == "boolean":
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        raise ValueError
    return check_type(exactjson.loads(value), t)


def check_type(value: Any, t: str) -> Any:
    """``value`` if it is of config type ``t`` (no conversion), else ValueError (which
    names the types, never the value)."""
    checks: dict[str, type | tuple[type, ...]] = {
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "object": dict,
        "array": list,
    }
    if not isinstance(value, checks[t]) or (t in ("integer", "number") and isinstance(value, bool)):
        got = _JSON_NAMES.get(type(value), "another type")
        raise ValueError(f"expected {_ARTICLE[t].split(' (')[0]}, got {got}")
    return value
