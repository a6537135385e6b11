"""The Helm chart (helm/streamflow): lint and render every example values file, then check
the manifests — resources, probes and non-root security contexts on every container, the
deploy Job as a hook that runs before the workers, a topology `streamflow validate`
accepts, the dashboard JSON, every metric the dashboard and the alert rules query listed
in dashboards/METRICS.txt, and the Kubernetes JSON schemas (from the kubernetes-validate
package, offline).

helm comes from PATH or is built once by scripts/helm-check.sh (`go install`). Without it
these tests are skipped with one loud line — except under CI=true, where they fail.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamflow.topology.loader import load_integration
from streamflow.topology.plan import compile_plan

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "streamflow"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
TOPOLOGY = REPO / "topologies" / "order-routing" / "integration.yaml"
SCRIPT = REPO / "scripts" / "helm-check.sh"
STREAMFLOW = REPO / ".venv" / "bin" / "streamflow"
DASHBOARD = CHART / "dashboards" / "streamflow.json"
METRICS_TXT = CHART / "dashboards" / "METRICS.txt"

NAMESPACE = "streamflow"
BROKER_ARG = "kafka://$(STREAMFLOW_KAFKA_BOOTSTRAP_SERVERS)"
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
REQUIRED_ALERTS = {
    "StreamFlowConsumerLagGrowing",
    "StreamFlowDeadLetters",
    "StreamFlowCircuitBreakerOpen",
    "StreamFlowGatewayErrors",
    "StreamFlowNoCompletions",
}
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
K8S_VERSIONS = ("1.25", "1.37")
METRIC_RE = re.compile(r"\bstreamflow_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

Manifest = dict[str, Any]
_missing_reported = False


def _is_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _skip_or_fail(msg: str) -> None:
    global _missing_reported
    if _is_ci():
        pytest.fail(msg + " (CI=true: the chart checks must run)")
    if not _missing_reported:
        _missing_reported = True
        print("\n" + "!" * 20 + " " + msg + " — Helm chart tests skipped " + "!" * 20)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of a Helm 3 binary (PATH, the tool cache, or built there with go install)."""
    return find_helm()


def find_helm() -> str:
    """The helm binary, or skip (fail under CI=true) with the reason."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "helm-path"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        m = re.search(r"NO HELM: (.*?)(?: —| \(CI=true|$)", proc.stderr, re.MULTILINE)
        reason = m.group(1) if m else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        _skip_or_fail(f"NO HELM: {reason}")
    return proc.stdout.strip().splitlines()[-1]


def helm_template(helm: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, "template", "streamflow", str(chart), "--namespace", NAMESPACE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def parse(text: str) -> list[Manifest]:
    return [d for d in yaml.safe_load_all(text) if d]


@dataclass
class Rendered:
    name: str
    docs: list[Manifest]

    def kind(self, kind: str) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] == kind]

    def pod_owners(self) -> list[Manifest]:
        return [d for d in self.docs if d["kind"] in POD_KINDS]

    def workers(self) -> list[Manifest]:
        return [
            d
            for d in self.kind("Deployment")
            if d["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
        ]


@pytest.fixture(scope="module", params=EXAMPLES, ids=lambda p: p.stem)
def rendered(request: pytest.FixtureRequest, helm: str) -> Rendered:
    values: Path = request.param
    proc = helm_template(helm, "-f", str(values), "--set-file", f"topology={TOPOLOGY}")
    assert proc.returncode == 0, f"helm template failed for {values.name}:\n{proc.stderr}"
    return Rendered(values.stem, parse(proc.stdout))


@pytest.fixture(scope="module")
def all_rendered(helm: str) -> list[Rendered]:
    out = []
    for values in EXAMPLES:
        proc = helm_template(helm, "-f", str(values), "--set-file", f"topology={TOPOLOGY}")
        assert proc.returncode == 0, proc.stderr
        out.append(Rendered(values.stem, parse(proc.stdout)))
    return out


def pod_spec(owner: Manifest) -> Manifest:
    spec: Manifest = owner["spec"]["template"]["spec"]
    return spec


def containers(owner: Manifest) -> Iterator[Manifest]:
    spec = pod_spec(owner)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def hook_weight(doc: Manifest) -> int:
    return int(doc["metadata"].get("annotations", {}).get("helm.sh/hook-weight", "0"))


def hooks(doc: Manifest) -> set[str]:
    value = doc["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    return {h.strip() for h in value.split(",") if h.strip()}


def metric_names(text: str) -> set[str]:
    return set(METRIC_RE.findall(text))


def listed_metrics() -> set[str]:
    names = [line.strip() for line in METRICS_TXT.read_text().splitlines() if line.strip()]
    assert len(names) == len(set(names)), "METRICS.txt lists a metric twice"
    return set(names)


def unlisted(used: set[str], listed: set[str]) -> set[str]:
    """Names not in the list; a histogram's _bucket/_count/_sum series count as its name."""
    missing = set()
    for name in used:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix).endswith("_seconds"):
                base = name.removesuffix(suffix)
        if base not in listed:
            missing.add(name)
    return missing


