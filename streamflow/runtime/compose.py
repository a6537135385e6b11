"""A fused chain of synchronous steps composed into one function.

Like quix-streams composes a dataframe's operators, ``compose`` turns an agent's chain of
pure steps into nested closures, built once per agent: each calls its step and hands the
envelope straight to the next, with every decision the interpreter (``ChainProcessor``'s
``_advance``) takes per outcome made at build time where the topology decides it - where
the execution goes next, whether results are stored, whether the step is compensable,
whether step events are written. Only what a step decides per event is looked at: an
outcome that filters, routes elsewhere (a branch) or falls back leaves the composed path
and the interpreter goes on from there with the same envelope, so both paths behave the
same, event for event.

The end of the chain writes the execution's end record with its metrics counted per batch
(``ChainProcessor.flush_metrics``), or hands the envelope to the next agent's topic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streamflow.envelope import Envelope
from streamflow.errors import FatalError
from streamflow.runtime.contain import Out
from streamflow.steps.base import NEXT, Step
from streamflow.transport.base import Record

if TYPE_CHECKING:
    from streamflow.runtime.processor import ChainProcessor

Link = Callable[[Envelope, Record, list[Out], bool], None]
"""One composed step and all after it: (envelope, its record, outputs, fresh)."""


def compose(proc: ChainProcessor) -> Link | None:
    """The chain of ``proc`` as one function from its first step, or None when the chain
    is not all synchronous (its I/O steps need the interpreter's retry executor) or the
    processor handles records or outcomes its own way (a split fans out, an aggregate
    collects: they override ``_advance`` or ``handle_sync``)."""
    if not proc.all_sync or not proc.composable:
        return None

    first = proc.agent.steps[0]
    return _link(proc, first, set())


def _link(proc: ChainProcessor, sid: str, seen: set[str]) -> Link:
    step = proc.steps[sid]
    node = proc.flow.nodes[sid]
    nxt = node.next
    seen.add(sid)
    if (
        not isinstance(step, Step)
        or proc.traced
        or proc.opts.step_events
        or node.compensation is not None
        or sid in proc.store
        or node.config.fallback is not None
    ):
        return _interpreted(proc)  # what this step's outcome needs, _advance does
    if nxt is None:
        after = _end(proc)
    elif nxt not in proc.chain:
        after = _hop(proc, sid)
    elif nxt in seen:  # a loop back: the interpreter follows it
        after = _interpreted(proc)
    else:
        after = _link(proc, nxt, seen)
    process = step.process
    emitter = proc.emitter

    def link(env: Envelope, rec: Record, outs: list[Out], fresh: bool) -> None:
        before = env.payload
        try:
            outcome = process(env)
        except FatalError as exc:
            raise emitter.fatal(env, exc) from exc
        except Exception as exc:  # no fallback here: the dead letter
            proc._give_up(env, rec, exc, outs)
            return
        if outcome.filtered or outcome.route is not NEXT:
            going_on = proc._advance(env, outcome, rec, outs, before, fresh)
            proc.interpret_sync(going_on, rec, outs, fresh)
            return
        env.payload = outcome.payload
        if outcome.emit:
            outs.extend(outcome.emit)
        if nxt is not None:
            env.step = nxt
            env.attempt = 1
        after(env, rec, outs, fresh)

    return link


def _interpreted(proc: ChainProcessor) -> Link:
    """The interpreter from the envelope's step on (``ChainProcessor.interpret_sync``)."""

    def link(env: Envelope, rec: Record, outs: list[Out], fresh: bool) -> None:
        proc.interpret_sync(env, rec, outs, fresh)

    return link


def _end(proc: ChainProcessor) -> Link:
    def end(env: Envelope, rec: Record, outs: list[Out], fresh: bool) -> None:
        proc._completed(env, outs)

    return end


def _hop(proc: ChainProcessor, sid: str) -> Link:
    def hop(env: Envelope, rec: Record, outs: list[Out], fresh: bool) -> None:
        proc._hop(env, sid, rec, outs, fresh)

    return hop
