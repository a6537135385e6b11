"""Conventions every ``streamflow`` command follows, in one place so new commands adopt them:

- ``Parser``: options and positionals in any order (``dlq show T --flow F ID``), an error
  prints the usage of the command that failed (not the top level's), an unknown command
  suggests the nearest name, every option's default is shown in ``--help``;
- ``duration``: the argparse type of every option that is a time (``10s``, ``500ms``, ``2h``
  or a number of seconds, like the YAML);
- ``write_output`` / ``read_input``: ``-`` means stdout / stdin;
- ``emit``: ``--json`` prints JSON (one object per line), its absence an aligned table;
- ``plural`` and ``unknown_name`` for messages in plain words.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from streamflow.errors import ConfigError
from streamflow.topology.models import parse_duration

STDIO = "-"
_INVALID_CHOICE = re.compile(r"invalid choice: '(.*?)' \(choose from (.*)\)")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after each option's help, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, [], "") or "default" in text:
            return text
        return super()._get_help_string(action)


class _SubCommands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Subcommands parsed with intermixed positionals and options; unknown names suggested."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        assert isinstance(values, list)
        name, rest = values[0], values[1:]
        sub = self._name_parser_map.get(name)
        if sub is None:
            parser.error(unknown_name("command", name, self._name_parser_map))
        if sub._subparsers is not None:  # a group (dlq, instance): its own subcommands next
            super().__call__(parser, namespace, values, option_string)
            return
        if self.dest is not argparse.SUPPRESS:
            setattr(namespace, self.dest, name)
        for key, value in vars(sub.parse_intermixed_args(rest)).items():
            setattr(namespace, key, value)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with the conventions above (subparsers inherit them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubCommands)

    def error(self, message: str) -> NoReturn:
        choice = _INVALID_CHOICE.search(message)
        if choice:  # argparse checks choices before the subcommand action could suggest
            known = [c.strip().strip("'") for c in choice.group(2).split(",")]
            kind = "command" if message.split(":", maxsplit=1)[0].endswith("command") else "value"
            message = unknown_name(kind, choice.group(1), known)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n(see `{self.prog} --help`)\n")


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown step type 'htp'; did you mean 'http'? (known: ...)``"""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (known: {', '.join(names)})"


def duration(text: str) -> float:
    """argparse type: ``10s``, ``500ms``, ``5m``, ``2h``, ``1d`` or seconds -> seconds."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (like 500ms, 10s, 5m, 2h, or a number of seconds)"
        ) from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration cannot be negative")
    return seconds


def write_output(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` (``-``: stdout). True when a file was written."""
    if path == STDIO:
        sys.stdout.write(text)
        sys.stdout.flush()
        return False
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    return True


def read_input(path: str) -> bytes:
    """The bytes of ``path`` (``-``: stdin)."""
    try:
        return sys.stdin.buffer.read() if path == STDIO else Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 execution``, ``2 executions``."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def emit(
    rows: Sequence[Mapping[str, Any]],
    as_json: bool,
    columns: Sequence[str] | None = None,
    *,
    empty: str = "nothing to show",
) -> None:
    """``--json``: one JSON object per row and line (values keep their JSON types).
    Otherwise a table of ``columns`` (default: the first row's keys) with a header line."""
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    if not rows:
        print(empty)
        return
    cols = list(columns or rows[0].keys())
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)
