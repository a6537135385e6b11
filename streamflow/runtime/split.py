"""The split agent: one child execution per item (the Splitter of the integration patterns).

A ``split`` step always runs in an agent of its own (``plan.py``). For an envelope with
``n`` items it produces, in the agent's batch (one transaction in an exactly-once flow),
``n`` child envelopes for the next step, each keyed by its own execution id, so that the
children spread over the partitions and run concurrently (an ``aggregate`` moves them back
together by their parent). A child's execution id is ``<parent>-<index>``, its payload the
item, and its ``meta.split`` is ``{parent, index, size, step, key}`` (``key``: the parent
record's key in hex, which the parent continues with after an aggregate; ``up``: the
parent's own ``meta.split``, for a split inside a split). Execution events: the parent's
``step`` event says ``split into n``; when no ``aggregate`` collects the children the parent is
``completed`` there. Each child starts with a ``started`` event carrying ``parent`` and
``index``. A re-delivered parent (at-least-once) produces the same child ids again, which
an ``aggregate`` recognises as duplicates.
"""

from __future__ import annotations

from typing import Any

from streamflow.envelope import Encoding, Envelope, encode
from streamflow.errors import PoisonMessageError
from streamflow.runtime.contain import Out
from streamflow.runtime.processor import ChainProcessor
from streamflow.steps.base import Outcome
from streamflow.topology.models import Flow
from streamflow.topology.plan import FlowPlan
from streamflow.transport.base import Record


class SplitProcessor(ChainProcessor):
    """A ChainProcessor whose split and parallel steps fan out instead of going on with one
    envelope."""

    INPUT_KEPT_BY = frozenset({"split", "parallel"})  # their children start from it

    def _advance(
        self,
        env: Envelope,
        outcome: Outcome,
        rec: Record,
        outs: list[Out],
        before: Any,
        fresh: bool = False,
    ) -> Envelope | None:
        node = self.flow.nodes[env.step]
        if node.config.type == "parallel":
            self._branches(env, outcome, rec, outs, before)
            return None
        if node.config.type != "split":
            return super()._advance(env, outcome, rec, outs, before, fresh)
        sid, items = env.step, outcome.payload
        if sid in self.store and outcome.result is not None:
            env.steps[sid] = outcome.result
        env.payload = before  # the parent's payload, in its own events
        collected = any(
            n.config.type == "aggregate" and getattr(n.config, "key", None) is None
            for n in self.flow.nodes.values()
        )
        note = f"split into {len(items)}"
        if node.next is None or not items or not collected:
            self.completed += 1
            self._event(env, outs, "completed", note=note)
        else:
            self._event(env, outs, "step", note=note)
        if node.next is None:
            return None
        for i, item in enumerate(items):
            self._child(env, rec, outs, node.next, str(i), item, {"index": i, "size": len(items)})
        return None

    def _branches(
        self, env: Envelope, outcome: Outcome, rec: Record, outs: list[Out], before: Any
    ) -> None:
        """One child per branch, starting at the branch's first step (or, for an empty
        branch, at the join), with the parent's payload."""
        sid = env.step
        node = self.flow.nodes[sid]
        join = f"{sid}-join"
        env.payload = before
        self._event(env, outs, "step", note=outcome.note)
        for i, route in enumerate(node.routes):
            link = {
                "index": i,
                "size": len(node.routes),
                "branch": route.when,
                "join": join,
                "payload": before,
                "saga_len": len(env.saga),
            }
            first = route.steps[0] if route.steps else join
            self._child(env, rec, outs, first, route.when, before, link)

    def _child(
        self,
        env: Envelope,
        rec: Record,
        outs: list[Out],
        step: str,
        suffix: str,
        payload: Any,
        link: dict[str, Any],
    ) -> None:
        meta = {k: v for k, v in env.meta.items() if k not in ("split", "last_error")}
        link = {"parent": env.execution_id, **link, "step": env.step}
        link["key"] = rec.key.hex() if rec.key is not None else None  # the parent's key
        up = env.meta.get("split")
        if up is not None:
            link["up"] = up
        meta["split"] = link
        child = Envelope(
            f"{env.execution_id}-{suffix}",
            env.integration,
            env.flow,
            step,
            payload,
            instance=env.instance,
            created_ms=env.created_ms,
            trace=env.trace,
            trigger=env.trigger,
            steps=env.steps,
            saga=list(env.saga),
            meta=meta,
        )
        what = f"branch {link['branch']}" if "branch" in link else f"item {link['index']}"
        self._event(child, outs, "started", note=f"{what} of {link['size']} from {env.step}")
        try:
            value, headers = encode(child, self.opts.encoding)
        except (TypeError, ValueError) as exc:
            self._dead_letter(
                child, rec, PoisonMessageError(f"cannot encode the child: {exc}"), outs
            )
            return
        outs.append(Out(self.plan.entry_of[step], value, child.execution_id.encode(), headers))
        self.produced += 1


def failed_child(
    flow: Flow, plan: FlowPlan, env: Envelope, error: str, encoding: Encoding
) -> list[Out]:
    """A dead-lettered child still counts for the ``aggregate`` that waits for every child
    of its split: it gets the child (``meta.split_failed`` = ``{step, error}``), so the
    group completes without waiting for its timeout and lists it under ``failed``."""
    split = env.meta["split"]
    target = split.get("join") or _collector(flow, env.step)  # a parallel's branch: its join
    if target is None or env.step == target:
        return []
    meta = {**env.meta, "split_failed": {"step": env.step, "error": error[:2000]}}
    notice = Envelope(
        env.execution_id,
        env.integration,
        env.flow,
        target,
        None,
        instance=env.instance,
        created_ms=env.created_ms,
        trace=env.trace,
        trigger=env.trigger,
        steps=env.steps,
        meta=meta,
    )
    value, headers = encode(notice, encoding)
    return [Out(plan.entry_of[target], value, str(split["parent"]).encode(), headers)]


def _collector(flow: Flow, failed_at: str) -> str | None:
    """The aggregate that waits for a child that failed at ``failed_at``: the first
    split-mode aggregate on the way on, not counting the pairs of a nested split."""
    depth, seen = 0, set()
    sid = flow.nodes[failed_at].next if failed_at in flow.nodes else None
    while sid is not None and sid not in seen:
        seen.add(sid)
        node = flow.nodes[sid]
        if node.config.type == "split":
            depth += 1
        elif node.config.type == "aggregate" and getattr(node.config, "key", None) is None:
            if depth == 0:
                return sid
            depth -= 1
        sid = node.next
    return None
