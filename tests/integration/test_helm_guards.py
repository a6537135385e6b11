"""Chart guards against charts that render but do not work (issue #18): retry topics in
the KEDA lag trigger, instances without the secret key, loopback service URLs, a gateway
only where a flow needs one, readiness that means ready, and the dashboard's execution,
dead-letter and per-instance panels. Each is checked on rendered manifests."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streamflow.topology.registry import STEPS
from tests.integration.test_helm import (
    CHART,
    CONFIG,
    DASHBOARD,
    KAFKA,
    REPO,
    TOPO,
    find_helm,
    helm_template,
    parse,
)

TOPOLOGIES = REPO / "topologies"
ACME = ["--set-file", f"topology={TOPOLOGIES / 'acme-erp' / 'integration.yaml'}"]
ACME_CONFIG = ["--set", "config.values.progix_url=http://progix.svc:8080"]
WEBFORM = ["--set-file", f"topology={TOPOLOGIES / 'web-form-to-cms' / 'integration.yaml'}"]
WEBFORM_CONFIG = [
    "--set",
    "config.values.cms_url=http://cms.svc,config.values.chat_url=http://chat.svc",
]
LOOPBACK = re.compile(r"://(127\.|localhost\b|\[::1\]|0\.0\.0\.0)")


@pytest.fixture(scope="session")
def helm() -> str:
    return find_helm()


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = helm_template(helm, *args)
    assert proc.returncode == 0, proc.stderr
    return parse(proc.stdout)


def refused(helm: str, *args: str) -> str:
    proc = helm_template(helm, *args)
    assert proc.returncode != 0, "rendered, but should have been refused"
    return proc.stderr


def gateways(docs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget")
        and d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"
    ]


def test_the_charts_pure_step_types_are_the_registrys() -> None:
    """Pure steps get no .retry topic; the chart must know which they are."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    m = re.search(r'define "streamflow.pureStepTypes" -}}\n(.*?)\n', text)
    assert m, "streamflow.pureStepTypes not found"
    pure = sorted(k for k, v in STEPS.items() if v.config.pure)
    assert m.group(1).split() == pure, "update streamflow.pureStepTypes in _helpers.tpl"


def test_keda_reads_the_retry_topics_of_the_steps_it_scales(helm: str) -> None:
    docs = render(
        helm,
        *TOPO,
        *KAFKA,
        *CONFIG,
        "--set",
        "workers[0].name=w,workers[0].flow=order-created,"
        "workers[0].autoscaling.type=keda,workers[0].autoscaling.minReplicas=0",
    )
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    topics = {t["metadata"]["topic"] for t in so["spec"]["triggers"]}
    prefix = "sf.order-routing.order-created."
    assert {prefix + "book-in-erp.retry", prefix + "request-approval.retry"} <= topics
    assert not {t for t in topics if t.endswith(("normalise.retry", "only-paid.retry"))}


def test_an_ordered_flow_has_no_retry_triggers(helm: str, tmp_path: Path) -> None:
    topo = tmp_path / "ordered.yaml"
    text = (TOPOLOGIES / "order-routing" / "integration.yaml").read_text()
    topo.write_text(text.replace("    partitions: 6\n", "    partitions: 6\n    ordered: true\n"))
    docs = render(
        helm,
        "--set-file",
        f"topology={topo}",
        *KAFKA,
        *CONFIG,
        "--set",
        "workers[0].name=w,workers[0].flow=order-created,workers[0].autoscaling.type=keda",
    )
    (so,) = [d for d in docs if d["kind"] == "ScaledObject"]
    assert not [t for t in so["spec"]["triggers"] if t["metadata"]["topic"].endswith(".retry")]


def test_instances_without_a_secret_key_are_refused(helm: str) -> None:
    err = refused(helm, *ACME, *KAFKA, *ACME_CONFIG)
    assert "instances are enabled" in err and "secretKey.existingSecret" in err
    err = refused(helm, *TOPO, *KAFKA, *CONFIG, "--set", "instances.enabled=true")
    assert "instances are enabled" in err
    render(helm, *ACME, *KAFKA, *ACME_CONFIG, "--set", "secretKey.existingSecret=sf-key")
    render(helm, *ACME, *KAFKA, *ACME_CONFIG, "--set", "instances.enabled=false")


def test_loopback_service_urls_are_refused(helm: str) -> None:
    err = refused(helm, *TOPO, *KAFKA)
    assert "config variable approvals_url defaults to http://127.0.0.1:8092" in err
    assert "set config.values.approvals_url" in err
    err = refused(helm, *TOPO, *KAFKA, "--set", "config.values.approvals_url=http://ap")
    assert "config variable erp_url" in err
    render(helm, *TOPO, *KAFKA, *CONFIG)
    render(helm, *TOPO, *KAFKA, "--set", "config.existingSecret=cfg")  # the URLs are in there


