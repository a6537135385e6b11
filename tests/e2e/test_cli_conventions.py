"""CLI conventions, checked on every command (streamflow/cli/conventions.py): help and
defaults on every option, IDs and options in any order, unknown names answered with a
suggestion and exit 2, durations wherever a time is, ``-`` for stdout, ``--json`` or a
table, plural words, ``run`` in input order and fallbacks shown as such."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamflow.cli.main import parser

REPO = Path(__file__).resolve().parents[2]


def sf(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def commands(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = list(commands(parser()))


@pytest.mark.parametrize("path,p", ALL, ids=[" ".join(c) or "streamflow" for c, _ in ALL])
def test_every_option_and_argument_has_help(
    path: tuple[str, ...], p: argparse.ArgumentParser
) -> None:
    missing = [
        a.option_strings or a.dest
        for a in p._actions
        if not isinstance(a, argparse._SubParsersAction) and not a.help
    ]
    assert missing == [], f"streamflow {' '.join(path)}: options without help"


@pytest.mark.parametrize("path,p", ALL, ids=[" ".join(c) or "streamflow" for c, _ in ALL])
def test_every_default_is_shown_in_help(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    text = " ".join(p.format_help().split())
    for a in p._actions:
        if a.option_strings and a.default not in (None, False, [], "", argparse.SUPPRESS):
            assert (
                "default" in " ".join((a.help or "").split()) or f"(default: {a.default})" in text
            ), (
                path,
                a.option_strings,
            )


def test_version() -> None:
    proc = sf("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("streamflow ")


@pytest.mark.parametrize(
    "args,suggestion",
    [
        (["steps", "htp"], "'http'"),
        (["serv", "x.yaml"], "'serve'"),
        (["dlq", "lst", "x.yaml"], "'list'"),
        (["--log-format", "jsn", "plan", "x"], "'json'"),
    ],
)
def test_unknown_names_exit_2_with_a_suggestion(args: list[str], suggestion: str) -> None:
    proc = sf(*args)
    assert proc.returncode == 2
    assert f"did you mean {suggestion}?" in proc.stderr


def test_an_unknown_option_prints_the_usage_of_its_command() -> None:
    proc = sf("run", "topologies/order-routing/integration.yaml", "--nope")
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: streamflow run ")
    assert "unrecognized arguments: --nope" in proc.stderr


@pytest.mark.parametrize(
    "argv,dest,value",
    [
        (["run", "t.yaml", "--timeout", "10s"], "timeout", 10.0),
        (["run", "--timeout", "500ms", "t.yaml"], "timeout", 0.5),
        (["run", "t.yaml", "--timeout", "90"], "timeout", 90.0),
        (["gateway", "t.yaml", "--produce-timeout", "2m"], "produce_timeout", 120.0),
        (["dlq", "list", "t.yaml", "--since", "2h"], "since", 7200.0),
    ],
)
def test_durations_wherever_a_time_is(argv: list[str], dest: str, value: float) -> None:
    assert getattr(parser().parse_args(argv), dest) == value


def test_a_bad_duration_is_a_plain_error() -> None:
    proc = sf("run", "t.yaml", "--timeout", "soon")
    assert proc.returncode == 2
    assert "'soon' is not a duration" in proc.stderr


def test_ids_and_options_in_any_order() -> None:
    args = parser().parse_args(["dlq", "show", "t.yaml", "--flow", "f", "0:1", "--json", "0:2"])
    assert (args.topology, args.flow, args.ids, args.json) == ("t.yaml", "f", ["0:1", "0:2"], True)


FLOW = """\
apiVersion: streamflow/v1
kind: Integration
name: conv
flows:
  - name: f
    trigger: {type: manual}
    steps:
      - id: route
        type: branch
        routes:
          - when: payload.slow
            steps:
              - {id: wait, type: delay, duration: 1500ms}
      - id: parse
        type: transform
        output: ${parse_json(payload.text)}
      - id: call
        type: http
        url: http://127.0.0.1:1/unreachable
        retry: {max_attempts: 1}
        fallback: park
      - {id: done, type: log, message: done}
      - {id: park, type: log, message: parked}
