"""split and aggregate configs: what the loader refuses (with the step's path), the plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streamflow.errors import ValidationFailed
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan

HEAD = """\
apiVersion: streamflow/v1
kind: Integration
name: pat
flows:
  - name: f
    partitions: 4
    fuse: true
    trigger: {type: manual}
    steps:
"""


def load(tmp_path: Path, steps: str) -> object:
    path = tmp_path / "i.yaml"
    path.write_text(HEAD + steps)
    return load_integration(path)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            "      - {id: a, type: aggregate, key: '${payload.k}'}\n",
            "a keyed aggregate needs complete: count, when, timeout or window",
        ),
        (
            "      - {id: a, type: aggregate, key: '${payload.k}', complete: {split: true}}\n",
            "complete.split groups by the split's parent",
        ),
        (
            "      - {id: a, type: aggregate, complete: {window: 1m}}\n",
            "a window needs a `key`",
        ),
        (
            "      - {id: a, type: aggregate, key: x, complete: {window: 1m, timeout: 5s}}\n",
            "a window does not combine with split or timeout",
        ),
        (
            "      - {id: a, type: aggregate, complete: {count: 0}}\n",
            "greater than or equal to 1",
        ),
        (
            "      - {id: a, type: aggregate, late: keep}\n",
            "'drop' or 'dead_letter'",
        ),
        (
            "      - {id: a, type: aggregate, complete: {when: '${group.nope(1)}'}}\n",
            "nope",
        ),
        ("      - {id: s, type: split, items: '${payload.lines'}\n", "unterminated"),
        ("      - {id: s, type: split}\n", "items"),
    ],
)
def test_bad_configs_are_refused_when_loading(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        load(tmp_path, steps)
    assert message in str(info.value), str(info.value)


def test_split_and_aggregate_run_in_agents_of_their_own(tmp_path: Path) -> None:
    integration = load(
        tmp_path,
        """\
      - {id: a, type: transform, output: '${payload}'}
      - {id: s, type: split, items: '${payload.lines}'}
      - {id: b, type: transform, output: '${payload}'}
      - {id: c, type: transform, output: '${payload}'}
      - {id: agg, type: aggregate, complete: {split: true, timeout: 1m}}
      - {id: d, type: transform, output: '${payload}'}
      - {id: e, type: transform, output: '${payload}'}
""",
    )
    plan = compile_plan(integration)  # type: ignore[arg-type]
    chains = [a.steps for a in plan.flows["f"].agents]
    # fused pure steps stay fused, but never across a split or an aggregate
    assert chains == [("a",), ("s",), ("b", "c"), ("agg",), ("d", "e")]
    state = [t for t in plan.topics if t.name == "sf.pat.f.agg.state"]
    assert len(state) == 1 and state[0].partitions == 4
    assert state[0].config == {"cleanup.policy": "compact"}
    assert plan.flows["f"].state_topic_of == {"agg": "sf.pat.f.agg.state"}


def test_a_failed_child_is_reported_to_the_aggregate_of_its_own_split(tmp_path: Path) -> None:
    from streamflow.runtime.split import _collector

    integration: Any = load(
        tmp_path,
        """\
      - {id: outer, type: split, items: '${payload.orders}'}
      - {id: a, type: transform, output: '${payload}'}
      - {id: inner, type: split, items: '${payload.lines}'}
      - id: route
        type: branch
        routes: [{when: '${payload.x}', steps: [{id: r, type: transform, output: '${payload}'}]}]
      - {id: inner-agg, type: aggregate}
      - {id: c, type: transform, output: '${payload}'}
      - {id: outer-agg, type: aggregate}
""",
    )
    flow = integration.flows["f"]
    assert _collector(flow, "a") == "outer-agg"  # an order: past the lines' split and join
    assert _collector(flow, "r") == "inner-agg"  # a line, in a nested route
    assert _collector(flow, "route") == "inner-agg"
    assert _collector(flow, "c") == "outer-agg"  # an order after its lines came back
    assert _collector(flow, "outer-agg") is None
