"""The JSON Schemas an editor uses (schemas/*.schema.json): draft-07, generated from the
models, accepting every shipped file and pointing one error at the wrong field."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from jsonschema import Draft7Validator

from streamflow.cli.commands import schema_texts
from streamflow.topology.models import StepConfig
from streamflow.topology.registry import STEPS, StepType, load_all

REPO = Path(__file__).resolve().parents[2]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")
# keywords of drafts after 07 that the YAML language server would ignore
LATER_KEYWORDS = {
    "$defs",
    "prefixItems",
    "unevaluatedProperties",
    "dependentRequired",
    "dependentSchemas",
    "$anchor",
    "$dynamicRef",
    "unevaluatedItems",
}


def schemas() -> dict[str, dict[str, Any]]:
    return {k: json.loads(v) for k, v in schema_texts().items()}


def keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        yield from node
        for v in node.values():
            yield from keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from keys(v)


def shipped_yaml() -> list[Path]:
    """Every YAML file the repository ships for users to copy (topologies, chart examples)."""
    files = sorted((REPO / "topologies").rglob("*.yaml"))
    files += sorted((REPO / "helm" / "streamflow" / "examples").glob("*.yaml"))
    return [*files, REPO / "helm" / "streamflow" / "values.yaml"]


@pytest.mark.parametrize("kind", ["integration", "tests", "mocks"])
def test_schema_is_draft_07_and_committed(kind: str) -> None:
    schema = schemas()[kind]
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    Draft7Validator.check_schema(schema)
    assert not LATER_KEYWORDS & set(keys(schema))
    committed = REPO / "schemas" / f"{kind}.schema.json"
    assert json.loads(committed.read_text()) == schema, "run `streamflow schema`"


@pytest.mark.parametrize("path", shipped_yaml(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_yaml_names_its_schema_and_validates(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    match = MODELINE.match(first)
    assert match, f"{path}: first line must be `# yaml-language-server: $schema=...`"
    schema_file = (path.parent / match.group(1)).resolve()
    assert schema_file.is_file(), f"{path}: {schema_file} does not exist"
    if path.parent.parent.name == "topologies":
        assert schema_file.parent == REPO / "schemas"
        assert schema_file.name == f"{path.stem}.schema.json"
    schema = json.loads(schema_file.read_text())
    doc = yaml.safe_load(path.read_text())
    if path.parent.name == "examples":  # chart examples override the chart's values.yaml
        doc = merged(yaml.safe_load((path.parent.parent / "values.yaml").read_text()), doc)
    errors = [
        f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(doc)
    ]
    assert errors == []


def merged(base: Any, over: Any) -> Any:
    """Helm's merge of a values file over the chart's values."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: merged(base.get(k), v) if k in base else v for k, v in over.items()} | {
            k: v for k, v in base.items() if k not in over
        }
    return over


def integration(steps: str, *, trigger: str = "{type: manual}", extra: str = "") -> str:
    return f"""
apiVersion: streamflow/v1
kind: Integration
name: demo
{extra}
flows:
  - name: f
    trigger: {trigger}
    steps:
{steps}
"""


