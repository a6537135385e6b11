"""``streamflow test`` runs each case on a copy of the topology's folder: files and SQLite
rows its steps write never land beside the topology, and ``expect.files`` /
``expect.rows`` check them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

INTEGRATION = """\
apiVersion: streamflow/v1
kind: Integration
name: keeper
connections:
  db: {type: sqlite, path: state/keeper.db}
flows:
  - name: keep
    trigger: {type: manual}
    steps:
      - id: table
        type: sql
        connection: db
        query: CREATE TABLE IF NOT EXISTS people (id TEXT PRIMARY KEY, name TEXT)
      - id: save
        type: sql
        connection: db
        operation: insert
        table: people
        values: {id: "${payload.id}", name: "${payload.name}"}
      - id: write
        type: file_write
        path: out/${payload.id}.json
        content: ${payload}
      - id: raw
        type: sql
        dsn: sqlite:///relative.db
        query: CREATE TABLE IF NOT EXISTS t (x INTEGER)
"""

TESTS = """\
cases:
  - name: rows and files are checked
    events: [{id: p1, name: Ada}, {id: p2, name: Grace}]
    expect:
      status: completed
      rows:
        - {database: db, query: "SELECT id, name FROM people ORDER BY id",
           rows: [{id: p1, name: Ada}, {id: p2}]}
        - {database: state/keeper.db, query: "SELECT * FROM people", count: 2}
      files:
        out/p1.json: {content: {name: Ada}, contains: Ada}
        out/p2.json: {exists: true}
        out/p3.json: {exists: false}
  - name: a wrong expectation fails with its path
    events: [{id: p1, name: Ada}]
    expect:
      rows: [{database: db, query: "SELECT name FROM people", rows: [{name: Bob}]}]
      files:
        out/p1.json: {contains: Grace}
        out/nope.json: {}
"""


def test_cases_write_into_a_copy_and_expect_checks_it(tmp_path: Path) -> None:
    folder = tmp_path / "keeper"
    folder.mkdir()
    (folder / "integration.yaml").write_text(INTEGRATION)
    (folder / "tests.yaml").write_text(TESTS)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", "test", str(folder)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert "PASSED" in out and "rows and files are checked" in out, out + proc.stderr
    assert proc.returncode == 1, out  # the second case fails on purpose
    assert "1 passed, 1 failed" in out
    assert 'expect.rows[0].rows[0].name: expected "Bob", got "Ada"' in out
    assert "expect.files['out/p1.json'].contains: 'Grace' not in the file" in out
    assert "expect.files['out/nope.json']: no such file was written" in out
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "the case wrote beside the topology (or in the working directory)"
