"""YAML -> validated ``Integration``, in two passes, every problem with file:line:col.

Pass 1 validates the document against ``IntegrationDoc`` (steps and triggers kept raw).
Pass 2 validates each trigger and step against the model registered for its ``type``,
compiles every ``${…}`` expression, and checks references: step ids are unique in a
flow, ``steps.<id>`` names an earlier step, ``config.<name>`` a declared variable, and a
secret variable is used only in fields that accept secrets (never in data that would
travel on a topic). All problems are collected; ``ValidationFailed`` carries them.

Named ``connections:`` are validated in pass 2 too (against the model registered for
their ``type``; their expressions may read only ``config`` and ``env``). Step models are
validated with a context, ``{"directory": <the topology file's folder>, "connections":
{name: validated connection}}``, so a step can resolve ``connection: <name>`` and paths
relative to its topology (see ``streamflow.connectors.connections``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from streamflow.errors import Issue, ValidationFailed
from streamflow.topology import expressions
from streamflow.topology.models import (
    ConnectionConfig,
    Expression,
    Flow,
    FlowDoc,
    Integration,
    IntegrationDoc,
    NestedSteps,
    ReadsOwnResult,
    Route,
    Secret,
    StepConfig,
    StepNode,
    TriggerConfig,
    marked,
)
from streamflow.topology.registry import CONNECTIONS, STEPS, TRIGGERS, Kind
from streamflow.topology.source import PathT, Positions, load_yaml

_NOT_TEMPLATED = frozenset({"id", "type", "description", "compensate", "fallback", "breaker"})


def load_integration(path: str | Path) -> Integration:
    """Load and validate one topology file; raise ValidationFailed with every problem.

    Only the modules of the step, trigger and connection types the file uses are imported
    (``registry.py``).
    """
    data, positions = load_yaml(path)
    return _Validator(positions).integration(data)


def pydantic_issues(
    exc: ValidationError, positions: Positions, base: PathT, model: type[BaseModel] | None = None
) -> list[Issue]:
    out = []
    for err in exc.errors():
        loc: PathT = tuple(x for x in err["loc"] if isinstance(x, str | int))
        kind = err["type"]
        if kind == "missing":
            msg = f"missing required key '{loc[-1]}'" if loc else "missing value"
        elif kind == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'" + _suggest(str(loc[-1]), model, loc[:-1])
        elif kind in ("dict_type", "model_type") and not loc:
            msg = "expected a mapping"
        else:  # pydantic's "Value error, " / "Assertion failed, " say nothing to a user
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        out.append(positions.issue((*base, *loc), msg))
    return out


def _suggest(key: str, model: type[BaseModel] | None, loc: PathT) -> str:
    if model is None or loc:
        return ""
    names = [f.alias or n for n, f in model.model_fields.items()]
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(sorted(names))}"


class _Validator:
    def __init__(self, positions: Positions) -> None:
        self.pos = positions
        self.issues: list[Issue] = []
        self.config: dict[str, bool] = {}  # declared variable -> secret
        self.step_refs: set[str] = set()  # steps.<id> read by the current flow
        file = Path(positions.file)
        directory = file.resolve().parent if file.is_file() else Path.cwd()
        self.context: dict[str, Any] = {"directory": directory, "connections": {}}

    def fail(self, path: PathT, message: str) -> None:
        self.issues.append(self.pos.issue(path, message))

    def integration(self, data: Any) -> Integration:
        if not isinstance(data, dict):
            raise ValidationFailed([self.pos.issue((), "a topology is a YAML mapping")])
        try:
            doc = IntegrationDoc.model_validate(data)
        except ValidationError as exc:
            raise ValidationFailed(pydantic_issues(exc, self.pos, (), IntegrationDoc)) from None
        self.config = {name: var.secret for name, var in doc.config.items()}
        self.context["connections"] = self.connections(doc)
        flows: dict[str, Flow] = {}
        for i, fdoc in enumerate(doc.flows):
            if fdoc.name in flows:
                self.fail(("flows", i, "name"), f"duplicate flow name '{fdoc.name}'")
            flow = self.flow(fdoc, ("flows", i))
            if flow is not None:
                flows[fdoc.name] = flow
        if self.issues:
            raise ValidationFailed(self.issues)
        return Integration(doc, flows, self.pos.file)

    def connections(self, doc: IntegrationDoc) -> dict[str, ConnectionConfig]:
        out: dict[str, ConnectionConfig] = {}
        for name, raw in doc.connections.items():
            path: PathT = ("connections", name)
            cfg = self.typed(raw, path, CONNECTIONS, "connection")
            if isinstance(cfg, ConnectionConfig):
                out[name] = cfg
                self.expressions(
                    raw, path, marked(type(cfg), Secret), set(), roots=frozenset({"config", "env"})
                )
        return out

    def flow(self, doc: FlowDoc, path: PathT) -> Flow | None:
        trigger = self.typed(doc.trigger, (*path, "trigger"), TRIGGERS, "trigger")
        if isinstance(trigger, TriggerConfig):
            self.expressions(
                doc.trigger,
                (*path, "trigger"),
                marked(type(trigger), Secret),
                set(),
                roots=frozenset({"config", "env"}) | getattr(trigger, "expression_roots", set()),
            )
        if doc.key is not None:
            self.expression_field(doc.key, (*path, "key"), set(), bare=False)
        nodes: dict[str, StepNode] = {}
        self.step_refs = set()
        first = self.steps(doc.steps, (*path, "steps"), nodes, set(), None)
        self.fallbacks(nodes)
        if not isinstance(trigger, TriggerConfig) or first is None:
            return None
        return Flow(doc, trigger, first, nodes, frozenset(self.step_refs))

    def typed(self, raw: Any, path: PathT, registry: Kind[Any], what: str) -> Any:
        if not isinstance(raw, dict):
            self.fail(path, f"a {what} is a mapping with a 'type'")
            return None
        kind = raw.get("type")
        if kind is None:
            self.fail(path, f"missing required key 'type' (one of: {', '.join(sorted(registry))})")
            return None
        entry = registry.get(kind)
        if entry is None:
            close = difflib.get_close_matches(str(kind), list(registry), n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"one of: {', '.join(sorted(registry))}"
            )
            self.fail((*path, "type"), f"unknown {what} type '{kind}' ({hint})")
            return None
        model: type[BaseModel] = entry.config
        try:
            return model.model_validate(raw, context=self.context)
        except ValidationError as exc:
            self.issues.extend(pydantic_issues(exc, self.pos, path, model))
            return None

    def steps(
        self,
        raws: Sequence[Any],
        path: PathT,
        nodes: dict[str, StepNode],
        seen: set[str],
        after: str | None,
    ) -> str | None:
        """Validate a step list; link each to the next (the last to ``after``)."""
        ids: list[str] = []
        for i, raw in enumerate(raws):
            spath = (*path, i)
            cfg = self.typed(raw, spath, STEPS, "step")
            if not isinstance(cfg, StepConfig):
                if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                    seen.add(raw["id"])  # don't report its references as unknown too
                continue
            if cfg.id in nodes:
                self.fail((*spath, "id"), f"duplicate step id '{cfg.id}'")
                continue
            model = type(cfg)
            self.expressions(
                raw,
                spath,
                marked(model, Secret),
                seen,
                nested=marked(model, NestedSteps),
                bare=marked(model, Expression),
                roots=expressions.ROOTS | getattr(cfg, "expression_roots", frozenset()),
                own=(cfg.id, marked(model, ReadsOwnResult)),
            )
            node = StepNode(cfg, None, (), spath)
            nodes[cfg.id] = node
            seen.add(cfg.id)
            ids.append(cfg.id)
        # ids may be empty when every step of the list is invalid
        for a, b in zip(ids, [*ids[1:], after][: len(ids)], strict=True):
            nodes[a].next = b
        for sid in ids:
            self.nested(nodes[sid], raws, nodes, seen)
            self.compensation(nodes[sid], raws[int(nodes[sid].path[-1])], seen)
        return ids[0] if ids else after

    def compensation(self, node: StepNode, raw: dict[str, Any], seen: set[str]) -> None:
        """A `compensate:` is an inline step (its id defaults to `<step>-compensate`)."""
        comp = raw.get("compensate")
        if comp is None:
            return
        path = (*node.path, "compensate")
        if isinstance(comp, dict) and "id" not in comp:
            comp = {"id": f"{node.config.id}-compensate", **comp}
        cfg = self.typed(comp, path, STEPS, "step")
        if isinstance(cfg, StepConfig):
            if cfg.compensate is not None or marked(type(cfg), NestedSteps):
                self.fail(path, "a compensation is a single step (no compensate or nested steps)")
                return
            self.expressions(
                comp,
                path,
                marked(type(cfg), Secret),
                seen | {node.config.id},
                bare=marked(type(cfg), Expression),
            )
            node.compensation = cfg

    def fallbacks(self, nodes: dict[str, StepNode]) -> None:
        for sid, node in nodes.items():
            if node.config.breaker is not None and node.config.pure:
                self.fail((*node.path, "breaker"), "a pure step has no target to break")
            target = node.config.fallback
            if target is not None and (target not in nodes or target == sid):
                self.fail(
                    (*node.path, "fallback"),
                    f"fallback '{target}' is not another step of this flow",
                )

    def nested(
        self, node: StepNode, raws: Sequence[Any], nodes: dict[str, StepNode], seen: set[str]
    ) -> None:
        """Nested step lists (branch routes, default) continue with the parent's next step."""
        raw = raws[int(node.path[-1])]
        routes: list[Route] = []
        nested = marked(type(node.config), NestedSteps)
        for name in sorted(nested, key=lambda n: (n != "routes", n)):
            value = raw.get(name)
            if name == "routes":
                for j, route in enumerate(value or []):
                    rpath = (*node.path, name, j)
                    before = set(nodes)
                    self.steps(
                        route.get("steps") or [], (*rpath, "steps"), nodes, set(seen), node.next
                    )
                    routes.append(Route(str(route.get("when", "")), _new_ids(nodes, before)))
            elif isinstance(value, dict):  # parallel branches: each ends at the step's join
                join = self.join(node, nodes)
                for bname, bsteps in value.items():
                    before = set(nodes)
                    bpath = (*node.path, name, str(bname))
                    self.steps(bsteps or [], bpath, nodes, set(seen), join)
                    routes.append(Route(str(bname), _new_ids(nodes, before)))
            elif value:
                before = set(nodes)
                self.steps(value, (*node.path, name), nodes, set(seen), node.next)
                routes.append(Route("", _new_ids(nodes, before)))
        node.routes = tuple(routes)

    def join(self, node: StepNode, nodes: dict[str, StepNode]) -> str | None:
        """The node a step with named branches joins them in (``parallel``), after it."""
        make = getattr(node.config, "join_step", None)
        if make is None:
            return node.next
        cfg = make()
        if cfg.id in nodes:
            self.fail((*node.path, "id"), f"step id '{cfg.id}' is taken by the join of this step")
            return node.next
        nodes[cfg.id] = StepNode(cfg, node.next, (), node.path)
        return str(cfg.id)

    def expressions(
        self,
        raw: dict[str, Any],
        path: PathT,
        secret_fields: frozenset[str],
        seen: set[str],
        *,
        nested: frozenset[str] = frozenset(),
        bare: frozenset[str] = frozenset(),
        roots: frozenset[str] = expressions.ROOTS,
        own: tuple[str, frozenset[str]] = ("", frozenset()),
    ) -> None:
        for key, value in raw.items():
            if key in _NOT_TEMPLATED:
                continue
            # a field like `paginate` may read the step's own result (the page just read)
            fseen = seen | {own[0]} if key in own[1] else seen
            fpath = (*path, key)
            if key in nested:
                if key == "routes":
                    for j, route in enumerate(value or []):
                        if isinstance(route, dict) and "when" in route:
                            self.expression_field(
                                route["when"], (*fpath, j, "when"), seen, bare=True
                            )
                continue
            if key in bare:
                self.expression_field(value, fpath, seen, bare=True, secret_ok=key in secret_fields)
                continue
            for sub, err in expressions.iter_expression_errors(value, roots=roots):
                self.fail((*fpath, *sub), err.message)
            try:
                template = expressions.compile_value(value, roots=roots)
            except expressions.ExpressionError:
                continue
            self.references(template.references, fpath, fseen, key in secret_fields)

    def expression_field(
        self, value: Any, path: PathT, seen: set[str], *, bare: bool, secret_ok: bool = False
    ) -> None:
        try:
            if bare and isinstance(value, str):
                template = expressions.compile_expression(value)
            else:
                template = expressions.compile_value(value)
        except expressions.ExpressionError as exc:
            self.fail(path, exc.message)
            return
        self.references(template.references, path, seen, secret_ok)

    def references(
        self, refs: frozenset[tuple[str, ...]], path: PathT, seen: set[str], secret_ok: bool
    ) -> None:
        for ref in sorted(refs):
            if ref == ("config",) and not secret_ok and any(self.config.values()):
                self.fail(
                    path,
                    "this expression may read any config variable, secrets included "
                    "(they would travel in clear); name the variable: config.<name>",
                )
            if ref[0] == "config" and len(ref) > 1:
                name = ref[1]
                if name not in self.config:
                    close = difflib.get_close_matches(name, list(self.config), n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    self.fail(path, f"unknown config variable '{name}'{hint}")
                elif self.config[name] and not secret_ok:
                    self.fail(
                        path,
                        f"secret config variable '{name}' may not be used here "
                        "(it would travel in clear); use it in a field that accepts secrets",
                    )
            elif ref[0] == "steps" and len(ref) > 1:
                self.step_refs.add(ref[1])
            if ref[0] == "steps" and len(ref) > 1 and ref[1] not in seen:
                self.fail(
                    path,
                    f"unknown step '{ref[1]}' in steps.{ref[1]}: "
                    "only earlier steps of this flow can be referenced",
                )


def _new_ids(nodes: dict[str, StepNode], before: set[str]) -> tuple[str, ...]:
    return tuple(sid for sid in nodes if sid not in before)
