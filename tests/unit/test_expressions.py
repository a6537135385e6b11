"""Unit tests for the ${...} expression engine (streamflow.topology.expressions)."""

from __future__ import annotations

import ast
import base64
import hashlib
import re
import time
import uuid
from typing import Any

import orjson
import pytest

from streamflow.topology.expressions import (
    ROOTS,
    ExpressionError,
    ExpressionEvalError,
    Template,
    compile_expression,
    compile_value,
    iter_expression_errors,
)

SCOPE: dict[str, Any] = {
    "payload": {
        "customer": {"id": 42, "name": "  Ada Lovelace ", "email": "ADA@EXAMPLE.COM"},
        "items": [{"sku": "a", "qty": 2, "price": 1.5}, {"sku": "b", "qty": 1, "price": 10}],
        "tags": ["x", "y", "z"],
        "empty": "",
        "none": None,
        "zero": 0,
        "flag": True,
        "n": 7,
        "idx": 1,
        "key": "name",
        "_id": "mongo",
        "nested": {"a": {"b": {"c": "deep"}}},
    },
    "config": {"progix_url": "https://progix.example", "threshold": 5, "retries": 3},
    "steps": {"push": {"status": 201, "body": {"id": "p-1", "list": [10, 20]}}},
    "trigger": {"topic": "orders", "partition": 3},
    "meta": {"execution_id": "ex-1", "instance": "i-9"},
    "env": {"REGION": "eu"},
}


def ev(src: str, scope: dict[str, Any] | None = None) -> Any:
    """Render a template string against SCOPE."""
    return compile_value(src).render(SCOPE if scope is None else scope)


def err(src: Any, **kw: Any) -> ExpressionError:
    with pytest.raises(ExpressionError) as info:
        compile_value(src, **kw)
    return info.value


# ------------------------------------------------------------------ whole values
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("${payload.customer.id}", 42),
        ("${payload.customer}", SCOPE["payload"]["customer"]),
        ("${payload.tags}", ["x", "y", "z"]),
        ("${payload.flag}", True),
        ("${payload.none}", None),
        ("${payload.items[0].price}", 1.5),
        ("${payload.items[-1].sku}", "b"),
        ("${payload['customer']['id']}", 42),
        ('${payload["customer"].id}', 42),
        ("${steps.push.body.id}", "p-1"),
        ("${steps.push.body.list[1]}", 20),
        ("${config.threshold}", 5),
        ("${trigger.partition}", 3),
        ("${meta.execution_id}", "ex-1"),
        ("${env.REGION}", "eu"),
        ("${payload._id}", "mongo"),
        ("${payload.tags[payload.idx]}", "y"),
        ("${payload.customer[payload.key]}", "  Ada Lovelace "),
        ("${payload.nested.a.b.c}", "deep"),
        ("${ payload.n }", 7),
    ],
)
def test_whole_value_keeps_type(src: str, expected: Any) -> None:
    result = ev(src)
    assert result == expected
    assert type(result) is type(expected)


def test_whole_value_returns_scope_object() -> None:
    assert ev("${payload.customer}") is SCOPE["payload"]["customer"]


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("${1}", 1),
        ("${2.5}", 2.5),
        ("${'s'}", "s"),
        ('${"s"}', "s"),
        ("${true}", True),
        ("${false}", False),
        ("${null}", None),
        ("${True}", True),
        ("${False}", False),
        ("${None}", None),
        ("${[1, 'a', null]}", [1, "a", None]),
        ("${(1, 2)}", [1, 2]),
        ("${{'a': 1, 'b': [true]}}", {"a": 1, "b": [True]}),
        ("${{'id': payload.customer.id, 'n': payload.n + 1}}", {"id": 42, "n": 8}),
        ("${[payload.n, payload.zero]}", [7, 0]),
        ("${-1}", -1),
        ("${-payload.n}", -7),
        ("${+payload.n}", 7),
    ],
)
def test_literals(src: str, expected: Any) -> None:
    assert ev(src) == expected


