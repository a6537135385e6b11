"""The type registry: one call per type, entry points as the only way in, lazy imports,
and the field markers (Secret, Expression, NestedSteps) that replaced the ClassVar sets."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Literal

import pytest

from streamflow.errors import ConfigError
from streamflow.topology import registry
from streamflow.topology.models import (
    Expression,
    NestedSteps,
    ReadsOwnResult,
    Secret,
    StepConfig,
    marked,
)
from streamflow.topology.registry import (
    CONNECTIONS,
    STEPS,
    TRIGGERS,
    DuplicateTypeError,
    Kind,
    StepType,
    load_all,
    step_type,
)

REPO = Path(__file__).resolve().parents[2]
KINDS = {"streamflow.steps": STEPS, "streamflow.triggers": TRIGGERS,
         "streamflow.connections": CONNECTIONS}  # fmt: skip


def test_the_installed_entry_points_are_the_pyprojects() -> None:
    """The registry reads the installed metadata: a stale editable install (pyproject
    changed, `pip install -e .` not re-run) would hide a type."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    for group in KINDS:
        installed = {
            ep.name: ep.value
            for ep in importlib.metadata.entry_points(group=group)
            if ep.dist is not None and ep.dist.name == "streamflow"
        }
        assert installed == declared[group], f"{group}: re-run `pip install -e .`"


def test_every_registered_type_has_its_entry_point_and_the_reverse() -> None:
    load_all()
    for group, kind in KINDS.items():
        declared = set(registry._entry_points(group))
        assert set(kind.types) == declared, group
        for name in declared:
            entry = kind[name]
            assert entry.name == name
            assert entry.config.model_fields["type"].annotation == Literal[name], name
            assert entry.category, f"{name}: no category"
            assert entry.summary.endswith((".", ")")), f"{name}: summary {entry.summary!r}"


def test_every_step_type_has_an_implementation_and_an_example() -> None:
    for name, entry in STEPS.items():
        assert callable(entry.factory), name
        assert entry.example.lstrip().startswith("- "), f"{name}: example is one list item"


def test_loading_a_topology_imports_only_the_types_it_uses(tmp_path: Path) -> None:
    """No connector (nor aiohttp, asyncpg, ...) is imported for a flow that does not use it."""
    topo = tmp_path / "integration.yaml"
    topo.write_text(
        "apiVersion: streamflow/v1\nkind: Integration\nname: lazy\nflows:\n"
        "  - name: f\n    trigger: {type: kafka, topic: in}\n    steps:\n"
        "      - {id: t, type: transform, output: '${payload}'}\n"
        "      - {id: l, type: log}\n"
    )
    code = (
        "import sys\n"
        "from streamflow.topology.loader import load_integration\n"
        f"load_integration({str(topo)!r})\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(proc.stdout.split())
    assert "streamflow.steps.pure" in modules  # the one it uses
    heavy = {"aiohttp", "asyncpg", "asyncmy", "aiosmtplib", "aio_pika", "pymongo", "boto3",
             "redis", "azure", "confluent_kafka", "openpyxl"}  # fmt: skip
    assert modules & heavy == set()
    assert {m for m in modules if m.startswith("streamflow.connectors.")} <= {
        "streamflow.connectors.auth",  # models shared by the http step and the poll trigger
        "streamflow.connectors.connections",
        "streamflow.connectors.paginate",
        "streamflow.connectors.pools",
        "streamflow.connectors.secrets",
        "streamflow.connectors.stores",
    }
    assert "streamflow.connectors.http" not in modules


def test_a_name_registered_twice_is_refused() -> None:
    class TwiceConfig(StepConfig):
        """Twice."""

        type: Literal["transform"]

    with pytest.raises(DuplicateTypeError, match="'transform' is registered twice"):
        step_type("transform", TwiceConfig, category="test")(lambda c, ctx: None)
    assert STEPS["transform"].config.__name__ == "TransformConfig"


def _kind_with(monkeypatch: pytest.MonkeyPatch, *values: str) -> Kind[StepType]:
    group = "streamflow.test-only"
    eps = [importlib.metadata.EntryPoint("ghost", value, group) for value in values]
    real = registry._entry_points

    def fake(g: str) -> dict[str, list[importlib.metadata.EntryPoint]]:
        return {"ghost": eps} if g == group else real(g)

    monkeypatch.setattr(registry, "_entry_points", fake)
    return Kind("step", group)


def test_an_entry_point_that_does_not_register_its_type_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = _kind_with(monkeypatch, "streamflow.errtext")
    assert "ghost" in kind and kind.names() == ["ghost"]  # listed without importing
    with pytest.raises(
        ConfigError, match=r"entry point .* = streamflow\.errtext .* did not register"
    ):
        kind.get("ghost")


def test_a_plugin_that_fails_to_import_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = _kind_with(monkeypatch, "streamflow_no_such_plugin_module")
    with pytest.raises(ConfigError, match=r"streamflow_no_such_plugin_module .* failed to load"):
        kind.get("ghost")


def test_two_packages_providing_one_type_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = _kind_with(monkeypatch, "pkg_a.steps", "pkg_b.steps")
    with pytest.raises(DuplicateTypeError, match="'ghost' is provided twice"):
        kind.get("ghost")


def test_unknown_and_odd_names_are_none() -> None:
    assert STEPS.get("no-such-type") is None
    bad: Any = ["a", "list"]
    assert STEPS.get(bad) is None
    with pytest.raises(KeyError):
        STEPS["no-such-type"]


def test_field_markers() -> None:
    load_all()
    assert marked(STEPS["http"].config, Secret) == {"auth", "headers", "query"}
    assert marked(STEPS["http"].config, ReadsOwnResult) == {"paginate"}
    assert marked(STEPS["filter"].config, Expression) == {"when"}
    assert marked(STEPS["branch"].config, NestedSteps) == {"routes", "default"}
    assert marked(STEPS["transform"].config, Secret) == frozenset()
    # inherited from shared settings (AwsSettings): the step, trigger and connection agree
    aws = {"access_key_id", "secret_access_key", "session_token"}
    assert marked(STEPS["s3"].config, Secret) == aws
    assert marked(TRIGGERS["s3"].config, Secret) == aws
    assert marked(CONNECTIONS["s3"].config, Secret) == aws
    assert marked(TRIGGERS["webhook"].config, Secret) == {"signature", "auth"}


def test_every_trigger_type_has_what_runs_it() -> None:
    """A trigger type registered without a runner would validate and then never fire."""
    from streamflow.triggers.gateway import RUN_ELSEWHERE, RUNNERS

    assert not set(RUNNERS) & set(RUN_ELSEWHERE)
    assert set(TRIGGERS.names()) == set(RUNNERS) | set(RUN_ELSEWHERE)
