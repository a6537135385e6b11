"""One function per CLI verb; each calls the layers below and returns an exit code."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from streamflow.cli.conventions import emit, plural, unknown_name, write_output
from streamflow.cli.dlqcmd import cmd_dlq  # noqa: F401  (main dispatches cmd_<verb>)
from streamflow.cli.executions import cmd_executions  # noqa: F401  (main dispatches cmd_<verb>)
from streamflow.cli.inputs import config_values, read_payloads
from streamflow.cli.trace import TraceWriter
from streamflow.errors import ConfigError, FatalError, Issue, ValidationFailed
from streamflow.ingress import FlowIngress
from streamflow.instances import store as instances
from streamflow.instances.vault import new_key
from streamflow.runtime import dlq
from streamflow.runtime.app import App, AppOptions, environment
from streamflow.runtime.runner import pick_flow, run_events
from streamflow.topology.docs import reference_markdown
from streamflow.topology.jsonschema import integration_schema
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.topology.registry import STEPS, TRIGGERS, TypeInfo
from streamflow.topology.values import parse_assignments, read_config_file
from streamflow.transport import open_transport
from streamflow.triggers.console import ConsoleConfig
from streamflow.triggers.gateway import Gateway, manual_trigger

AUXILIARY = ("mocks", "events", "config", "tests")


def topology_files(paths: list[str]) -> list[Path]:
    """Files named, plus every topology YAML under named directories (mocks, events,
    config and test files beside them are not topologies and are passed over)."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted([*p.rglob("*.yaml"), *p.rglob("*.yml")]):
                if (
                    not any(f.name.startswith(a) or f".{a}." in f.name for a in AUXILIARY)
                    and "tests" not in f.parts[len(p.parts) :]
                ):
                    out.append(f)
        else:
            out.append(p)
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    from streamflow.connectors.files import file_places

    issues: list[Issue] = []
    places: list[str] = []
    files = topology_files(args.paths)
    if not files:
        raise ConfigError(f"no topology files found in {' '.join(args.paths)}")
    for f in files:
        try:
            integration = load_integration(f)
            compile_plan(integration)
            places.extend(file_places(integration))
        except ValidationFailed as exc:
            issues.extend(exc.issues)
    if issues:
        raise ValidationFailed(issues)
    print(f"{plural(len(files), 'topology file')} valid")
    for line in places:  # where files may be read or written (F3: confined by default)
        print(f"  {line}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    plan = compile_plan(load_integration(args.topology))
    if args.json:
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    print(f"integration {plan.integration}\n\nTOPICS")
    width = max(len(t.name) for t in plan.topics)
    for t in plan.topics:
        cfg = " ".join(f"{k}={v}" for k, v in t.config.items())
        print(f"  {t.name:<{width}}  {t.partitions:>3} partitions  {t.purpose} {cfg}".rstrip())
    print("\nAGENTS (consumer group = input topic)")
    for fp in plan.flows.values():
        if fp.external_topic:
            print(f"  {fp.flow}: trigger reads external topic {fp.external_topic}")
        for a in fp.all_agents():
            role = "steps: " + " -> ".join(a.steps)
            if a in fp.retry_agents:
                role = f"re-delivers retries of step {a.steps[0]} when due"
            elif a is fp.compensate_agent:
                role = "runs saga compensations in reverse order"
            elif a is fp.trigger_agent and fp.trigger_fused:
                role = f"reads {a.input_topic}, runs steps: " + " -> ".join(fp.agents[0].steps)
            elif a is fp.trigger_agent:
                role = f"reads {a.input_topic} into step {fp.agents[0].steps[0]}"
            print(f"  {a.group:<{width}}  {role}")
    print("\nHOPS (where an event crosses a topic; in-process: the same agent)")
    for fp in plan.flows.values():
        for src, topic, dst in fp.hops:
            via = f"topic {topic}" if topic else "in-process"
            print(f"  {fp.flow}: {src} -> {dst}  {via}")
    return 0


def cmd_steps(args: argparse.Namespace) -> int:
    if args.markdown:
        print(reference_markdown(), end="")
        return 0
    known = {*STEPS, *TRIGGERS}
    if args.type and args.type not in known:
        raise ConfigError(unknown_name("step or trigger type", args.type, known))
    kinds: dict[str, TypeInfo] = {
        **{f"step {k}": STEPS[k] for k in STEPS if k == args.type or not args.type},
        **{f"trigger {k}": TRIGGERS[k] for k in TRIGGERS if k == args.type or not args.type},
    }
    for label, entry in sorted(kinds.items()):
        model = entry.config
        print(f"{label:<20} {entry.summary}")
        if args.type:
            since = f", since {entry.since}" if entry.since else ""
            print(f"    (category {entry.category}, {entry.stability}{since})")
            for fname, f in model.model_fields.items():
                if fname == "type":
                    continue
                req = (
                    "required"
                    if f.is_required()
                    else f"default {f.get_default(call_default_factory=True)!r}"
                )
                desc = f" — {f.description}" if f.description else ""
                print(f"    {f.alias or fname:<18} {req}{desc}")
    return 0


def schema_texts() -> dict[str, str]:
    """Kind (integration, tests, mocks) -> the JSON text of its schema."""
    from streamflow.testing.schemas import mocks_schema, tests_schema

    schemas = {
        "integration": integration_schema(),
        "tests": tests_schema(),
        "mocks": mocks_schema(),
    }
    return {k: json.dumps(v, indent=2, sort_keys=True) + "\n" for k, v in schemas.items()}


def cmd_schema(args: argparse.Namespace) -> int:
    texts = schema_texts()
    kinds = [args.kind] if args.kind else list(texts)
    if args.output and not args.kind:
        raise ConfigError(
            "--output needs a KIND (integration, tests or mocks): one schema per file"
        )
    stale = []
    for kind in kinds:
        path = args.output or str(Path(args.dir) / f"{kind}.schema.json")
        if args.check:
            out = Path(path)
            if not out.exists() or out.read_text() != texts[kind]:
                stale.append(path)
        elif write_output(path, texts[kind]):
            print(f"wrote {path}", file=sys.stderr)
    for path in stale:
        print(f"{path} is out of date: run `streamflow schema`", file=sys.stderr)
    return 1 if stale else 0


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    integration = load_integration(args.topology)
    flow = pick_flow(integration, args.flow)
    payloads = read_payloads(args.input)
    mock_values: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        if args.mocks:
            from streamflow.testing.mocks import MockServices

            mocks = MockServices.from_file(args.mocks)
            await stack.enter_async_context(mocks)
            mock_values = mocks.config_values()
        config = config_values(args, integration, mock_values)
        transport = open_transport(args.broker)
        stack.callback(transport.close)
        writer = TraceWriter(json=args.json, total=len(payloads))
        try:
            result = await run_events(
                integration,
                transport,
                config,
                payloads,
                flow=flow,
                timeout=args.timeout,
                on_event=writer,
                options=AppOptions(trace_payloads=True, env=environment()),
            )
        except TimeoutError as exc:
            writer.flush()
            raise FatalError(f"{exc} (a longer --timeout, e.g. --timeout 5m?)") from None
        writer.summary(result)
        if args.mocks and not args.json:
            counts: dict[str, int] = {}
            for call in mocks.calls:
                label = f"{call.service} {call.method} {call.path} -> {call.status}"
                counts[label] = counts.get(label, 0) + 1
            for label, n in counts.items():  # in the order they first came
                print(f"  mock {label}  x{n}")
    return 0 if result.ok else 1


def _serve_like(args: argparse.Namespace, with_http: bool) -> int:
    metrics_port = getattr(args, "metrics_port", None)
    serve = with_http and metrics_port is None  # serve: the gateway beside the agents
    if metrics_port is not None:
        with_http = True
        args.host, args.port = "0.0.0.0", metrics_port
    integration = load_integration(args.topology)
    # events of instances carry their own config: --config is needed only for the others
    config = config_values(args, integration, allow_missing=True)
    transport = open_transport(args.broker)
    worker_id = getattr(args, "worker_id", None) or os.environ.get("STREAMFLOW_WORKER_ID", "0")
    app = App(
        integration,
        transport,
        config,
        AppOptions(
            flows=args.flow,
            steps=getattr(args, "step", []),
            worker_id=worker_id,
            env=environment(),
            instances=True,
            trace_payloads=args.trace_payloads,
        ),
    )
    app.deploy()
    app.build_agents()
    app.check_topics()  # before the gateway accepts anything
    gateway = (
        Gateway(
            integration,
            transport,
            config,
            env=environment(),
            flows=args.flow,
            console=ConsoleConfig.from_env(),
        )
        if serve
        else None
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        site = None
        port = getattr(args, "port", None)  # `worker` has no --port without --metrics-port
        if gateway is not None:
            gateway.agents = app.health
            port = await gateway.start(args.host, args.port)
        elif with_http:
            from streamflow.triggers.http import start_http

            broker_ready = _broker_ready(transport, app)

            async def ready() -> bool:  # the broker answers and no agent stopped for good
                agents_up = all(h["state"] != "stopped" for h in app.health().values())
                return agents_up and await broker_ready()

            site = await start_http(args.host, args.port, ready, app.health)
        print(
            f"streamflow: {plural(len(app.agents), 'agent')} of {integration.name} running on "
            f"{transport.url}" + (f", http://{args.host}:{port}" if with_http else ""),
            file=sys.stderr,
            flush=True,
        )
        if gateway is not None and gateway.console is not None:
            print(f"  console http://{args.host}:{port}/console/", file=sys.stderr, flush=True)
        exporter = asyncio.create_task(_export_backlog(transport, app)) if with_http else None
        try:
            await app.run(stop)
        finally:
            if exporter is not None:
                exporter.cancel()
            if site is not None:
                await site.stop()
            if gateway is not None:
                await gateway.stop()

    try:
        asyncio.run(main())
    finally:
        transport.close()
    print("streamflow: stopped cleanly", file=sys.stderr)
    return 0


BACKLOG_INTERVAL = 30.0  # seconds between dead-letter backlog readings


async def _export_backlog(transport: Any, app: App) -> None:
    """Keep ``streamflow_dead_letter_backlog`` of the flows this process runs current."""
    from streamflow.observability.metrics import DEAD_LETTER_BACKLOG

    flows = app.options.flows or list(app.plan.flows)
    while True:
        for flow in flows:
            try:
                n = await asyncio.to_thread(dlq.backlog, transport, app.plan, flow)
            except Exception:  # a broker hiccup: keep the last value, try again later
                continue
            DEAD_LETTER_BACKLOG.labels(app.plan.integration, flow).set(n)
        await asyncio.sleep(BACKLOG_INTERVAL)


def _broker_ready(transport: Any, app: App) -> Callable[[], Awaitable[bool]]:
    """A worker's /readyz: the broker answers about the executions topic within 2 s (one
    probe in flight at a time, so a hung broker does not pile up threads)."""
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sf-readyz")
    probe: list[concurrent.futures.Future[Any]] = []

    async def ready() -> bool:
        if not probe or probe[0].done():
            probe[:] = [pool.submit(transport.partitions, app.plan.executions_topic)]
        try:
            n = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(probe[0])), 2.0)
        except Exception:
            return False
        return bool(n)

    return ready


