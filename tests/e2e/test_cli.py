"""The ``streamflow`` command as a user runs it: a subprocess, from the repository root,
on the embedded broker in a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (REPO / "topologies").iterdir() if (p / "integration.yaml").exists())
ORDER = REPO / "topologies" / "order-routing"


def sf(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``streamflow ARGS`` and return the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=REPO,
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


def json_lines(text: str) -> list[dict[str, Any]]:
    out = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(d, dict) for d in out)
    return out


def example_args(example: Path, broker: Path) -> list[str | Path]:
    args: list[str | Path] = [example / "integration.yaml", "--broker", f"local://{broker}"]
    if (example / "mocks.yaml").exists():
        args += ["--mocks", example / "mocks.yaml"]
    return args


# --------------------------------------------------------------------------- validate


def test_validate_examples_is_clean() -> None:
    proc = sf("validate", "topologies/")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(EXAMPLES)} topology files valid" in proc.stdout
    assert proc.stderr == ""


HEAD = "apiVersion: streamflow/v1\nkind: Integration\n"
BAD_FILES = {
    "missing.yaml": HEAD
    + """\
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: a, type: transform, output: 1}
""",
    "unknown_key.yaml": HEAD
    + """\
name: uk
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - id: a
        type: transform
        output: 1
        colour: red
""",
    "bad_type.yaml": HEAD
    + """\
name: bt
flows:
  - name: f
    partitions: many
    trigger: {type: manual}
    steps:
      - {id: a, type: transform, output: 1}
""",
    "bad_ref.yaml": HEAD
    + """\
name: br
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - id: a
        type: transform
        output: ${steps.nope.x}
""",
    "bad_expr.yaml": HEAD
    + """\
name: be
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - id: a
        type: filter
        when: ${payload.x ==}
""",
    "dup.yaml": HEAD
    + """\
name: dup
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - {id: a, type: transform, output: 1}
      - {id: a, type: transform, output: 2}
""",
    "syntax.yaml": HEAD
    + """\
