"""A template's fast form (exprcode.py) renders what its closures render, and fails as
they fail: every case below is rendered both ways and compared, value and type."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from streamflow.topology import expressions
from streamflow.topology.expressions import Template, compile_expression, compile_value

SCOPE: dict[str, Any] = {
    "payload": {
        "id": 7,
        "amount": 2.5,
        "exact": Decimal("1.10"),
        "user": "Ada",
        "tags": ["a", "b", "c"],
        "lines": [{"price": 2, "qty": 3}, {"price": 5, "qty": 1}],
        "nested": {"deep": {"x": [10, 20]}},
        "none": None,
        "flag": True,
        "text": "a,b",
        "big": 2**70,
    },
    "trigger": {"key": "k1", "partition": 3},
    "steps": {"push-to-cms": {"body": {"id": "c9"}}, "calc": {"n": 4}},
    "meta": {"execution_id": "e1", "attempt": 2},
    "config": {"rate": 3, "region": "eu"},
    "env": {"HOME": "/h"},
}

VALUES: list[Any] = [
    "${payload}",
    "${payload.id}",
    "${payload.nested.deep.x[1]}",
    "${payload.nested.deep.x[-1]}",
    "${payload['user']}",
    "${payload.missing.anything}",
    "${payload.tags[9]}",
    "${payload.user[0]}",
    "${steps.push-to-cms.body.id}",
    "${steps['calc'].n * 2}",
    "${payload.amount * 1.2}",
    "${payload.exact * 2.5}",
    "${payload.exact + 1}",
    "${payload.big * 3}",
    "${payload.id // 2 + payload.id % 3 - -1}",
    "${payload.user * 3}",
    "${[payload.id, payload.user] * 2}",
    "${payload.id > 3 and payload.user == 'Ada'}",
    "${payload.none or 'fallback'}",
    "${not payload.flag}",
    "${payload.none < 1}",
    "${1 < payload.id < 10}",
    "${'b' in payload.tags}",
    "${'z' not in payload.tags}",
    "${payload.id if payload.flag else 0}",
    "${{'a': payload.id, 'b': [payload.user, null, true]}}",
    "${(payload.id, payload.user)}",
    "${upper(payload.user)}",
    "${upper(payload.none)}",
    "${split(payload.text, ',')}",
    "${default(payload.none, 'd')}",
    "${len(payload.tags)}",
    "${round(payload.amount * 1.234, 2)}",
    "${map(payload.lines, 'item.price * item.qty')}",
    "${sum(payload.lines, 'item.price')}",
    "${sum([1, 2, 3])}",
    "${json(payload.nested)}",
    "${config.rate * payload.id}",
    "${meta.attempt}",
    "${env.HOME}",
    "${trigger.key}",
    "order ${payload.id} for ${payload.user}",
    "${payload.nested} and ${payload.tags}",
    "${payload.none}|${payload.flag}",
    "$${not} ${payload.id}",
    "$${literal}",
    "no expression",
    {"id": "${payload.id}", "total": "${payload.amount * 1.2}", "fixed": 1, "s": "x"},
    {"outer": {"inner": ["${payload.user}", 2, "$${x}"]}, "k": "${payload.tags}"},
    ["${payload.id}", "lit", {"a": "${payload.none}"}],
    ("${payload.id}", "t"),
    {1: "${payload.id}", "2": "two"},
]

FAILING: list[str] = [
    "${payload.id / 0}",
    "${payload.none + 1}",
    "${int(payload.user)}",
    "${payload.user * 2000000}",
    "${'x' + payload.user * 999999}",
    "${{payload.tags: 1}}",
    "${payload.nested.deep.x * 'a'}",
    "pre ${payload.user * 999999} ${payload.user * 999999}",
]


def both(compile_: Any, src: Any) -> tuple[Template, Template]:
    fast = compile_(src)
    expressions.FAST_TEMPLATES = False
    try:
        slow = compile_(src)
    finally:
        expressions.FAST_TEMPLATES = True
    return fast, slow


def outcome(t: Template, scope: dict[str, Any]) -> tuple[str, Any]:
    try:
        value = t.render(scope)
    except Exception as exc:
        return "raised", (type(exc).__name__, str(exc))
    return type(value).__name__, value


@pytest.mark.parametrize("src", VALUES + FAILING, ids=repr)
def test_the_fast_form_renders_what_the_closures_render(src: Any) -> None:
    fast, slow = both(compile_value, src)
    assert slow._fast is None
    assert (fast._fast is not None) == (not fast.is_constant), "one with ${...} has a fast form"
    assert outcome(fast, SCOPE) == outcome(slow, SCOPE)
    # and on a scope where every root is missing or of the wrong shape
    for odd in ({}, {"payload": [1, 2]}, {"payload": "text", "steps": None}):
        assert outcome(fast, odd) == outcome(slow, odd)


@pytest.mark.parametrize("src", FAILING, ids=repr)
def test_a_failure_raises_the_closures_error(src: str) -> None:
    fast, _ = both(compile_value, src)
    kind, (name, text) = outcome(fast, SCOPE)
    assert kind == "raised" and name == "ExpressionEvalError", text
    assert "(in ${" in text  # the failing expression is named, as always


@pytest.mark.parametrize(
    "src",
    ["payload.id > 3", "${payload.id + 1}", "1 < payload.id < 10", "upper(payload.user)",
     "payload.none.x", "map(payload.tags, 'upper(item)')"],
)  # fmt: skip
def test_bare_expressions(src: str) -> None:
    fast, slow = both(compile_expression, src)
    assert fast._fast is not None
    assert outcome(fast, SCOPE) == outcome(slow, SCOPE)


def test_no_topology_text_is_in_the_generated_code() -> None:
    """Keys and literals are bound by name: the generated source holds none of them."""
    t = compile_value(
        {"__import__('os').system('x')": "${payload['__import__(1)'] or 'os.system(1)'}"}
    )
    assert t._fast is not None
    code = t._fast.__code__
    texts = [c for c in code.co_consts if isinstance(c, str)]
    assert not any("import" in c or "system" in c for c in texts), texts
    assert t.render({"payload": {}}) == {"__import__('os').system('x')": "os.system(1)"}
