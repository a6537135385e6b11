"""Flow tests: YAML test cases next to an integration, run on the embedded transport.

A test file (``tests.yaml``, or ``NAME.tests.yaml``) sits beside ``integration.yaml``::

    integration: integration.yaml        # default: integration.yaml in the same folder
    mocks: mocks.yaml                    # default mock services of every case (a file or inline)
    config: {big_order: 500}             # config values of every case
    cases:
      - name: big orders need approval
        flow: order-created              # only this flow runs (optional with one flow)
        config: {big_order: 100}         # merged over the file's config
        events: [{id: o-1, status: paid, items: [a], items_total: [600]}]   # or events_file:
        mocks: {services: {...}}         # replaces the named services of the defaults
        timeout: 30s                     # give up waiting for the executions after this
        expect:
          status: completed              # every execution (or a list: one per event)
          output: {state: pending-approval}   # subset of every execution's final payload
          error: "503"                   # text in every execution's error
          executions:                    # per event, in order: status, output, error, steps
            - {status: completed, output: {approval: APR-o-1}}
          calls:                         # what the mock services received
            - {service: approvals, method: POST, path: /approvals, json: {order: o-1}, count: 1}
          calls_ordered: true            # the calls above happened in this order
          dead_letters: 0                # or a list of {step, error, error_type, payload}
          max_duration: 5s               # bound on the run (events fed -> every execution ended)

Expected values are subsets: a mapping matches when each of its keys matches, a list
when it has as many items and each matches, anything else when equal. A one-key
mapping ``{$regex: ...}``, ``{$contains: ...}`` or ``{$type: string}`` matches by
pattern, containment or JSON type. Strings may use ``${config.<name>}`` (the case's
config values, mock base URLs included) and ``${mocks.<service>}`` (a mock's base URL).

Mock base URLs are set as config values automatically (the mock's ``config:``); a value
in ``config`` wins over them. Each case runs on a fresh embedded broker in a temporary
directory with fresh mock servers, so cases never see each other's data.

``load_test_files(paths)`` validates (raising ``ValidationFailed`` with file:line:col);
``run_test_files(files, reporter)`` runs them; ``write_junit_xml`` writes a report.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import re
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamflow.envelope import decode
from streamflow.errors import ConfigError, Issue, PoisonMessageError, ValidationFailed
from streamflow.runtime.app import AppOptions, environment
from streamflow.runtime.dlq import DeadLetter
from streamflow.runtime.events import ExecutionEvent
from streamflow.runtime.payloads import parse_payloads
from streamflow.runtime.runner import Execution, RunResult, pick_flow, run_events
from streamflow.testing.mocks import MockServices, RecordedCall
from streamflow.topology.expressions import (
    ExpressionError,
    Template,
    compile_value,
)
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Duration, Integration
from streamflow.topology.plan import compile_plan
from streamflow.topology.source import PathT, Positions, format_path, load_yaml
from streamflow.topology.values import resolve_config
from streamflow.transport.local import LocalTransport

__all__ = [
    "CaseResult",
    "TestCase",
    "TestFile",
    "find_test_files",
    "load_test_file",
    "load_test_files",
    "run_case",
    "run_test_files",
    "write_junit_xml",
]

TEST_FILE_NAMES = ("tests.yaml", "tests.yml")
TEST_FILE_SUFFIXES = (".tests.yaml", ".tests.yml")
STATUSES = ("completed", "filtered", "failed", "compensated", "compensation_failed")
TEMPLATE_ROOTS: frozenset[str] = frozenset({"config", "mocks"})
MATCHERS = ("$regex", "$contains", "$type")
JSON_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_MOCK_PLACEHOLDER = "http://127.0.0.1:1"

Status = Literal["completed", "filtered", "failed", "compensated", "compensation_failed"]
Count = Annotated[int, Field(ge=0, strict=True)]
_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------- format


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CallExpect(_Model):
    """Calls a mock service received: every field given must match; count them."""

    service: str | None = Field(None, description="mock service name; default: any")
    method: str | None = Field(None, description="HTTP method; default: any")
    path: str | None = Field(None, description="exact path or with {param} segments")
    json_: Any = Field(None, alias="json", description="subset of the JSON body")
    body: Any = Field(None, description="the body text (or a matcher)")
    query: dict[str, Any] | None = Field(None, description="subset of the query parameters")
    headers: dict[str, Any] | None = Field(None, description="subset of the request headers")
    status: int | None = Field(None, description="the status the mock answered")
    count: Count | None = Field(None, description="exactly this many calls; default: at least 1")

    def label(self) -> str:
        parts = [self.service or "*", self.method or "*", self.path or "*"]
        return " ".join(parts)


class DeadLetterExpect(_Model):
    """One dead letter of the case's flow."""

    step: str | None = None
    error: str | None = Field(None, description="text in the error message")
    error_type: str | None = None
    payload: Any = Field(None, description="subset of the dead envelope's payload")