# ------------------------------------------------------------------ interpolation
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("id=${payload.customer.id}", "id=42"),
        (
            "${config.progix_url}/customers/${payload.customer.id}",
            "https://progix.example/customers/42",
        ),
        ("[${payload.none}]", "[]"),
        ("[${payload.missing.deeper}]", "[]"),
        ("flag=${payload.flag} f=${false}", "flag=true f=false"),
        ("c=${payload.customer.id > 1}", "c=true"),
        ("body=${steps.push.body}", 'body={"id":"p-1","list":[10,20]}'),
        ("tags=${payload.tags}", 'tags=["x","y","z"]'),
        ("p=${payload.items[0].price}", "p=1.5"),
        ("${payload.n}${payload.n}", "77"),
        (" ${payload.n} ", " 7 "),
        ("t=${(1, 'a')}", 't=[1,"a"]'),
        ("s=${payload.customer.email}", "s=ADA@EXAMPLE.COM"),
    ],
)
def test_interpolation(src: str, expected: str) -> None:
    assert ev(src) == expected


def test_interpolated_dict_with_non_string_keys() -> None:
    assert ev("x${{1: 'a'}}") == 'x{"1":"a"}'


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("$${payload.n}", "${payload.n}"),
        ("cost: $${x} and ${payload.n}", "cost: ${x} and 7"),
        ("${payload.n}$${payload.n}", "7${payload.n}"),
        ("$5 and $$ and $", "$5 and $$ and $"),
        ("price $ {payload.n}", "price $ {payload.n}"),
    ],
)
def test_escaping(src: str, expected: str) -> None:
    assert ev(src) == expected


def test_escape_only_is_constant_but_unescaped() -> None:
    t = compile_value("$${x}")
    assert t.is_constant
    assert t.references == frozenset()
    assert t.render({}) == "${x}"


def test_nested_escape_in_dict_unescapes_without_mutating_source() -> None:
    src = {"a": "$${x}", "b": [1, "$${y}"]}
    t = compile_value(src)
    assert t.is_constant
    assert t.render({}) == {"a": "${x}", "b": [1, "${y}"]}
    assert src == {"a": "$${x}", "b": [1, "$${y}"]}


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("${ {'a': 1}['a'] }", 1),
        ("${concat(payload.customer.id, '}')}", "42}"),
        ("${concat('{', payload.n, '}')}", "{7}"),
        ('${concat("a}b", "c")}', "a}bc"),
        ("${concat('it\\'s}', 'x')}", "it's}x"),
        ("${ {'k': {'j': 2}}['k']['j'] }", 2),
        ("${'${not an expression}'}", "${not an expression}"),
    ],
)
def test_braces_and_quotes_inside_expressions(src: str, expected: Any) -> None:
    assert ev(src) == expected


def test_braces_inside_expression_with_text_around() -> None:
    assert ev("a ${ {'x': payload.n}['x'] } b ${concat('}', '{')} c") == "a 7 b }{ c"


# ------------------------------------------------------------------ operators
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("${payload.n == 7}", True),
        ("${payload.n != 7}", False),
        ("${payload.n < 10}", True),
        ("${payload.n <= 7}", True),
        ("${payload.n > 7}", False),
        ("${payload.n >= 7}", True),
        ("${1 < payload.n < 10}", True),
        ("${1 < payload.n < 5}", False),
        ("${'x' in payload.tags}", True),
        ("${'q' not in payload.tags}", True),
        ("${'customer' in payload}", True),
        ("${'Ada' in payload.customer.name}", True),
        ("${payload.flag and payload.n}", 7),
        ("${payload.zero and payload.n}", 0),
        ("${payload.zero or payload.n}", 7),
        ("${payload.none or payload.empty or 'x'}", "x"),
        ("${payload.flag and payload.n and 'last'}", "last"),
        ("${not payload.flag}", False),
        ("${not payload.missing}", True),
        ("${payload.n + 1}", 8),
        ("${payload.n - 10}", -3),
        ("${payload.n * 2}", 14),
        ("${payload.n / 2}", 3.5),
        ("${payload.n // 2}", 3),
        ("${payload.n % 4}", 3),
        ("${'a' + 'b'}", "ab"),
        ("${'ab' * 2}", "abab"),
        ("${[1] + [2]}", [1, 2]),
        ("${'yes' if payload.flag else 'no'}", "yes"),
        ("${'yes' if payload.missing else 'no'}", "no"),
        ("${(payload.n + 1) * 2}", 16),
        ("${payload.none == null}", True),
        ("${payload.missing != null}", False),
    ],
)
def test_operators(src: str, expected: Any) -> None:
    assert ev(src) == expected


@pytest.mark.parametrize(
    "src",
    [
        "${payload.missing < 1}",
        "${payload.missing > 1}",
        "${payload.missing <= 1}",
        "${payload.missing >= 1}",
        "${1 < payload.missing}",
        "${'a' < 1}",
        "${1 in payload.missing}",
        "${1 in 5}",
        "${[1] in payload.customer}",
    ],
)
def test_incomparable_values_compare_false(src: str) -> None:
    assert ev(src) is False


