"""Finding and validating flow-test files, errors with file:line:col."""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from streamflow.errors import ConfigError, Issue, ValidationFailed
from streamflow.runtime.runner import pick_flow
from streamflow.testing.cases.models import (
    _M,
    _MOCK_PLACEHOLDER,
    JSON_TYPES,
    MATCHERS,
    TEMPLATE_ROOTS,
    TEST_FILE_NAMES,
    TEST_FILE_SUFFIXES,
    CaseDoc,
    Expect,
    TestCase,
    TestFile,
    TestFileDoc,
)
from streamflow.testing.mocks import MockServices
from streamflow.topology.expressions import (
    ExpressionError,
    compile_value,
)
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.source import PathT, Positions, format_path, load_yaml
from streamflow.topology.values import resolve_config
from streamflow.util.payloads import parse_payloads

# --------------------------------------------------------------------------- discovery


def is_test_file(path: Path) -> bool:
    return path.name in TEST_FILE_NAMES or path.name.endswith(TEST_FILE_SUFFIXES)


def find_test_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files named, plus every ``tests.yaml`` / ``*.tests.yaml`` under named directories."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*.y*ml")) if f.is_file() and is_test_file(f))
        else:
            out.append(p)
    return list(dict.fromkeys(out))


# --------------------------------------------------------------------------- loading


def read_events(path: Path) -> list[Any]:
    """A JSON document (an array is many events) or NDJSON (one event per line)."""
    try:
        text = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read events: {exc.strerror}") from None
    return parse_payloads(text, str(path))


def load_test_files(paths: Sequence[str | Path]) -> list[TestFile]:
    """Find and validate test files; raise ValidationFailed listing every problem."""
    files = find_test_files(paths)
    if not files:
        raise ConfigError(
            f"no test files (tests.yaml, *.tests.yaml) found in {' '.join(map(str, paths))}"
        )
    issues: list[Issue] = []
    loaded: list[TestFile] = []
    for f in files:
        try:
            loaded.append(load_test_file(f))
        except ValidationFailed as exc:
            issues.extend(exc.issues)
    if issues:
        raise ValidationFailed(issues)
    return loaded


def load_test_file(path: str | Path) -> TestFile:
    """Load one test file with its integration; raise ValidationFailed with file:line:col."""
    data, positions = load_yaml(path)
    return _Loader(Path(path), positions).load(data)