class ExecutionExpect(_Model):
    """What one event's execution did."""

    status: Status | None = None
    output: Any = Field(None, description="subset of the final payload")
    error: str | None = Field(None, description="text in the execution's error")
    steps: list[str] | None = Field(None, description="ids of the steps that finished, in order")


class Expect(_Model):
    status: Status | list[Status] | None = None
    output: Any = None
    error: str | None = None
    executions: list[ExecutionExpect] | None = None
    calls: list[CallExpect] = Field(default_factory=list)
    calls_ordered: bool = False
    dead_letters: Count | list[DeadLetterExpect] | None = None
    max_duration: Duration | None = None


class CaseDoc(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    flow: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    events: list[Any] | None = Field(None, min_length=1)
    events_file: str | None = None
    mocks: str | dict[str, Any] | None = None
    timeout: Duration = 30.0
    expect: Expect = Field(default_factory=Expect)


class TestFileDoc(_Model):
    integration: str = "integration.yaml"
    description: str = ""
    mocks: str | dict[str, Any] | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    cases: list[Any] = Field(min_length=1, description="test cases (each validated as CaseDoc)")


# --------------------------------------------------------------------------- loaded form


@dataclass
class TestCase:
    """One validated case, ready to run."""

    file: TestFile
    doc: CaseDoc
    flow: str
    events: list[Any]
    config: dict[str, Any]
    mocks: dict[str, Any] | None  # a mocks document (services of the file merged with the case's)
    mocks_source: str
    expect: Template  # the raw `expect` mapping, compiled; rendered per run, then validated

    __test__ = False  # not a pytest class

    @property
    def name(self) -> str:
        return self.doc.name

    @property
    def id(self) -> str:
        return f"{self.file.display}::{self.doc.name}"


@dataclass
class TestFile:
    path: Path
    display: str
    integration: Integration
    cases: list[TestCase] = field(default_factory=list)

    __test__ = False


@dataclass
class CaseResult:
    case: TestCase
    passed: bool
    seconds: float
    failures: list[list[str]] = field(default_factory=list)  # each: a title line, then details

    @property
    def message(self) -> str:
        return self.failures[0][0] if self.failures else ""

    def details(self) -> str:
        out: list[str] = []
        for block in self.failures:
            out.append(block[0])
            out.extend("  " + line for line in block[1:])
        return "\n".join(out)


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


# --------------------------------------------------------------------------- matching


def _is_matcher(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in MATCHERS


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, list):
        return "array"
    return type(v).__name__


def _show(v: Any, limit: int = 200) -> str:
    text = json.dumps(v, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _matcher_ok(m: dict[str, Any], actual: Any) -> bool:
    key, arg = next(iter(m.items()))
    if key == "$regex":
        return isinstance(actual, str) and re.search(str(arg), actual) is not None
    if key == "$type":
        kind = _type_of(actual)
        return kind == arg or (arg == "number" and kind == "integer")
    # $contains
    if isinstance(actual, str):
        return isinstance(arg, str) and arg in actual
    if isinstance(actual, list):
        return any(not compare(arg, item) for item in actual)
    if isinstance(actual, dict):
        return not compare(arg, actual) if isinstance(arg, dict) else arg in actual
    return False


def _scalar_equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return expected == actual
    return type(expected) is type(actual) and bool(expected == actual)


def compare(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Why ``actual`` does not match ``expected`` (a subset), one line per mismatch."""
    where = path or "value"
    if _is_matcher(expected):
        if _matcher_ok(expected, actual):
            return []
        key, arg = next(iter(expected.items()))
        return [f"{where}: expected {key[1:]} {_show(arg)}, got {_show(actual)}"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, got {_show(actual)}"]
        out: list[str] = []
        for k, v in expected.items():
            sub = f"{path}.{k}" if path else str(k)
            if k not in actual:
                out.append(f"{sub}: missing (expected {_show(v)})")
            else:
                out.extend(compare(v, actual[k], sub))
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {_show(actual)}"]
        if len(expected) != len(actual):
            return [
                f"{where}: expected {len(expected)} item(s), got {len(actual)}: {_show(actual)}"
            ]
        out = []
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out.extend(compare(e, a, f"{path}[{i}]"))
        return out
    if _scalar_equal(expected, actual):
        return []
    return [f"{where}: expected {_show(expected)}, got {_show(actual)}"]


def _project(expected: Any, actual: Any) -> Any:
    """``actual`` cut down to the shape of ``expected``, for a readable diff."""
    if _is_matcher(expected):
        return expected if _matcher_ok(expected, actual) else actual  # a match is no diff
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: _project(expected[k], actual[k]) for k in expected if k in actual}
    if isinstance(expected, list) and isinstance(actual, list):
        return [_project(e, a) for e, a in zip(expected, actual, strict=False)] + actual[
            len(expected) :
        ]
    return actual


def diff(expected: Any, actual: Any) -> list[str]:
    """A unified diff of pretty JSON: expected vs the matching part of actual."""
    a = json.dumps(expected, indent=2, default=str, ensure_ascii=False).splitlines()
    b = json.dumps(_project(expected, actual), indent=2, default=str, ensure_ascii=False)
    return list(difflib.unified_diff(a, b.splitlines(), "expected", "actual", lineterm="", n=2))


def _mismatch(title: str, expected: Any, actual: Any, path: str) -> list[str] | None:
    problems = compare(expected, actual, path)
    if not problems:
        return None
    block = [title, *problems]
    if isinstance(expected, dict | list) and isinstance(actual, dict | list):
        block.extend(diff(expected, actual))
    return block


# --------------------------------------------------------------------------- calls


def _path_matches(pattern: str, path: str) -> bool:
    want, got = pattern.split("/"), path.split("/")
    if len(want) != len(got):
        return False
    for w, g in zip(want, got, strict=True):
        if w.startswith("{") and w.endswith("}"):
            if not g:
                return False
        elif w != g:
            return False
    return True


def _headers_of(call: RecordedCall) -> dict[str, str]:
    return {k.lower(): v for k, v in call.headers.items()}


def _call_problems(e: CallExpect, call: RecordedCall, *, where_only: bool = False) -> list[str]:
    """Why ``call`` does not match ``e``; ``where_only`` checks service, method, path."""
    if e.service is not None and call.service != e.service:
        return [f"service: expected {e.service}, got {call.service}"]
    if e.method is not None and call.method != e.method.upper():
        return [f"method: expected {e.method.upper()}, got {call.method}"]
    if e.path is not None and not _path_matches(e.path, call.path):
        return [f"path: expected {e.path}, got {call.path}"]
    if where_only:
        return []
    out: list[str] = []
    if "json_" in e.model_fields_set:
        out.extend(compare(e.json_, call.json, "json"))
    if "body" in e.model_fields_set:
        out.extend(compare(e.body, call.body, "body"))
    if e.query is not None:
        out.extend(compare(e.query, call.query, "query"))
    if e.headers is not None:
        got = _headers_of(call)
        for k, v in e.headers.items():
            if k.lower() not in got:
                out.append(f"headers.{k}: missing")
            elif compare(v, got[k.lower()]):
                out.append(f"headers.{k}: differs (value not shown: headers may hold secrets)")
    if e.status is not None and call.status != e.status:
        out.append(f"status: expected {e.status}, got {call.status}")
    return out


def _describe_call(n: int, c: RecordedCall) -> str:
    body = (
        f" {_show(c.json, 160)}" if c.json is not None else (f" {c.body[:80]!r}" if c.body else "")
    )
    return f"#{n} {c.service} {c.method} {c.path} -> {c.status}{body}"


def _check_calls(expect: Expect, calls: list[RecordedCall]) -> list[list[str]]:
    failures: list[list[str]] = []
    for j, e in enumerate(expect.calls):
        matching = [c for c in calls if not _call_problems(e, c)]
        title = f"expect.calls[{j}] ({e.label()})"
        if e.count is not None and len(matching) == e.count:
            continue
        if e.count is None and matching:
            continue
        want = f"{e.count} call(s)" if e.count is not None else "at least 1 call"
        block = [f"{title}: expected {want}, got {len(matching)}"]
        if len(matching) < (e.count if e.count is not None else 1):
            near = [c for c in calls if not _call_problems(e, c, where_only=True)]
            for c in near[:3]:
                problems = _call_problems(e, c)
                block.append(f"closest: {_describe_call(calls.index(c) + 1, c)}")
                block.extend("  " + p for p in problems)
                if (
                    "json_" in e.model_fields_set
                    and isinstance(e.json_, dict | list)
                    and compare(e.json_, c.json)
                ):
                    block.extend("  " + line for line in diff(e.json_, c.json))
            if not near:
                block.append("calls received:" if calls else "no calls were received")
                block.extend("  " + _describe_call(i, c) for i, c in enumerate(calls, 1))
        else:
            block.append("matching calls:")
            block.extend("  " + _describe_call(calls.index(c) + 1, c) for c in matching)
        failures.append(block)
    if expect.calls_ordered and not failures:
        pos = -1
        for j, e in enumerate(expect.calls):
            if e.count == 0:
                continue
            nxt = next(
                (i for i, c in enumerate(calls) if i > pos and not _call_problems(e, c)), None
            )
            if nxt is None:
                block = [
                    f"expect.calls_ordered: expect.calls[{j}] ({e.label()}) "
                    "did not come after the calls listed before it",
                    "calls received, in order:",
                ]
                block.extend("  " + _describe_call(i, c) for i, c in enumerate(calls, 1))
                failures.append(block)
                break
            pos = nxt
    return failures


# --------------------------------------------------------------------------- dead letters


@dataclass
class _Letter:
    step: str
    error: str
    error_type: str
    payload: Any

    def describe(self) -> str:
        return f"step {self.step}: {self.error_type}: {self.error[:200]}"


def _letter(d: DeadLetter, encoding: str) -> _Letter:
    try:
        payload = decode(d.record.value, encoding).payload  # type: ignore[arg-type]
    except PoisonMessageError:
        payload = None
    return _Letter(d.step, d.header("error"), d.header("error-type"), payload)


def _letter_problems(e: DeadLetterExpect, d: _Letter) -> list[str]:
    out = []
    if e.step is not None and d.step != e.step:
        out.append(f"step: expected {e.step}, got {d.step}")
    if e.error is not None and e.error.lower() not in d.error.lower():
        out.append(f"error: expected text {e.error!r} in {d.error[:200]!r}")
    if e.error_type is not None and d.error_type != e.error_type:
        out.append(f"error_type: expected {e.error_type}, got {d.error_type}")
    if "payload" in e.model_fields_set:
        out.extend(compare(e.payload, d.payload, "payload"))
    return out


def _check_dead_letters(expect: Expect, letters: list[_Letter]) -> list[list[str]]:
    want = expect.dead_letters
    if want is None:
        return []
    listing = ["dead letters:", *("  " + d.describe() for d in letters)] if letters else []
    count = want if isinstance(want, int) else len(want)
    failures: list[list[str]] = []
    if len(letters) != count:
        failures.append([f"expect.dead_letters: expected {count}, got {len(letters)}", *listing])
    if isinstance(want, int) or not letters:
        return failures
    left = list(letters)
    for j, e in enumerate(want):
        hit = next((d for d in left if not _letter_problems(e, d)), None)
        if hit is not None:
            left.remove(hit)
            continue
        block = [f"expect.dead_letters[{j}]: no dead letter matches"]
        for d in letters[:3]:
            block.append(f"closest: {d.describe()}")
            block.extend("  " + p for p in _letter_problems(e, d))
        failures.append(block)
    return failures


# --------------------------------------------------------------------------- executions


def _finished_steps(ex: Execution) -> list[str]:
    return [ev.step for ev in ex.events if ev.event == "step"]


def _execution_label(i: int, n: int) -> str:
    return f"execution {i + 1} of {n}"


def _input_line(ex: Execution) -> str:
    return f"input: {_show(ex.input, 100)}"


def _check_executions(expect: Expect, result: RunResult) -> list[list[str]]:
    failures: list[list[str]] = []
    exs = result.executions
    n = len(exs)
    per: list[ExecutionExpect] = list(expect.executions or [])
    for i, ex in enumerate(exs):
        label = _execution_label(i, n)
        status = expect.status[i] if isinstance(expect.status, list) else expect.status
        own = per[i] if i < len(per) else ExecutionExpect()
        for name, want in (
            ("expect.status", status),
            (f"expect.executions[{i}].status", own.status),
        ):
            if want is not None and ex.status != want:
                block = [f"{name}: {label}: expected {want}, got {ex.status}", _input_line(ex)]
                if ex.error:
                    block.append(f"error: {ex.error}")
                block.append("trace: " + _trace(ex))
                failures.append(block)
        outputs: list[tuple[str, Any]] = []
        if "output" in expect.model_fields_set:
            outputs.append(("expect.output", expect.output))
        if "output" in own.model_fields_set:
            outputs.append((f"expect.executions[{i}].output", own.output))
        for name, want in outputs:
            found = _mismatch(
                f"{name}: {label}: the final payload differs", want, ex.output, "output"
            )
            if found:
                found.insert(1, _input_line(ex))
                failures.append(found)
        for name, text in (
            ("expect.error", expect.error),
            (f"expect.executions[{i}].error", own.error),
        ):
            if text is not None and text.lower() not in ex.error.lower():
                got = repr(ex.error) if ex.error else "no error"
                failures.append(
                    [
                        f"{name}: {label}: expected text {text!r} in the error, got {got}",
                        _input_line(ex),
                    ]
                )
        if own.steps is not None and _finished_steps(ex) != own.steps:
            failures.append(
                [
                    f"expect.executions[{i}].steps: {label}: the finished steps differ",
                    _input_line(ex),
                    *difflib.unified_diff(
                        own.steps, _finished_steps(ex), "expected", "actual", lineterm="", n=10
                    ),
                ]
            )
    return failures


def _trace(ex: Execution) -> str:
    parts = []
    for ev in ex.events:
        if ev.event == "step":
            parts.append(f"{ev.step} ok")
        elif ev.event in ("retry", "failed", "filtered"):
            parts.append(f"{ev.step} {ev.event}")
        elif ev.event != "started":
            parts.append(ev.event)
    return ", ".join(parts) or ("started" if ex.events else "no events")


# --------------------------------------------------------------------------- running


class _Capture(logging.Handler):
    """Keeps StreamFlow's log records of one case (shown only if the case fails)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def _captured_logs() -> Iterator[_Capture]:
    logger = logging.getLogger("streamflow")
    handler = _Capture()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


async def run_case(case: TestCase) -> CaseResult:
    """Run one case on a fresh embedded broker with fresh mock servers. Warnings the
    engine logs meanwhile (an expected dead letter, say) are kept with the result."""
    started = time.monotonic()
    with _captured_logs() as logs:
        try:
            failures = await _run_case(case)
        except Exception as exc:  # a case that cannot run fails; the next one still runs
            failures = [[f"the case could not run: {type(exc).__name__}: {exc}"]]
    if failures and logs.lines:
        failures.append(["captured log:", *logs.lines[-20:]])
    return CaseResult(case, not failures, time.monotonic() - started, failures)


async def _run_case(case: TestCase) -> list[list[str]]:
    integration = case.file.integration
    plan = compile_plan(integration)
    encoding = integration.flows[case.flow].doc.encoding
    with tempfile.TemporaryDirectory(prefix="sf-test-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            mocks: MockServices | None = None
            urls: dict[str, str] = {}
            mock_config: dict[str, str] = {}
            if case.mocks is not None:
                mocks = MockServices.from_dict(case.mocks, case.mocks_source)
                await stack.enter_async_context(mocks)
                urls = {name: mocks.base_url(name) for name in mocks.services}
                mock_config = mocks.config_values()
            config = resolve_config(integration.config, {**mock_config, **case.config})
            scope = {"config": config, "mocks": urls}
            expect = Expect.model_validate(case.expect.render(scope))
            transport = LocalTransport(tmp)
            stack.callback(transport.close)
            seen: dict[str, Execution] = {}

            def track(ex: Execution, _: ExecutionEvent) -> None:
                seen.setdefault(ex.execution_id, ex)

            try:
                result = await run_events(
                    integration,
                    transport,
                    config,
                    case.events,
                    flow=case.flow,
                    timeout=case.doc.timeout,
                    on_event=track,
                    options=AppOptions(trace_payloads=True, flows=[case.flow], env=environment()),
                )
            except TimeoutError as exc:
                block = [f"timeout: {exc} (a case's `timeout:` allows longer)"]
                for ex in seen.values():
                    block += [f"execution {ex.status}: {_input_line(ex)}", f"  trace: {_trace(ex)}"]
                return [block]
            calls = list(mocks.calls) if mocks is not None else []
            topic = plan.flows[case.flow].dlq_topic
            letters = [_letter(DeadLetter(r), encoding) for r in transport.read_all(topic)]
    failures = _check_executions(expect, result)
    failures += _check_calls(expect, calls)
    failures += _check_dead_letters(expect, letters)
    if expect.max_duration is not None and result.seconds > expect.max_duration:
        failures.append(
            [f"expect.max_duration: took {result.seconds:.2f}s, more than {expect.max_duration:g}s"]
        )
    return failures


class Reporter:
    """pytest-like lines: ``PASSED file::name (0.4s)``, details of failures, a summary."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def case(self, r: CaseResult) -> None:
        word = "PASSED" if r.passed else "FAILED"
        print(f"{word} {r.case.id} ({r.seconds:.1f}s)", file=self.out)
        if not r.passed:
            for line in r.details().splitlines():
                print(f"    {line}", file=self.out)
        self.out.flush()

    def summary(self, results: Sequence[CaseResult]) -> None:
        passed = sum(r.passed for r in results)
        print(f"{passed} passed, {len(results) - passed} failed", file=self.out)


async def run_test_files(
    files: Iterable[TestFile],
    *,
    select: str | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> list[CaseResult]:
    """Run every case (those whose id contains ``select``), one after the other."""
    results = []
    for f in files:
        for case in f.cases:
            if select and select.lower() not in case.id.lower():
                continue
            r = await run_case(case)
            results.append(r)
            if on_result is not None:
                on_result(r)
    return results


def write_junit_xml(results: Sequence[CaseResult], path: str | Path) -> None:
    """JUnit XML: one testsuite per test file, one testcase per case."""
    failed = sum(not r.passed for r in results)
    total = sum(r.seconds for r in results)
    root = ET.Element(
        "testsuites",
        name="streamflow",
        tests=str(len(results)),
        failures=str(failed),
        errors="0",
        time=f"{total:.3f}",
    )
    suites: dict[str, list[CaseResult]] = {}
    for r in results:
        suites.setdefault(r.case.file.display, []).append(r)
    for name, rs in suites.items():
        suite = ET.SubElement(
            root,
            "testsuite",
            name=name,
            tests=str(len(rs)),
            failures=str(sum(not r.passed for r in rs)),
            errors="0",
            skipped="0",
            time=f"{sum(r.seconds for r in rs):.3f}",
        )
        for r in rs:
            tc = ET.SubElement(
                suite,
                "testcase",
                classname=name,
                name=r.case.name,
                file=name,
                time=f"{r.seconds:.3f}",
            )
            if not r.passed:
                fail = ET.SubElement(tc, "failure", message=r.message, type="AssertionError")
                fail.text = r.details()
    tree = ET.ElementTree(root)
    ET.indent(tree)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree.write(out, encoding="utf-8", xml_declaration=True)