HTTP = "      - {id: call, type: http, url: 'http://x/y'%s}"
WRONG: list[tuple[str, str, str, list[Any], str]] = [
    (
        "duration in retry",
        "integration",
        integration(HTTP % ", retry: {delay: soon}"),
        ["flows", 0, "steps", 0, "retry", "delay"],
        "soon",
    ),
    (
        "unknown field of a step",
        "integration",
        integration(HTTP % ", urll: 'http://z'"),
        ["flows", 0, "steps", 0],
        "urll",
    ),
    (
        "wrong type of a step field",
        "integration",
        integration(HTTP % ", timeout: true"),
        ["flows", 0, "steps", 0, "timeout"],
        "True",
    ),
    (
        "unknown step type",
        "integration",
        integration("      - {id: a, type: htp}"),
        ["flows", 0, "steps", 0, "type"],
        "htp",
    ),
    (
        "step without type",
        "integration",
        integration("      - {id: a}"),
        ["flows", 0, "steps", 0],
        "type",
    ),
    (
        "step id pattern",
        "integration",
        integration(HTTP.replace("call", "Call!") % ""),
        ["flows", 0, "steps", 0, "id"],
        "Call!",
    ),
    (
        "trigger field",
        "integration",
        integration(HTTP % "", trigger="{type: schedule, every: often}"),
        ["flows", 0, "trigger", "every"],
        "often",
    ),
    (
        "unknown trigger type",
        "integration",
        integration(HTTP % "", trigger="{type: cron}"),
        ["flows", 0, "trigger", "type"],
        "cron",
    ),
    (
        "connection field",
        "integration",
        integration(
            HTTP % "",
            extra="connections:\n  db: {type: postgres, dsn: 'postgresql://x/y', pool_size: many}",
        ),
        ["connections", "db", "pool_size"],
        "many",
    ),
    (
        "unknown connection type",
        "integration",
        integration(HTTP % "", extra="connections:\n  db: {type: mssql}"),
        ["connections", "db", "type"],
        "mssql",
    ),
    (
        "step nested in a branch",
        "integration",
        integration(
            "      - id: b\n        type: branch\n        routes:\n"
            "          - when: 'true'\n            steps:\n"
            "              - {id: c, type: log, message: hi, level: loud}"
        ),
        ["flows", 0, "steps", 0, "routes", 0, "steps", 0, "level"],
        "loud",
    ),
    (
        "compensation step (id optional)",
        "integration",
        integration(HTTP % ", compensate: {type: http, url: 'http://x', method: 7}"),
        ["flows", 0, "steps", 0, "compensate", "method"],
        "7",
    ),
    (
        "flow duration",
        "integration",
        integration(HTTP % "").replace("  - name: f\n", "  - name: f\n    commit_interval: -1s\n"),
        ["flows", 0, "commit_interval"],
        "-1s",
    ),
    (
        "test case timeout",
        "tests",
        "cases:\n  - {name: a, events: [{}], timeout: later}",
        ["cases", 0, "timeout"],
        "later",
    ),
    (
        "test expect status",
        "tests",
        "cases:\n  - {name: a, events: [{}], expect: {status: done}}",
        ["cases", 0, "expect", "status"],
        "done",
    ),
    (
        "inline mocks of a test file",
        "tests",
        "mocks: {services: {crm: {routes: [{path: /x, status: 99}]}}}\ncases: [{name: a}]",
        ["mocks", "services", "crm", "routes", 0, "status"],
        "99",
    ),
    (
        "mock route delay",
        "mocks",
        "services:\n  crm:\n    routes: [{path: /x, delay: slow}]",
        ["services", "crm", "routes", 0, "delay"],
        "slow",
    ),
    ("mock unknown key", "mocks", "services:\n  crm:\n    rutes: []", ["services", "crm"], "rutes"),
]


@pytest.mark.parametrize("case", WRONG, ids=[w[0] for w in WRONG])
def test_one_wrong_field_is_one_error_at_that_field(
    case: tuple[str, str, str, list[Any], str],
) -> None:
    _, kind, text, path, shown = case
    errors = list(Draft7Validator(schemas()[kind]).iter_errors(yaml.safe_load(text)))
    assert [list(e.absolute_path) for e in errors] == [path], [e.message for e in errors]
    assert shown in errors[0].message


def test_valid_variants_pass() -> None:
    """Durations as numbers or strings, optional fields left null, an inline compensation
    without id: all accepted."""
    text = integration(
        HTTP % ", timeout: 2.5, retry: {delay: 500ms, max_delay: 1m}, fallback: null"
        ", compensate: {type: log, message: undo}"
    )
    assert list(Draft7Validator(schemas()["integration"]).iter_errors(yaml.safe_load(text))) == []


def test_a_newly_registered_step_type_appears_without_editing_the_generator() -> None:
    load_all()

    class EchoConfig(StepConfig):
        """Echo (a test-only type)."""

        type: Literal["echo_test"]
        times: int = 1

    STEPS.add(
        StepType(name="echo_test", config=EchoConfig, factory=lambda c, ctx: None, category="test")
    )
    try:
        schema = schemas()["integration"]
    finally:
        STEPS.remove("echo_test")
    assert "echo_test" in schema["definitions"]["Step"]["properties"]["type"]["enum"]
    text = integration("      - {id: e, type: echo_test, times: many}")
    errors = list(Draft7Validator(schema).iter_errors(yaml.safe_load(text)))
    assert [list(e.absolute_path) for e in errors] == [["flows", 0, "steps", 0, "times"]]


def test_no_two_config_models_share_a_name() -> None:
    """The schema names its definitions after the model classes: two models of one name
    (graphql's and http's ``Paginate`` once) would make one silently replace the other."""
    import pydantic

    load_all()
    names: dict[str, set[str]] = {}

    def walk(cls: type) -> None:
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("streamflow.") and not sub.__name__.startswith("_"):
                names.setdefault(sub.__name__, set()).add(sub.__module__)
            walk(sub)

    walk(pydantic.BaseModel)
    assert {n: m for n, m in names.items() if len(m) > 1} == {}
