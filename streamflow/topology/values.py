"""Config values: check and coerce what a user supplies against the config variables."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from streamflow import textio
from streamflow.errors import ConfigError
from streamflow.topology.models import ConfigVar


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
        data = yaml.safe_load(textio.read_text(path))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
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
            except ValueError as exc:
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


def _coerce(value: Any, var: ConfigVar) -> Any:
    t = var.type
    if t == "string":
        return value if isinstance(value, str) else str(value)
    if isinstance(value, str):
        if t == "integer":
            return int(value)
        if t == "number":
            return float(value)
        if t == "boolean":
            if value.lower() in ("true", "1", "yes", "on"):
                return True
            if value.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"{value!r} is not a boolean")
        parsed = orjson.loads(value)
        value = parsed
    checks: dict[str, type | tuple[type, ...]] = {
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "object": dict,
        "array": list,
    }
    if not isinstance(value, checks[t]) or (t in ("integer", "number") and isinstance(value, bool)):
        raise ValueError(f"expected {t}, got {type(value).__name__}")
    return value
