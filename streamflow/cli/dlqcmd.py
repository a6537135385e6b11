"""`streamflow dlq list|show|replay`: dead letters of a flow, read from its .dlq topic."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streamflow import exactjson
from streamflow.cli.conventions import plural
from streamflow.envelope import decode_record
from streamflow.errors import ConfigError, PoisonMessageError
from streamflow.runtime import dlq
from streamflow.runtime.runner import pick_flow
from streamflow.topology.loader import load_integration
from streamflow.topology.models import parse_duration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport


def cmd_dlq(args: argparse.Namespace) -> int:
    integration = load_integration(args.topology)
    flow = pick_flow(integration, args.flow)
    plan = compile_plan(integration)
    transport = open_transport(args.broker)
    try:
        letters = dlq.read_dead_letters(transport, plan, flow)
        since = None
        if args.since is not None:
            since = int((time.time() - parse_duration(args.since)) * 1000)
        chosen = dlq.select(letters, ids=args.ids, step=args.step, error=args.error, since_ms=since)
        states = dlq.letter_states(transport, plan, flow, chosen)
        if args.dlq_command == "list":
            _print_dead_letters(chosen, states, args.json)
        elif args.dlq_command == "show":
            for d in chosen:
                _show_dead_letter(d, states[d.id], integration.flows[flow].doc.encoding)
        else:
            if args.all:
                chosen = dlq.unreplayed(transport, plan, flow, chosen)
            elif not args.ids and not (args.step or args.error or args.since):
                raise ConfigError(
                    "name the dead letters to replay (IDs, --step, --error, --since) or use --all"
                )
            edit = _edit_in_editor if args.edit else None
            skipped: list[str] = []
            ids = dlq.replay(
                transport,
                plan,
                integration.flows[flow],
                chosen,
                edit=edit,
                mark_all=args.all,
                skipped=skipped,
                states=states,
                allow_compensated=args.allow_compensated,
                again=args.again,
            )
            for why in skipped:
                print(f"skipped: {why}", file=sys.stderr)
            for eid in ids:
                print(eid)
            print(f"replayed {plural(len(ids), 'dead letter')}", file=sys.stderr)
    finally:
        transport.close()
    return 0


def _print_dead_letters(
    letters: list[dlq.DeadLetter], states: dict[str, dlq.LetterState], as_json: bool
) -> None:
    rows = [{**d.summary(), **states[d.id].columns()} for d in letters]
    if as_json:
        for row in rows:
            print(json.dumps(_typed(row)))
        return
    if not rows:
        print("no dead letters")
        return
    print(
        f"{'ID':<10} {'TIME':<20} {'STEP':<20} {'ATT':>3}  {'ERROR':<22} "
        f"{'COMPENSATED':<19} {'REPLAYED':>8}  EXECUTION / MESSAGE"
    )
    for r in rows:
        replayed = f"{r['replayed']}x" if r["replayed"] else "no"
        print(
            f"{r['id']:<10} {r['time']:<20} {r['step']:<20} {r['attempt']:>3}  "
            f"{r['error_type']:<22} {r['compensated'] or 'no':<19} {replayed:>8}  "
            f"{r['execution_id']}\n{'':>88}{r['error'][:200]}"
        )


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """JSON output keeps numbers as numbers (headers arrive as text)."""
    return {k: int(v) if k == "attempt" and _digits(v) else v for k, v in row.items()}


def _digits(v: Any) -> bool:
    """ASCII digits only: int() of '²' raised, and an id of digits is text, not a number."""
    return isinstance(v, str) and v.isascii() and v.isdigit()


def _show_dead_letter(d: dlq.DeadLetter, state: dlq.LetterState, encoding: str) -> None:
    row = {**d.summary(), **state.columns(), "replays": state.replays}
    print(json.dumps(_typed(row), indent=2))
    try:
        env = decode_record(d.record, encoding)  # type: ignore[arg-type]
        print(exactjson.dumps_text(env.shown(), exactjson.OPT_INDENT_2))  # numbers exact
    except PoisonMessageError:
        print(f"raw record (not an envelope): {d.record.value[:2000]!r}")


def _edit_in_editor(payload: Any) -> Any:
    editor = os.environ.get("EDITOR", "vi")
    with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
        if isinstance(payload, bytes):  # a payload that is not JSON: its bytes, to fix
            f.write(payload)
        else:
            f.write(exactjson.dumps(payload, exactjson.OPT_INDENT_2))  # every digit, both ways
        path = f.name
    try:
        subprocess.run([*shlex.split(editor), path], check=True)
        return exactjson.loads(Path(path).read_bytes())
    except (subprocess.CalledProcessError, exactjson.JSONDecodeError) as exc:
        raise ConfigError(f"edited payload not used: {exc}") from None
    finally:
        os.unlink(path)
