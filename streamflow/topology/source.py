"""YAML with positions: every value remembers its file, line and column.

``load_yaml`` returns plain Python data plus a ``Positions`` map from a path
(``("flows", 0, "steps", 2, "url")``) to the 1-based line and column where that
value (or, for a missing key, its parent mapping) starts, so validation errors can
point at the YAML that caused them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamflow import textio
from streamflow.errors import Issue, ValidationFailed

PathT = tuple[str | int, ...]
MAX_DEPTH = 100  # nesting of mappings/sequences, aliases expanded
MAX_VALUES = 100_000  # values in a document, aliases expanded (an alias bomb has billions)


@dataclass
class Positions:
    file: str
    marks: dict[PathT, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Sequence[str | int]) -> tuple[int, int]:
        """The position of ``path``, or of its nearest ancestor that exists."""
        p = tuple(path)
        while p:
            if p in self.marks:
                return self.marks[p]
            p = p[:-1]
        return self.marks.get((), (1, 1))

    def issue(self, path: Sequence[str | int], message: str) -> Issue:
        line, col = self.locate(path)
        return Issue(self.file, line, col, format_path(path), message)


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Loader(yaml.SafeLoader):
    pass


def _construct(node: yaml.Node, path: PathT, marks: dict[PathT, tuple[int, int]], file: str) -> Any:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        loader = _Loader("")
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise ValidationFailed(
                    [
                        Issue(
                            file,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            "",
                            "mapping keys must be scalars",
                        )
                    ]
                )
            if key in out:
                raise ValidationFailed(
                    [
                        Issue(
                            file,
                            key_node.start_mark.line + 1,
                            key_node.start_mark.column + 1,
                            format_path((*path, str(key))),
                            f"duplicate key {key!r}",
                        )
                    ]
                )
            out[key] = _construct(value_node, (*path, str(key)), marks, file)
            # point at the key, where a reader looks for it
            marks[(*path, str(key))] = (
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, (*path, i), marks, file) for i, v in enumerate(node.value)]
    return _Loader("").construct_object(node, deep=True)


def _fail(file: str, mark: Any, message: str) -> ValidationFailed:
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return ValidationFailed([Issue(file, line, col, "", message)])


_BRACKETS = re.compile(r"[\[\]{}]")


def _check_brackets(text: str, file: str) -> None:
    """Refuse deep flow nesting (``[[[[…``) before YAML scans it: PyYAML's scanner keeps a
    possible simple key per open bracket and takes quadratic time on them. Counts raw
    brackets (quotes are not told apart), so it refuses only what no real file holds."""
    depth = 0
    for m in _BRACKETS.finditer(text):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                before = text[: m.start()]
                line, col = before.count("\n") + 1, m.start() - (before.rfind("\n") + 1) + 1
                message = f"nesting deeper than {MAX_DEPTH} levels"
                raise ValidationFailed([Issue(file, line, col, "", message)])
        elif depth > 0:
            depth -= 1


def _check_nesting(text: str, file: str) -> None:
    """Refuse deep nesting from the event stream (the composer would recurse on it)."""
    _check_brackets(text, file)
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(file, event.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_aliases(root: yaml.Node, file: str) -> None:
    """Refuse a recursive anchor, and aliases that expand beyond MAX_DEPTH or MAX_VALUES
    (an alias bomb): measured on the node graph, where each anchor is one shared node."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), aliases expanded
    open_: set[int] = set()

    def measure(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _fail(file, node.start_mark, "a recursive anchor: it contains an alias to itself")
        if not isinstance(node, yaml.CollectionNode):
            return 1, 0
        open_.add(key)
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else node.value
        )
        total, deepest = 1, 0
        for child in children:
            n, d = measure(child)
            total, deepest = total + n, max(deepest, d)
            if total > MAX_VALUES:
                raise _fail(
                    file, node.start_mark,
                    f"aliases expand to more than {MAX_VALUES} values (an alias bomb?)",
                )  # fmt: skip
            if deepest + 1 > MAX_DEPTH:
                raise _fail(file, node.start_mark, f"aliases nest deeper than {MAX_DEPTH} levels")
        open_.discard(key)
        sizes[key] = (total, deepest + 1)
        return sizes[key]

    measure(root)


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    """Parse one YAML document with positions. Raises ValidationFailed (file:line) for
    syntax errors and for hostile input: nesting deeper than MAX_DEPTH, a recursive
    anchor, aliases expanding beyond MAX_VALUES values; in bounded time and memory."""
    positions = Positions(file)
    try:
        _check_nesting(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise _fail(file, mark, f"YAML syntax error: {msg}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        before = text[: exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        hint = " (is the file UTF-16? save it as UTF-8)" if char == "\0" else ""
        message = f"the control character U+{ord(char):04X} is not allowed in YAML{hint}"
        raise ValidationFailed([Issue(file, line, col, "", message)]) from None
    except yaml.YAMLError as exc:
        raise _fail(file, None, f"YAML error: {exc}") from None
    if node is None:
        return None, positions
    _check_aliases(node, file)
    return _construct(node, (), positions.marks, file), positions


def load_yaml(path: str | Path) -> tuple[Any, Positions]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ValidationFailed(
            [Issue(str(p), 1, 1, "", f"cannot read file: {exc.strerror}")]
        ) from None
    return load_yaml_text(decode_utf8(data, str(p)), str(p))


def decode_utf8(data: bytes, file: str) -> str:
    """``data`` as UTF-8 text (a BOM dropped); ValidationFailed at the first bad byte."""
    try:
        return textio.decode(data)
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        byte = data[exc.start : exc.start + 1].hex()
        raise ValidationFailed(
            [Issue(file, line, col, "", f"not UTF-8 text: byte 0x{byte}; save the file as UTF-8")]
        ) from None


def safe_load(text: str, file: str) -> Any:
    """Plain data from YAML text, with the same limits as topology files (for config
    values and schema files). Raises ValidationFailed."""
    return load_yaml_text(text, file)[0]
