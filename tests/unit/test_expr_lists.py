"""List functions of ${...} expressions (streamflow.topology.exprlists)."""

from __future__ import annotations

from typing import Any

import pytest

from streamflow.topology.expressions import (
    ExpressionError,
    ExpressionEvalError,
    compile_expression,
)

LINES = [
    {"sku": "a", "qty": 2, "price": 1.5, "c": {"n": "x"}},
    {"sku": "b", "qty": 1, "price": 10, "c": {"n": "y"}},
    {"sku": "c", "qty": 5, "price": None},
]
SCOPE: dict[str, Any] = {"payload": {"lines": LINES, "none": None, "obj": {"a": 1}, "k": 3}}


def ev(src: str) -> Any:
    return compile_expression(src).render(SCOPE)


@pytest.mark.parametrize(
    ("src", "want"),
    [
        ("map(payload.lines, 'item.sku')", ["a", "b", "c"]),
        ("map(payload.lines, 'item.qty * payload.k')", [6, 3, 15]),
        ("map(payload.none, 'item')", []),
        ("filter(payload.lines, 'item.qty > 1')", [LINES[0], LINES[2]]),
        ("pluck(payload.lines, 'c.n')", ["x", "y", None]),
        ("pluck(payload.lines, 'sku')", ["a", "b", "c"]),
        ("sort_by(payload.lines, 'item.price')", [LINES[0], LINES[1], LINES[2]]),
        ("map(sort_by(payload.lines, '-item.qty'), 'item.sku')", ["c", "a", "b"]),
        ("min_by(payload.lines, 'item.price').sku", "a"),
        ("max_by(payload.lines, 'item.price').sku", "b"),
        ("min_by([], 'item')", None),
        ("sum(payload.lines, 'item.qty')", 8),
        ("sum(map(payload.lines, 'item.price'))", 11.5),
        ("sum(null)", 0),
        (
            "group_by(payload.lines, 'item.qty > 1')",
            {"true": [LINES[0], LINES[2]], "false": [LINES[1]]},
        ),
        ("len(filter(map(payload.lines, 'item.c'), 'item != null'))", 2),
        ("map([[1, 2], [3]], 'sum(item)')", [3, 3]),
        ("map([[1, 2], [3]], 'map(item, \"item * 10\")')", [[10, 20], [30]]),
    ],
)
def test_list_functions(src: str, want: Any) -> None:
    assert ev(src) == want


@pytest.mark.parametrize(
    ("src", "msg"),
    [
        ("map(payload.lines, item.sku)", "must be a quoted expression over 'item'"),
        ("map(payload.lines, payload.k)", "must be a quoted expression"),
        ("filter(payload.lines, 'item.')", "invalid syntax"),
        ("sort_by(payload.lines, 'foo')", "unknown name 'foo'"),
        ("map(payload.lines, '__import__(\"os\")')", "unknown function"),
        ("map(payload.lines)", "takes 2 argument(s)"),
    ],
)
def test_per_item_expression_is_checked_when_loading(src: str, msg: str) -> None:
    with pytest.raises(ExpressionError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(src)


@pytest.mark.parametrize(
    ("src", "msg"),
    [
        ("map(payload.obj, 'item')", "needs a list, got an object"),
        ("sort_by([1, 'a'], 'item')", "TypeError"),
        ("map(payload.lines, 'item.qty / 0')", "ZeroDivisionError"),
    ],
)
def test_runtime_failures_are_eval_errors(src: str, msg: str) -> None:
    with pytest.raises(ExpressionEvalError, match=msg):
        ev(src)


def test_references_of_per_item_expressions_keep_outer_roots() -> None:
    t = compile_expression("map(payload.lines, 'item.qty * payload.k')")
    assert ("payload", "k") in t.references
    assert not any(r[0] == "item" for r in t.references)
