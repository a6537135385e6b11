"""YAML with positions: every value remembers its file, line and column.

``load_yaml`` returns plain Python data plus a ``Positions`` map from a path
(``("flows", 0, "steps", 2, "url")``) to the 1-based line and column where that
value (or, for a missing key, its parent mapping) starts, so validation errors can
point at the YAML that caused them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamflow import textio
from streamflow.errors import Issue, ValidationFailed

PathT = tuple[str | int, ...]


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


def load_yaml_text(text: str, file: str) -> tuple[Any, Positions]:
    positions = Positions(file)
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ValidationFailed([Issue(file, line, col, "", f"YAML syntax error: {msg}")]) from None
    if node is None:
        return None, positions
    return _construct(node, (), positions.marks, file), positions


def load_yaml(path: str | Path) -> tuple[Any, Positions]:
    p = Path(path)
    try:
        text = textio.read_text(p)
    except OSError as exc:
        raise ValidationFailed(
            [Issue(str(p), 1, 1, "", f"cannot read file: {exc.strerror}")]
        ) from None
    return load_yaml_text(text, str(p))