def test_not_in_on_none_is_true() -> None:
    assert ev("${1 not in payload.missing}") is True


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("${payload.n / 0}", "ZeroDivisionError"),
        ("${payload.n // payload.zero}", "ZeroDivisionError"),
        ("${payload.n % 0}", "ZeroDivisionError"),
        ("${payload.missing + 1}", "TypeError"),
        ("${int('abc')}", "ValueError"),
        ("${'%s' % payload.n}", "only supported for numbers"),
        ("${'x' * 10000000}", "too large"),
        ("${[1, 2] * 10000000}", "too large"),
        ("${parse_json('{bad')}", "JSONDecodeError"),
        ("${min([])}", "ValueError"),
        ("${{[1]: 2, 'k': payload.n}}", "TypeError"),
    ],
)
def test_runtime_errors_raise_eval_error(src: str, fragment: str) -> None:
    t = compile_value(src)
    with pytest.raises(ExpressionEvalError) as info:
        t.render(SCOPE)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.expression == src[2:-1].strip()
    assert src[2:-1].strip() in str(info.value)


def test_eval_error_in_interpolated_string() -> None:
    t = compile_value("a=${payload.n / payload.zero}!")
    with pytest.raises(ExpressionEvalError, match=re.escape("payload.n / payload.zero")):
        t.render(SCOPE)


# ------------------------------------------------------------------ missing paths
@pytest.mark.parametrize(
    "src",
    [
        "${payload.missing}",
        "${payload.missing.deeper.still}",
        "${payload.tags[10]}",
        "${payload.tags[-10]}",
        "${payload.tags.x}",
        "${payload.customer[0]}",
        "${payload.n.x}",
        "${payload.customer.name.upper}",
        "${payload.customer['__class__']}",
        "${payload.tags[payload.missing]}",
        "${payload.customer[payload.tags]}",
        "${payload.tags[true]}",
        "${steps.nope.body.id}",
        "${(1).real}",
        "${'abc'.x}",
    ],
)
def test_missing_paths_are_none(src: str) -> None:
    assert ev(src) is None


def test_string_index() -> None:
    assert ev("${payload.customer.email[0]}") == "A"


def test_missing_roots_in_scope_are_none() -> None:
    assert ev("${payload.a}", {}) is None
    assert ev("${steps.x.y}", {"payload": {}}) is None
    assert ev("${trigger}", {}) is None
    assert ev("${env.X}|${meta}", {}) == "|"


def test_scope_can_be_any_mapping() -> None:
    from types import MappingProxyType

    scope = MappingProxyType({"payload": MappingProxyType({"a": 1})})
    assert compile_value("${payload.a}").render(scope) == 1
    assert compile_value("x=${payload}").render(scope) == 'x={"a":1}'


# ------------------------------------------------------------------ functions
def test_now_and_now_ms() -> None:
    value = ev("${now()}")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value)
    before = time.time_ns() // 1_000_000
    ms = ev("${now_ms()}")
    assert isinstance(ms, int)
    assert before <= ms <= time.time_ns() // 1_000_000


