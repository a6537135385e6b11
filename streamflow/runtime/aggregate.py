"""The aggregate agent: collect events by key, continue with one event per complete group
(the Aggregator of the integration patterns; Kafka Streams' windowed aggregation).

State. Every group lives in the agent's changelog topic (``state.py``), in the partition of
the input records that feed it: ``g<US>key`` (the group: first arrival, deadline, expected
size, the envelope it continues as), ``m<US>key<US>member`` (one per collected event: its
payload and index) and ``c<US>key`` (a completed group, remembered ``retain_closed`` to
recognise late events). A record not keyed by its group key (``key:``, or the split's
parent id) is first moved to the partition of its group: re-produced, once, to the agent's
own input topic keyed by the group key (a repartition, as Kafka Streams does). A split's
group continues with the key of the parent's record.

Completion. After each arrival: ``split`` (every child of the parent arrived), ``count``,
``when`` (an expression over ``group.items``/``group.count``/``group.key``), ``max_items``.
On the agent's clock (checked every loop, at least twice a second): ``timeout`` (since the
group's first arrival) and ``window`` (tumbling, by the event's ``created_ms``; the window
closes ``grace`` after its end). Timers are deadlines stored with the group, so they survive
a restart and fire once: the emitted event, the deletion of the group and its ``c`` marker
are produced together (one transaction in an exactly-once flow).

Duplicates and late events. A member is identified by its execution id: a re-delivered
record (at-least-once) is ignored. An event for a completed group (or a closed window) is
late: ``late: drop`` ends its execution with a ``filtered`` event saying why,
``dead_letter`` dead-letters it.

The result payload: ``{key, items, count, complete}`` (``complete`` says which condition
held; for a split ``expected`` and ``failed``: ``[{index, step, error}]`` of the children
that were dead-lettered on the way, which count as arrived; ``window: {start_ms, end_ms}``
for a window). Items are in
index order for a split, else in arrival order. The event continues as the split's parent
execution (its id, trigger, steps and meta), or, keyed, as a new execution whose id is
derived from the group so that a repeated completion has the same id.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streamflow.envelope import Envelope, carried, now_ms
from streamflow.errors import PoisonMessageError
from streamflow.runtime.contain import Out
from streamflow.runtime.processor import ChainProcessor, ProcessorOptions
from streamflow.runtime.state import Changelog
from streamflow.steps.base import AnyStep, Outcome
from streamflow.steps.patterns import AggregateConfig, AggregateStep
from streamflow.topology.expressions import ExpressionEvalError
from streamflow.topology.models import Flow
from streamflow.topology.plan import AgentPlan, FlowPlan
from streamflow.transport.base import Record, TopicPartition, Transport

log = logging.getLogger("streamflow.runtime")
US = "\x1f"  # separates the parts of a state key
REKEYED = "sf-rekeyed"
TIMER_EVERY = 0.2  # seconds between deadline checks
PURGE_EVERY = 10.0  # seconds between sweeps of expired completion markers


@dataclass
class Group:
    key: str  # the state key: the group key, with '@<window start>' for a window
    head: dict[str, Any]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)


class AggregateProcessor(ChainProcessor):
    def __init__(
        self,
        flow: Flow,
        flow_plan: FlowPlan,
        agent: AgentPlan,
        steps: Mapping[str, AnyStep],
        executions_topic: str,
        options: ProcessorOptions,
        store_results: frozenset[str],
        transport: Transport,
    ) -> None:
        super().__init__(flow, flow_plan, agent, steps, executions_topic, options, store_results)
        self.sid = agent.steps[0]
        step = steps[self.sid]
        assert isinstance(step, AggregateStep)
        self.step = step
        self.cfg: AggregateConfig = step.cfg
        self.all_sync = True
        self.changelog = Changelog(transport, flow_plan.state_topic_of[self.sid])
        self.groups: dict[int, dict[str, Group]] = {}  # loaded partitions -> their groups
        self.closed: dict[int, dict[str, dict[str, Any]]] = {}
        self.next_timer = 0.0
        self.next_purge = 0.0
        # the join of a `parallel` step (loader.py names it '<parallel id>-join')
        self.join_of = next(
            (
                sid
                for sid, n in flow.nodes.items()
                if n.config.type == "parallel" and f"{sid}-join" == self.sid
            ),
            None,
        )
        self.branch_steps: dict[str, frozenset[str]] = {}  # branch -> its step ids (nested too)
        if self.join_of is not None:
            for route in flow.nodes[self.join_of].routes:
                self.branch_steps[route.when] = _reachable(flow, route.steps, self.sid)

    # -- the agent's hooks (agent.py) ------------------------------------------------------
    def tick(self, assignment: Sequence[TopicPartition]) -> list[Out]:
        """Called by the agent on its I/O thread before each batch: restore the state of
        newly assigned partitions, forget revoked ones, fire due deadlines."""
        mine = {p for t, p in assignment if t == self.agent.input_topic}
        for p in set(self.groups) - mine:
            del self.groups[p], self.closed[p]
        new = mine - set(self.groups)
        if new:
            self._restore(self.changelog.load(new))
        outs: list[Out] = []
        now = time.monotonic()
        if now >= self.next_timer:
            self.next_timer = now + TIMER_EVERY
            self._fire_due(outs)
        if now >= self.next_purge:
            self.next_purge = now + PURGE_EVERY
            self._purge()
        self.flush_metrics()
        return outs + self.changelog.drain()

    def reset(self) -> None:
        """The batch was not committed (aborted transaction, failed delivery): the consumer
        rewinds, so the state is read again from the changelog at the next tick."""
        self.groups.clear()
        self.closed.clear()
        self.changelog.drain()

    def _restore(self, state: dict[int, dict[str, Any]]) -> None:
        for p, entries in state.items():
            groups: dict[str, Group] = {}
            closed: dict[str, dict[str, Any]] = {}
            for k, v in entries.items():
                kind, _, rest = k.partition(US)
                if kind == "g":
                    groups.setdefault(rest, Group(rest, {})).head = v
                elif kind == "m":
                    gkey, _, member = rest.rpartition(US)
                    groups.setdefault(gkey, Group(gkey, {})).members[member] = v
                elif kind == "c":
                    closed[rest] = v
            for gkey in [g for g, grp in groups.items() if not grp.head]:
                log.warning("aggregate %s: members of %r without a group record", self.sid, gkey)
                del groups[gkey]
            self.groups[p], self.closed[p] = groups, closed

    # -- records ------------------------------------------------------------------------------
    def handle_sync(self, rec: Record) -> list[Out]:
        outs: list[Out] = []
        env = self._decode(rec, outs)
        if env is not None:
            self._collect(env, rec, outs)
        return outs + self.changelog.drain()

    async def handle(self, rec: Record) -> list[Out]:
        return self.handle_sync(rec)

    def _collect(self, env: Envelope, rec: Record, outs: list[Out]) -> None:
        try:
            key = self.step.key_of(env)
        except (PoisonMessageError, ExpressionEvalError) as exc:
            self._dead_letter(env, rec, exc, outs)
            return
        raw_key = key.encode()
        if rec.key != raw_key and rec.header(REKEYED) is None:
            # to the partition of its group: the same topic, keyed by the group key
            headers = [*carried(rec.headers), (REKEYED, b"1")]
            outs.append(Out(self.agent.input_topic, rec.value, raw_key, headers))
            return
        p = rec.partition
        if p not in self.groups:  # not restored yet (the agent ticks before each batch)
            self._restore(self.changelog.load([p]))
        c = self.cfg.complete
        gkey, window = key, None
        if c.window is not None:
            size = int(c.window * 1000)
            start = env.created_ms - env.created_ms % size
            window = (start, start + size)
            gkey = f"{key}@{start}"
        done = self.closed[p].get(gkey)
        if done is None and window is not None and now_ms() > window[1] + c.grace * 1000:
            done = {"reason": "window closed"}
        if done is not None:
            self._late(env, rec, key, str(done.get("reason", "")), outs)
            return
        group = self.groups[p].get(gkey)
        if group is None:
            group = Group(gkey, self._head(env, rec, key, window))
            self.groups[p][gkey] = group
            self.changelog.put(p, f"g{US}{gkey}", group.head)
        member = env.execution_id
        if member in group.members:
            return  # a re-delivered record: already collected
        split = env.meta.get("split") if self.cfg.by_split else None
        entry: dict[str, Any] = {
            "i": split.get("index") if isinstance(split, dict) else None,
            "n": len(group.members),
            "payload": env.payload,
        }
        if self.join_of is not None and isinstance(split, dict):
            entry["b"] = split.get("branch")
            entry["saga"] = env.saga[int(split.get("saga_len", 0)) :]
            own = self.branch_steps.get(str(entry["b"]), ())
            entry["steps"] = {k: v for k, v in env.steps.items() if k in own}
        failed = env.meta.get("split_failed")
        if self.cfg.by_split and isinstance(failed, dict):
            entry["failed"] = failed  # a dead-lettered child (its failure is recorded already)
        group.members[member] = entry
        self.changelog.put(p, f"m{US}{gkey}{US}{member}", entry)
        if "failed" not in entry:
            self.completed += 1
            self._event(env, outs, "completed", note=f"collected by {self.sid} (group {key})")
        reason = self._complete_now(group)
        if reason is not None:
            self._emit(p, group, reason, outs)

    def _head(
        self, env: Envelope, rec: Record, key: str, window: tuple[int, int] | None
    ) -> dict[str, Any]:
        c = self.cfg.complete
        first = now_ms()
        deadline = None
        if c.timeout is not None:
            deadline = first + int(c.timeout * 1000)
        if window is not None:
            deadline = window[1] + int(c.grace * 1000)
        meta = dict(env.meta)
        expected, rkey = None, rec.key.hex() if rec.key is not None else None
        if self.cfg.by_split:
            split = meta.pop("split", {})
            expected, rkey = split.get("size"), split.get("key")
            if "up" in split:
                meta["split"] = split["up"]
            execution_id = key
        else:
            meta.pop("split", None)
            digest = hashlib.sha256(f"{self.agent.name}{US}{key}{US}{env.execution_id}".encode())
            execution_id = f"agg-{digest.hexdigest()[:24]}"
        meta.pop("last_error", None)
        joined: dict[str, Any] = {}
        if self.join_of is not None and self.cfg.by_split:
            link = env.meta.get("split") or {}
            joined = {"payload": link.get("payload"), "saga": env.saga[: link.get("saga_len", 0)]}
        return {
            "key": key,
            "first_ms": first,
            "deadline_ms": deadline,
            "expected": expected,
            "window": list(window) if window else None,
            "rkey": rkey,
            "base": {
                "execution_id": execution_id,
                "instance": env.instance,
                "created_ms": env.created_ms,
                "trace": env.trace,
                "trigger": env.trigger,
                "steps": env.steps,
                "meta": meta,
                **joined,
            },
        }

    def _entries(self, group: Group) -> list[dict[str, Any]]:
        entries = list(group.members.values())
        if entries and all(e.get("i") is not None for e in entries):
            entries.sort(key=lambda e: e["i"])
        else:
            entries.sort(key=lambda e: e.get("n", 0))
        return entries

    def _items(self, group: Group) -> list[Any]:
        return [e.get("payload") for e in self._entries(group) if "failed" not in e]

    def _complete_now(self, group: Group) -> str | None:
        c, n = self.cfg.complete, len(group.members)
        expected = group.head.get("expected")
        if (c.split or self.cfg.by_split) and expected is not None and n >= expected:
            return "split"
        ok = sum(1 for e in group.members.values() if "failed" not in e)
        if c.count is not None and ok >= c.count:
            return "count"
        if n >= self.cfg.max_items:
            return "max_items"
        if self.step.when is not None:
            scope = {"group": {"items": self._items(group), "count": n, "key": group.head["key"]}}
            try:
                if self.step.when.render(scope):
                    return "when"
            except ExpressionEvalError as exc:
                log.warning("aggregate %s: complete.when failed: %s", self.sid, exc)
        return None

    def _late(self, env: Envelope, rec: Record, key: str, reason: str, outs: list[Out]) -> None:
        why = f"late for group {key} of {self.sid} (already complete: {reason})"
        self.counters[self.sid].filtered.inc()
        if self.cfg.late == "dead_letter":
            self._dead_letter(env, rec, PoisonMessageError(why), outs)
        else:
            self._event(env, outs, "filtered", note=why)

    # -- completion ---------------------------------------------------------------------------
    def _emit(self, p: int, group: Group, reason: str, outs: list[Out]) -> None:
        head, items = group.head, self._items(group)
        payload: dict[str, Any] = {
            "key": head["key"],
            "items": items,
            "count": len(items),
            "complete": reason,
        }
        if head.get("expected") is not None:
            payload["expected"] = head["expected"]
            payload["failed"] = [
                {"index": e.get("i"), **e["failed"]} for e in self._entries(group) if "failed" in e
            ]
        if head.get("window"):
            payload["window"] = {"start_ms": head["window"][0], "end_ms": head["window"][1]}
        base = head["base"]
        env = Envelope(
            base["execution_id"],
            self.plan.integration,
            self.flow.name,
            self.sid,
            payload,
            instance=base.get("instance", ""),
            created_ms=base.get("created_ms", now_ms()),
            trace=base.get("trace", ""),
            trigger=base.get("trigger") or {},
            steps=dict(base.get("steps") or {}),
            meta=dict(base.get("meta") or {}),
        )
        # the group is done: forget it and remember that it was, in the same batch
        del self.groups[p][group.key]
        self.changelog.put(p, f"g{US}{group.key}", None)
        for member in group.members:
            self.changelog.put(p, f"m{US}{group.key}{US}{member}", None)
        marker = {"reason": reason, "at_ms": now_ms()}
        self.closed[p][group.key] = marker
        self.changelog.put(p, f"c{US}{group.key}", marker)
        if not self.cfg.by_split:
            self._event(env, outs, "started", note=f"aggregate of group {head['key']}")
        rkey = bytes.fromhex(head["rkey"]) if head.get("rkey") else None
        origin = Record(self.agent.input_topic, p, -1, rkey, b"")
        if self.join_of is not None:
            self._joined(env, group, reason, origin, outs)
            return
        result = {"key": head["key"], "count": len(items), "complete": reason}
        outcome = Outcome(payload, result, note=f"{len(items)} item(s), complete: {reason}")
        self._advance(env, outcome, origin, outs, payload)

    def _joined(
        self, env: Envelope, group: Group, reason: str, origin: Record, outs: list[Out]
    ) -> None:
        """A parallel step's branches are joined: the parent goes on with its own payload and
        ``steps.<parallel>.<branch>``, or fails (``on_failure: fail``) when a branch failed
        or is missing - then its completed branches' compensations run (saga)."""
        assert self.join_of is not None
        cfg = self.flow.nodes[self.join_of].config
        base = group.head["base"]
        entries = self._entries(group)
        results = {e["b"]: e.get("payload") for e in entries if "failed" not in e}
        failed = {e["b"]: e["failed"].get("error", "") for e in entries if "failed" in e}
        names = [r.when for r in self.flow.nodes[self.join_of].routes]
        missing = [b for b in names if b not in results and b not in failed]
        needed = getattr(cfg, "join", "all")
        want = len(names) if needed == "all" else 1 if needed == "any" else int(needed)
        enough = len(results) >= want
        env.payload = base.get("payload")
        env.saga = list(base.get("saga") or []) + [x for e in entries for x in e.get("saga", [])]
        for e in entries:  # the branches' step results: ${steps.<a branch's step>} after it
            env.steps.update(e.get("steps") or {})
        if not enough and getattr(cfg, "on_failure", "fail") == "fail":
            why = "; ".join(
                [f"branch {b} failed: {err}" for b, err in failed.items()]
                + (
                    [f"branch(es) {', '.join(missing)} did not finish ({reason})"]
                    if missing
                    else []
                )
            )
            env.step = self.join_of
            self._dead_letter(
                env, origin, PoisonMessageError(f"parallel {self.join_of}: {why}"), outs
            )
            return
        if failed or not enough:  # (with join any/n the branches not waited for are absent)
            results["_partial"] = {"failed": failed, "missing": missing, "complete": reason}
        env.steps[self.join_of] = results
        note = f"joined {len(results) - ('_partial' in results)} of {len(names)} ({reason})"
        self._advance(env, Outcome(env.payload, None, note=note), origin, outs, env.payload)

    def _fire_due(self, outs: list[Out]) -> None:
        now = now_ms()
        for p, groups in self.groups.items():
            due = [g for g in groups.values() if (g.head.get("deadline_ms") or now + 1) <= now]
            for group in due:
                reason = "window" if group.head.get("window") else "timeout"
                self._emit(p, group, reason, outs)

    def _purge(self) -> None:
        oldest = now_ms() - int(self.cfg.retain_closed * 1000)
        for p, closed in self.closed.items():
            for gkey in [k for k, v in closed.items() if v.get("at_ms", 0) < oldest]:
                del closed[gkey]
                self.changelog.put(p, f"c{US}{gkey}", None)


def _reachable(flow: Flow, first: Sequence[str], join: str) -> frozenset[str]:
    """The step ids a branch may run: its steps and the routes nested in them."""
    seen: set[str] = set()
    todo = list(first)
    while todo:
        sid = todo.pop()
        if sid in seen or sid not in flow.nodes:
            continue
        seen.add(sid)
        node = flow.nodes[sid]
        todo.extend(s for r in node.routes for s in r.steps)
        if node.next is not None and node.next != join:
            todo.append(node.next)
    return frozenset(seen)