def _model_at(model: type[BaseModel], loc: PathT) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` below ``model``, if any."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        f = fields.get(part)
        current = _model_in(f.annotation) if f is not None else None
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _pydantic_issues(
    exc: ValidationError, data: Any, positions: Positions, base: PathT, model: type[BaseModel]
) -> list[Issue]:
    """Issues at the YAML that caused them. Union branch names pydantic puts in an error's
    location are dropped, and of the errors union branches give for one value only the
    deepest is kept ("unknown key 'x'" rather than "not an integer" as well)."""
    found: list[tuple[PathT, str]] = []
    for err in exc.errors():
        loc: list[str | int] = []
        node: Any = data
        raw = [x for x in err["loc"] if isinstance(x, str | int)]
        for k, part in enumerate(raw):
            last = k == len(raw) - 1
            inside = (isinstance(node, dict) and part in node) or (
                isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            )
            if inside:
                node = node[part]
            elif not last or not isinstance(node, dict):
                continue  # a union branch name, not a key of the document
            loc.append(part)
        kind = err["type"]
        if kind == "missing":
            msg = f"missing required key '{loc[-1]}'" if loc else "missing value"
        elif kind == "extra_forbidden":
            names = []
            where = _model_at(model, tuple(loc[:-1]))
            if where is not None:
                names = sorted(f.alias or n for n, f in where.model_fields.items())
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if not close and names:
                hint = f"; allowed: {', '.join(names)}"
            msg = f"unknown key '{loc[-1]}'{hint}"
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        found.append((tuple(loc), msg))
    keep: list[tuple[PathT, str]] = []
    for loc_, msg in found:
        deeper = any(len(o) > len(loc_) and o[: len(loc_)] == loc_ for o, _ in found)
        if not deeper and all(o != loc_ for o, _ in keep):
            keep.append((loc_, msg))
    return [positions.issue((*base, *loc_), msg) for loc_, msg in keep]


def _sub_positions(positions: Positions, prefix: PathT) -> Positions:
    n = len(prefix)
    marks = {p[n:]: v for p, v in positions.marks.items() if p[:n] == prefix}
    return Positions(positions.file, marks)


def _join(prefix: PathT, sub: str) -> str:
    head = format_path(prefix)
    if not sub:
        return head
    return f"{head}{sub}" if sub.startswith("[") or not head else f"{head}.{sub}"


class _Loader:
    def __init__(self, path: Path, positions: Positions) -> None:
        self.path = path
        self.dir = path.parent
        self.pos = positions
        self.issues: list[Issue] = []

    def fail(self, path: PathT, message: str) -> None:
        self.issues.append(self.pos.issue(path, message))

    def load(self, data: Any) -> TestFile:
        if not isinstance(data, dict):
            raise ValidationFailed(
                [self.pos.issue((), "a test file is a YAML mapping with 'cases'")]
            )
        doc = self.validate(TestFileDoc, data, ())
        if doc is None:
            raise ValidationFailed(self.issues)
        target = self.dir / doc.integration
        try:
            integration = load_integration(target)
        except ValidationFailed as exc:
            if not target.is_file():
                self.fail(("integration",), f"integration file {target} does not exist")
                raise ValidationFailed(self.issues) from None
            raise ValidationFailed([*self.issues, *exc.issues]) from None
        tfile = TestFile(self.path, str(self.path), integration)
        defaults = self.mocks(doc.mocks, ("mocks",))
        names: dict[str, int] = {}
        for i, raw in enumerate(doc.cases):
            cpath: PathT = ("cases", i)
            cdoc = self.validate(CaseDoc, raw, cpath)
            if cdoc is None:
                continue
            if cdoc.name in names:
                self.fail((*cpath, "name"), f"duplicate case name '{cdoc.name}'")
            names[cdoc.name] = i
            case = self.case(tfile, cdoc, raw, cpath, doc, defaults)
            if case is not None:
                tfile.cases.append(case)
        if self.issues:
            raise ValidationFailed(self.issues)
        return tfile

    def validate(self, model: type[_M], data: Any, path: PathT) -> _M | None:
        if not isinstance(data, dict):
            self.fail(path, "expected a mapping")
            return None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            self.issues.extend(_pydantic_issues(exc, data, self.pos, path, model))
            return None

    def mocks(self, value: str | dict[str, Any] | None, path: PathT) -> tuple[dict[str, Any], str]:
        """Services of a mocks value (file name or inline document), validated."""
        if value is None:
            return {}, ""
        if isinstance(value, str):
            target = self.dir / value
            if not target.is_file():
                self.fail(path, f"mocks file {target} does not exist")
                return {}, ""
            try:
                data, positions = load_yaml(target)
                MockServices._load(data, positions)  # validation only; nothing is started
            except ValidationFailed as exc:
                self.issues.extend(exc.issues)
                return {}, ""
            return dict(data["services"]), str(target)
        try:
            MockServices._load(value, _sub_positions(self.pos, path))
        except ValidationFailed as exc:
            self.issues.extend(
                Issue(i.file, i.line, i.column, _join(path, i.path), i.message) for i in exc.issues
            )
            return {}, ""
        return dict(value["services"]), str(self.path)

    def case(
        self,
        tfile: TestFile,
        doc: CaseDoc,
        raw: dict[str, Any],
        path: PathT,
        fdoc: TestFileDoc,
        defaults: tuple[dict[str, Any], str],
    ) -> TestCase | None:
        integration = tfile.integration
        before = len(self.issues)
        # flow
        try:
            flow = pick_flow(integration, doc.flow)
        except ConfigError as exc:
            self.fail(
                (*path, "flow") if doc.flow is not None else path,
                str(exc).replace("choose one with --flow", "choose one with flow:"),
            )
            flow = ""
        # events
        events: list[Any] = []
        if (doc.events is None) == (doc.events_file is None):
            self.fail(path, "give the input events with exactly one of events and events_file")
        elif doc.events is not None:
            events = doc.events
        elif doc.events_file is not None:
            target = self.dir / doc.events_file
            try:
                events = read_events(target)
            except ConfigError as exc:
                self.fail((*path, "events_file"), str(exc))
            else:
                if not events:
                    self.fail((*path, "events_file"), f"{target} holds no events")
        # mocks: the case's services replace the file's services of the same name
        services, source = defaults
        if doc.mocks is not None:
            own, own_source = self.mocks(doc.mocks, (*path, "mocks"))
            services = {**services, **own}
            source = own_source or source
        mocks = {"services": services} if services else None
        if mocks is not None and len(self.issues) == before:
            try:
                MockServices.from_dict(mocks, source)
            except ValidationFailed as exc:
                where = (*path, "mocks") if doc.mocks is not None else ("mocks",)
                for i in exc.issues:
                    self.fail(where, f"{i.path}: {i.message}" if i.path else i.message)
        # config: file values, then the case's; mock URLs fill in what neither sets
        config = {**fdoc.config, **doc.config}
        mock_vars = {
            s["config"]: _MOCK_PLACEHOLDER
            for s in services.values()
            if isinstance(s, dict) and isinstance(s.get("config"), str)
        }
        try:
            resolve_config(integration.config, {**mock_vars, **config})
        except ConfigError as exc:
            where = (*path, "config") if doc.config else ("config",) if fdoc.config else path
            self.fail(where, str(exc))
        # expectations
        expect_raw = raw.get("expect", {})
        epath: PathT = (*path, "expect")
        self.matchers(expect_raw, epath)
        expect = self.expect(doc.expect, events, epath, services, integration, flow)
        try:
            template = compile_value(expect_raw, roots=TEMPLATE_ROOTS)
        except ExpressionError as e:
            self.fail((*epath, *e.path), f"{e.message} (in ${{{e.expression}}})")
            return None
        self.references(expect_raw, epath, set(integration.config), set(services))
        if len(self.issues) > before or expect is None:
            return None
        return TestCase(tfile, doc, flow, events, config, mocks, source, template)

    def references(self, value: Any, path: PathT, config: set[str], services: set[str]) -> None:
        """``${config.x}`` names a config variable, ``${mocks.x}`` a mock service."""
        if isinstance(value, dict):
            for k, v in value.items():
                self.references(v, (*path, str(k)), config, services)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.references(v, (*path, i), config, services)
        elif isinstance(value, str) and "${" in value:
            with contextlib.suppress(ExpressionError):  # reported by the whole compile
                for ref in compile_value(value, roots=TEMPLATE_ROOTS).references:
                    known = config if ref[0] == "config" else services
                    what = "config variable" if ref[0] == "config" else "mock service"
                    if len(ref) > 1 and ref[1] not in known:
                        names = ", ".join(sorted(known)) or "none"
                        self.fail(path, f"no {what} '{ref[1]}' (known: {names})")

    def expect(
        self,
        e: Expect,
        events: list[Any],
        path: PathT,
        services: dict[str, Any],
        integration: Integration,
        flow: str,
    ) -> Expect | None:
        n = len(events)
        if isinstance(e.status, list) and events and len(e.status) != n:
            self.fail((*path, "status"), f"{len(e.status)} statuses for {n} event(s)")
        if e.executions is not None and events and len(e.executions) != n:
            self.fail((*path, "executions"), f"{len(e.executions)} executions for {n} event(s)")
        for j, c in enumerate(e.calls):
            if c.service is not None and c.service not in services:
                known = ", ".join(services) or "none: give the case mocks"
                self.fail(
                    (*path, "calls", j, "service"),
                    f"no mock service '{c.service}' (known: {known})",
                )
            if c.path is not None and not c.path.startswith("/"):
                self.fail((*path, "calls", j, "path"), "a path starts with '/'")
        steps = integration.flows[flow].nodes if flow in integration.flows else {}
        known_steps = set(steps) | {
            node.compensation.id for node in steps.values() if node.compensation is not None
        }
        if not steps:
            return e
        letters = e.dead_letters if isinstance(e.dead_letters, list) else []
        for j, d in enumerate(letters):
            if d.step is not None and d.step not in known_steps:
                self.fail((*path, "dead_letters", j, "step"), f"flow {flow} has no step '{d.step}'")
        for j, x in enumerate(e.executions or []):
            for k, sid in enumerate(x.steps or []):
                if sid not in known_steps:
                    self.fail(
                        (*path, "executions", j, "steps", k), f"flow {flow} has no step '{sid}'"
                    )
        return e

    def matchers(self, value: Any, path: PathT) -> None:
        if isinstance(value, dict):
            special = [k for k in value if isinstance(k, str) and k.startswith("$")]
            if special:
                key = special[0]
                if len(value) != 1:
                    self.fail((*path, key), f"a matcher is a mapping with one key ({key})")
                elif key not in MATCHERS:
                    self.fail(
                        (*path, key), f"unknown matcher '{key}' (one of: {', '.join(MATCHERS)})"
                    )
                elif key == "$regex":
                    if not isinstance(value[key], str):
                        self.fail((*path, key), "$regex takes a regular expression (a string)")
                    elif "${" not in value[key]:
                        try:
                            re.compile(value[key])
                        except re.error as exc:
                            self.fail((*path, key), f"bad regular expression: {exc}")
                elif key == "$type" and value[key] not in JSON_TYPES:
                    self.fail((*path, key), f"$type is one of: {', '.join(JSON_TYPES)}")
                return
            for k, v in value.items():
                self.matchers(v, (*path, str(k)))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.matchers(v, (*path, i))
