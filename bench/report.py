"""docs/benchmarks.md from a results JSON of bench.run; re-runnable at any time:

python -m bench.report bench/results/latest.json            # writes docs/benchmarks.md
python -m bench.report bench/results/20250101T000000Z.json --stdout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"

# (numerator, denominator, metric, target, note); a target is "higher is better" for
# events/s ratios and "lower is better" for CPU ratios; None: reported, no target.
# Targets from issue 20 (the defaults against Quix Streams on the same pipelines).
RATIOS: list[tuple[str, str, str, float | None, str]] = [
    ("sf-1step", "quix-1step", "events_per_s", 1.5, "StreamFlow (default) / Quix, 1-step"),
    ("sf-1step", "quix-1step", "cpu_us_per_event", 0.67, "CPU/event: StreamFlow / Quix, 1-step"),
    ("sf-3step", "quix-3step", "events_per_s", 1.5, "StreamFlow (default) / Quix, 3-step"),
    ("sf-3step", "quix-3step", "cpu_us_per_event", 0.67, "CPU/event: StreamFlow / Quix, 3-step"),
    ("sf-1step-unfused", "quix-1step", "events_per_s", 0.5, "unfused / Quix, 1-step"),
    ("sf-3step-unfused", "quix-3step", "events_per_s", None, "unfused / Quix, 3-step"),
    ("sf-1step-eos-100ms", "sf-1step", "events_per_s", 0.8, "exactly-once 100 ms / at-least-once"),
    ("sf-1step-eos-1s", "sf-1step", "events_per_s", 0.95, "exactly-once 1 s / at-least-once"),
    ("sf-3step", "sf-1step", "events_per_s", None, "3-step / 1-step"),
    ("sf-1step", "ceiling", "events_per_s", None, "StreamFlow / ceiling (bare byte copy)"),
    ("sf-1step", "python-limit", "events_per_s", None, "StreamFlow / Python limit"),
    ("sf-1step", "python-limit", "cpu_us_per_event", None, "CPU/event: StreamFlow / Python limit"),
    ("python-limit", "quix-1step", "events_per_s", None, "Python limit / Quix, 1-step"),
    ("ceiling", "quix-1step", "events_per_s", None, "ceiling / Quix, 1-step"),
    ("kstreams-1step", "quix-1step", "events_per_s", None, "Kafka Streams / Quix, 1-step"),
    ("sf-1step", "kstreams-1step", "events_per_s", None, "StreamFlow / Kafka Streams, 1-step"),
    ("sf-3step", "kstreams-3step", "events_per_s", None, "StreamFlow / Kafka Streams, 3-step"),
    ("sf-1step", "faust-1step", "events_per_s", None, "StreamFlow / faust, 1-step"),
    ("sf-3step", "faust-3step", "events_per_s", None, "StreamFlow / faust, 3-step"),
]  # fmt: skip
# the Quix row each pipeline is compared with in the table's "vs Quix" column
QUIX = {"copy": "quix-1step", "1-step": "quix-1step", "3-step": "quix-3step"}
DASH = "\u2013"  # an empty cell
GUARANTEE = {"at_least_once": "at-least-once", "exactly_once": "exactly-once"}


def _rows(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results.get("rows", [])}


def _metric(row: dict[str, Any] | None, metric: str) -> float | None:
    if row is None or not row.get("ok"):
        return None
    value = (row.get("drain") or {}).get(metric)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every ratio of RATIOS whose two rows were measured, plus the absolute targets."""
    rows = _rows(results)
    out: list[dict[str, Any]] = []
    for num, den, metric, target, note in RATIOS:
        a, b = _metric(rows.get(num), metric), _metric(rows.get(den), metric)
        value = round(a / b, 3) if a is not None and b is not None else None
        met = None
        if value is not None and target is not None:
            met = value >= target if metric == "events_per_s" else value <= target
        out.append(
            {"ratio": f"{num} / {den}", "metric": metric, "note": note, "value": value,
             "target": None if target is None
             else f"{'>=' if metric == 'events_per_s' else '<='} {target:g}", "met": met}
        )  # fmt: skip
    http = rows.get("sf-http") or {}
    of_bound = (http.get("http") or {}).get("of_bound") if http.get("ok") else None
    out.append(
        {"ratio": "sf-http / Little's law", "metric": "events_per_s", "value": of_bound,
         "target": ">= 0.8",
         "note": "http row / (concurrency / latency of the target), its I/O bound",
         "met": None if of_bound is None else of_bound >= 0.8}
    )  # fmt: skip
    bare = (http.get("http") or {}).get("of_bare_client") if http.get("ok") else None
    if bare is not None:
        out.append(
            {"ratio": "sf-http / bare aiohttp client", "metric": "events_per_s", "value": bare,
             "target": None, "met": None,
             "note": "http row / a bare client at the same concurrency against the same target"}
        )  # fmt: skip
    lat = (rows.get("sf-1step") or {}).get("latency") or {}
    hop = lat.get("p99_ms_per_hop")
    hop = hop if isinstance(hop, int | float) and not math.isnan(hop) else None
    out.append(
        {"ratio": "sf-1step", "metric": "p99_ms_per_hop", "value": hop, "target": "<= 50",
         "note": "p99 end-to-end latency / agents on the path, at half load",
         "met": None if hop is None else hop <= 50}
    )  # fmt: skip
    return out


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if digits == 0:
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


