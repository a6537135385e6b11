"""`parallel` on both transports: branches run as child executions and are joined (all,
any, n) into steps.<id>.<branch>; a failed or missing branch fails the execution or is
recorded as partial; a late branch changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.transport import open_transport
from streamflow.transport.base import TopicSpec
from tests.integration.test_patterns import produce, run_until, values

TOPO = """\
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: par
    partitions: 2
    guarantee: {guarantee}
    trigger: {{type: kafka, topic: {source}}}
    steps:
      - id: fan
        type: parallel
        join: {join}
        timeout: 4s
        on_failure: {on_failure}
        branches:
          double: [{{id: d, type: transform, output: "${{payload.n * 2}}"}}]
          square:
            - {{id: s1, type: transform, output: "${{payload.n * payload.n}}"}}
            - {{id: s2, type: transform, output: {{sq: "${{payload}}"}}}}
          risky:
            - id: maybe-slow
              type: branch
              routes:
                - when: ${{payload.wait}}
                  steps: [{{id: pause, type: delay, duration: 6s}}]
            - {{id: r, type: transform, output: "${{100 // payload.div}}"}}
      - id: out
        type: transform
        output: {{n: "${{payload.n}}", branches: "${{steps.fan}}"}}
      - {{id: pub, type: kafka_publish, topic: {sink}}}
"""


async def run_case(
    broker_url: str,
    tmp_path: Path,
    unique: str,
    events: list[dict[str, Any]],
    until_late: bool = False,
    **fmt: str,
) -> tuple[list[Any], list[ExecutionEvent], list[Any]]:
    """Run the flow until every event's execution ended (and, with ``until_late``, a late
    branch was recorded); the outputs, execution events and dead letters."""
    name, source, sink = f"par-{unique}", f"par-in-{unique}", f"par-out-{unique}"
    tmp_path.mkdir(parents=True, exist_ok=True)
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPO.format(name=name, source=source, sink=sink, **fmt))
    transport = open_transport(broker_url)
    transport.ensure_topics([TopicSpec(source, 2), TopicSpec(sink, 2)])
    produce(transport, source, [(str(e["n"]).encode(), e) for e in events])
    executions = f"sf.{name}.executions"

    def done() -> bool:
        evs = [e for r in transport.read_all(executions) for e in decode_all(r.value)]
        ended = [e for e in evs if not e.parent and e.event in ("completed", "failed")]
        late = [e for e in evs if e.event == "filtered" and e.parent and "late" in e.note]
        return len(ended) >= len(events) and (bool(late) or not until_late)

    try:
        await run_until(transport, topo, done, settle=1.0)
        evs = [e for r in transport.read_all(executions) for e in decode_all(r.value)]
        dlq = list(transport.read_all(f"sf.{name}.par.dlq"))
        return values(transport, sink), evs, dlq
    finally:
        transport.close()


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_all_branches_joined(
    broker_url: str, tmp_path: Path, unique: str, guarantee: str
) -> None:
    out, evs, dlq = await run_case(
        broker_url, tmp_path, unique,
        [{"n": 3, "wait": False, "div": 4}, {"n": 5, "wait": False, "div": 5}],
        guarantee=guarantee, join="all", on_failure="fail",
    )  # fmt: skip
    assert sorted(out, key=lambda v: v["n"]) == [
        {"n": 3, "branches": {"double": 6, "square": {"sq": 9}, "risky": 25}},
        {"n": 5, "branches": {"double": 10, "square": {"sq": 25}, "risky": 20}},
    ]
    assert dlq == []
    children = [e for e in evs if e.event == "started" and e.parent]
    assert len(children) == 6


async def test_a_failed_branch_fails_the_execution_or_is_partial(
    broker_url: str, tmp_path: Path, unique: str
) -> None:
    event = {"n": 2, "wait": False, "div": 0}  # 100 // 0 in branch risky
    out, evs, dlq = await run_case(
        broker_url, tmp_path / "fail", unique + "f", [event],
        guarantee="at_least_once", join="all", on_failure="fail",
    )  # fmt: skip
    assert out == []
    failed = [e for e in evs if e.event == "failed" and not e.parent]
    assert len(failed) == 1 and "branch risky failed" in failed[0].error
    assert {r.header("sf-step") for r in dlq} == {b"r", b"fan"}  # the branch, the parent

    out, evs, dlq = await run_case(
        broker_url, tmp_path / "continue", unique + "c", [event],
        guarantee="at_least_once", join="all", on_failure="continue",
    )  # fmt: skip
    assert len(out) == 1
    branches = out[0]["branches"]
    assert branches["double"] == 4 and branches["square"] == {"sq": 4}
    assert branches["_partial"]["missing"] == [] and "ZeroDivisionError" in str(
        branches["_partial"]["failed"]["risky"]
    )


async def test_join_any_and_a_late_branch_changes_nothing(
    broker_url: str, tmp_path: Path, unique: str
) -> None:
    out, evs, _ = await run_case(
        broker_url, tmp_path, unique, [{"n": 7, "wait": True, "div": 1}], until_late=True,
        guarantee="exactly_once", join="2", on_failure="fail",
    )  # fmt: skip
    assert out == [{"n": 7, "branches": {"double": 14, "square": {"sq": 49}}}]
    # the slow branch ended later: recorded as late; nothing else was emitted (out above)
    late = [e for e in evs if e.event == "filtered" and e.parent and "late" in e.note]
    assert len(late) == 1 and late[0].execution_id.endswith("-risky")
    completed = [e for e in evs if e.event == "completed" and not e.parent]
    assert len(completed) == 1