def test_uuid_is_fresh_each_render() -> None:
    t = compile_value("${uuid()}")
    a, b = t.render(SCOPE), t.render(SCOPE)
    assert a != b
    assert uuid.UUID(a).version == 4


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("${lower(payload.customer.email)}", "ada@example.com"),
        ("${upper('abc')}", "ABC"),
        ("${trim(payload.customer.name)}", "Ada Lovelace"),
        ("${lower(payload.missing)}", None),
        ("${upper(12)}", "12"),
        ("${trim(null)}", None),
        ("${len(payload.tags)}", 3),
        ("${len('abcd')}", 4),
        ("${len(payload.customer)}", 3),
        ("${len(payload.missing)}", 0),
        ("${str(payload.n)}", "7"),
        ("${str(null)}", ""),
        ("${str(true)}", "true"),
        ("${str([1, 'a'])}", '[1,"a"]'),
        ("${int('12')}", 12),
        ("${int(' 12 ')}", 12),
        ("${int('-3')}", -3),
        ("${int('12.9')}", 12),
        ("${int(3.9)}", 3),
        ("${int(true)}", 1),
        ("${int(null)}", None),
        ("${float('1.5')}", 1.5),
        ("${float(2)}", 2.0),
        ("${float(null)}", None),
        ("${bool(1)}", True),
        ("${bool(0)}", False),
        ("${bool('false')}", False),
        ("${bool(' No ')}", False),
        ("${bool('off')}", False),
        ("${bool('0')}", False),
        ("${bool('')}", False),
        ("${bool('true')}", True),
        ("${bool('anything')}", True),
        ("${bool(null)}", False),
        ("${bool([])}", False),
        ("${round(2.5)}", 3),
        ("${round(-2.5)}", -3),
        ("${round(2.675, 2)}", 2.68),
        ("${round(1.2345, 1)}", 1.2),
        ("${round(1234, -2)}", 1200),
        ("${round(2.4, 0)}", 2),
        ("${round(null)}", None),
        ("${abs(-3)}", 3),
        ("${abs(2.5)}", 2.5),
        ("${min(3, 1, 2)}", 1),
        ("${min([3, 1, 2])}", 1),
        ("${max(3, 1, 2)}", 3),
        ("${max(payload.tags)}", "z"),
        ("${sum([1, 2, 3.5])}", 6.5),
        ("${sum(null)}", 0),
        ("${default(payload.missing, 'fb')}", "fb"),
        ("${default(payload.empty, 'fb')}", "fb"),
        ("${default(payload.zero, 'fb')}", 0),
        ("${default(payload.flag, 'fb')}", True),
        ("${coalesce(payload.missing, payload.none, payload.zero, 1)}", 0),
        ("${coalesce(payload.missing)}", None),
        ("${coalesce(payload.empty, 'x')}", ""),
        ("${concat('a', 1, null, true, [1])}", "a1true[1]"),
        ("${concat(payload.customer.id)}", "42"),
        ("${join(payload.tags, ',')}", "x,y,z"),
        ("${join([1, null, true], '-')}", "1--true"),
        ("${join(payload.missing, ',')}", ""),
        ("${split('a,b,c', ',')}", ["a", "b", "c"]),
        ("${split(' a  b ')}", ["a", "b"]),
        ("${split(null, ',')}", []),
        ("${split('', ',')}", []),  # docs/steps.md: split(default(payload.tags, ''), ',')
        ("${split(default(null, ''), ',')}", []),
        ("${replace('a-b-c', '-', '+')}", "a+b+c"),
        ("${replace(null, '-', '+')}", None),
        ("${startswith(config.progix_url, 'https://')}", True),
        ("${startswith(payload.missing, 'x')}", False),
        ("${endswith('file.csv', '.csv')}", True),
        ("${endswith('file.csv', '.json')}", False),
        ("${contains(payload.tags, 'y')}", True),
        ("${contains('hello', 'ell')}", True),
        ("${contains(payload.customer, 'id')}", True),
        ("${contains(payload.missing, 'x')}", False),
        ("${contains('abc', 1)}", False),
        ("${keys({'a': 1, 'b': 2})}", ["a", "b"]),
        ("${values({'a': 1, 'b': 2})}", [1, 2]),
        ("${keys(payload.missing)}", []),
        ("${values(payload.tags)}", []),
        ("${json(payload.customer)}", orjson.dumps(SCOPE["payload"]["customer"]).decode()),
        ("${json('x')}", '"x"'),
        ("${json(null)}", "null"),
        ("${parse_json('{\"a\": [1, 2]}')}", {"a": [1, 2]}),
        ("${parse_json(null)}", None),
        ("${parse_json(json(payload.tags))}", ["x", "y", "z"]),
        ("${sha256('abc')}", hashlib.sha256(b"abc").hexdigest()),
        ("${base64('héllo')}", base64.b64encode("héllo".encode()).decode()),
        ("${unbase64(base64('héllo'))}", "héllo"),
        ("${unbase64('YQ')}", "a"),
        ("${unbase64('YWI=')}", "ab"),
        ("${substr('abcdef', 1, 3)}", "bc"),
        ("${substr('abcdef', 2)}", "cdef"),
        ("${substr('abcdef', -2)}", "ef"),
        ("${substr(null, 1)}", None),
        ("${substr(12345, 1, 3)}", "23"),
    ],
)
def test_functions(src: str, expected: Any) -> None:
    result = ev(src)
    assert result == expected
    assert type(result) is type(expected)


def test_function_name_shadowing_builtins_in_paths() -> None:
    scope = {"payload": {"str": "s", "len": 3, "keys": [1]}}
    assert ev("${payload.str}-${payload.len}-${len(payload.keys)}", scope) == "s-3-1"