def one_line(row: dict[str, Any]) -> str:
    if not row.get("ok"):
        return f"{row['name']}: ERROR {str(row.get('error')).splitlines()[0]}"
    d, lat = row["drain"], row.get("latency") or {}
    text = (
        f"{row['name']}: {_num(d['events_per_s'])} events/s, "
        f"{_num(d['cpu_us_per_event'], 1)} µs CPU/event, peak RSS {_num(row['rss_peak_mb'])} MiB"
    )
    if lat:
        text += f", p50 {_num(lat['p50_ms'], 1)} ms p99 {_num(lat['p99_ms'], 1)} ms"
        if "main_thread_runqueue_wait" in lat:
            text += f" (main thread waited for a CPU {_pct(lat['main_thread_runqueue_wait'])}%)"
    so = row.get("step_only")
    if so and "events_per_s" in so:
        text += f"; step-only {_num(so['events_per_s'])} events/s"
    return text


def summary(results: dict[str, Any]) -> str:
    lines = [one_line(r) for r in results["rows"]]
    for r in results.get("ratios", []):
        if r["value"] is not None:
            met = "" if r["met"] is None else (" (target met)" if r["met"] else " (target missed)")
            lines.append(f"{r['ratio']} [{r['metric']}]: {r['value']}{met}")
    return "\n".join(lines)


def _table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| contestant | pipeline | guarantee | agents | events/s | vs Quix | drain s "
        "| CPU µs/event | produced/event | cores used | peak RSS MiB | p50 ms | p99 ms "
        "| at events/s | CPU wait % | step-only events/s | step-only CPU µs/event |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: | ---: | ---: |",
    ]
    rows = _rows(results)
    for r in results["rows"]:
        guarantee = GUARANTEE.get(r["guarantee"], r["guarantee"])
        if r.get("commit_interval_s") is not None:
            guarantee += f", commit {r['commit_interval_s'] * 1000:g} ms"
        head = (
            f"| {r['label']} (`{r['name']}`) | {r['pipeline']} | {guarantee} "
            f"| {r.get('agents_on_path', DASH)} "
        )
        if not r.get("ok"):
            err = str(r.get("error") or "failed").splitlines()[0].replace("|", "\\|")[:160]
            lines.append(head + f"| **error**: {err} | | | | | | | | | | | | |")
            continue
        d, lat = r["drain"], r.get("latency") or {}
        so = r.get("step_only") or {}
        lines.append(
            head
            + f"| {_num(d['events_per_s'])} | {_vs_quix(r, rows)} | {_num(d['seconds'], 2)} "
            + f"| {_num(d['cpu_us_per_event'], 1)} | {_num(r.get('produced_per_event'), 2)} "
            + f"| {_num(d['cores_used'], 2)} | {_num(r['rss_peak_mb'])} "
            + f"| {_num(lat.get('p50_ms'), 1)} | {_num(lat.get('p99_ms'), 1)}{_late(lat)} "
            + f"| {_num(lat.get('rate'))} | {_pct(lat.get('main_thread_runqueue_wait'))} "
            + f"| {_num(so.get('events_per_s'))} "
            + f"| {_num(so.get('cpu_us_per_event'), 1)} |"
        )
    return lines