def cmd_gateway(args: argparse.Namespace) -> int:
    integration = load_integration(args.topology)
    config = config_values(args, integration, allow_missing=True)
    transport = open_transport(args.broker)
    try:
        App(integration, transport, config, AppOptions(flows=args.flow)).deploy()
        gateway = Gateway(
            integration,
            transport,
            config,
            env=environment(),
            flows=args.flow,
            produce_timeout=args.produce_timeout,
            console=ConsoleConfig.from_env(),
        )

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            port = await gateway.start(args.host, args.port)
            base = f"http://{args.host}:{port}"
            print(
                f"streamflow: gateway of {integration.name} on {base} ({transport.url})",
                file=sys.stderr,
                flush=True,
            )
            if gateway.console is not None:
                print(f"  console {base}/console/", file=sys.stderr)
            for flow in gateway.webhooks:
                print(f"  webhook {base}/webhooks/{integration.name}/{flow}", file=sys.stderr)
            try:
                await stop.wait()
            finally:
                await gateway.stop()

        asyncio.run(main())
    finally:
        transport.close()
    print("streamflow: stopped cleanly", file=sys.stderr)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve_like(args, with_http=True)


def cmd_worker(args: argparse.Namespace) -> int:
    return _serve_like(args, with_http=False)


def cmd_deploy(args: argparse.Namespace) -> int:
    integration = load_integration(args.topology)
    app = App(integration, open_transport(args.broker), {})
    changes = app.transport.ensure_topics(app.topic_specs(), dry_run=args.dry_run)
    verb = "would " if args.dry_run else ""
    changed = [c for c in changes if c.action != "unchanged"]
    for c in changed:
        extra = f" from {c.previous}" if c.action == "grow" else ""
        print(f"{verb}{c.action} {c.name} ({c.partitions} partitions{extra})")
    if not changed:
        print(f"all {len(changes)} topics up to date; nothing to change")
    app.transport.close()
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    integration: Integration = load_integration(args.topology)
    flow = pick_flow(integration, args.flow)
    transport = open_transport(args.broker)
    if args.instance:
        if f"{integration.name}/{args.instance}" not in instances.live(
            instances.read_instances(transport)
        ):
            raise ConfigError(
                f"no instance {args.instance} of {integration.name} "
                "(`streamflow instance deploy` first)"
            )
        config: dict[str, Any] = {}
    else:
        config = config_values(args, integration)
    plan = compile_plan(integration)
    ingress = FlowIngress(integration, integration.flows[flow], plan, config)
    producer = transport.producer()
    n = 0
    for payload in read_payloads(args.input):
        env = ingress.envelope(
            payload, trigger=manual_trigger(integration.flows[flow]), instance=args.instance
        )
        ingress.send(producer, env)
        n += 1
        print(env.execution_id)
    producer.flush()
    producer.close()
    transport.close()
    print(f"produced {plural(n, 'event')} to {plan.flows[flow].first_topic}", file=sys.stderr)
    return 0