# ------------------------------------------------------------------ rejected constructs
@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("${lambda: 1}", "lambda is not allowed"),
        ("${[x for x in payload.tags]}", "list comprehension is not allowed"),
        ("${{x for x in payload.tags}}", "set comprehension is not allowed"),
        ("${{x: 1 for x in payload.tags}}", "dict comprehension is not allowed"),
        ("${len(x for x in payload.tags)}", "generator expression is not allowed"),
        ("${f'{payload.n}'}", "f-string is not allowed"),
        ("${(y := 1)}", "assignment expression (:=) is not allowed"),
        ("${[*payload.tags]}", "starred expression (*x) is not allowed"),
        ("${concat(*payload.tags)}", "starred expression (*x) is not allowed"),
        ("${{**payload.customer}}", "dict unpacking (**x) is not allowed"),
        ("${{1, 2}}", "set literal is not allowed"),
        ("${payload.tags[0:2]}", "slice (a[x:y]) is not allowed"),
        ("${payload.n ** 2}", "operator '**' is not allowed"),
        ("${payload.n @ 2}", "operator '@' is not allowed"),
        ("${payload.n | 2}", "operator '|' is not allowed"),
        ("${payload.n & 2}", "operator '&' is not allowed"),
        ("${payload.n ^ 2}", "operator '^' is not allowed"),
        ("${payload.n << 2}", "operator '<<' is not allowed"),
        ("${payload.n >> 2}", "operator '>>' is not allowed"),
        ("${~payload.n}", "operator '~' is not allowed"),
        ("${payload.n is null}", "operator 'is' is not allowed; use == or !="),
        ("${payload.n is not null}", "operator 'is not' is not allowed"),
        ("${round(payload.n, n=2)}", "keyword arguments are not allowed (in round(...))"),
        ("${concat(**payload.customer)}", "keyword arguments are not allowed"),
        ("${b'bytes'}", "bytes literals are not allowed"),
        ("${1j}", "complex literals are not allowed"),
        ("${...}", "ellipsis literals are not allowed"),
        ("${await payload}", "await is not allowed"),
        ("${yield}", "invalid syntax"),
        ("${payload.n = 1}", "invalid syntax"),
        ("${import os}", "invalid syntax"),
        ("${payload.}", "invalid syntax"),
        ("${1 +}", "invalid syntax"),
        ("${}", "empty expression"),
        ("${   }", "empty expression"),
    ],
)
def test_rejected_constructs(src: str, fragment: str) -> None:
    e = err(src)
    assert fragment in e.message
    assert fragment in str(e)


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("${payload.__class__}", "attribute '__class__' is not allowed"),
        ("${payload.__class__.__mro__}", "attribute '__mro__' is not allowed"),
        ("${payload.a.__dict__}", "attribute '__dict__' is not allowed"),
        ("${().__class__.__bases__}", "attribute '__bases__' is not allowed"),
        ("${''.__class__}", "attribute '__class__' is not allowed"),
        ("${__import__('os')}", "unknown function '__import__'"),
        ("${__import__('os').system('id')}", "cannot call '__import__('os').system'"),
        ("${__builtins__}", "unknown name '__builtins__'"),
        ("${eval('1')}", "unknown function 'eval'"),
        ("${exec('1')}", "unknown function 'exec'"),
        ("${getattr(payload, '__class__')}", "unknown function 'getattr'"),
        ("${open('/etc/passwd')}", "unknown function 'open'"),
        ("${type(payload)}", "unknown function 'type'"),
        ("${lower.__name__}", "attribute '__name__' is not allowed"),
        ("${lower.x}", "function 'lower' can only be called"),
        ("${lower}", "function 'lower' can only be called"),
        ("${str.join}", "function 'str' can only be called"),
        ("${payload.get('x')}", "cannot call 'payload.get'"),
        ("${payload.customer.name.upper()}", "cannot call 'payload.customer.name.upper'"),
        ("${'{0.__class__}'.format(payload)}", "cannot call"),
        ("${payload['x']()}", "cannot call"),
        ("${upper(payload).__class__}", "attribute '__class__' is not allowed"),
    ],
)
def test_security_cases_rejected_at_compile_time(src: str, fragment: str) -> None:
    e = err(src)
    assert fragment in e.message, e.message


def test_parenthesised_function_name_is_still_a_call() -> None:
    # `(lower)('A')` parses to a plain Name call; make sure it behaves like lower('A').
    assert ev("${(lower)('A')}") == "a"


