"""A compiled template's fast form: one generated Python function per template.

``expressions.py`` compiles a template to a tree of closures, one call per node. This
module turns the same validated template into *one* Python function (as a query engine
compiles an expression tree instead of interpreting it): a dict of five ``${...}`` fields
becomes one dict display, a path ``payload.a.b`` two inline dict reads. It changes no
meaning:

- every operator, function and lookup is the very function the closures call (bound by
  name in the function's namespace: ``_lk`` is ``lookup``, ``_b3`` a ``BINOPS`` entry ...);
- every constant - keys, literals, constant sub-values - is bound by name too, never
  written into the source: the generated text holds only names this module makes up and
  Python syntax, so no text of a topology is ever evaluated;
- what has no direct form (a chained comparison, ``map(xs, 'expr')``) calls its closure;
- a failure is not interpreted here: ``Template.render`` calls the closures again when the
  fast form raises, and they raise the ``ExpressionEvalError`` (with its expression) that
  they always have. Expression functions are pure, so the second evaluation returns what
  the first would have.

``fast_value`` returns None when a template has nothing to gain (a constant).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from typing import Any

from streamflow.topology.exprfuncs import BINOPS, CMPOPS, FUNCS, bounded_text, lookup, text
from streamflow.topology.exprlists import PER_ITEM_ARG

Fn = Callable[[Mapping[str, Any]], Any]
Compile = Callable[[str], Fn]
"""The closure compiler of one expression (source -> closure), for what has no fast form."""

_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


class _Gen:
    """Source of one function ``def _f(s): return ...`` and the names it reads."""

    def __init__(
        self, roots: frozenset[str], closure: Compile, parts: Callable[[str], list[Any]]
    ) -> None:
        self.roots, self.closure, self.parts = roots, closure, parts
        self.names: dict[str, Any] = {"_lk": lookup, "_tx": text, "_bt": bounded_text}
        self.ids: dict[int, str] = {}
        self.n = 0

    def bind(self, value: Any) -> str:
        """A name for ``value`` (the same object: constants are shared, as the closures do)."""
        found = self.ids.get(id(value))
        if found is not None and self.names[found] is value:
            return found
        self.n += 1
        name = f"_c{self.n}"
        self.names[name] = value
        self.ids[id(value)] = name
        return name

    def parse(self, src: str) -> ast.expr:
        """The tree of one expression's source, as the closure compiler reads it."""
        from streamflow.topology.expressions import _HYPHENATED_STEP  # (it imports this)

        body = _HYPHENATED_STEP.sub(lambda m: f"steps[{m.group(1)!r}]", src.strip())
        return ast.parse(body, mode="eval").body

    def temp(self) -> str:
        self.n += 1
        return f"_v{self.n}"

    def get(self, obj: str, key: Any) -> str:
        """``lookup(obj, key)``, with a dict read inline (the usual case)."""
        v, k = self.temp(), self.bind(key)
        return f"({v}.get({k}) if type({v} := {obj}) is dict else _lk({v}, {k}))"

    # -- one expression -----------------------------------------------------------------
    def expr(self, node: ast.expr) -> str:
        path = self.path(node)
        if path is not None:
            read = f"s.get({self.bind(path[0])})"
            for key in path[1:]:
                read = self.get(read, key)
            return read
        meth = getattr(self, "_" + type(node).__name__, None)
        code: str | None = meth(node) if meth is not None else None
        if code is None:  # no direct form: its closure
            return f"{self.bind(self.closure(ast.unparse(node)))}(s)"
        return code

    def path(self, node: ast.expr) -> tuple[Any, ...] | None:
        return static_path(node, self.roots)

    def _Constant(self, node: ast.Constant) -> str:
        return self.bind(node.value)

    def _Name(self, node: ast.Name) -> str | None:
        return self.bind(_LITERALS[node.id]) if node.id in _LITERALS else None

    def _Attribute(self, node: ast.Attribute) -> str:
        return self.get(self.expr(node.value), node.attr)

    def _Subscript(self, node: ast.Subscript) -> str:
        return f"_lk({self.expr(node.value)}, {self.expr(node.slice)})"

    def _List(self, node: ast.List | ast.Tuple) -> str:
        return "[" + "".join(f"{self.expr(e)}, " for e in node.elts) + "]"

    _Tuple = _List  # a tuple renders as a list

    def _Dict(self, node: ast.Dict) -> str | None:
        if any(k is None for k in node.keys):
            return None
        items = zip(node.keys, node.values, strict=True)
        return "{" + "".join(f"{self.expr(k)}: {self.expr(v)}, " for k, v in items if k) + "}"

    def _UnaryOp(self, node: ast.UnaryOp) -> str | None:
        sign = {ast.Not: "not ", ast.USub: "-", ast.UAdd: "+"}.get(type(node.op))
        return None if sign is None else f"({sign}{self.expr(node.operand)})"

    def _BinOp(self, node: ast.BinOp) -> str | None:
        fn = BINOPS.get(type(node.op))
        if fn is None:
            return None
        return f"{self.bind(fn)}({self.expr(node.left)}, {self.expr(node.right)})"

    def _BoolOp(self, node: ast.BoolOp) -> str:
        glue = " and " if isinstance(node.op, ast.And) else " or "
        return "(" + glue.join(self.expr(v) for v in node.values) + ")"

    def _Compare(self, node: ast.Compare) -> str | None:
        if len(node.ops) != 1 or type(node.ops[0]) not in CMPOPS:
            return None  # a chain evaluates its middle once: its closure does
        fn = self.bind(CMPOPS[type(node.ops[0])])
        return f"{fn}({self.expr(node.left)}, {self.expr(node.comparators[0])})"

    def _IfExp(self, node: ast.IfExp) -> str:
        test, body, orelse = (self.expr(n) for n in (node.test, node.body, node.orelse))
        return f"({body} if {test} else {orelse})"

    def _Call(self, node: ast.Call) -> str | None:
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCS:
            return None
        name = node.func.id
        at = PER_ITEM_ARG.get(name)
        if node.keywords or (at is not None and at < len(node.args)):
            return None  # an expression over 'item' per element: its closure
        args = "".join(f"{self.expr(a)}, " for a in node.args)
        return f"{self.bind(FUNCS[name][0])}({args})"


