"""The code step: user functions imported from the topology's folder."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import ConfigError, PoisonMessageError, RetriableError

MODULE = """
import asyncio
from streamflow.errors import RetriableError

def normalize(payload, context):
    return {
        "email": payload["email"].strip().lower(),
        "country": context["options"]["country"],
        "step": context["step"],
        "flow": context["flow"],
        "attempt": context["attempt"],
    }

async def enrich(payload, context):
    await asyncio.sleep(0)
    return {**payload, "tier": "gold" if payload["amount"] > 100 else "basic"}

async def slow(payload, context):
    await asyncio.sleep(30)

def needs_key(payload, context):
    return payload["missing"]

def flaky(payload, context):
    raise ConnectionResetError("peer went away")

def busy(payload, context):
    raise RetriableError("rate limited", retry_after=7)

def bad_value(payload, context):
    return int("abc")
"""


@pytest.fixture
def module(tmp_path: Path) -> tuple[Path, str]:
    name = f"user_code_{uuid.uuid4().hex[:8]}"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / f"{name}.py").write_text(textwrap.dedent(MODULE))
    return tmp_path, name


async def test_sync_and_async_functions(step_runner: Any, module: tuple[Path, str]) -> None:
    where, name = module
    runner = await step_runner(
        f"""
        - id: norm
          type: code
          function: {name}:normalize
          path: [lib]
          options: {{country: "${{config.country}}"}}
        - {{id: enrich, type: code, function: "{name}:enrich", path: [lib], replace_payload: false}}
        """,
        config={"country": {"type": "string", "default": "DE"}},
        directory=where,
    )
    out = await runner.run("norm", {"email": "  Ann@X.IO "})
    assert out.payload == {
        "email": "ann@x.io",
        "country": "DE",
        "step": "norm",
        "flow": "f",
        "attempt": 1,
    }
    out = await runner.run("enrich", {"amount": 150})
    assert out.payload == {"amount": 150}
    assert out.result == {"amount": 150, "tier": "gold"}


async def test_exceptions_map_onto_the_taxonomy(step_runner: Any, module: tuple[Path, str]) -> None:
    where, name = module
    steps = [
        {"id": fn.replace("_", "-"), "type": "code", "function": f"{name}:{fn}", "path": ["lib"]}
        for fn in ("needs_key", "flaky", "busy", "bad_value")
    ]
    steps.append({"id": "slow", "type": "code", "function": f"{name}:slow", "path": ["lib"],
                  "timeout": "50ms"})  # fmt: skip
    runner = await step_runner(steps, directory=where)
    with pytest.raises(PoisonMessageError, match="KeyError"):
        await runner.run("needs-key", {})
    with pytest.raises(PoisonMessageError, match="ValueError"):
        await runner.run("bad-value", {})
    with pytest.raises(RetriableError, match="ConnectionResetError: peer went away"):
        await runner.run("flaky", {})
    with pytest.raises(RetriableError) as info:
        await runner.run("busy", {})
    assert info.value.retry_after == 7
    with pytest.raises(RetriableError, match="timed out"):
        await runner.run("slow", {})


async def test_missing_module_or_function_refuses_to_start(
    step_runner: Any, module: tuple[Path, str]
) -> None:
    where, name = module
    runner = await step_runner(
        f"""
        - {{id: nomod, type: code, function: "no_such_module_{name}:f"}}
        - {{id: nofn, type: code, function: "{name}:nope", path: [lib]}}
        """,
        directory=where,
    )
    with pytest.raises(ConfigError, match="cannot import"):
        runner.step("nomod")
    with pytest.raises(ConfigError, match="has no function 'nope'"):
        runner.step("nofn")


async def test_default_path_is_the_topology_folder(step_runner: Any, tmp_path: Path) -> None:
    name = f"beside_{uuid.uuid4().hex[:8]}"
    (tmp_path / "topo").mkdir()
    (tmp_path / "topo" / f"{name}.py").write_text("def f(p, c):\n    return {'seen': p}\n")
    runner = await step_runner(
        [{"id": "c", "type": "code", "function": f"{name}:f"}], directory=tmp_path / "topo"
    )
    assert (await runner.run("c", 5)).payload == {"seen": 5}
