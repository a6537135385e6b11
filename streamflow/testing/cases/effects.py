"""Side effects of a flow-test case: the case runs on a temporary copy of the topology's
folder (files and SQLite databases its steps write land there, nothing beside the real
topology), and ``expect.files`` / ``expect.rows`` check what was written."""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from streamflow import exactjson
from streamflow.testing.cases.matching import compare
from streamflow.testing.cases.models import Expect, FileExpect, RowsExpect
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration

# left out of the copy: state of earlier local runs and caches
_IGNORE = shutil.ignore_patterns(".streamflow", "__pycache__", ".pytest_cache", "*.pyc")


@contextlib.contextmanager
def isolated(integration: Integration, tmp: Path) -> Iterator[Integration]:
    """The integration loaded again from a copy of its folder under ``tmp``, with the
    working directory there while the case runs (relative ``sqlite:///`` DSNs included).
    Absolute paths in the YAML are not redirected. Yields the copy's integration."""
    if not integration.file:
        yield integration
        return
    source = Path(integration.file).resolve()
    folder = tmp / "topology"
    shutil.copytree(source.parent, folder, ignore=_IGNORE, symlinks=True)
    copy = load_integration(folder / source.name)
    with contextlib.chdir(folder):
        yield copy


def check_effects(expect: Expect, copy: Integration) -> list[list[str]]:
    """Failures of ``expect.files`` and ``expect.rows`` against the copy's folder."""
    folder = Path(copy.file).parent if copy.file else Path.cwd()
    failures: list[list[str]] = []
    for name, fe in (expect.files or {}).items():
        failures += _check_file(folder, name, fe)
    for i, re_ in enumerate(expect.rows or []):
        failures += _check_rows(folder, copy, i, re_)
    return failures


def _inside(folder: Path, name: str) -> Path | None:
    path = (folder / name).resolve()
    return path if path.is_relative_to(folder.resolve()) else None


def _check_file(folder: Path, name: str, fe: FileExpect) -> list[list[str]]:
    where = f"expect.files[{name!r}]"
    path = _inside(folder, name)
    if path is None:
        return [[f"{where}: the path leaves the topology's folder"]]
    if not fe.exists:
        return [[f"{where}: expected no such file, but it was written"]] if path.exists() else []
    if not path.is_file():
        return [[f"{where}: no such file was written"]]
    text = path.read_text(errors="replace")
    out: list[str] = []
    if fe.contains is not None and fe.contains not in text:
        out.append(f"{where}.contains: {fe.contains!r} not in the file ({len(text)} characters)")
    if fe.records is not None or fe.content is not None:
        try:
            content = _parse(path, text)
        except ValueError as exc:
            return [[f"{where}: cannot read it as {path.suffix or 'text'}: {exc}"]]
        if fe.records is not None:
            n = len(content) if isinstance(content, list) else 1
            if n != fe.records:
                out.append(f"{where}.records: expected {fe.records}, got {n}")
        if fe.content is not None:
            out += compare(fe.content, content, f"{where}.content")
    return [[out[0], *out[1:]]] if out else []


def _parse(path: Path, text: str) -> Any:
    """JSON -> the document, NDJSON/JSONL -> a list, CSV -> a list of row mappings."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return exactjson.loads(text)  # every digit, as the flow wrote it
    if suffix in (".ndjson", ".jsonl"):
        return [exactjson.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    return text


def _database(folder: Path, copy: Integration, name: str) -> Path | None:
    """``database:`` is a sqlite connection's name or a file in the topology's folder."""
    conn = copy.doc.connections.get(name)
    if conn is not None:
        if conn.get("type") != "sqlite":
            return None
        name = str(conn.get("path", ""))
    return _inside(folder, name)


def _check_rows(folder: Path, copy: Integration, i: int, re_: RowsExpect) -> list[list[str]]:
    where = f"expect.rows[{i}]"
    path = _database(folder, copy, re_.database)
    if path is None:
        return [
            [
                f"{where}.database: {re_.database!r} is not an SQLite connection or a file "
                "in the topology's folder"
            ]
        ]
    if not path.is_file():
        return [[f"{where}.database: no database {re_.database} was written"]]
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            db.row_factory = sqlite3.Row
            rows = [dict(r) for r in db.execute(re_.query).fetchall()]
    except sqlite3.Error as exc:
        return [[f"{where}.query: {exc}"]]
    out: list[str] = []
    if re_.count is not None and len(rows) != re_.count:
        out.append(f"{where}.count: expected {re_.count} row(s), got {len(rows)}")
    if re_.rows is not None:
        out += compare(re_.rows, rows, f"{where}.rows")
    return [[out[0], *out[1:]]] if out else []