# -- the script and lint


def test_helm_check_script_lints_and_renders_every_example(helm: str, tmp_path: Path) -> None:
    env = {**os.environ, "HELM_RENDER_DIR": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(tmp_path)
    assert EXAMPLES, "no example values files"
    for values in EXAMPLES:
        out = tmp_path / f"{values.stem}.yaml"
        assert out.exists(), f"{out} not rendered"
        assert parse(out.read_text()), f"{out} is empty"


@pytest.mark.parametrize("values", EXAMPLES, ids=lambda p: p.stem)
def test_lint_strict(helm: str, values: Path) -> None:
    proc = subprocess.run(
        [
            helm,
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(values),
            "--set-file",
            f"topology={TOPOLOGY}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- every pod


def test_every_container_has_resources(rendered: Rendered) -> None:
    owners = rendered.pod_owners()
    assert owners
    for owner in owners:
        for c in containers(owner):
            where = f"{rendered.name}: {owner['kind']}/{owner['metadata']['name']}/{c['name']}"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part) or {}), f"{where}: {part}"


def test_every_pod_and_container_runs_as_non_root(rendered: Rendered) -> None:
    for owner in rendered.pod_owners():
        spec = pod_spec(owner)
        where = f"{rendered.name}: {owner['kind']}/{owner['metadata']['name']}"
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert spec.get("automountServiceAccountToken") is False, where
        for c in containers(owner):
            sc = c.get("securityContext") or {}
            assert sc.get("runAsNonRoot") is True, f"{where}/{c['name']}"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}"
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}/{c['name']}"
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: a read-only root needs a writable /tmp"


def test_long_running_containers_have_probes_and_drain_time(rendered: Rendered) -> None:
    deployments = rendered.kind("Deployment")
    assert deployments
    for d in deployments:
        spec = pod_spec(d)
        for c in spec["containers"]:
            where = f"{rendered.name}: Deployment/{d['metadata']['name']}/{c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                get = (c.get(probe) or {}).get("httpGet")
                assert get, f"{where}: no {probe}"
                # Ready (/readyz: the broker answers) is not alive (/healthz): a broker
                # outage takes pods out of rotation without restarting them.
                ready = "/readyz" if probe == "readinessProbe" else "/healthz"
                assert get["path"] == ready, where
                assert get["port"] in ports, f"{where}: {probe} on an unnamed port"
        assert int(spec["terminationGracePeriodSeconds"]) >= 30, d["metadata"]["name"]


# -- workers


def test_workers_run_their_flow_with_a_stable_worker_id(rendered: Rendered) -> None:
    workers = rendered.workers()
    assert workers
    for d in workers:
        spec = pod_spec(d)
        c = spec["containers"][0]
        args: list[str] = c["args"]
        where = f"{rendered.name}: {d['metadata']['name']}"
        assert c["command"] == ["streamflow"], where
        i = args.index("worker")
        assert args[i + 1] == "/etc/streamflow/topology.yaml", where
        assert args[args.index("--broker") + 1] == BROKER_ARG, where
        flow = d["metadata"]["annotations"]["streamflow.io/flow"]
        assert args[args.index("--flow") + 1] == flow, where
        step = d["metadata"]["annotations"].get("streamflow.io/step")
        if step:
            assert args[args.index("--step") + 1] == step, where
        else:
            assert "--step" not in args, where
        assert args[args.index("--worker-id") + 1] == "$(POD_NAME)", where
        assert args[args.index("--metrics-port") + 1] == "9102", where
        pod_name = next(e for e in c["env"] if e["name"] == "POD_NAME")
        assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", where
        assert c["livenessProbe"]["httpGet"]["port"] == "metrics", where
        assert {"name": "metrics", "containerPort": 9102, "protocol": "TCP"} in c["ports"]
        partitions = int(d["metadata"]["annotations"]["streamflow.io/partitions"])
        if "replicas" in d["spec"]:
            assert int(d["spec"]["replicas"]) <= partitions, where
        assert int(spec["terminationGracePeriodSeconds"]) >= 60, where
        mounted = {v["name"]: v for v in spec["volumes"]}
        assert mounted["topology"]["configMap"]["name"].endswith("-topology"), where