def test_dunder_key_via_subscript_is_plain_key_lookup() -> None:
    assert ev("${payload['__class__']}") is None
    scope = {"payload": {"__class__": "just data"}}
    assert ev("${payload['__class__']}", scope) == "just data"


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        (
            "${foo}",
            "unknown name 'foo'; expected one of: config, env, meta, payload, steps, trigger",
        ),
        ("${payloads.a}", "unknown name 'payloads'"),
        ("${x == 1}", "unknown name 'x'"),
        ("${TRUE}", "unknown name 'TRUE'"),
        ("${nil}", "unknown name 'nil'"),
    ],
)
def test_unknown_names(src: str, fragment: str) -> None:
    assert fragment in err(src).message


def test_custom_roots() -> None:
    roots = frozenset({"item"})
    t = compile_value("${item.a}", roots=roots)
    assert t.render({"item": {"a": 1}}) == 1
    e = err("${payload.a}", roots=roots)
    assert "unknown name 'payload'; expected one of: item" in e.message
    assert iter_expression_errors("${payload}", roots=roots)
    assert frozenset({"payload", "config", "steps", "trigger", "meta", "env"}) == ROOTS


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("${nosuch(1)}", "unknown function 'nosuch'; expected one of: now, now_ms, uuid"),
        ("${now(1)}", "now() takes 0 argument(s), got 1"),
        ("${lower()}", "lower() takes 1 argument(s), got 0"),
        ("${lower('a', 'b')}", "lower() takes 1 argument(s), got 2"),
        ("${substr('a')}", "substr() takes 2 to 3 argument(s), got 1"),
        ("${round(1, 2, 3)}", "round() takes 1 to 2 argument(s), got 3"),
        ("${replace('a', 'b')}", "replace() takes 3 argument(s), got 2"),
        ("${concat()}", "concat() takes at least 1 argument(s), got 0"),
        ("${coalesce()}", "coalesce() takes at least 1 argument(s), got 0"),
        ("${default(payload.a)}", "default() takes 2 argument(s), got 1"),
        ("${join(payload.tags)}", "join() takes 2 argument(s), got 1"),
    ],
)
def test_unknown_function_and_arity(src: str, fragment: str) -> None:
    assert fragment in err(src).message


def test_unhashable_constant_dict_key() -> None:
    assert "dict keys must be strings or numbers" in err("${{[1]: 2}}").message


def test_unterminated_expression() -> None:
    e = err("abc ${payload.a")
    assert "unterminated '${'" in e.message
    assert e.column == 4
    e = err("${concat('}')")
    assert "unterminated" in e.message
    e = err("${ {'a': 1 }")
    assert "unterminated" in e.message


def test_errors_are_value_errors() -> None:
    assert issubclass(ExpressionError, ValueError)
    assert issubclass(ExpressionEvalError, ValueError)


# ------------------------------------------------------------------ columns / paths
@pytest.mark.parametrize(
    ("src", "column"),
    [
        ("${foo}", 2),
        ("${ foo}", 3),
        ("abc ${payload.a} ${foo}", 19),
        ("${payload.a + foo}", 14),
        ("${payload.__class__}", 2),
        ("x${nosuch(1)}", 3),
        ("${lower(payload.a, bar)}", 2),
        ("${lower(bar)}", 8),
        ("é ${foo}", 4),
        ("${'é' + foo}", 8),
        ("${('é' +\n foo)}", 10),
        ("${payload.a b}", 12),
        ("${1 +}", 5),
        ("${}", 2),
        ("ab ${payload.a", 3),
    ],
)
def test_error_columns(src: str, column: int) -> None:
    e = err(src)
    assert e.column == column, (e.message, e.column)
    assert f"column {column}" in str(e)


def test_error_expression_text() -> None:
    e = err("prefix ${ payload.a + foo } suffix")
    assert e.expression == "payload.a + foo"
    assert "${payload.a + foo}" in str(e)


def test_nested_compile_error_carries_path() -> None:
    value = {"http": {"url": "${config.url}", "headers": [{"x": "ok"}, {"y": "${bad.name}"}]}}
    e = err(value)
    assert e.path == ("http", "headers", 1, "y")
    assert "unknown name 'bad'" in e.message
    assert "at http.headers.1.y" in str(e)


def test_top_level_error_has_empty_path() -> None:
    assert err("${bad}").path == ()