LIGHT = frozenset({"payload", "trigger"})
"""The roots a template may read and still be rendered without an envelope's metadata."""


def roots_read(*templates: Any) -> set[str]:
    """The scope roots ``templates`` (compiled ``Template``s) read, from their references."""
    return {ref[0] for t in templates for ref in t.references}


def static_path(node: ast.expr, roots: frozenset[str]) -> tuple[str | int, ...] | None:
    """(root, key, ...) when ``node`` is a fully static path like payload.a['b'][0]."""
    keys: list[str | int] = []
    while True:
        if isinstance(node, ast.Attribute) and not node.attr.startswith("__"):
            keys.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript) and (k := _static_key(node.slice)) is not None:
            keys.append(k)
            node = node.value
        elif isinstance(node, ast.Name) and node.id in roots:
            return (node.id, *reversed(keys))
        else:
            return None


def _static_key(node: ast.expr) -> str | int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return None if isinstance(node.value, bool) else node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(k := _static_key(node.operand), int)
    ):
        return -k
    return None


def fast_function(
    template: Any,
    roots: frozenset[str],
    parts: Callable[[str], list[Any]],
    closure: Compile,
    *,
    bare: bool = False,
) -> Fn | None:
    """One function for ``template`` (a YAML value, or with ``bare`` one expression's
    source, already compiled and checked by ``expressions.py``), or None when it holds
    no ``${...}``. ``parts`` splits a string into its literal texts and ``(expression
    source, offset)`` pairs; ``closure`` compiles one expression's source to its closure."""
    gen = _Gen(roots, closure, parts)
    code = gen.expr(gen.parse(template)) if bare else _value(gen, template)
    if code is None:
        return None
    source = f"def _f(s):\n    return {code}\n"
    namespace: dict[str, Any] = dict(gen.names)
    exec(compile(source, "<template>", "exec"), namespace)
    fn: Fn = namespace["_f"]
    return fn


def _value(gen: _Gen, v: Any) -> str | None:
    """Source of ``v``'s value, or None when it is a constant (no ``${``)."""
    if isinstance(v, str):
        return _string(gen, v)
    if isinstance(v, Mapping):
        items = [(k, _value(gen, x)) for k, x in v.items()]
        if all(c is None for _, c in items):
            return None
        return "{" + "".join(f"{gen.bind(k)}: {c or gen.bind(v[k])}, " for k, c in items) + "}"
    if isinstance(v, (list, tuple)):
        codes = [_value(gen, x) for x in v]
        if all(c is None for c in codes):
            return None
        body = "[" + "".join(f"{c or gen.bind(x)}, " for c, x in zip(codes, v, strict=True)) + "]"
        return f"tuple({body})" if isinstance(v, tuple) else body
    return None


def _string(gen: _Gen, s: str) -> str | None:
    """None for a string without ``${`` (the constant itself); else its source: one
    expression keeps its type, text around expressions makes a string."""
    if "${" not in s:
        return None
    parts = gen.parts(s)
    if all(isinstance(p, str) for p in parts):  # only `$${` escapes: a constant text
        return gen.bind("".join(parts))
    if len(parts) == 1:
        return gen.expr(gen.parse(parts[0][0]))
    codes = [
        gen.bind(p) if isinstance(p, str) else f"_tx({gen.expr(gen.parse(p[0]))})" for p in parts
    ]
    return '_bt("".join([' + ", ".join(codes) + "]))"
