"""Every value an expression builds is bounded: over the limit, the render fails with an
ExpressionEvalError (a poison error for that record) instead of exhausting memory."""

from __future__ import annotations

from typing import Any

import pytest

from streamflow.topology.expressions import ExpressionEvalError, compile_value
from streamflow.topology.exprfuncs import DEFAULT_MAX_VALUE, VALUE_LIMIT, size_of

BIG = "x" * 600_000  # under the default limit; two of them are over
SCOPE: dict[str, Any] = {
    "payload": {"s": BIG, "n": 10_000_000, "few": 3, "list": [BIG] * 3, "a": "a" * 1000}
}


@pytest.mark.parametrize(
    "src",
    [
        "${'ab' * payload.n}",
        "${[payload.s] * payload.few}",
        "${[payload.a] * payload.n}",
        "${payload.s + payload.s}",
        "${[payload.s] + [payload.s]}",
        "${replace(payload.a, 'a', payload.s)}",
        "${replace(payload.a, '', 'yy' * 1000)}",
        "${join(payload.list, ',')}",
        "${concat(payload.s, payload.s)}",
        "${json(payload.list)}",
        "${str(payload.list)}",
        "${payload.s}${payload.s}",
        "prefix ${payload.list}",
    ],
)
def test_values_over_the_limit_fail_the_render(src: str) -> None:
    with pytest.raises(ExpressionEvalError) as info:
        compile_value(src).render(SCOPE)
    assert "value too large" in str(info.value)
    assert f"{DEFAULT_MAX_VALUE:,}" in str(info.value)


@pytest.mark.parametrize(
    "src, size",
    [
        ("${'ab' * 1000}", 2000),
        ("${payload.s + 'y'}", 600_001),
        ("${replace(payload.s, 'x', 'y')}", 600_000),
        ("${join([payload.a, payload.a], '-')}", 2001),
        ("${concat(payload.a, 'b')}", 1001),
        ("${json([payload.a])}", 1004),
    ],
)
def test_values_under_the_limit_render(src: str, size: int) -> None:
    assert len(compile_value(src).render(SCOPE)) == size


def test_the_limit_is_the_flows() -> None:
    token = VALUE_LIMIT.set(5_000)
    try:
        with pytest.raises(ExpressionEvalError, match="5,000"):
            compile_value("${payload.a * 6}").render(SCOPE)
        assert compile_value("${payload.a * 4}").render(SCOPE) == "a" * 4000
    finally:
        VALUE_LIMIT.reset(token)


def test_size_walk_stops_at_the_budget() -> None:
    shared = [["y" * 1000] * 100] * 10_000  # a billion characters by reference
    assert 1_000 < size_of(shared, 1_000) < 1_000_000
    assert size_of({"k": ["ab", 1, None]}, 10_000) == 2 + 1 + 3 + 2 + 3 + 4 + 8 + 8