def test_iter_expression_errors_collects_all() -> None:
    value = {
        "a": "${bad1}",
        "b": ["ok ${payload.x}", "${payload.__class__}", {"c": "x ${nosuch()} y ${oops}"}],
        "d": "${unterminated",
        "e": 5,
        "f": "$${escaped}",
    }
    errors = iter_expression_errors(value)
    found = [(path, e.message.split(";")[0]) for path, e in errors]
    assert found == [
        (("a",), "unknown name 'bad1'"),
        (("b", 1), "attribute '__class__' is not allowed (names starting with '__')"),
        (("b", 2, "c"), "unknown function 'nosuch'"),
        (("b", 2, "c"), "unknown name 'oops'"),
        (("d",), "unterminated '${' (missing '}')"),
    ]
    for path, e in errors:
        assert e.path == path
    assert errors[3][1].column == len("x ${nosuch()} y ${")


def test_iter_expression_errors_empty_for_valid() -> None:
    assert iter_expression_errors({"a": ["${payload.a}", 1, None], "b": "plain"}) == []
    assert iter_expression_errors("${payload.a}") == []
    assert iter_expression_errors(3) == []


# ------------------------------------------------------------------ references
def test_references() -> None:
    t = compile_value(
        {
            "url": "${config.progix_url}/c/${payload.customer.id}",
            "body": "${steps.push.body.id}",
            "list": ["${payload.items[0].sku}", "${len(trigger)}"],
            "dyn": "${steps.push.body.list[payload.idx].x}",
            "lit": "${'a' if meta.instance == 'x' else env['REGION']}",
            "neg": "${payload.tags[-1]}",
            "const": "plain",
        }
    )
    assert t.references == frozenset(
        {
            ("config", "progix_url"),
            ("payload", "customer", "id"),
            ("steps", "push", "body", "id"),
            ("payload", "items", "0", "sku"),
            ("trigger",),
            ("steps", "push", "body", "list"),
            ("payload", "idx"),
            ("meta", "instance"),
            ("env", "REGION"),
            ("payload", "tags", "-1"),
        }
    )
    assert not t.is_constant


def test_references_maximal_paths_only() -> None:
    t = compile_value("${payload.a.b.c}")
    assert t.references == frozenset({("payload", "a", "b", "c")})


def test_references_through_function_and_dynamic_base() -> None:
    t = compile_value("${parse_json(payload.raw).id}")
    assert t.references == frozenset({("payload", "raw")})
    t = compile_value("${payload[payload.k]}")
    assert t.references == frozenset({("payload",), ("payload", "k")})


# ------------------------------------------------------------------ compile_value structure
def test_constant_values_return_source_object() -> None:
    for value in ({"a": [1, {"b": "text"}]}, ["x", 1], "plain", 5, None, 1.5, True):
        t = compile_value(value)
        assert t.is_constant
        assert t.source is value
        assert t.render(SCOPE) is value
        assert t.references == frozenset()


def test_nested_dict_and_list_rendering() -> None:
    value = {
        "url": "${config.progix_url}/x",
        "static": {"k": [1, 2]},
        "items": ["${payload.n}", "lit", {"deep": "${payload.flag}"}],
        "tuple": ("${payload.n}", 1),
        5: "${payload.zero}",
        "${payload.n}": "keys are not templated",
    }
    t = compile_value(value)
    assert not t.is_constant
    out = t.render(SCOPE)
    assert out == {
        "url": "https://progix.example/x",
        "static": {"k": [1, 2]},
        "items": [7, "lit", {"deep": True}],
        "tuple": (7, 1),
        5: 0,
        "${payload.n}": "keys are not templated",
    }
    assert list(out) == list(value)
    assert t.source is value
    # renders are independent containers
    assert t.render(SCOPE) is not out
    assert t.render(SCOPE)["items"] is not out["items"]


def test_render_with_different_scopes() -> None:
    t = compile_value({"id": "${payload.id}", "msg": "hi ${payload.name}"})
    assert t.render({"payload": {"id": 1, "name": "a"}}) == {"id": 1, "msg": "hi a"}
    assert t.render({"payload": {"id": 2}}) == {"id": 2, "msg": "hi "}


def test_template_is_reusable_type() -> None:
    t = compile_value("${payload.n}")
    assert isinstance(t, Template)
    assert "payload.n" in repr(t)


# ------------------------------------------------------------------ compile_expression
@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("payload.n == 7", True),
        ("${payload.n == 7}", True),
        ("  ${payload.n == 7}  ", True),
        ("payload.n", 7),
        ("  payload.customer.id > 40 and payload.flag ", True),
        ("${ {'a': payload.n} }", {"a": 7}),
        ("${'${literal}'}", "${literal}"),
        ("concat('a', '}')", "a}"),
    ],
)
def test_compile_expression(src: str, expected: Any) -> None:
    t = compile_expression(src)
    assert t.render(SCOPE) == expected
    assert not t.is_constant
    assert t.source == src


