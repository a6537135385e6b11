"""``${...}`` expressions in topology YAML values.

A string that is exactly one ``${expr}`` renders to the expression's value with
its type kept (dict, int, ...). Text around expressions makes a string: ``null``
renders as ``""``, booleans as ``true``/``false``, dicts/lists as compact JSON.
``$${`` is a literal ``${``. Dict keys are never templated. Expressions are
parsed and checked once at load time (never ``eval``-ed) and compiled to closures (and
to one generated function per template for speed: exprcode.py).

Grammar (anything else is rejected when the topology loads):
  roots        payload config steps trigger meta env  (a missing root is null)
  paths        payload.customer.id  steps.push.body['id']  payload.items[0]  x[-1]
               (key lookup on dicts, index on lists/strings; a missing key or
               index is null, like optional chaining; ``a.b`` never reads
               Python attributes, and names starting with ``__`` are rejected)
  literals     'text' "text" 1 2.5 true false null (True False None) [..] (..) {k: v}
  operators    == != < <= > >= in, not in, and or not, + - * / // %, unary -,
               x if cond else y.  Ordering null against a number is false.
  step ids     steps.<id> may name a step id with hyphens: steps.push-to-cms.body
               reads step 'push-to-cms' (write a subtraction with spaces: a - b)
  functions    positional arguments only:
    now() ISO-8601 UTC with millis and 'Z'; now_ms(); uuid() (random v4)
    lower(s) upper(s) trim(s) substr(s, start, end?) replace(s, old, new)
    startswith(s, p) endswith(s, p) contains(container, item)
    split(s, sep?) join(list, sep) concat(x, ...) len(x) keys(d) values(d)
    str(x) int(x) float(x) bool(x) round(x, n?) abs(x) min(..) max(..) sum(list)
    default(x, fallback) (fallback if x is null or '') coalesce(x, ...)
    json(x) parse_json(s) sha256(s) base64(s) unbase64(s)
    parse_date(s, fmt?, zone?) format_date(d, fmt, zone?) to_zone(d, zone)
    date_add(d, dur, zone?) date_sub(d, dur, zone?) start_of(d, unit, zone?)
    date_diff(a, b, unit?) epoch_ms(d)   (see exprdates.py, docs/expressions.md)
    parse_xml(s) render_xml(value, root?)   (see exprxml.py)
    map(list, 'expr') filter(list, 'expr') pluck(list, 'a.b') sort_by(list, 'expr')
    min_by(list, 'expr') max_by(list, 'expr') sum(list, 'expr'?) group_by(list, 'expr')
               ('expr' is a constant string compiled once, ``item`` naming the element;
               see exprlists.py)
  String functions pass null through; str(x) renders like interpolation;
  bool('false'/'no'/'off'/'0'/'') is false; round() rounds half away from zero
  and returns an int when n is omitted or <= 0; tuples render as lists.
  A runtime failure (division by zero, int('abc'), null + 1, ...) raises
  ExpressionEvalError. So does building a value over the size limit (repetition,
  concatenation, replace, join, concat, json, str, interpolation): 1,000,000 characters
  (or about bytes of JSON) unless the flow sets ``max_value_size`` (exprfuncs.VALUE_LIMIT).
  Rendered values may share objects with the scope and the template source: treat them
  as read-only.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from streamflow.errtext import plain
from streamflow.topology.exprcode import fast_function, static_path
from streamflow.topology.exprfuncs import (
    ARG_CHECKS,
    BINOPS,
    CMPOPS,
    FUNCS,
    ValueTooLarge,
    bounded_text,
    lookup,
    text,
)
from streamflow.topology.exprlists import ITEM_ROOT, LIST_FUNCS, PER_ITEM_ARG

FUNCS.update(LIST_FUNCS)

__all__ = [
    "ROOTS",
    "ExpressionError",
    "ExpressionEvalError",
    "Scope",
    "Template",
    "compile_expression",
    "compile_value",
    "iter_expression_errors",
]

ROOTS: frozenset[str] = frozenset({"payload", "config", "steps", "trigger", "meta", "env"})
Scope = Mapping[str, Any]
Fn = Callable[[Scope], Any]
Path = tuple[str | int, ...]
Refs = set[tuple[str, ...]]
_NC: Any = object()  # marker: "not a compile-time constant"
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}
# `steps.push-to-cms` names a step id with hyphens (ids may have them); a subtraction needs spaces
_HYPHENATED_STEP = re.compile(r"(?<![\w.'\"])steps\.([A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)+)")


class ExpressionError(ValueError):
    """Compile-time problem with an expression (raised when the topology loads)."""

    def __init__(
        self, message: str, expression: str = "", column: int = 0, path: Path = ()
    ) -> None:
        super().__init__(message)
        self.message, self.expression, self.column, self.path = message, expression, column, path

    def __str__(self) -> str:
        where = f" at {'.'.join(map(str, self.path))}" if self.path else ""
        return f"{self.message} (in ${{{self.expression}}}, column {self.column}{where})"


class ExpressionEvalError(ValueError):
    """Render-time problem (division by zero, bad conversion, null + 1, ...)."""

    def __init__(self, message: str, expression: str = "") -> None:
        super().__init__(message)
        self.message, self.expression = message, expression

    def __str__(self) -> str:
        return f"{self.message} (in ${{{self.expression}}})"


_SYMBOLS = {
    "Pow": "**",
    "MatMult": "@",
    "BitOr": "|",
    "BitAnd": "&",
    "BitXor": "^",
    "LShift": "<<",
    "RShift": ">>",
    "Invert": "~",
    "Is": "is",
    "IsNot": "is not",
}
_CONSTRUCTS = {
    "Lambda": "lambda",
    "ListComp": "list comprehension",
    "SetComp": "set comprehension",
    "DictComp": "dict comprehension",
    "GeneratorExp": "generator expression",
    "JoinedStr": "f-string",
    "Set": "set literal",
    "NamedExpr": "assignment expression (:=)",
    "Starred": "starred expression (*x)",
    "Await": "await",
    "Slice": "slice (a[x:y])",
}


# --------------------------------------------------------------------- compiler
def _constfn(v: Any) -> Fn:
    return lambda s: v


def _getter(root: str, keys: Path) -> Fn:
    if len(keys) <= 1:
        return (lambda s: lookup(s.get(root), keys[0])) if keys else (lambda s: s.get(root))

    def get(s: Scope) -> Any:
        v = s.get(root)
        for k in keys:
            if type(v) is dict:
                v = v.get(k)
            elif v is None:
                return None
            else:
                v = lookup(v, k)
        return v

    return get


def _binary(f: Callable[[Any, Any], Any], a: Fn, b: Fn) -> Fn:
    return lambda s: f(a(s), b(s))


def _col(text: str, lineno: int, byte_col: int) -> int:
    lines = text.split("\n")
    lineno = max(1, min(lineno, len(lines)))
    head = sum(len(x) + 1 for x in lines[: lineno - 1])
    return head + len(lines[lineno - 1].encode()[: max(byte_col, 0)].decode(errors="ignore"))


class _Compiler:
    """Turns a validated AST into closures; each method returns (fn, constant or _NC)."""

    def __init__(self, roots: frozenset[str], body: str, base: int) -> None:
        self.roots, self.body, self.base = roots, body, base
        self.refs: Refs = set()

    def fail(self, node: ast.AST, msg: str) -> NoReturn:
        col = _col(self.body, getattr(node, "lineno", 1), getattr(node, "col_offset", 0))
        raise ExpressionError(msg, self.body, self.base + col)

    def path(self, node: ast.expr) -> Path | None:
        """(root, key, ...) when `node` is a fully static path like payload.a['b'][0]."""
        return static_path(node, self.roots)

    def c(self, node: ast.expr) -> tuple[Fn, Any]:
        p = self.path(node)
        if p is not None:  # references use JSON-pointer style strings: items[0] -> "0"
            self.refs.add(tuple(map(str, p)))
            return _getter(str(p[0]), p[1:]), _NC
        meth = getattr(self, "_" + type(node).__name__, None)
        if meth is None:
            name = type(node).__name__
            self.fail(node, f"{_CONSTRUCTS.get(name, repr(name) + ' expression')} is not allowed")
        return meth(node)  # type: ignore[no-any-return]

    def f(self, node: ast.expr) -> Fn:
        return self.c(node)[0]

    def bad_op(self, node: ast.AST, o: ast.AST, hint: str = "") -> NoReturn:
        self.fail(node, f"operator '{_SYMBOLS.get(type(o).__name__)}' is not allowed{hint}")

    def _Constant(self, node: ast.Constant) -> tuple[Fn, Any]:
        v = node.value
        if v is not None and type(v) not in (str, int, float, bool):
            self.fail(node, f"{type(v).__name__} literals are not allowed")
        return _constfn(v), v

    def _Name(self, node: ast.Name) -> tuple[Fn, Any]:
        if node.id in _LITERALS:
            return _constfn(_LITERALS[node.id]), _LITERALS[node.id]
        if node.id in FUNCS:
            self.fail(node, f"function '{node.id}' can only be called, e.g. {node.id}(...)")
        self.fail(
            node,
            f"unknown name '{node.id}'; expected one of: "
            f"{', '.join(sorted(self.roots))}, true, false, null",
        )

    def _Attribute(self, node: ast.Attribute) -> tuple[Fn, Any]:
        if node.attr.startswith("__"):
            self.fail(node, f"attribute '{node.attr}' is not allowed (names starting with '__')")
        v, k = self.f(node.value), node.attr
        return (lambda s: lookup(v(s), k)), _NC

    def _Subscript(self, node: ast.Subscript) -> tuple[Fn, Any]:
        return _binary(lookup, self.f(node.value), self.f(node.slice)), _NC

    def _List(self, node: ast.List | ast.Tuple) -> tuple[Fn, Any]:
        compiled = [self.c(e) for e in node.elts]
        if all(c is not _NC for _, c in compiled):
            value = [c for _, c in compiled]
            return _constfn(value), value
        fns = tuple(f for f, _ in compiled)
        return (lambda s: [f(s) for f in fns]), _NC

    _Tuple = _List

    def _Dict(self, node: ast.Dict) -> tuple[Fn, Any]:
        if any(k is None for k in node.keys):
            self.fail(node, "dict unpacking (**x) is not allowed")
        items = [(self.c(k), self.c(v)) for k, v in zip(node.keys, node.values, strict=True) if k]
        if all(kc is not _NC and vc is not _NC for (_, kc), (_, vc) in items):
            try:
                value = {kc: vc for (_, kc), (_, vc) in items}
            except TypeError:
                self.fail(node, "dict keys must be strings or numbers")
            return _constfn(value), value
        pairs = tuple((kf, vf) for (kf, _), (vf, _) in items)
        return (lambda s: {k(s): v(s) for k, v in pairs}), _NC

    def _UnaryOp(self, node: ast.UnaryOp) -> tuple[Fn, Any]:
        f, c = self.c(node.operand)
        if isinstance(node.op, ast.Not):
            return (lambda s: not f(s)), _NC
        if isinstance(node.op, ast.USub):
            return (_constfn(-c), -c) if type(c) in (int, float) else ((lambda s: -f(s)), _NC)
        if isinstance(node.op, ast.UAdd):
            return (lambda s: +f(s)), _NC
        self.bad_op(node, node.op)

    def _BinOp(self, node: ast.BinOp) -> tuple[Fn, Any]:
        fn = BINOPS.get(type(node.op))
        if fn is None:
            self.bad_op(node, node.op)
        return _binary(fn, self.f(node.left), self.f(node.right)), _NC

    def _BoolOp(self, node: ast.BoolOp) -> tuple[Fn, Any]:
        fns = [self.f(v) for v in node.values]
        f = fns[-1]  # `a and b and c` == `a and (b and c)`
        for a in reversed(fns[:-1]):
            f = _andor(node.op, a, f)
        return f, _NC

    def _Compare(self, node: ast.Compare) -> tuple[Fn, Any]:
        for o in node.ops:
            if type(o) not in CMPOPS:
                self.bad_op(node, o, "; use == or !=")
        ops = [CMPOPS[type(o)] for o in node.ops]
        fns = [self.f(node.left), *(self.f(c) for c in node.comparators)]
        if len(ops) == 1:
            return _binary(ops[0], fns[0], fns[1]), _NC
        chain, first = tuple(zip(ops, fns[1:], strict=True)), fns[0]

        def compare(s: Scope) -> bool:  # a < b < c, evaluating b once
            left = first(s)
            for cmp, f in chain:
                right = f(s)
                if not cmp(left, right):
                    return False
                left = right
            return True

        return compare, _NC

    def _IfExp(self, node: ast.IfExp) -> tuple[Fn, Any]:
        t, a, b = self.f(node.test), self.f(node.body), self.f(node.orelse)
        return (lambda s: a(s) if t(s) else b(s)), _NC

    def _Call(self, node: ast.Call) -> tuple[Fn, Any]:
        if not isinstance(node.func, ast.Name):
            self.fail(
                node,
                f"cannot call '{ast.unparse(node.func)}': only the built-in "
                f"functions can be called ({', '.join(FUNCS)})",
            )
        name = node.func.id
        if name not in FUNCS:
            self.fail(node, f"unknown function '{name}'; expected one of: {', '.join(FUNCS)}")
        if node.keywords:
            self.fail(node, f"keyword arguments are not allowed (in {name}(...))")
        fn, lo, hi = FUNCS[name]
        if len(node.args) < lo or (hi is not None and len(node.args) > hi):
            want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
            self.fail(node, f"{name}() takes {want} argument(s), got {len(node.args)}")
        per_item = PER_ITEM_ARG.get(name)
        if per_item is not None and per_item < len(node.args):
            return self._per_item(node, name, fn, per_item), _NC
        compiled = [self.c(a) for a in node.args]
        for i, check in ARG_CHECKS.get(name, {}).items():
            if i < len(compiled) and compiled[i][1] is not _NC and compiled[i][1] is not None:
                try:  # a constant zone, unit, duration, ... is checked now, not per event
                    check(compiled[i][1])
                except ValueError as exc:
                    self.fail(node.args[i], f"{name}(): {exc}")
        args = [f for f, _ in compiled]
        if len(args) == 2:
            return _binary(fn, args[0], args[1]), _NC
        if len(args) == 1:
            a = args[0]
            return (lambda s: fn(a(s))), _NC
        return (lambda s: fn(*[a(s) for a in args])), _NC

    def _per_item(self, node: ast.Call, name: str, fn: Callable[..., Any], at: int) -> Fn:
        """``map(xs, 'item.price * 2')``: the argument at ``at`` is a constant string,
        compiled here once as an expression over the roots plus ``item``."""
        arg = node.args[at]
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            self.fail(
                arg,
                f"{name}(): argument {at + 1} must be a quoted expression over 'item', "
                f"e.g. {name}(payload.lines, 'item.price')",
            )
        refs: Refs = set()
        try:
            sub = _expr(arg.value, 0, self.roots | {ITEM_ROOT}, refs)
        except ExpressionError as e:
            self.fail(arg, f"{name}(): {e.message} (in '{arg.value}', column {e.column})")
        self.refs |= {r for r in refs if r[0] != ITEM_ROOT}
        head = [self.f(a) for a in node.args[:at]]

        def call(s: Scope) -> Any:
            def one(x: Any) -> Any:
                return sub({**s, ITEM_ROOT: x})

            return fn(*[h(s) for h in head], one)

        return call


def _andor(kind: ast.boolop, a: Fn, b: Fn) -> Fn:
    if isinstance(kind, ast.And):
        return lambda s: a(s) and b(s)
    return lambda s: a(s) or b(s)


def _expr(src: str, offset: int, roots: frozenset[str], refs: Refs) -> Fn:
    """Compile one expression; `offset` is where `src` starts in the original string."""
    body = src.strip()
    base = offset + len(src) - len(src.lstrip())
    if not body:
        raise ExpressionError("empty expression", body, offset)
    body = _HYPHENATED_STEP.sub(lambda m: f"steps[{m.group(1)!r}]", body)
    try:
        tree = ast.parse(body, mode="eval")
        comp = _Compiler(roots, body, base)
        fn, const = comp.c(tree.body)
    except SyntaxError as e:
        col = _col(body, e.lineno or 1, 0) + e.offset - 1 if e.offset else len(body)
        msg = e.msg if e.msg.startswith("invalid syntax") else f"invalid syntax: {e.msg}"
        raise ExpressionError(msg, body, base + min(col, len(body))) from None
    except (ValueError, RecursionError, MemoryError) as e:
        if isinstance(e, ExpressionError):
            raise
        why = "nested too deeply" if isinstance(e, RecursionError | MemoryError) else str(e)
        why = why or "cannot be parsed"
        raise ExpressionError(f"invalid expression: {why}", body, base) from None
    refs |= comp.refs
    if const is not _NC or comp.path(tree.body) is not None:
        return fn  # constants and plain paths cannot fail

    def guarded(s: Scope) -> Any:
        try:
            return fn(s)
        except ExpressionEvalError:
            raise
        except Exception as e:  # every runtime failure becomes an ExpressionEvalError
            raise ExpressionEvalError(f"{type(e).__name__}: {plain(e)}", body) from e

    return guarded


def _split(s: str) -> list[str | tuple[str, int]]:
    """Split a string into literal text and (expression source, start offset)."""
    parts: list[str | tuple[str, int]] = []
    buf, i = "", 0
    while (j := s.find("${", i)) >= 0:
        if j > i and s[j - 1] == "$":  # $${ -> literal ${
            buf, i = buf + s[i : j - 1] + "${", j + 2
            continue
        buf += s[i:j]
        depth, quote, k = 0, "", j + 2
        while k < len(s):
            ch = s[k]
            if quote:
                k += ch == "\\"  # skip the escaped character
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "}" and depth == 0:
                break
            else:
                depth += (ch == "{") - (ch == "}")
            k += 1
        else:
            raise ExpressionError("unterminated '${' (missing '}')", s[j + 2 :], j)
        parts += [buf, (s[j + 2 : k], j + 2)] if buf else [(s[j + 2 : k], j + 2)]
        buf, i = "", k + 1
    buf += s[i:]
    return [*parts, buf] if buf else parts


Errors = list[tuple[Path, ExpressionError]]


def _report(e: ExpressionError, path: Path, errors: Errors | None) -> None:
    e.path = path
    if errors is None:
        raise e
    errors.append((path, e))


def _string(
    s: str, path: Path, roots: frozenset[str], refs: Refs, errors: Errors | None
) -> tuple[Fn | None, Any]:
    if "${" not in s:
        return None, s
    try:
        parts = _split(s)
    except ExpressionError as e:
        _report(e, path, errors)
        return None, s
    items: list[str | Fn] = []
    for p in parts:
        try:
            items.append(p if isinstance(p, str) else _expr(p[0], p[1], roots, refs))
        except ExpressionError as e:
            _report(e, path, errors)
            items.append("")
    if len(items) == 1 and not isinstance(items[0], str):
        return items[0], _NC  # whole value: keeps the expression's type
    if all(isinstance(x, str) for x in items):
        return None, "".join(x for x in items if isinstance(x, str))
    fns = tuple(items)

    def interpolate(sc: Scope) -> str:
        try:
            return bounded_text("".join([x if isinstance(x, str) else text(x(sc)) for x in fns]))
        except ValueTooLarge as e:
            raise ExpressionEvalError(str(e), s) from e

    return interpolate, _NC


def _value(
    v: Any, path: Path, roots: frozenset[str], refs: Refs, errors: Errors | None
) -> tuple[Fn | None, Any]:
    """Compile any value to (closure, _) or (None, constant value)."""
    if isinstance(v, str):
        return _string(v, path, roots, refs, errors)
    if isinstance(v, Mapping):
        entries = [
            (
                k,
                x,
                *_value(
                    x, (*path, k if isinstance(k, (str, int)) else str(k)), roots, refs, errors
                ),
            )
            for k, x in v.items()
        ]
        if all(f is None for _, _, f, _ in entries):
            same = all(c is x for _, x, _, c in entries)
            return None, v if same else {k: c for k, _, _, c in entries}
        pairs = tuple((k, f or _constfn(c)) for k, _, f, c in entries)
        return (lambda s: {k: f(s) for k, f in pairs}), _NC
    if isinstance(v, (list, tuple)):
        compiled = [_value(x, (*path, i), roots, refs, errors) for i, x in enumerate(v)]
        if all(f is None for f, _ in compiled):
            same = all(c is x for (_, c), x in zip(compiled, v, strict=True))
            consts = [c for _, c in compiled]
            return None, v if same else consts if isinstance(v, list) else tuple(consts)
        fns = tuple(f or _constfn(c) for f, c in compiled)
        if isinstance(v, tuple):
            return (lambda s: tuple([f(s) for f in fns])), _NC
        return (lambda s: [f(s) for f in fns]), _NC
    return None, v


class Template:
    """A compiled value; `render(scope)` evaluates it against a scope dict: through its
    fast form (one generated function, exprcode.py) when it has one, else - and whenever
    the fast form raises - through its closures, which raise what a failure means."""

    __slots__ = ("_fast", "_fn", "is_constant", "references", "source")
    references: frozenset[tuple[str, ...]]  # static paths read, e.g. ("payload", "a", "0")
    is_constant: bool  # no ${...} anywhere: render() ignores the scope
    source: Any

    def __init__(
        self, source: Any, fn: Fn | None, const: Any, refs: Refs, fast: Fn | None = None
    ) -> None:
        self.source, self.is_constant, self.references = source, fn is None, frozenset(refs)
        self._fn: Fn = _constfn(const) if fn is None else fn
        self._fast = fast if fn is not None else None

    def render(self, scope: Scope) -> Any:
        fast = self._fast
        if fast is not None:
            try:
                return fast(scope)
            except Exception:
                pass
        return self._fn(scope)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def compile_value(value: Any, *, roots: frozenset[str] = ROOTS) -> Template:
    """Compile any YAML value (dict values and list items recursively, not dict keys).
    Raises the first ExpressionError, with `.path` set to the sub-path in `value`."""
    refs: Refs = set()
    fn, const = _value(value, (), roots, refs, None)
    return Template(value, fn, const, refs, _fast(value, roots, fn))


def compile_expression(src: str, *, roots: frozenset[str] = ROOTS) -> Template:
    """Compile a bare expression (`a == 1`) or exactly one `${a == 1}`; the result
    renders the expression's typed value. Non-string input is compiled as a value."""
    if not isinstance(src, str):
        return compile_value(src, roots=roots)
    refs: Refs = set()
    text, base = src.strip(), len(src) - len(src.lstrip())
    if text.startswith("${"):
        try:
            parts = _split(text)
        except ExpressionError as e:
            e.column += base
            raise
        if len(parts) == 1 and isinstance(parts[0], tuple):
            fn = _expr(parts[0][0], base + parts[0][1], roots, refs)
            return Template(src, fn, None, refs, _fast(parts[0][0], roots, fn, bare=True))
    if (j := text.find("${")) >= 0:
        raise ExpressionError("expected a bare expression or exactly one ${...}", text, base + j)
    fn = _expr(text, base, roots, refs)
    return Template(src, fn, None, refs, _fast(text, roots, fn, bare=True))


FAST_TEMPLATES = True
"""Templates get a fast form (exprcode.py); tests turn it off to compare both forms."""


def _fast(source: Any, roots: frozenset[str], fn: Fn | None, *, bare: bool = False) -> Fn | None:
    """The fast form of a template that compiled (``fn``: its closures), or None."""
    if fn is None or not FAST_TEMPLATES:
        return None
    try:
        return fast_function(
            source, roots, _split, lambda src: _expr(src, 0, roots, set()), bare=bare
        )
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # the closures serve
        return None


def iter_expression_errors(
    value: Any, *, roots: frozenset[str] = ROOTS
) -> list[tuple[tuple[str | int, ...], ExpressionError]]:
    """Compile `value` and return every (sub-path, error) instead of raising."""
    errors: Errors = []
    _value(value, (), roots, set(), errors)
    return errors
