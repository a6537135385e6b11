"""The kernel of a fused ``kafka`` trigger: record in, outputs out, no envelope.

The usual streaming flow - a ``kafka`` trigger, transforms and filters, a
``kafka_publish`` - runs whole in its trigger's agent (fusion, ``compose.py``). Its
envelope is never encoded, but the composed chain still builds one per record, with an
``Outcome`` per step and a scope per template. The kernel runs such a chain as one loop
over the steps' *chain functions* (``Step.chain_fn``): each takes the scope
``{"payload", "trigger"}`` and the list of messages to produce, and returns the next
payload (or ``STOP``). It writes the same messages as the composed chain - the steps'
outputs, then the execution's entry in the batch's summary record - and counts the same
metrics; the tests run both on the same records and compare (tests/unit/test_kernel.py).

Anything else takes the composed path, record by record, from the start: a record that
is not JSON, a template that fails, a filter that drops the event (its ``filtered``
event), a step without a chain function. Pure steps and unsent outputs make that free of
side effects: the kernel's work on that record is dropped, and the composed chain does
it again and writes what the failure or the filter means.

A flow qualifies when its trigger agent holds every step (no hop), every step has a
chain function reading only ``payload`` and ``trigger``, and nothing per step is
written or kept: no tracing, no step events, no stored step results, no compensation,
no fallback, and the end record goes into summary records (``Emitter.per_batch``).
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO
from typing import TYPE_CHECKING, Any

from streamflow import exactjson
from streamflow.envelope import now_ms
from streamflow.observability.events import RUNS, announce_line
from streamflow.runtime.contain import Out
from streamflow.steps.base import STOP, ChainFn, Step
from streamflow.transport.base import Record

if TYPE_CHECKING:
    from streamflow.runtime.processor import ChainProcessor

Kernel = Callable[[Record], "list[Out] | None"]
"""A record's outputs, or None: run it through the composed chain instead."""


def kernel(chain: ChainProcessor, fmt: str) -> Kernel | None:
    """The kernel of ``chain`` (the steps of a kafka trigger's agent whose records are
    ``fmt``), or None when the chain does not qualify (see the module's docstring)."""
    if (
        fmt != "json"
        or not chain.emitter.per_batch
        or chain.traced
        or chain.opts.step_events
        or chain.store
    ):
        return None
    fns: list[ChainFn] = []
    last: str = chain.agent.steps[0]
    sid: str | None = last
    while sid is not None:
        step, node = chain.steps.get(sid), chain.flow.nodes[sid]
        if (
            sid not in chain.chain
            or not isinstance(step, Step)
            or node.compensation is not None
            or node.config.fallback is not None
        ):
            return None
        fn = step.chain_fn()
        if fn is None or len(fns) > len(chain.chain):  # (a loop back: not linear)
            return None
        fns.append(fn)
        last, sid = sid, node.next
    return _kernel(chain, tuple(fns), last)


def _kernel(chain: ChainProcessor, fns: tuple[ChainFn, ...], last: str) -> Kernel:
    loads, emitter, latencies = exactjson.loads, chain.emitter, chain.latencies
    info, flow = RUNS.isEnabledFor, chain.flow.name

    def run(rec: Record) -> list[Out] | None:
        started = now_ms()
        try:
            payload = loads(rec.value)
        except Exception:
            return None  # not JSON: the composed path dead-letters it
        key = rec.key
        topic, partition, offset = rec.topic, rec.partition, rec.offset
        scope: dict[str, Any] = {
            "payload": payload,
            "trigger": {
                "type": "kafka",
                "topic": topic,
                "partition": partition,
                "offset": offset,
                "key": key.decode("utf-8", "replace") if key else None,
                "timestamp_ms": rec.timestamp_ms,
            },
        }
        outs: list[Out] = []
        try:
            for fn in fns:
                payload = fn(scope, outs)
                if payload is STOP:
                    return None  # filtered: the composed path records it
                scope["payload"] = payload
        except Exception:  # the composed path fails it as it always does
            return None
        ended = now_ms()
        execution_id = f"{topic}-{partition}-{offset}"
        if info(INFO):  # serve/worker at their default level: a line per execution
            announce_line(execution_id, flow, "completed", started, last, "", "")
        chain.completed += 1
        latencies.values.append(max(0, ended - started) / 1000)
        emitter.ended[""] = emitter.ended.get("", 0) + 1
        emitter.done.append((execution_id, last, "", started, ended, "", -1))
        return outs

    return run
