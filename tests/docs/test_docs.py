"""The documentation runs: README.md and docs/*.md examples are executed or checked
(see tests/docs/examples.py for the marking rules). A docs change that breaks an example,
or a code change that breaks a documented command, fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from streamflow.cli.commands import schema_texts
from streamflow.cli.main import parser
from tests.docs.examples import (
    REPO,
    Block,
    all_blocks,
    command_templates,
    dedented_yaml,
    doc_files,
    output_matches,
    session,
    template_argv,
)
from tests.unit.test_schema import merged

BIN = Path(sys.executable).parent
CONSOLE = all_blocks("console")
TEMPLATES = command_templates()
YAML = all_blocks("yaml")
HEADER = {"apiVersion": "streamflow/v1", "kind": "Integration", "name": "docs"}


def test_there_are_runnable_examples() -> None:
    assert len(CONSOLE) >= 5
    assert any(b.file.name == "README.md" for b in CONSOLE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository's files (no .venv, no state): commands write only there."""
    root = tmp_path_factory.mktemp("docs") / "repo"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    for block in all_blocks():
        if block.file_marker:
            target = root / block.file_marker
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
    return root


@pytest.mark.parametrize("block", CONSOLE, ids=[b.where for b in CONSOLE])
def test_console_examples_run(block: Block, workdir: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "COLUMNS": "100",
        "NO_COLOR": "1",
    }
    for cmd in session(block):
        proc = subprocess.run(
            ["bash", "-c", cmd.line],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        shown = f"{block.where}: $ {cmd.line}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}"
        assert proc.returncode == cmd.exit_code, shown
        assert "Traceback" not in proc.stderr, shown
        if cmd.expected:
            actual = (proc.stdout + proc.stderr).splitlines()
            assert output_matches(cmd.expected, actual), (
                shown + "--- expected\n" + "\n".join(cmd.expected)
            )


@pytest.mark.parametrize(
    "block,line", TEMPLATES, ids=[f"{b.where}:{line[:60]}" for b, line in TEMPLATES]
)
def test_documented_commands_parse(
    block: Block, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = template_argv(line)
    if argv is None:
        pytest.skip("shell syntax")
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code != 0:
            pytest.fail(f"{block.where}: `{line}` does not parse: {capsys.readouterr().err}")
        return
    # the files it names exist (capitals are placeholders: TOPOLOGY, FILE)
    named = [getattr(args, "topology", None), *(getattr(args, "paths", None) or [])]
    named += [getattr(args, "mocks", None), getattr(args, "input", None)]
    missing = [f for f in named if f and f != "-" and f != f.upper() and not (REPO / f).exists()]
    assert missing == [], f"{block.where}: `{line}` names files that do not exist"


CHART = REPO / "helm" / "streamflow"


def _schemas() -> dict[str, Any]:
    out = {k: json.loads(v) for k, v in schema_texts().items()}
    out["helm"] = json.loads((CHART / "values.schema.json").read_text())
    return out


def _errors(schema: dict[str, Any], doc: Any, ref: str | None = None) -> list[str]:
    if ref is not None:
        schema = {**schema, "$ref": f"#/definitions/{ref}"}
        for key in ("properties", "required", "additionalProperties", "type", "title"):
            schema.pop(key, None)
    return [
        f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(schema).iter_errors(doc)
    ]


def check_yaml(doc: Any, schemas: dict[str, Any]) -> list[str] | None:
    """Problems of one YAML document shown in the docs; None when its kind is not known."""
    if isinstance(doc, dict) and "apiVersion" in doc:
        return _errors(schemas["integration"], doc)
    if isinstance(doc, dict) and set(doc) == {"flows"}:
        return _errors(schemas["integration"], {**HEADER, **doc})
    if isinstance(doc, dict) and set(doc) == {"trigger"}:
        return _errors(schemas["integration"], doc["trigger"], "Trigger")
    if isinstance(doc, dict) and "connections" in doc and "flows" in doc:  # flows elided
        conns = doc["connections"].values()
        return [e for c in conns for e in _errors(schemas["integration"], c, "Connection")]
    if isinstance(doc, dict) and "cases" in doc:
        return _errors(schemas["tests"], doc)
    if isinstance(doc, dict) and set(doc) == {"services"}:
        return _errors(schemas["mocks"], doc)
    if isinstance(doc, dict) and doc and set(doc) <= set(schemas["helm"]["properties"]):
        values = merged(yaml.safe_load((CHART / "values.yaml").read_text()), doc)
        return _errors(schemas["helm"], values)  # a Helm values file (helm/streamflow)
    if (
        isinstance(doc, list)
        and doc
        and all(isinstance(d, dict) and "type" in d and "id" in d for d in doc)
    ):
        return [e for step in doc for e in _errors(schemas["integration"], step, "Step")]
    return None


@pytest.mark.parametrize("block", YAML, ids=[b.where for b in YAML])
def test_yaml_examples_match_the_schema(block: Block) -> None:
    text = dedented_yaml(block)
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        if re.search(r"^\s*-?\s*\.\.\.\s*$", text, re.M):
            pytest.skip("a sketch with elided parts (...)")
        pytest.fail(f"{block.where}: not YAML: {exc}")
    schemas = _schemas()
    checked = False
    for doc in docs:
        problems = check_yaml(doc, schemas)
        if problems is None:
            continue
        checked = True
        assert problems == [], f"{block.where}: {problems}"
    if not checked:
        pytest.skip("not a kind of file the schemas describe")


# paths the docs name inside a user's topology folder, not in this repository
USER_PATHS = {"schemas/order.json"}
PATH_LIKE = re.compile(
    r"(?<![\w/.$<{-])((?:topologies|docs|schemas|helm|scripts|tests|bench|streamflow(?!/v\d))"
    r"/[\w./-]*\w"
    r"|[\w-]+\.(?:md|yaml|json|ndjson|csv|sh|avsc|py))\b"
)


def mentioned_paths(path: Path) -> list[str]:
    """Repository paths a doc names (in links, code spans and blocks)."""
    text = path.read_text()
    out = set()
    for m in re.finditer(r"\]\(([^)#]+)\)", text):  # markdown links
        if not m.group(1).startswith(("http://", "https://", "mailto:")):
            out.add(str((path.parent / m.group(1)).resolve().relative_to(REPO)))
    for m in PATH_LIKE.finditer(text):
        if "/" in m.group(1):
            out.add(m.group(1).rstrip("/."))
    return sorted(out)


@pytest.mark.parametrize("doc", doc_files(), ids=[str(p.relative_to(REPO)) for p in doc_files()])
def test_every_repository_path_a_doc_names_exists(doc: Path) -> None:
    shown = {b.file_marker for b in all_blocks() if b.file_marker}  # written by the docs
    missing = [
        p
        for p in mentioned_paths(doc)
        if not (REPO / p).exists() and p not in USER_PATHS | shown and "..." not in p
    ]
    assert missing == [], f"{doc.relative_to(REPO)} names files that do not exist"