def _vs_quix(row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """events/s of the row / events/s of Quix Streams on the same pipeline, as "0.15x"."""
    quix = QUIX.get(row["pipeline"])
    a = _metric(row, "events_per_s")
    b = _metric(rows.get(quix or ""), "events_per_s")
    return DASH if a is None or b is None else f"{a / b:.2f}x"


def _http_line(results: dict[str, Any]) -> list[str]:
    r = _rows(results).get("sf-http") or {}
    h = r.get("http")
    if not r.get("ok") or not h:
        return []
    return [
        f"The http row's target answers after {h['delay_ms']:g} ms; with the flow's "
        f"`concurrency: {h['concurrency']}` at most {h['concurrency']} requests are in flight, "
        f"so Little's law bounds it at {h['concurrency']} / {h['delay_ms'] / 1000:g} s = "
        f"{_num(h['littles_law_events_per_s'])} events/s: it made "
        f"{_num(r['drain']['events_per_s'])} events/s, {h.get('of_bound', 0) * 100:.0f}% of the "
        "bound." + _bare_line(h),
        "",
    ]


def _bare_line(h: dict[str, Any]) -> str:
    b = h.get("bare_client")
    if not b:
        return ""
    return (
        f" A bare aiohttp client ({b['concurrency']} requests in flight, nothing else) made "
        f"{_num(b['requests_per_s'])} requests/s against the same target just before "
        f"(p50 {b['p50_ms']:g} ms a request, {b['cpu_us_per_request']:g} µs CPU each): the "
        f"row made {h.get('of_bare_client', 0) * 100:.0f}% of that."
    )


def _pct(share: Any) -> str:
    return _num(share * 100) if isinstance(share, int | float) else DASH


def _late(lat: dict[str, Any]) -> str:
    """A mark when not every paced event came out before the reader gave up."""
    sent, received = lat.get("sent"), lat.get("received")
    if isinstance(sent, int) and isinstance(received, int) and received < sent:
        return f" ({received:,}/{sent:,} out)"
    return ""


def _ratio_table(results: dict[str, Any]) -> list[str]:
    lines = ["| ratio | what | measured | target | met |", "| --- | --- | ---: | --- | --- |"]
    for r in results.get("ratios") or ratios(results):
        digits = 0 if r["metric"] == "events_per_s" and "/" not in r["ratio"] else 2
        value = DASH if r["value"] is None else _num(r["value"], digits)
        met = {None: DASH, True: "yes", False: "**no**"}[r["met"]]
        what = r["note"] + ("" if r["metric"] != "cpu_us_per_event" else " (lower is better)")
        lines.append(f"| `{r['ratio']}` | {what} | {value} | {r['target'] or DASH} | {met} |")
    return lines


METHOD = """\
- **Data**: the same keyed JSON events (≈{event_bytes} bytes, seed {seed}, key = user id,
  1000 users) for every contestant, each in its own fresh {partitions}-partition input topic;
  every contestant writes JSON to its own output topic (key = input key).
- **Pipelines**: *1-step* `{{id, user, total: amount x 1.2, note, ts}}`; *3-step* the same,
  then keep `total >= 0` (all pass), then `{{id, gross: total, who: upper(user), ts}}`;
  *http* POSTs each event to a local aiohttp server (127.0.0.1, its own process) and
  publishes it; *copy* (the ceiling) copies key and value bytes without decoding.
- **StreamFlow** rows run `streamflow worker` on a topology with `trigger: {{type: kafka}}`
  and a final `kafka_publish` step: JSON in → envelope → steps → JSON out, every hop a
  Kafka topic ("agents" = agents on an event's path: trigger, steps, publish); default
  runtime options unless the row says otherwise (`fuse: false`), `max_batch: {batch}`;
  the http row's target answers after 20 ms (`concurrency: 16`). The *step-only* columns
  are bench/throughput.py on the same steps: envelopes preloaded on the first step's
  topic, no trigger and no publish, all agents in one process.
- **Ceiling**: bare confluent-kafka consume → produce with StreamFlow's client settings
  (idempotent producer, acks=all, lz4, linger 5 ms, read_committed), batches of {batch},
  commit every 100 ms.
- **Python limit**: the 1-step pipeline as a bare loop written for the purpose
  (bench/python_limit.py): the ceiling's loop and client settings plus `orjson` decode,
  the output dict, `orjson` encode; no framework.
- **Kafka Streams** (Java 17, kafka-streams from Maven Central, bench/peers/kstreams):
  `mapValues`/`filter` over Jackson JSON, at-least-once, one stream thread, commit
  interval as the Python peers', Kafka Streams' defaults otherwise; the non-Python
  reference.
- **Peers**: Quix Streams (`app.dataframe(...).apply(...).filter(...).to_topic(...)`) and
  faust-streaming (an agent iterating `stream.items()` and `await topic.send(...)`), each in
  its own virtualenv, at-least-once, commit interval {peer_ci:g} ms like StreamFlow's.
- **Drain**: each contestant is a child process. {warmup} warm-up events go through first
  (consumer groups joined, every stage running); the child is then frozen (SIGSTOP), the
  backlog of N events is produced, and the child thawed (SIGCONT). events/s = N / time
  until the output topic holds all of them (read_committed end offsets polled every
  10 ms; exactly-once outputs are counted record by record as they become visible, read
  on every 10 ms without waiting, as commit markers occupy offsets). CPU µs/event = the
  child's user+system CPU during the drain (all threads, /proc) / N; cores used = that
  CPU / drain time. Peak RSS = the child's VmHWM at the end of its run (its ru_maxrss
  would include the harness's RSS, inherited at spawn).
- **Latency**: after the drain, a paced producer sends at about half the contestant's own
  drain rate for {lat_s} s, stamping the send time into `ts`; a reader of the output topic
  takes receive - send for every event (the first {lat_w:g} s are warm-up, not counted),
  the receive time taken as soon as a record is fetched (it waits for the first record
  only, never for a batch to fill). Exactly-once outputs become visible at commit, so
  their latency includes the commit interval. *CPU wait %*: the share of the paced phase
  the contestant's main thread was runnable but waiting for a CPU (/proc schedstat): a
  loaded machine, not the contestant's code, when it is high.
- Producer, reader and the broker share the machine with the contestant.
"""


def render(results: dict[str, Any], source: str = "") -> str:
    s, m, v = results["settings"], results["machine"], results["versions"]
    quick = results.get("mode") == "quick"
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by `python -m bench.report "
        + (source or "bench/results/<run>.json")
        + "`: edit bench/report.py, not this file -->",
        "",
        "StreamFlow against the limit of its Kafka client on this machine (the *ceiling*) and "
        "against Quix Streams, Kafka Streams and faust-streaming on the same pipelines, same "
        "broker, same data (issues 7 and 20). Run it with `make bench` (full) or "
        "`make bench-quick`; then "
        "`python -m bench.report bench/results/latest.json` rewrites this page.",
        "",
    ]
    if quick:
        out += [
            f"> **Quick run** ({s['events']:,} events per contestant): this checks that the "
            "harness works end to end; the numbers are noisy (small N, short phases, and the "
            "machine may have been busy) and are not a benchmark result. A full run "
            "(`make bench`) replaces this page. With so few events the exactly-once 1 s row "
            "is bound by its commit interval (each transactional hop shows its output only "
            "at commit), and the step-only columns by consumer start-up.",
            "",
        ]
    ok = [r for r in results["rows"] if r.get("ok")]
    out += [
        f"## Results — run {results['run_id']} ({results.get('mode', 'full')})",
        "",
        f"{s['events']:,} events per contestant ({s['http_events']:,} for the http row), "
        f"{s['partitions']} partitions, ≈{s['event_bytes']} bytes each; "
        f"{len(ok)}/{len(results['rows'])} contestants measured. "
        f"Load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}.",
        "",
        *_table(results),
        "",
        *_http_line(results),
        "*vs Quix*: events/s over Quix Streams' on the same pipeline (the ceiling against "
        "Quix 1-step). *produced/event*: messages the contestant wrote per event during the "
        "drain (output, internal hops, execution records; transaction markers included), "
        "counted from the end offsets of its output and internal topics.",
        "",
        "## Ratios (targets from issue 20)",
        "",
        *_ratio_table(results),
        "",
    ]
    warned = [r for r in results["rows"] if r.get("warnings")]
    if warned:
        out += ["Warnings:", ""]
        out += [f"- `{r['name']}`: {w}" for r in warned for w in r["warnings"]]
        out += [""]
    failed = [r for r in results["rows"] if not r.get("ok")]
    if failed:
        out += ["## Errors", ""]
        for r in failed:
            out += [f"- `{r['name']}`:", "", "  ```", *[
                "  " + line for line in str(r.get("error")).splitlines()[:15]
            ], "  ```", ""]  # fmt: skip
    peers = v.get("peers") or {}
    version_lines = [
        f"- Python {v['python']}, StreamFlow {v['streamflow']} ({v['streamflow_commit']})",
        f"- confluent-kafka {v['confluent-kafka']}, librdkafka {v['librdkafka']}, "
        f"orjson {v.get('orjson')}, aiohttp {v.get('aiohttp')}",
        f"- broker: {v['broker']}, single node (KRaft) on the same machine "
        f"({s.get('bootstrap', '')})",
    ]
    for name, info in peers.items():
        pv = info.get("versions") or {}
        text = ", ".join(f"{k} {val}" for k, val in pv.items()) or "not installed"
        if info.get("error"):
            text += f" — install error: {str(info['error']).splitlines()[0][:200]}"
        version_lines.append(f"- {name} venv: {text}")
    out += [
        "## Machine",
        "",
        f"- {m['nproc']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, {m['os']}",
        "",
        "## Versions",
        "",
        *version_lines,
        "",
        "## Command",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Started {results['started']}, finished {results['finished']}.",
        "",
        "## Method",
        "",
        METHOD.format(
            event_bytes=s["event_bytes"],
            seed=s["seed"],
            partitions=s["partitions"],
            batch=s["batch"],
            peer_ci=s["peer_commit_interval_s"] * 1000,
            warmup=s["warmup_events"],
            lat_s=s.get("latency_seconds") or DASH,
            lat_w=s.get("latency_warmup_s") or 0,
        ).rstrip(),
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, nargs="?", default=REPO / "bench/results/latest.json")
    ap.add_argument("--out", type=Path, default=DOCS)
    ap.add_argument("--stdout", action="store_true", help="print instead of writing --out")
    args = ap.parse_args(argv)
    results = json.loads(args.results.read_text())
    results["ratios"] = ratios(results)
    try:
        source = str(args.results.resolve().relative_to(REPO))
    except ValueError:
        source = str(args.results)
    text = render(results, source)
    if args.stdout:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
