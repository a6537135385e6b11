"""``streamflow executions list|show``: what executions did, read from the executions topic.

Shaped like ``streamflow dlq``: a topology, filters, ``--json`` (one object per line),
``--broker``. Each call folds the whole topic into an in-memory store (see
``observability/history.py``); ``--follow`` then keeps reading and prints what changes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from streamflow import exactjson
from streamflow.cli.trace import execution_block
from streamflow.errors import ConfigError
from streamflow.observability import history
from streamflow.observability.events import ExecutionEvent, is_terminal
from streamflow.observability.redact import redact
from streamflow.topology.loader import load_integration
from streamflow.topology.models import parse_duration
from streamflow.topology.plan import compile_plan
from streamflow.transport import DEFAULT_BROKER, open_transport


def add_parser(sub: Any) -> None:
    p = sub.add_parser("executions", help="list and show executions (status, steps, errors)")
    esub = p.add_subparsers(dest="executions_command", required=True)
    lp = esub.add_parser("list", help="executions, newest first")
    lp.add_argument("topology", help="the integration YAML file")
    lp.add_argument("--flow", help="only this flow's executions")
    lp.add_argument(
        "--status", choices=history.STATUSES, help="only executions that ended (or are) so"
    )
    lp.add_argument("--instance", help="only this instance's executions")
    lp.add_argument("--since", help="only those started in this past window (e.g. 30m, 2h)")
    lp.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    sp = esub.add_parser("show", help="one execution step by step (the trace `run` prints)")
    sp.add_argument("topology", help="the integration YAML file")
    sp.add_argument("id", metavar="ID", help="the execution id")
    for d in (lp, sp):
        d.add_argument("--json", action="store_true", help="one JSON object per line")
        d.add_argument(
            "--follow",
            action="store_true",
            help="then keep printing new events until Ctrl-C (show: until it ends)",
        )
        d.add_argument(
            "--broker",
            default=DEFAULT_BROKER,
            help="local://DIR (embedded, default local://.streamflow) or kafka://HOST:PORT[,…]",
        )


def cmd_executions(args: argparse.Namespace) -> int:
    integration = load_integration(args.topology)
    plan = compile_plan(integration)
    if getattr(args, "flow", None) and args.flow not in integration.flows:
        raise ConfigError(
            f"unknown flow '{args.flow}'; this integration has: {', '.join(integration.flows)}"
        )
    transport = open_transport(args.broker)
    store = history.ExecutionStore(
        history.dlq_topics(plan), history.trigger_types(integration), max_age=1e12
    )
    try:
        if not transport.partitions(plan.executions_topic):
            raise ConfigError(
                f"topic {plan.executions_topic} does not exist (run `streamflow deploy`)"
            )
        follower = None
        if args.follow:  # read from the start and keep reading: nothing falls in between
            follower = history.StoreFollower(store, transport, plan.executions_topic).start()
            follower.caught_up.wait()
        else:
            history.load(store, transport, plan.executions_topic)
        if args.executions_command == "list":
            _list(store, args, follower)
        else:
            _show(store, args, follower)
        if follower is not None:
            follower.close()
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
        transport.close()
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    since = None
    if args.since:
        try:
            since = max(0, int((time.time() - min(parse_duration(args.since), 1e12)) * 1000))
        except ValueError as exc:
            raise ConfigError(f"--since: {exc}") from None
    return {"flow": args.flow, "status": args.status, "instance": args.instance, "since_ms": since}


def _list(
    store: history.ExecutionStore, args: argparse.Namespace, follower: history.StoreFollower | None
) -> None:
    rows = store.list(limit=args.limit, **_filters(args))
    if args.json:
        for row in rows:
            print(exactjson.dumps_text(redact(row.to_json())), flush=True)
    elif rows:
        print(_header())
        for row in rows:
            print(_line(row))
    elif follower is None:
        print("no executions")
    if follower is None:
        return
    seq = store.seq
    if not args.json and not rows:
        print(_header(), flush=True)
    while True:  # until Ctrl-C
        time.sleep(0.5)
        changed = store.list(after_seq=seq, limit=10_000, **_filters(args))
        seq = max(seq, history.seq_of(changed))
        for row in changed:
            print(
                exactjson.dumps_text(redact(row.to_json())) if args.json else _line(row), flush=True
            )


def _header() -> str:
    return (
        f"{'EXECUTION':<34} {'FLOW':<18} {'STATUS':<19} {'STARTED':<20} {'TOOK':>8}  "
        "INSTANCE  STEP / ERROR"
    )


def _line(row: history.ExecutionRow) -> str:
    took = f"{row.ended_ms - row.started_ms}ms" if row.ended_ms is not None else "-"
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.started_ms / 1000))
    tail = redact(row.error)[:160] if row.error else row.step
    if row.replays:
        tail += f"  (replayed {row.replays}x)"
    return (
        f"{row.id:<34} {row.flow:<18} {row.status:<19} {started:<20} {took:>8}  "
        f"{row.instance or '-'}  {tail}"
    )


def _show(
    store: history.ExecutionStore, args: argparse.Namespace, follower: history.StoreFollower | None
) -> None:
    row = store.get(args.id)
    if row is None and follower is None:
        raise ConfigError(f"no execution {args.id} in the executions topic")
    printed = 0
    while True:
        events = [ExecutionEvent(**redact(e)) for e in (row.timeline if row else [])]
        if args.json:
            for ev in events[printed:]:
                print(exactjson.dumps_text({k: getattr(ev, k) for k in ev.__slots__}), flush=True)
        elif follower is None or (events and is_terminal(events[-1].event, events[-1].note)):
            assert row is not None
            print(execution_block(row.id, row.flow, events))
            print(
                f"  status {row.status}, instance {row.instance or '-'}, trigger {row.trigger}"
                + (f", dead letter in {row.dead_letter}" if row.dead_letter else "")
            )
        else:
            for ev in events[printed:]:
                print(f"… {ev.event} {ev.step} {ev.error or ev.note}".rstrip(), flush=True)
        printed = len(events)
        if follower is None or (events and is_terminal(events[-1].event, events[-1].note)):
            return
        time.sleep(0.3)
        row = store.get(args.id)
