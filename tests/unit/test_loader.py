"""Validation: every problem is reported with file:line:col and the YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamflow.errors import ValidationFailed
from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan

GOOD = """\
apiVersion: streamflow/v1
kind: Integration
name: shop
config:
  api_url: {type: string, default: "http://127.0.0.1:1"}
  token: {type: string, secret: true}
flows:
  - name: orders
    key: ${payload.id}
    trigger: {type: manual}
    steps:
      - id: shape
        type: transform
        output: {id: "${payload.id}", total: "${payload.total}"}
      - id: push
        type: http
        method: POST
        url: ${config.api_url}/orders
        auth: {type: bearer, token: "${config.token}"}
        json: ${payload}
      - id: after
        type: transform
        output: ${steps.push.body}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "integration.yaml"
    p.write_text(text)
    return p


def issues(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        load_integration(write(tmp_path, text))
    return [str(i) for i in info.value.issues]


def test_good_topology_loads_and_links_steps(tmp_path: Path) -> None:
    integ = load_integration(write(tmp_path, GOOD))
    flow = integ.flows["orders"]
    assert flow.first == "shape"
    assert [n.next for n in flow.nodes.values()] == ["push", "after", None]
    assert flow.referenced == {"push"}


def test_missing_key_points_at_parent(tmp_path: Path) -> None:
    text = GOOD.replace("        url: ${config.api_url}/orders\n", "")
    (msg,) = issues(tmp_path, text)
    assert msg.startswith(
        f"{tmp_path}/integration.yaml:15:9: flows[0].steps[1].url: missing required key 'url'"
    )


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD.replace("method: POST", "methd: POST"))
    assert ":17:9: flows[0].steps[1].methd: unknown key 'methd' (did you mean 'method'?)" in msg


def test_bad_type_and_unknown_step_type(tmp_path: Path) -> None:
    text = GOOD.replace("kind: Integration\n", "kind: Integration\n").replace(
        "type: transform\n        output: {id", "type: transfrom\n        output: {id"
    )
    (msg,) = issues(tmp_path, text)
    assert (
        ":13:9: flows[0].steps[0].type: unknown step type 'transfrom' (did you mean 'transform'?)"
        in msg
    )
    (msg,) = issues(
        tmp_path, GOOD.replace("  - name: orders\n", "  - name: orders\n    partitions: many\n")
    )
    assert "flows[0].partitions: Input should be a valid integer" in msg and ":9:5:" in msg


def test_unknown_step_reference_and_bad_expression(tmp_path: Path) -> None:
    text = GOOD.replace("${steps.push.body}", "${steps.pusj.body}").replace(
        '"${payload.total}"', '"${payload.total +}"'
    )
    msgs = issues(tmp_path, text)
    assert len(msgs) == 2
    assert any(
        ":14:39: flows[0].steps[0].output.total:" in m and "syntax" in m.lower() for m in msgs
    )
    assert any(":23:9: flows[0].steps[2].output: unknown step 'pusj'" in m for m in msgs)


def test_later_step_cannot_be_referenced(tmp_path: Path) -> None:
    text = GOOD.replace('"${payload.total}"', '"${steps.after}"')
    (msg,) = issues(tmp_path, text)
    assert "unknown step 'after'" in msg


def test_duplicate_ids_unknown_config_and_secret_leak(tmp_path: Path) -> None:
    text = (
        GOOD.replace("id: after", "id: shape")
        .replace("${config.api_url}/orders", "${config.api_ur}/orders")
        .replace('{id: "${payload.id}"', '{id: "${config.token}"')
    )
    msgs = issues(tmp_path, text)
    assert any(":21:9: flows[0].steps[2].id: duplicate step id 'shape'" in m for m in msgs)
    assert any("unknown config variable 'api_ur' (did you mean 'api_url'?)" in m for m in msgs)
    assert any(
        ":14:9: flows[0].steps[0].output: secret config variable 'token' may not be used here" in m
        for m in msgs
    )


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD.replace("output: {id:", "output: {id: [", 1))
    assert "YAML syntax error" in msg and "integration.yaml:" in msg


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    (msg,) = issues(tmp_path, GOOD.replace("name: shop\n", "name: shop\nname: other\n"))
    assert ":4:1: name: duplicate key 'name'" in msg


def test_plan_topics_and_fusion(tmp_path: Path) -> None:
    text = GOOD.replace("    key: ${payload.id}\n", "    key: ${payload.id}\n    fuse: true\n")
    text = text.replace(
        "      - id: push\n",
        '      - {id: check, type: filter, when: "${payload.total > 0}"}\n      - id: push\n',
    )
    plan = compile_plan(load_integration(write(tmp_path, text)))
    agents = [a.steps for a in plan.flows["orders"].agents]
    # pure steps run in the agent of the step before them; the I/O step `push` starts one
    assert agents == [("shape", "check"), ("push", "after")]
    names = [t.name for t in plan.topics]
    assert names == [
        "sf.shop.orders.shape",
        "sf.shop.orders.push",
        "sf.shop.orders.push.retry",
        "sf.shop.orders.dlq",
        "sf.shop.executions",
    ]
    assert plan.flows["orders"].hops[1:] == [("check", "sf.shop.orders.push", "push")]
    # fusing is the default; `fuse: false` keeps one agent per step
    default = compile_plan(load_integration(write(tmp_path, text.replace("    fuse: true\n", ""))))
    assert [a.steps for a in default.flows["orders"].agents] == agents
    unfused = compile_plan(
        load_integration(write(tmp_path, text.replace("fuse: true", "fuse: false")))
    )
    assert [a.steps for a in unfused.flows["orders"].agents] == [
        ("shape",),
        ("check",),
        ("push",),
        ("after",),
    ]
    assert [h[2] for h in unfused.flows["orders"].hops] == ["shape", "check", "push", "after"]


def test_model_checks_read_without_pydantic_prefixes(tmp_path: Path) -> None:
    """`validate` printed pydantic's "Value error, " before the model's own sentence."""
    text = (
        "apiVersion: streamflow/v1\nkind: Integration\nname: s\nflows:\n"
        "  - name: ws\n    trigger: {type: websocket, url: 'http://127.0.0.1:1/ws'}\n"
        "    steps: [{id: l, type: log, message: hi}]\n"
    )
    (msg,) = issues(tmp_path, text)
    assert msg.endswith("flows[0].trigger.url: a websocket url starts with ws:// or wss://")