def test_compile_expression_references_and_errors() -> None:
    t = compile_expression("steps.push.status == 201")
    assert t.references == frozenset({("steps", "push", "status")})
    with pytest.raises(ExpressionError) as info:
        compile_expression("  foo == 1")
    assert info.value.column == 2
    with pytest.raises(ExpressionError) as info:
        compile_expression("${foo}")
    assert info.value.column == 2
    with pytest.raises(ExpressionError, match="exactly one"):
        compile_expression("${payload.a} == ${payload.b}")
    with pytest.raises(ExpressionError, match="exactly one"):
        compile_expression("payload.a == ${payload.b}")
    with pytest.raises(ExpressionError, match="exactly one"):
        compile_expression("'${literal}'")  # write ${'${literal}'} instead
    with pytest.raises(ExpressionError, match="unterminated"):
        compile_expression("${payload.a")
    with pytest.raises(ExpressionError, match="empty expression"):
        compile_expression("   ")
    with pytest.raises(ExpressionError, match="lambda"):
        compile_expression("lambda: 1")


def test_compile_expression_non_string() -> None:
    assert compile_expression(True).render({}) is True  # type: ignore[arg-type]


# ------------------------------------------------------------------ no re-parsing
def test_render_does_not_reparse(monkeypatch: pytest.MonkeyPatch) -> None:
    templates = [
        compile_value(
            {"a": "${payload.n + 1}", "b": "x ${lower('A')} y", "c": ["${payload.tags}"]}
        ),
        compile_expression("payload.n > 1 and 'x' in payload.tags"),
    ]

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("ast.parse called at render time")

    monkeypatch.setattr(ast, "parse", boom)
    for _ in range(3):
        assert templates[0].render(SCOPE) == {"a": 8, "b": "x a y", "c": [["x", "y", "z"]]}
        assert templates[1].render(SCOPE) is True
    with pytest.raises(AssertionError, match="render time"):
        compile_value("${payload.n}")  # sanity: the patch is active


def test_deeply_nested_expression_is_compile_error() -> None:
    src = "${" + "(" * 200 + "1" + ")" * 200 + "}"
    try:
        t = compile_value(src)
    except ExpressionError as e:  # too deep for the parser on this interpreter
        assert "nest" in e.message or "invalid" in e.message
    else:
        assert t.render({}) == 1
    deep = "${" + "-" * 5000 + "1}"
    with pytest.raises(ExpressionError):
        compile_value(deep)


@pytest.mark.parametrize(
    ("src", "payload", "plain_words"),
    [
        ("${round(1.5, 1000000000)}", {}, "places must be between"),
        ("${int(payload.s)}", {"s": "9" * 100_000}, "a number of more than 4300 digits"),
        ("${unbase64(payload.s)}", {"s": "////"}, "not UTF-8 text"),
        ("${sum(payload.l)}", {"l": ["a", "b"]}, "operand types for +: number and text"),
        ("${payload.a + payload.b}", {"a": 1, "b": None}, "number and null"),
        ("${round(payload.n, 2)}", {"n": "x"}, "not a representable number"),
    ],
)
def test_runtime_errors_carry_no_python_internals(
    src: str, payload: dict[str, Any], plain_words: str
) -> None:
    """F8: no class reprs, interpreter advice or type names like 'int' and 'str'."""
    with pytest.raises(ExpressionEvalError) as info:
        compile_value(src).render({"payload": payload})
    text = str(info.value)
    assert plain_words in text
    for internal in ("<class", "sys.", "set_int_max_str_digits", "'int'", "'str'", ".py"):
        assert internal not in text, text


@pytest.mark.parametrize("src", ["${" + "-" * 100_000 + "1}", "${" + "not " * 50_000 + "1}",
                                 "${" + "(" * 100_000 + "1" + ")" * 100_000 + "}"])  # fmt: skip
def test_a_very_deep_expression_says_so(src: str) -> None:
    with pytest.raises(ExpressionError, match=r"nested too deeply|too many nested"):
        compile_value(src)


def test_unexpected_step_errors_name_no_source_path() -> None:
    from streamflow.runtime.processor import describe

    try:
        {}["missing"]
    except KeyError as exc:
        text = describe(exc)
    assert text == "KeyError: 'missing'"