"""


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    path = tmp_path / "conv.yaml"
    path.write_text(FLOW)
    return path


def test_run_prints_in_input_order_and_marks_fallbacks(topology: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    events.write_text(
        '{"slow": true, "text": "{\\"slow\\": false, \\"n\\": 1}"}\n'
        '{"slow": false, "text": "{\\"slow\\": false, \\"n\\": 2}"}\n'
    )
    proc = sf(
        "run", topology, "--input", events, "--broker", f"local://{tmp_path}/b", "--timeout", "60s"
    )
    assert proc.returncode == 0, proc.stderr
    outputs = [line for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    assert ['"n":1' in outputs[0], '"n":2' in outputs[1]] == [True, True], proc.stdout
    assert "completed via fallback" in proc.stdout
    assert "✓ call" not in proc.stdout  # the step failed: not shown as done
    assert "2 executions in" in proc.stdout
    assert "2 completed (2 via fallback)" in proc.stdout


def test_dead_letters_json_numbers_and_id_after_options(topology: Path, tmp_path: Path) -> None:
    broker = f"local://{tmp_path}/b"
    events = tmp_path / "events.ndjson"
    events.write_text('{"slow": false, "text": "not json"}\n')
    proc = sf("run", topology, "--input", events, "--broker", broker, "--timeout", "60s")
    assert proc.returncode == 1
    assert "1 execution in" in proc.stdout
    listed = sf("dlq", "list", topology, "--json", "--broker", broker)
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert len(rows) == 1
    assert isinstance(rows[0]["attempt"], int)
    shown = sf("dlq", "show", topology, "--flow", "f", rows[0]["id"], "--broker", broker)
    assert shown.returncode == 0, shown.stderr
    assert rows[0]["execution_id"] in shown.stdout
    table = sf("dlq", "list", topology, "--broker", broker)
    assert table.stdout.startswith("ID ")


def test_instance_show_is_a_table_unless_json(tmp_path: Path) -> None:
    topo = REPO / "topologies" / "acme-erp" / "integration.yaml"
    broker = ["--broker", f"local://{tmp_path}/b"]
    env = {**os.environ, "STREAMFLOW_SECRET_KEY": sf("instance", "key").stdout.strip()}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "erp_url: http://erp.example\nerp_token: t1\nprogix_token: t2\nwebhook_secret: s3\n"
    )
    deploy = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamflow.cli.main",
            "instance",
            "deploy",
            str(topo),
            "--instance",
            "c1",
            "--config-file",
            str(cfg),
            *broker,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert deploy.returncode == 0, deploy.stderr
    show = sf("instance", "show", topo, "--instance", "c1", *broker)
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("instance:    c1\n")
    assert "t1" not in show.stdout  # secrets masked
    as_json = sf("instance", "show", topo, "--json", "--instance", "c1", *broker)
    assert json.loads(as_json.stdout)["instance"] == "c1"
    listed = sf("instance", "list", topo, *broker)
    assert listed.stdout.splitlines()[0].split() == ["INSTANCE", "VERSION", "DEPLOYED"]


def test_type_descriptions_are_whole_sentences() -> None:
    proc = sf("steps")
    assert proc.returncode == 0
    cut = [line for line in proc.stdout.splitlines() if not line.rstrip().endswith((".", ")"))]
    assert cut == [], "descriptions cut mid-sentence"


def test_an_unknown_flow_is_suggested() -> None:
    proc = sf(
        "run",
        "topologies/order-routing/integration.yaml",
        "--flow",
        "order-create",
        "--input",
        "topologies/order-routing/events.ndjson",
    )
    assert proc.returncode == 2
    assert "unknown flow 'order-create'; did you mean 'order-created'?" in proc.stderr


def test_dead_letter_backlog_counts_what_replay_all_has_not_replayed(
    topology: Path, tmp_path: Path
) -> None:
    from streamflow.runtime import dlq
    from streamflow.topology.loader import load_integration
    from streamflow.topology.plan import compile_plan
    from streamflow.transport import open_transport

    broker = f"local://{tmp_path}/b"
    events = tmp_path / "events.ndjson"
    events.write_text('{"slow": false, "text": "bad"}\n{"slow": false, "text": "worse"}\n')
    sf("run", topology, "--input", events, "--broker", broker, "--timeout", "60s")
    plan = compile_plan(load_integration(topology))
    transport = open_transport(broker)
    try:
        assert dlq.backlog(transport, plan, "f") == 2
        replay = sf("dlq", "replay", topology, "--all", "--broker", broker)
        assert replay.returncode == 0, replay.stderr
        assert dlq.backlog(transport, plan, "f") == 0
    finally:
        transport.close()