name: syn
flows:
  - name: f
    trigger: {type: manual
    steps: []
""",
}


def test_validate_reports_every_problem_with_its_position(tmp_path: Path) -> None:
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    proc = sf("validate", tmp_path)
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    by_file: dict[str, list[str]] = {}
    for line in lines:
        # file:line:col: [path: ]message
        file, row, col, rest = line.split(":", 3)
        assert row.isdigit() and col.isdigit(), line
        assert rest.startswith(" ") and rest.strip(), line
        by_file.setdefault(Path(file).name, []).append(line)
    assert set(by_file) == set(BAD_FILES), lines
    assert all(len(v) == 1 for v in by_file.values()), by_file

    def one(name: str) -> str:
        return by_file[name][0].split(f"{name}:", 1)[1]

    assert one("missing.yaml") == "1:1: name: missing required key 'name'"
    assert one("unknown_key.yaml").startswith(
        "11:9: flows[0].steps[0].colour: unknown key 'colour'"
    )
    assert one("bad_type.yaml").startswith("6:5: flows[0].partitions: ")
    assert "integer" in one("bad_type.yaml")
    assert one("bad_ref.yaml").startswith("10:9: flows[0].steps[0].output: unknown step 'nope'")
    assert one("bad_expr.yaml").startswith("10:9: flows[0].steps[0].when: ")
    assert one("dup.yaml") == "9:10: flows[0].steps[1].id: duplicate step id 'a'"
    assert one("syntax.yaml").startswith("7:10: YAML syntax error")


def test_validate_missing_file_is_an_issue_not_a_crash(tmp_path: Path) -> None:
    proc = sf("validate", tmp_path / "absent.yaml")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "absent.yaml:1:1: cannot read file" in proc.stderr


# --------------------------------------------------------------------------- plan, steps, schema

# fused (the default): a pure step runs in the agent before it, so only the steps that
# start an agent have a topic - the first, the I/O steps, branch targets
ORDER_AGENTS = ["only-paid", "request-approval", "mark-auto", "book-in-erp"]
ORDER_TOPICS = {
    *(f"sf.order-routing.order-created.{s}" for s in ORDER_AGENTS),
    "sf.order-routing.order-created.dlq",
    "sf.order-routing.executions",
    # I/O steps get a retry topic each
    "sf.order-routing.order-created.request-approval.retry",
    "sf.order-routing.order-created.book-in-erp.retry",
}


def test_plan_prints_the_topics_of_the_design() -> None:
    proc = sf("plan", ORDER / "integration.yaml")
    assert proc.returncode == 0, proc.stderr
    topic_lines = {
        line.split()[0]: line for line in proc.stdout.splitlines() if "partitions" in line
    }
    assert set(topic_lines) == ORDER_TOPICS
    assert all("  6 partitions" in line for line in topic_lines.values())
    assert "sf.order-routing.order-created.dlq" in topic_lines
    assert "dead letters" in topic_lines["sf.order-routing.order-created.dlq"]


def test_plan_json_parses() -> None:
    proc = sf("plan", ORDER / "integration.yaml", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["integration"] == "order-routing"
    assert plan["executions_topic"] == "sf.order-routing.executions"
    assert {t["name"] for t in plan["topics"]} == ORDER_TOPICS
    assert all(t["partitions"] == 6 for t in plan["topics"])
    groups = {a["group"] for a in plan["agents"]}
    assert groups == {f"sf.order-routing.order-created.{s}" for s in ORDER_AGENTS} | {
        f"sf.order-routing.order-created.{s}.retry" for s in ("request-approval", "book-in-erp")
    }


def test_steps_lists_types_and_shows_fields() -> None:
    proc = sf("steps")
    assert proc.returncode == 0, proc.stderr
    listed = {tuple(line.split()[:2]) for line in proc.stdout.splitlines() if line.strip()}
    for kind in ("transform", "filter", "branch", "http", "delay"):
        assert ("step", kind) in listed
    for kind in ("manual", "webhook"):
        assert ("trigger", kind) in listed

    proc = sf("steps", "http")
    assert proc.returncode == 0, proc.stderr
    fields = {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert {"url", "method", "json", "headers", "retry", "timeout", "idempotency_key"} <= fields
    assert "step transform" not in proc.stdout  # only the type asked for
    url = next(line for line in proc.stdout.splitlines() if line.split()[:1] == ["url"])
    assert "required" in url
    assert "PydanticUndefined" not in proc.stdout  # defaults from factories are shown


def test_schema_check_accepts_fresh_and_refuses_modified(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    proc = sf("schema", "integration", "--output", out)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(out.read_text())
    assert isinstance(schema, dict) and schema

    assert sf("schema", "integration", "--check", "--output", out).returncode == 0
    modified = tmp_path / "modified.json"
    modified.write_text(out.read_text().replace('"', "'", 2))
    proc = sf("schema", "integration", "--check", "--output", modified)
    assert proc.returncode == 1
    assert "out of date" in proc.stderr
    absent = tmp_path / "absent.json"
    assert sf("schema", "integration", "--check", "--output", absent).returncode == 1
    # all three kinds into a directory, then checked there
    assert sf("schema", "--dir", tmp_path / "all").returncode == 0
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == ["integration.schema.json", "mocks.schema.json", "tests.schema.json"]
    assert sf("schema", "--check", "--dir", tmp_path / "all").returncode == 0


def test_schema_output_dash_is_stdout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", "schema", "mocks", "--output", "-"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["$id"].endswith("mocks.schema.json")
    assert not (tmp_path / "-").exists()


def test_schema_check_on_the_committed_schema() -> None:
    proc = sf("schema", "--check")
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- run


# examples whose every execution should complete with their own mocks alone (order-saga
# ends compensated on purpose: tests/e2e/test_saga.py; others need a database)
RUNNABLE = [p for p in EXAMPLES if p.name in ("order-routing", "web-form-to-cms")]


@pytest.mark.parametrize("example", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_run_each_example_ends_every_execution(example: Path, tmp_path: Path) -> None:
    events = example / "events.ndjson"
    n = sum(1 for line in events.read_text().splitlines() if line.strip())
    proc = sf("run", *example_args(example, tmp_path / "b"), "--input", events, "--json")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = json_lines(proc.stdout)
    summary = lines[-1]
    evs = lines[:-1]
    started = {e["execution_id"] for e in evs if e["event"] == "started"}
    ended = {e["execution_id"] for e in evs if e["event"] in ("completed", "filtered")}
    assert len(started) == n
    assert ended == started
    assert not [e for e in evs if e["event"] == "failed"]
    assert sum(summary["summary"].values()) == n
    assert set(summary["summary"]) <= {"completed", "filtered"}
    assert any(e["event"] == "completed" for e in evs)


def test_run_order_routing_trace_and_outputs(tmp_path: Path) -> None:
    proc = sf("run", *example_args(ORDER, tmp_path / "b"), "--input", ORDER / "events.ndjson")
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "4 executions in" in out
    assert "2 completed, 2 filtered" in out
    blocks = [b for b in out.split("\n\n") if b.startswith("execution ")]
    assert len(blocks) == 4
    outputs = {}
    for b in blocks:
        line = next(x for x in b.splitlines() if x.strip().startswith("output:"))
        payload = json.loads(line.split("output:", 1)[1])
        outputs[payload.get("order_id") or payload.get("id")] = (b, payload)
    assert "■ completed" in outputs["o-1001"][0]
    assert outputs["o-1001"][1]["state"] == "auto-approved"
    assert "■ completed" in outputs["o-1002"][0]
    assert outputs["o-1002"][1]["state"] == "pending-approval"
    assert outputs["o-1002"][1]["amount"] == 1250.5
    for filtered in ("o-1003", "o-1004"):
        assert "⊘ only-paid" in outputs[filtered][0]
        assert "■ completed" not in outputs[filtered][0]
    assert "mock approvals POST /approvals -> 201  x1" in out
    assert "mock erp PUT /orders/o-1002 -> 200  x1" in out


def test_run_json_from_stdin(tmp_path: Path) -> None:
    proc = sf(
        "run",
        *example_args(ORDER, tmp_path / "b"),
        "--json",
        stdin=(ORDER / "events.ndjson").read_bytes(),
    )  # --input defaults to -
    no_traceback(proc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = json_lines(proc.stdout)
    assert lines[-1]["summary"] == {"completed": 2, "filtered": 2}
    evs = lines[:-1]
    order_of = {e["execution_id"]: e["payload"]["id"] for e in evs if e["event"] == "started"}
    assert sorted(order_of.values()) == ["o-1001", "o-1002", "o-1003", "o-1004"]
    completed = {order_of[e["execution_id"]] for e in evs if e["event"] == "completed"}
    assert completed == {"o-1001", "o-1002"}
    filtered = {order_of[e["execution_id"]] for e in evs if e["event"] == "filtered"}
    assert filtered == {"o-1003", "o-1004"}

    def step_payload(order: str, step: str) -> Any:
        [p] = [
            e["payload"]
            for e in evs
            if e["event"] == "step" and e["step"] == step and order_of[e["execution_id"]] == order
        ]
        return p

    assert step_payload("o-1002", "mark-pending")["state"] == "pending-approval"
    assert step_payload("o-1002", "mark-pending")["approval"] == "APR-o-1002"
    assert step_payload("o-1001", "mark-auto")["state"] == "auto-approved"
    assert "approval" not in step_payload("o-1001", "mark-auto")
    assert not [
        e
        for e in evs
        if e["step"] == "request-approval" and order_of[e["execution_id"]] == "o-1001"
    ]


FAILING = """\
apiVersion: streamflow/v1
kind: Integration
name: failing
config:
  api_url: {type: string, default: "http://127.0.0.1:1"}
flows:
  - name: push
    trigger: {type: manual}
    steps:
      - id: send
        type: http
        method: POST
        url: ${config.api_url}/fail
        json: ${payload}
        retry: {max_attempts: 2, delay: 10ms, jitter: false}
"""
FAILING_MOCKS = """\
services:
  api:
    config: api_url
    routes:
      - {method: POST, path: /fail, status: 500, json: {error: boom}}
"""


def test_run_exits_1_when_an_execution_fails(tmp_path: Path) -> None:
    topo = tmp_path / "failing.yaml"
    topo.write_text(FAILING)
    mocks = tmp_path / "mocks.yaml"
    mocks.write_text(FAILING_MOCKS)
    events = tmp_path / "events.json"
    events.write_text('[{"id": 1}]')
    proc = sf("run", topo, "--mocks", mocks, "--input", events, "--broker", f"local://{tmp_path}/b")
    no_traceback(proc)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 execution in" in proc.stdout
    assert ": 1 failed" in proc.stdout
    summary_fail = [x for x in proc.stdout.splitlines() if x.startswith("  ✗ ") and "failed:" in x]
    assert len(summary_fail) == 1
    assert "POST http://127.0.0.1:" in summary_fail[0]
    assert "/fail answered 500" in summary_fail[0]
    assert "↻ send" in proc.stdout  # one retry shown in the trace
    assert "mock api POST /fail -> 500  x2" in proc.stdout


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--config", "nope"], "--config expects NAME=VALUE, got 'nope'"),
        (["--config", "nope=1"], "unknown config variable(s): nope"),
        (["--config", "big_order=lots"], "config variable 'big_order'"),
        (["--flow", "zzz"], "unknown flow 'zzz' (this integration has: order-created)"),
    ],
    ids=["no-equals", "unknown-variable", "bad-value", "unknown-flow"],
)
def test_bad_cli_input_exits_2(extra: list[str], message: str, tmp_path: Path) -> None:
    proc = sf(
        "run",
        ORDER / "integration.yaml",
        "--input",
        ORDER / "events.ndjson",
        "--broker",
        f"local://{tmp_path}/b",
        *extra,
    )
    no_traceback(proc)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "b").exists()  # refused before touching the broker


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "events.ndjson"
    bad.write_text('{"id": 1}\nnot json\n')
    args: list[str | Path] = [
        "run",
        ORDER / "integration.yaml",
        "--broker",
        f"local://{tmp_path}/b",
    ]
    proc = sf(*args, "--input", bad)
    no_traceback(proc)
    assert proc.returncode == 2
    assert f"{bad}:2: not JSON" in proc.stderr
    proc = sf(*args, "--input", tmp_path / "absent.ndjson")
    no_traceback(proc)
    assert proc.returncode == 2
    assert "cannot read input" in proc.stderr