def cmd_instance(args: argparse.Namespace) -> int:
    if args.instance_command == "key":
        print(new_key())
        return 0
    integration = load_integration(args.topology)
    transport = open_transport(args.broker)
    try:
        if args.instance_command == "deploy":
            supplied: dict[str, Any] = {}
            if args.config_file:
                supplied.update(read_config_file(args.config_file))
            supplied.update(parse_assignments(args.config))
            record, created = instances.deploy_instance(
                transport, integration, args.instance, supplied, upgrade=args.upgrade
            )
            verb = "deployed" if created else "updated"
            started = instances.start_lifecycle_flows(
                transport, integration, record, "deploy", args.public_url
            )
            print(
                f"{verb} instance {record.instance} of {record.integration} "
                f"(version {record.version})"
            )
            for eid in started:
                print(f"started deploy flow: execution {eid}")
        elif args.instance_command == "remove":
            record = instances.remove_instance(transport, integration, args.instance)
            for eid in instances.start_lifecycle_flows(
                transport, integration, record, "remove", args.public_url
            ):
                print(f"started remove flow: execution {eid}")
            print(f"removed instance {record.instance} of {record.integration}")
        else:
            table = instances.live(instances.read_instances(transport))
            mine = [r for r in table.values() if r.integration == integration.name]
            if args.instance_command == "show":
                mine = [r for r in mine if r.instance == args.instance]
                if not mine:
                    raise ConfigError(f"no instance {args.instance} of {integration.name}")
            rows: list[dict[str, Any]] = [
                {
                    "instance": r.instance,
                    "integration": r.integration,
                    "version": r.version,
                    "deployed": time.strftime(
                        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.deployed_ms / 1000)
                    ),
                    "config": r.masked(),
                }
                for r in sorted(mine, key=lambda r: r.instance)
            ]
            if args.instance_command == "show" and not args.json:
                row = rows[0]
                width = max(len(k) for k in row["config"]) if row["config"] else 0
                for key in ("instance", "integration", "version", "deployed"):
                    print(f"{key + ':':<13}{row[key]}")
                print("config:")
                for key, value in row["config"].items():
                    print(f"  {key:<{width}}  {json.dumps(value)}")
            else:
                emit(
                    rows,
                    args.json,
                    ("instance", "version", "deployed"),
                    empty=f"no instances of {integration.name}",
                )
    finally:
        transport.close()
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from streamflow.testing import cases

    files = cases.load_test_files(args.paths)  # ValidationFailed: exit 2, file:line:col
    reporter = cases.Reporter()
    results = asyncio.run(cases.run_test_files(files, select=args.select, on_result=reporter.case))
    reporter.summary(results)
    if args.junit_xml:
        cases.write_junit_xml(results, args.junit_xml)  # "-": stdout
    if not results:
        raise ConfigError(f"no test case matches -k {args.select!r}")
    return 0 if all(r.passed for r in results) else 1
