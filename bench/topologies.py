"""The StreamFlow side of the pipelines in bench/common.py, as YAML text.

``steps_yaml`` is shared by the end-to-end contestants (kafka trigger -> steps ->
kafka_publish) and by the step-only drain of bench/throughput.py (manual trigger, no
publish), so both measure the same transforms.
"""

from __future__ import annotations

STEP_1 = """      - id: enrich
        type: transform
        output: {id: "${payload.id}", user: "${payload.user}", total: "${payload.amount * 1.2}",
                 note: "${payload.note}", ts: "${payload.ts}"}
"""
STEP_3 = (
    STEP_1
    + """      - {id: keep, type: filter, when: "${payload.total >= 0}"}
      - id: shape
        type: transform
        output: {id: "${payload.id}", gross: "${payload.total}", who: "${upper(payload.user)}",
                 ts: "${payload.ts}"}
"""
)


# split an order of 100 lines (the event, 100 times) -> enrich each (pure) -> aggregate
SPLIT_100 = """      - {id: lines, type: split, items: "${[payload] * 100}"}
      - id: enrich
        type: transform
        output: {id: "${payload.id}", total: "${payload.amount * 1.2}", ts: "${payload.ts}"}
      - {id: collect, type: aggregate}
      - id: order
        type: transform
        output: {id: "${payload.items[0].id}", lines: "${payload.count}",
                 total: "${round(sum(payload.items, 'item.total'), 2)}",
                 ts: "${payload.items[0].ts}"}
"""


# three pure branches joined back (the event's fields, each shaped by one branch)
PARALLEL_3 = """      - id: fan
        type: parallel
        branches:
          price: [{id: p, type: transform, output: "${payload.amount * 1.2}"}]
          who: [{id: w, type: transform, output: "${upper(payload.user)}"}]
          where: [{id: c, type: transform, output: "${payload.country}"}]
      - id: shape
        type: transform
        output: {id: "${payload.id}", gross: "${steps.fan.price}", who: "${steps.fan.who}",
                 ts: "${payload.ts}"}
"""


def http_step(url: str) -> str:
    return f"""      - id: call
        type: http
        method: POST
        url: {url}
        json: ${{payload}}
"""


def publish_step(topic: str) -> str:
    return f"""      - id: out
        type: kafka_publish
        topic: {topic}
        key: ${{trigger.key}}
        value: ${{payload}}
"""


def steps_yaml(steps: int) -> str:
    return STEP_1 if steps == 1 else STEP_3


def integration_yaml(
    name: str,
    *,
    trigger: str,
    steps: str,
    guarantee: str = "at_least_once",
    commit_interval: str = "100ms",
    fuse: bool | None = None,
    max_batch: int = 1000,
    partitions: int = 6,
    events: str | None = None,
    concurrency: int | None = None,
) -> str:
    """One flow ``f``: ``trigger`` is a flow-mapping, e.g. ``{type: kafka, topic: t}``;
    ``fuse``, ``events`` and ``concurrency`` are written only when given (else defaults)."""
    options = "".join(
        f"    {key}: {value}\n"
        for key, value in (
            ("fuse", None if fuse is None else str(fuse).lower()),
            ("events", events),
            ("concurrency", concurrency),
        )
        if value is not None
    )
    return f"""apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: f
    partitions: {partitions}
    key: ${{payload.user}}
    guarantee: {guarantee}
    commit_interval: {commit_interval}
{options}    max_batch: {max_batch}
    trigger: {trigger}
    steps:
{steps}"""