@pytest.mark.parametrize(
    "values", sorted((CHART / "examples").glob("*.yaml")), ids=lambda p: p.stem
)
def test_examples_point_no_pod_at_itself(helm: str, values: Path) -> None:
    docs = render(helm, "-f", str(values), *TOPO)
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                text = json.dumps([c.get("args", []), c.get("env", [])])
                assert not LOOPBACK.search(text), f"{values.name}: {d['metadata']['name']}"


def test_the_gateway_is_rendered_only_when_a_flow_needs_it(helm: str) -> None:
    assert gateways(render(helm, *TOPO, *KAFKA, *CONFIG)) == []  # manual trigger only
    assert "Deployment/streamflow-gateway" in gateways(
        render(helm, *WEBFORM, *KAFKA, *WEBFORM_CONFIG)
    )
    assert (
        gateways(render(helm, *WEBFORM, *KAFKA, *WEBFORM_CONFIG, "--set", "gateway.enabled=false"))
        == []
    )
    assert "Deployment/streamflow-gateway" in gateways(
        render(helm, *TOPO, *KAFKA, *CONFIG, "--set", "gateway.enabled=true")
    )


def test_readiness_is_not_liveness(helm: str) -> None:
    docs = render(helm, *WEBFORM, *KAFKA, *WEBFORM_CONFIG)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["labels"]["app.kubernetes.io/component"] for d in deployments} == {
        "worker",
        "gateway",
    }
    for d in deployments:
        for c in d["spec"]["template"]["spec"]["containers"]:
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_answers_readyz_when_its_broker_answers(tmp_path: Path) -> None:
    """The path the chart probes exists on a worker (`--metrics-port`) and means ready."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamflow.cli.main",
            "worker",
            str(TOPOLOGIES / "order-routing" / "integration.yaml"),
            "--broker",
            f"local://{tmp_path}/b",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                    body = (r.status, json.loads(r.read()))
                    break
            except OSError:
                time.sleep(0.3)
        assert body[0] == 200, proc.stderr.read() if proc.poll() else body
        assert body[1]["status"] == "ready" and "agents" in body[1], body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        # the dead-letter backlog of its flow, for the dashboard (read at start, then every 30 s)
        deadline = time.monotonic() + 30
        line = 'streamflow_dead_letter_backlog{flow="order-created",integration="order-routing"}'
        text = ""
        while line not in text and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            time.sleep(0.3)
        assert f"{line} 0.0" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _panels() -> list[dict[str, Any]]:
    return list(json.loads(DASHBOARD.read_text())["panels"])


def test_dashboard_shows_ended_executions_by_status_and_the_dead_letter_backlog() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in _panels()}
    by_status = [
        t
        for t, e in exprs.items()
        if "streamflow_executions_ended_total" in e and "by (status)" in e
    ]
    assert by_status
    assert [
        t
        for t, e in exprs.items()
        if "max by (integration, flow) (streamflow_dead_letter_backlog" in e
    ]


def test_dashboard_has_a_per_instance_variable_named_sf_instance() -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    assert "sf_instance" in variables
    assert "sf_instance" in variables["sf_instance"]["definition"]
    per_instance = [
        p
        for p in _panels()
        if any('sf_instance=~"$sf_instance"' in t["expr"] for t in p.get("targets", []))
    ]
    assert len(per_instance) >= 2
    # Prometheus' own `instance` label is the scrape target: no panel filters on it
    for p in _panels():
        for t in p.get("targets", []):
            assert not re.search(r"[{,]\s*instance\s*=", t["expr"]), p["title"]


def test_the_ended_executions_metric_counts_by_status_and_instance(tmp_path: Path) -> None:
    from prometheus_client import REGISTRY

    from streamflow.envelope import Envelope
    from streamflow.observability.events import event_for

    def value(status: str, inst: str) -> float:
        v = REGISTRY.get_sample_value(
            "streamflow_executions_ended_total",
            {"integration": "i", "flow": "f", "status": status, "sf_instance": inst},
        )
        return v or 0.0

    env = Envelope("e1", "i", "f", "s", {}, instance="acme")
    before = value("compensated", "acme")
    event_for(env, "step")
    event_for(env, "failed", note="compensating")  # not ended yet: compensations run
    event_for(env, "compensated")
    assert value("compensated", "acme") == before + 1
    assert value("failed", "acme") == 0.0
