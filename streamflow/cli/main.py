"""The ``streamflow`` command: parses arguments and calls the layers below; no logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from streamflow.cli import executions
from streamflow.cli.conventions import Parser, duration
from streamflow.errors import ConfigError, FatalError, ValidationFailed
from streamflow.instances.store import PUBLIC_URL_ENV
from streamflow.observability import tracing
from streamflow.observability.logs import configure_logging
from streamflow.transport import DEFAULT_BROKER

SCHEMA_KINDS = ("integration", "tests", "mocks")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a config variable (repeatable)",
    )
    p.add_argument("--config-file", metavar="FILE", help="YAML/JSON mapping of config variables")


def _add_broker(p: argparse.ArgumentParser, default: str | None = DEFAULT_BROKER) -> None:
    p.add_argument(
        "--broker",
        default=default,
        required=default is None,
        help="local://DIR (embedded, default local://.streamflow) or kafka://HOST:PORT[,…]",
    )


def _add_trace_payloads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trace-payloads",
        action="store_true",
        help="write each step's payload into its execution event (the console's timeline "
        "shows them; the executions topic grows by a payload per event)",
    )


def _add_dlq(sub: Any) -> None:
    p = sub.add_parser("dlq", help="list, show and replay dead letters")
    dsub = p.add_subparsers(dest="dlq_command", required=True)
    for name, text in (
        ("list", "list dead letters"),
        ("show", "show dead letters in full"),
        ("replay", "send dead letters back to the step where they failed"),
    ):
        d = dsub.add_parser(name, help=text)
        d.add_argument("topology", help="the integration YAML file")
        d.add_argument("--flow", help="the flow (default: the only one)")
        d.add_argument(
            "ids",
            nargs="*",
            metavar="ID",
            help="PARTITION:OFFSET or execution id (default: all that match)",
        )
        d.add_argument("--step", help="only dead letters of this step")
        d.add_argument("--error", help="only those whose error contains this text")
        d.add_argument(
            "--since",
            type=duration,
            metavar="DURATION",
            help="only those newer than this (e.g. 30m, 2h)",
        )
        d.add_argument("--json", action="store_true", help="JSON lines instead of a table")
        _add_broker(d)
        if name == "replay":
            d.add_argument(
                "--all",
                action="store_true",
                help="replay every dead letter not replayed by --all before",
            )
            d.add_argument("--edit", action="store_true", help="edit each payload in $EDITOR first")
            d.add_argument(
                "--allow-compensated",
                action="store_true",
                help="replay even letters of executions their saga compensated",
            )
            d.add_argument(
                "--again", action="store_true", help="replay even letters replayed before"
            )


def _add_instance(sub: Any) -> None:
    p = sub.add_parser(
        "instance", help="deploy an integration per customer: deploy, list, show, remove"
    )
    isub = p.add_subparsers(dest="instance_command", required=True)
    d = isub.add_parser(
        "deploy", help="validate config values, encrypt secrets, record the instance"
    )
    d.add_argument("topology", help="the integration YAML file")
    d.add_argument("--instance", required=True, help="the instance id (e.g. the customer)")
    d.add_argument("--upgrade", action="store_true", help="move the instance to this version")
    d.add_argument(
        "--public-url",
        default=os.environ.get(PUBLIC_URL_ENV, "http://127.0.0.1:8080"),
        help=f"the gateway's public base URL for webhook links (${PUBLIC_URL_ENV})",
    )
    _add_broker(d)
    _add_config(d)
    for name, text in (
        ("list", "instances of the integration"),
        ("show", "one instance, secrets masked"),
        ("remove", "remove an instance (its flows stop accepting its events)"),
    ):
        c = isub.add_parser(name, help=text)
        c.add_argument("topology", help="the integration YAML file")
        if name != "list":
            c.add_argument("--instance", required=True, help="the instance id")
        if name == "remove":
            c.add_argument(
                "--public-url",
                default=os.environ.get(PUBLIC_URL_ENV, "http://127.0.0.1:8080"),
                help=f"the gateway's public base URL for webhook links (${PUBLIC_URL_ENV})",
            )
        c.add_argument("--json", action="store_true", help="JSON instead of a table")
        _add_broker(c)
    isub.add_parser("key", help="print a new STREAMFLOW_SECRET_KEY")


def _add_deploy_produce(sub: Any) -> None:
    p = sub.add_parser("deploy", help="create or update the topics of the plan (idempotent)")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    _add_broker(p)

    p = sub.add_parser("produce", help="send events to a flow")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--flow", help="the flow (default: the only one)")
    p.add_argument("--input", default="-", help="JSON or NDJSON file of payloads, - for stdin")
    p.add_argument("--instance", default="", help="the events belong to this deployed instance")
    _add_broker(p)
    _add_config(p)


def _add_gateway(sub: Any) -> None:
    p = sub.add_parser(
        "gateway", help="webhooks, schedule/poll/file triggers, /readyz, /metrics (no agents)"
    )
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8080, help="0: any free port")
    p.add_argument("--flow", action="append", default=[], help="only this flow (repeatable)")
    p.add_argument(
        "--produce-timeout",
        type=duration,
        metavar="DURATION",
        default=10.0,
        help="how long a webhook waits for the broker's confirmation before 503 (e.g. 10s)",
    )
    _add_broker(p)
    _add_config(p)


def _add_test(sub: Any) -> None:
    p = sub.add_parser("test", help="run flow test cases (tests.yaml) on the embedded transport")
    p.add_argument("paths", nargs="+", metavar="PATH", help="test files or directories")
    p.add_argument("-k", dest="select", metavar="TEXT", help="only cases whose id contains TEXT")
    p.add_argument(
        "--junit-xml", metavar="FILE", help="also write a JUnit XML report (- for stdout)"
    )


def visible_runs(command: str) -> None:
    """At the default level: `log` steps at their own level (run, serve, worker) and one
    line per finished execution (serve, worker)."""
    import logging

    if command in ("run", "serve", "worker"):
        logging.getLogger("streamflow.step").setLevel(logging.INFO)
    if command in ("serve", "worker"):
        logging.getLogger("streamflow.executions").setLevel(logging.INFO)


def parser() -> argparse.ArgumentParser:
    ap = Parser(prog="streamflow", description="Kafka-native integration flows.")
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    ap.add_argument(
        "--log-level",
        default=None,
        help="DEBUG, INFO, WARNING (default), ERROR; by default run/serve/worker also show "
        "`log` steps at their level and (serve/worker) one line per finished execution; "
        "an explicit level applies to every line",
    )
    ap.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="json: one JSON object per line (for log shippers)",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check topology files; exit 2 with file:line:col lines")
    p.add_argument("paths", nargs="+", metavar="PATH", help="topology files or directories")

    p = sub.add_parser("plan", help="print topics, partitions, groups and agents")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")

    p = sub.add_parser("steps", help="list step and trigger types and their fields")
    p.add_argument("type", nargs="?", help="show one type in detail (e.g. http)")
    p.add_argument("--markdown", action="store_true", help="the reference page (docs/steps.md)")

    p = sub.add_parser(
        "schema", help="write the JSON Schemas (draft-07) of integration, tests and mocks files"
    )
    p.add_argument(
        "kind", nargs="?", choices=SCHEMA_KINDS, help="only this schema (default: all three)"
    )
    p.add_argument("--dir", default="schemas", help="where the schema files are")
    p.add_argument(
        "--output", "-o", metavar="FILE", help="with KIND: write it here instead (- for stdout)"
    )
    p.add_argument("--check", action="store_true", help="exit 1 if a file is not up to date")

    p = sub.add_parser("run", help="one-shot: feed events, run until every execution ended")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--flow", help="the flow (default: the only one)")
    p.add_argument("--input", default="-", help="JSON or NDJSON file of payloads, - for stdin")
    p.add_argument("--mocks", help="YAML of mock HTTP services to start on loopback")
    p.add_argument("--json", action="store_true", help="machine-readable event lines")
    p.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        default=120.0,
        help="give up on executions not ended by then (e.g. 10s, 2m; default: 120 seconds)",
    )
    _add_broker(p)
    _add_config(p)

    p = sub.add_parser("serve", help="agents and HTTP endpoints until SIGTERM")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8080, help="0: any free port")
    p.add_argument("--flow", action="append", default=[], help="only this flow (repeatable)")
    _add_trace_payloads(p)
    _add_broker(p)
    _add_config(p)

    _add_gateway(sub)

    p = sub.add_parser("worker", help="run agents (start more to scale out)")
    p.add_argument("topology", help="the integration YAML file")
    p.add_argument("--flow", action="append", default=[], help="only this flow (repeatable)")
    p.add_argument(
        "--step", action="append", default=[], help="only this step's agent (repeatable)"
    )
    p.add_argument("--worker-id", default=None, help="stable id per worker slot (exactly-once)")
    _add_trace_payloads(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /healthz on this port (all interfaces)",
    )
    _add_broker(p)
    _add_config(p)

    _add_deploy_produce(sub)
    _add_dlq(sub)
    executions.add_parser(sub)
    _add_instance(sub)
    _add_test(sub)
    return ap


def _version() -> str:
    try:
        return metadata.version("streamflow")
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    configure_logging(args.log_level or "WARNING", args.log_format)
    if args.log_level is None:
        visible_runs(args.command)
    tracing.configure()
    from streamflow.cli import commands

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        return int(handler(args))
    except ValidationFailed as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FatalError as exc:
        print(f"fatal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