def test_autoscalers_stay_within_partitions(rendered: Rendered) -> None:
    integration = yaml.safe_load(TOPOLOGY.read_text())["name"]
    by_name = {d["metadata"]["name"]: d for d in rendered.workers()}
    for so in rendered.kind("ScaledObject"):
        target = by_name[so["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "an autoscaled Deployment must not pin replicas"
        ann = target["metadata"]["annotations"]
        partitions = int(ann["streamflow.io/partitions"])
        assert int(so["spec"]["maxReplicaCount"]) <= partitions
        triggers = so["spec"]["triggers"]
        assert triggers
        prefix = f"sf.{integration}.{ann['streamflow.io/flow']}."
        for t in triggers:
            assert t["type"] == "kafka"
            group = t["metadata"]["consumerGroup"]
            assert group.startswith(prefix), group
            assert t["metadata"]["topic"] == group
            assert int(t["metadata"]["lagThreshold"]) > 0
            assert "bootstrapServers" in t["metadata"] or (
                t["metadata"]["bootstrapServersFromEnv"] == "STREAMFLOW_KAFKA_BOOTSTRAP_SERVERS"
            )
        groups = [t["metadata"]["consumerGroup"] for t in triggers]
        plan = compile_plan(load_integration(TOPOLOGY)).flows[ann["streamflow.io/flow"]]
        steps = (
            [ann["streamflow.io/step"]]
            if "streamflow.io/step" in ann
            else list(plan.retry_topic_of) + [a.steps[0] for a in plan.agents]
        )
        expected = {prefix + s for s in steps if prefix + s in {a.group for a in plan.agents}}
        # the retry agents the worker runs: a pending retry must keep a replica
        expected |= {plan.retry_topic_of[s] for s in steps if s in plan.retry_topic_of}
        if "streamflow.io/step" in ann:
            assert set(groups) == expected, groups
        else:
            assert expected <= set(groups), expected - set(groups)
    for hpa in rendered.kind("HorizontalPodAutoscaler"):
        name = hpa["spec"]["scaleTargetRef"]["name"]
        if name in by_name:
            target = by_name[name]
            assert "replicas" not in target["spec"]
            partitions = int(target["metadata"]["annotations"]["streamflow.io/partitions"])
            assert int(hpa["spec"]["maxReplicas"]) <= partitions


def test_every_deployment_has_a_disruption_budget(rendered: Rendered) -> None:
    budgets = [p["spec"]["selector"]["matchLabels"] for p in rendered.kind("PodDisruptionBudget")]
    for d in rendered.kind("Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in sel.items()) for sel in budgets), (
            f"{rendered.name}: no PodDisruptionBudget selects {d['metadata']['name']}"
        )


# -- the deploy Job and the topology


def test_deploy_job_is_a_hook_that_runs_before_the_workers(rendered: Rendered) -> None:
    jobs = rendered.kind("Job")
    assert len(jobs) == 1, rendered.name
    job = jobs[0]
    assert {"pre-install", "pre-upgrade"} <= hooks(job)
    weight = hook_weight(job)
    assert weight < 0, "the deploy Job must run before default-weight hooks"
    # What the Job mounts must exist first: hooks with a lower weight.
    cm_name = next(v["configMap"]["name"] for v in pod_spec(job)["volumes"] if "configMap" in v)
    cm = next(d for d in rendered.kind("ConfigMap") if d["metadata"]["name"] == cm_name)
    assert {"pre-install", "pre-upgrade"} <= hooks(cm)
    assert hook_weight(cm) < weight
    # Other hooks run after it; workers, the gateway and autoscalers are not hooks at all,
    # so Helm applies them only once every pre-install/pre-upgrade hook has succeeded.
    for doc in rendered.docs:
        if doc is job or doc is cm or not hooks(doc):
            continue
        assert hook_weight(doc) > weight, doc["metadata"]["name"]
    for doc in rendered.docs:
        if doc["kind"] in {"Deployment", "ScaledObject", "HorizontalPodAutoscaler"}:
            assert not hooks(doc), doc["metadata"]["name"]
    c = pod_spec(job)["containers"][0]
    args: list[str] = c["args"]
    i = args.index("deploy")
    assert args[i + 1 : i + 4] == ["/etc/streamflow/topology.yaml", "--broker", BROKER_ARG]
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_topology_configmaps_pass_streamflow_validate(rendered: Rendered, tmp_path: Path) -> None:
    if not STREAMFLOW.exists():
        pytest.fail(f"{STREAMFLOW} missing: run `make` to create the virtualenv")
    maps = [d for d in rendered.kind("ConfigMap") if "topology.yaml" in (d.get("data") or {})]
    assert len(maps) == 2, "the workers' topology ConfigMap and the deploy hook's copy"
    for cm in maps:
        text = cm["data"]["topology.yaml"]
        assert text.rstrip("\n") == TOPOLOGY.read_text().rstrip("\n")
        path = tmp_path / f"{cm['metadata']['name']}.yaml"
        path.write_text(text)
        proc = subprocess.run(
            [str(STREAMFLOW), "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_inline_topology_renders_like_set_file(helm: str, tmp_path: Path) -> None:
    values = tmp_path / "inline.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "topology": TOPOLOGY.read_text(),
                "kafka": {"bootstrapServers": "k:9092"},
                "config": {"values": {"erp_url": "http://erp", "approvals_url": "http://ap"}},
            }
        )
    )
    proc = helm_template(helm, "-f", str(values))
    assert proc.returncode == 0, proc.stderr
    docs = parse(proc.stdout)
    cm = next(d for d in docs if d["metadata"]["name"] == "streamflow-topology")
    assert cm["data"]["topology.yaml"].rstrip("\n") == TOPOLOGY.read_text().rstrip("\n")
    # No workers listed: one worker Deployment per flow of the topology.
    flows = [f["name"] for f in yaml.safe_load(TOPOLOGY.read_text())["flows"]]
    workers = [d for d in docs if d["kind"] == "Deployment" and "-worker-" in d["metadata"]["name"]]
    assert sorted(d["metadata"]["annotations"]["streamflow.io/flow"] for d in workers) == flows


TOPO = ["--set-file", f"topology={TOPOLOGY}"]
KAFKA = ["--set", "kafka.bootstrapServers=k:9092"]
# order-routing's service URLs default to loopback: the chart refuses those in a pod
CONFIG = [
    "--set",
    "config.values.erp_url=http://erp:8080,config.values.approvals_url=http://ap:8080",
]


def _worker(spec: str) -> list[str]:
    return [*TOPO, *KAFKA, "--set", "workers[0].name=w,workers[0].flow=order-created," + spec]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (KAFKA, "topology is required"),
        (TOPO, "kafka.bootstrapServers or kafka.existingSecret"),
        (
            [*TOPO, *KAFKA, "--set", "workers[0].name=w,workers[0].flow=nope"],
            'flow "nope" is not a flow of integration order-routing',
        ),
        (_worker("workers[0].step=nope"), 'step "nope" is not a step of flow order-created'),
        (_worker("workers[0].replicas=7"), "replicas 7 exceeds the 6 partitions"),
        (
            _worker("workers[0].autoscaling.type=keda,workers[0].autoscaling.maxReplicas=12"),
            "maxReplicas 12 exceeds the 6 partitions",
        ),
        (
            _worker("workers[0].autoscaling.type=hpa,workers[0].autoscaling.minReplicas=0"),
            "an HPA needs autoscaling.minReplicas >= 1",
        ),
        (
            [*TOPO, *KAFKA, "--set", "workers[0].name=Bad_Name,workers[0].flow=order-created"],
            "workers.0.name",
        ),
        (
            [*TOPO, *KAFKA, "--set", "replicaCount=3"],
            "Additional property replicaCount is not allowed",
        ),
        ([*KAFKA, "--set", "topology=flows: ["], "topology is not valid YAML"),
    ],
    ids=[
        "no-topology",
        "no-kafka",
        "unknown-flow",
        "unknown-step",
        "replicas-over-partitions",
        "autoscaling-over-partitions",
        "hpa-to-zero",
        "bad-worker-name",
        "unknown-value",
        "broken-topology",
    ],
)
def test_render_refuses_bad_values(helm: str, args: list[str], message: str) -> None:
    proc = helm_template(helm, *args)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_notes_render_and_warn_about_steps_no_worker_runs(helm: str, tmp_path: Path) -> None:
    """NOTES.txt is not rendered by `helm template`: render it through a copy of the chart."""
    chart = tmp_path / "streamflow"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_test.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end -}}\n"
    )
    (chart / "templates" / "notes-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )

    def render_notes(*args: str) -> str:
        proc = helm_template(
            helm,
            "--set-file",
            f"topology={TOPOLOGY}",
            "--show-only",
            "templates/notes-test.yaml",
            *CONFIG,
            *args,
            chart=chart,
        )
        assert proc.returncode == 0, proc.stderr
        text: str = parse(proc.stdout)[0]["data"]["notes"]
        return text

    for values in EXAMPLES:
        text = render_notes("-f", str(values))
        assert "order-routing" in text and "WARNING" not in text, f"{values.name}:\n{text}"
    partial = render_notes(
        "--set",
        "kafka.bootstrapServers=k:9092",
        "--set",
        "workers[0].name=w,workers[0].flow=order-created,workers[0].step=normalise",
    )
    assert "WARNING: no worker runs step(s) only-paid, route-by-amount" in partial
    # A kafka trigger runs only in a whole-flow worker; a webhook needs the gateway.
    for trigger, args, warning in [
        ({"type": "kafka", "topic": "erp.orders"}, [], "the kafka trigger of flow order-created"),
        ({"type": "webhook"}, ["--set", "gateway.enabled=false"], "has a webhook trigger"),
    ]:
        topo = yaml.safe_load(TOPOLOGY.read_text())
        topo["flows"][0]["trigger"] = trigger
        path = tmp_path / f"{trigger['type']}.yaml"
        path.write_text(yaml.safe_dump(topo, sort_keys=False))
        steps = ",".join(
            f"workers[{i}].name=w{i},workers[{i}].flow=order-created,workers[{i}].step={s}"
            for i, s in enumerate(
                [
                    "only-paid",
                    "normalise",
                    "route-by-amount",
                    "request-approval",
                    "mark-pending",
                    "mark-auto",
                    "book-in-erp",
                ]
            )
        )
        text = render_notes(
            "--set",
            "kafka.bootstrapServers=k:9092",
            "--set",
            steps,
            "--set-file",
            f"topology={path}",
            *args,
        )
        assert warning in text, text


# -- dashboard and alerts


def test_dashboard_configmap_holds_the_dashboard_json(rendered: Rendered) -> None:
    maps = [
        d
        for d in rendered.kind("ConfigMap")
        if d["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1, rendered.name
    ((key, text),) = maps[0]["data"].items()
    assert key.endswith(".json")
    dashboard = json.loads(text)
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "streamflow"
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in (
        "Consumer lag",
        "Dead letters per step",
        "Circuit breaker state",
        "Requests by status code",
        "Execution latency per flow (p50 / p95 / p99)",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_dashboard_metric_is_listed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = metric_names("\n".join(exprs))
    assert len(used) >= 10, used
    assert not unlisted(used, listed_metrics()), "not in METRICS.txt"
    # The list is exactly what the dashboard and the alerts use, so a scrape test can
    # demand each name.
    assert metric_names(DASHBOARD.read_text()) == used


def test_alert_rules_cover_the_essentials_and_list_their_metrics(
    all_rendered: list[Rendered],
) -> None:
    rules = [r for rendered in all_rendered for r in rendered.kind("PrometheusRule")]
    assert rules, "no example enables prometheusRule"
    listed = listed_metrics()
    used_anywhere = metric_names(DASHBOARD.read_text())
    for rule in rules:
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
        assert set(alerts) >= REQUIRED_ALERTS
        for name, r in alerts.items():
            used = metric_names(r["expr"])
            assert used, name
            assert not unlisted(used, listed), f"{name}: not in METRICS.txt"
            used_anywhere |= used
            assert r["labels"]["severity"], name
            assert r["annotations"]["summary"] and r["annotations"]["description"], name
            assert f'namespace="{NAMESPACE}"' in r["expr"], f"{name}: not scoped"
    bases = {
        m.removesuffix(s)
        for m in used_anywhere
        for s in HISTOGRAM_SUFFIXES
        if m.endswith(s) and m.removesuffix(s).endswith("_seconds")
    }
    plain = {m for m in used_anywhere if not any(m.endswith(s) for s in HISTOGRAM_SUFFIXES)}
    assert listed == plain | bases, "METRICS.txt lists a metric nothing uses"


def _as_promql(expr: str) -> str:
    """A Grafana query as plain PromQL: its interval macros and variables made concrete."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__range", "1h")
    return re.sub(r"\$\w+", "x", expr)


def test_dashboard_and_alert_queries_are_valid_promql(all_rendered: list[Rendered]) -> None:
    try:
        promql = importlib.import_module("promql_parser")
    except ImportError:
        _skip_or_fail("promql-parser is not installed (pip install -e '.[dev]')")
        return
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (f"dashboard panel {p['title']!r}", t["expr"])
        for p in dashboard["panels"]
        for t in p.get("targets", [])
    ]
    for rendered in all_rendered:
        for rule in rendered.kind("PrometheusRule"):
            queries += [
                (f"{rendered.name}: alert {r['alert']}", r["expr"])
                for g in rule["spec"]["groups"]
                for r in g["rules"]
            ]
    assert len(queries) > 30
    invalid = []
    for where, expr in queries:
        try:
            promql.parse(_as_promql(expr))
        except ValueError as exc:
            invalid.append(f"{where}: {exc}\n    {expr}")
    assert not invalid, "\n".join(invalid)
    with pytest.raises(ValueError):  # the check does catch broken PromQL
        promql.parse("sum by (flow (rate(streamflow_events_consumed_total[5m]))")


def test_service_monitor_scrapes_workers_and_gateway(all_rendered: list[Rendered]) -> None:
    monitors = [(r, m) for r in all_rendered for m in r.kind("ServiceMonitor")]
    assert monitors, "no example enables the ServiceMonitor"
    for rendered, monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        ports = {e["port"] for e in monitor["spec"]["endpoints"]}
        scraped = [
            s
            for s in rendered.kind("Service")
            if all(s["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        names = {p["name"] for s in scraped for p in s["spec"]["ports"]}
        assert {"metrics", "http"} <= names & ports
        assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


# -- values documentation and Kubernetes schemas


@dataclass
class _Key:
    line: int
    indent: int
    text: str
    documented: bool
    parent: _Key | None


def _values_keys() -> list[_Key]:
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys: list[_Key] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        prev = i - 1
        while prev >= 0 and not lines[prev].strip():
            prev -= 1
        documented = (prev >= 0 and lines[prev].lstrip().startswith("#")) or " #" in line
        indent = len(m.group(1))
        parent = next((k for k in reversed(keys) if k.indent < indent), None)
        keys.append(_Key(i + 1, indent, line.strip(), documented, parent))
    return keys


def test_every_values_key_is_documented() -> None:
    """Each key has a comment, unless it is a field of a documented value whose fields
    carry no comments of their own (a resources block, a probe, a security context)."""
    keys = _values_keys()
    assert len(keys) > 50

    def blob(k: _Key) -> bool:
        children = [c for c in keys if c.parent is k]
        return covered(k) and not any(c.documented for c in children)

    def covered(k: _Key) -> bool:
        return k.documented or (k.parent is not None and blob(k.parent))

    missing = [f"values.yaml:{k.line}: {k.text}" for k in keys if not covered(k)]
    assert not missing, "undocumented values:\n" + "\n".join(missing)


def test_manifests_match_the_kubernetes_schemas(all_rendered: list[Rendered]) -> None:
    try:
        kv = importlib.import_module("kubernetes_validate")
    except ImportError:
        _skip_or_fail("kubernetes-validate is not installed (pip install -e '.[dev]')")
        return
    checked = 0
    for rendered in all_rendered:
        for doc in rendered.docs:
            if doc["kind"] in CUSTOM_KINDS:
                continue  # CRDs: no schema offline; their shape is checked above
            for version in K8S_VERSIONS:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as exc:
                    pytest.fail(
                        f"{rendered.name}: {doc['kind']}/{doc['metadata']['name']} is invalid "
                        f"for Kubernetes {version}: {exc.message} at {list(exc.path)}"
                    )
                checked += 1
    assert checked > 0
