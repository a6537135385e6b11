"""The benchmark harness: StreamFlow against the client's ceiling and against peers.

    python -m bench.run                      # full run (make bench)
    python -m bench.run --quick              # a few thousand events: checks the harness
    python -m bench.run --only ceiling,sf-1step --events 20000 --no-latency

Every contestant reads the same keyed ~500-byte JSON events (fixed seed) from its own
fresh 6-partition input topic and writes JSON to its own output topic, in its own child
process. Per contestant:

1. **warm-up**: a few events go through while the child starts (groups joined, every
   stage running); then the child is frozen (SIGSTOP), the backlog of N events is
   produced, and the child is thawed (SIGCONT): the clock runs from there until the
   output topic holds every event (read_committed end offsets, polled; for exactly-once
   rows the committed records are counted, since commit markers occupy offsets too);
2. **drain**: events/s and CPU µs per event (the child's CPU time during the drain,
   from /proc), peak RSS (ru_maxrss of the child, whole life);
3. **latency**: a paced producer at about half the drained rate stamps the send time
   into each event; a reader of the output topic takes p50/p99 of receive - send.

StreamFlow rows also get, for reference, the step-only drain of bench/throughput.py
(envelopes preloaded on the first step topic, no trigger and no publish). Results go to
bench/results/<timestamp>.json (+ latest.json) and docs/benchmarks.md (bench/report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from bench import report
from bench.broker import (
    Admin,
    OutputWatch,
    bootstrap_servers,
    broker_version,
    latency_templates,
    measure_latency,
    produce_all,
)
from bench.common import BATCH, PARTITIONS, SEED, dataset, encoded, event
from bench.http_server import bare_client
from bench.machine import machine, versions
from bench.topologies import (
    PARALLEL_3,
    SPLIT_100,
    http_step,
    integration_yaml,
    publish_step,
    steps_yaml,
)
from bench.venvs import PEERS, PeerEnv, ensure, ensure_java

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
DOCS = REPO / "docs" / "benchmarks.md"
WARMUP_EVENTS = 60
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

# expected keys of an output event, per pipeline (checked on a sample of every output)
INPUT_KEYS = frozenset(json.loads(encoded(event(0, random.Random(0)))[1]))
OUTPUT_KEYS = {
    "copy": INPUT_KEYS,
    "1-step": frozenset({"id", "user", "total", "note", "ts"}),
    "3-step": frozenset({"id", "gross", "who", "ts"}),
    "http": INPUT_KEYS,
    "split-100": frozenset({"id", "lines", "total", "ts"}),
    "parallel-3": frozenset({"id", "gross", "who", "ts"}),
}


@dataclass(frozen=True)
class Contestant:
    name: str
    label: str
    kind: str  # ceiling | limit | streamflow | peer
    pipeline: str  # copy | 1-step | 3-step | http | split-100 | parallel-3
    guarantee: str = "at_least_once"
    commit_interval: float = 0.1
    fuse: bool | None = None  # None: not written in the topology (the default)
    events: str | None = None  # execution events (None: the default)
    peer: str | None = None  # venv name (bench/venvs.py), or "kstreams" (Java)
    module: str | None = None  # peer script

    @property
    def steps(self) -> int:
        return 3 if self.pipeline == "3-step" else 1


CONTESTANTS = [
    Contestant("ceiling", "ceiling (bare confluent-kafka copy)", "ceiling", "copy"),
    Contestant("python-limit", "Python limit (bare orjson loop) 1-step", "limit", "1-step"),
    Contestant("sf-1step", "StreamFlow 1-step (default)", "streamflow", "1-step"),
    Contestant(
        "sf-1step-unfused", "StreamFlow 1-step, `fuse: false`", "streamflow", "1-step", fuse=False,
    ),
    Contestant(
        "sf-1step-eos-100ms", "StreamFlow 1-step exactly-once 100 ms", "streamflow", "1-step",
        guarantee="exactly_once", commit_interval=0.1,
    ),
    Contestant(
        "sf-1step-eos-1s", "StreamFlow 1-step exactly-once 1 s", "streamflow", "1-step",
        guarantee="exactly_once", commit_interval=1.0,
    ),
    Contestant("sf-3step", "StreamFlow 3-step (default)", "streamflow", "3-step"),
    Contestant(
        "sf-3step-unfused", "StreamFlow 3-step, `fuse: false`", "streamflow", "3-step", fuse=False,
    ),
    Contestant("sf-http", "StreamFlow http step (20 ms target)", "streamflow", "http"),
    Contestant(
        "sf-split100", "StreamFlow split 100 -> enrich -> aggregate (events = orders)",
        "streamflow", "split-100",
    ),
    Contestant(
        "sf-parallel3", "StreamFlow 3-branch parallel (pure branches)", "streamflow",
        "parallel-3",
    ),
    Contestant(
        "quix-1step", "Quix Streams 1-step", "peer", "1-step",
        peer="quixstreams", module="bench.peers.quix_app",
    ),
    Contestant(
        "quix-3step", "Quix Streams 3-step", "peer", "3-step",
        peer="quixstreams", module="bench.peers.quix_app",
    ),
    Contestant("kstreams-1step", "Kafka Streams 1-step (Java)", "peer", "1-step", peer="kstreams"),
    Contestant("kstreams-3step", "Kafka Streams 3-step (Java)", "peer", "3-step", peer="kstreams"),
    Contestant(
        "faust-1step", "faust-streaming 1-step", "peer", "1-step",
        peer="faust", module="bench.peers.faust_app",
    ),
    Contestant(
        "faust-3step", "faust-streaming 3-step", "peer", "3-step",
        peer="faust", module="bench.peers.faust_app",
    ),
]  # fmt: skip
BY_NAME = {c.name: c for c in CONTESTANTS}
HTTP_DELAY_S = 0.020  # the http row's target answers after this long
HTTP_CONCURRENCY = 16  # the flow's `concurrency` (in-flight async steps per agent)
HTTP_PROBE = 2000  # requests of the bare client measured against the http row's target


@dataclass
class Settings:
    bootstrap: str
    events: int
    http_events: int
    latency_seconds: float
    latency_warmup: float
    step_only: bool
    peer_commit_interval: float
    keep_topics: bool
    tag: str
    logdir: Path


@dataclass
class Context:
    settings: Settings
    admin: Admin
    data: list[tuple[bytes, bytes]]
    warmup: list[tuple[bytes, bytes]]
    templates: list[tuple[bytes, bytes, bytes]]
    peers: dict[str, PeerEnv] = field(default_factory=dict)


class ContestantError(Exception):
    pass


class Child:
    """A contestant's process. It is reaped with wait4 (never Popen.poll/wait), so its
    total resource usage is its own and is not lost; CPU and RSS during the phases come
    from /proc."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.cmd = cmd
        self.log_path = log
        self.log: TextIO = log.open("w")
        self.log.write("$ " + shlex.join(cmd) + "\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=log.parent, env=env,  # what a child writes (faust's data dir) stays there
        )  # fmt: skip
        self.pid = self.proc.pid
        self.status: int | None = None
        self.rusage: resource.struct_rusage | None = None

    def alive(self) -> bool:
        if self.status is not None:
            return False
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return True
        self._reaped(status, usage)
        return False

    def _reaped(self, status: int, usage: resource.struct_rusage) -> None:
        self.status = os.waitstatus_to_exitcode(status)
        self.rusage = usage
        self.proc.returncode = self.status  # Popen must not wait for it again

    def cpu(self) -> float:
        """CPU seconds (user + system, all threads) used so far, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def sched(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds runnable but waiting for one) of the child's main
        thread so far, from /proc/<pid>/schedstat: how much the machine held it back."""
        run, wait, _ = Path(f"/proc/{self.pid}/schedstat").read_text().split()
        return int(run) / 1e9, int(wait) / 1e9

    def rss_mb(self) -> tuple[float, float]:
        """(current RSS, peak RSS so far) in MiB, from /proc."""
        now = peak = 0.0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
        return round(now, 1), round(peak, 1)

    def signal(self, sig: int) -> None:
        if self.status is None:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (SIGCONT first, in case it is frozen), then SIGKILL after ``timeout``."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.status is None:
                os.kill(self.pid, signal.SIGKILL)
                _, status, usage = os.wait4(self.pid, 0)
                self._reaped(status, usage)
        self.log.close()

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO)
    return env


def command(c: Contestant, ctx: Context, source: str, sink: str, name: str) -> list[str]:
    s = ctx.settings
    if c.kind == "ceiling":
        return [
            sys.executable, "-m", "bench.ceiling", "--bootstrap", s.bootstrap,
            "--input", source, "--output", sink, "--group", name,
            "--commit-interval", str(c.commit_interval),
        ]  # fmt: skip
    if c.kind == "limit":
        return [
            sys.executable, "-m", "bench.python_limit", "--bootstrap", s.bootstrap,
            "--input", source, "--output", sink, "--group", name, "--steps", str(c.steps),
            "--commit-interval", str(c.commit_interval),
        ]  # fmt: skip
    if c.kind == "peer":
        assert c.peer is not None
        env = ctx.peers.get(c.peer)
        if env is not None and env.python is not None and c.module is not None:
            run = [str(env.python), "-m", c.module]
        elif env is not None and env.command is not None:
            run = env.command  # Kafka Streams: java ... bench.BenchApp
        else:
            raise ContestantError(
                f"{c.peer} environment unavailable: {env.error if env else 'not made'}"
            )
        return [
            *run, "--bootstrap", s.bootstrap,
            "--input", source, "--output", sink, "--group", name, "--steps", str(c.steps),
            "--commit-interval", str(s.peer_commit_interval),
        ]  # fmt: skip
    raise AssertionError(c.kind)


if TYPE_CHECKING:
    from streamflow.topology.plan import FlowPlan


def streamflow_files(
    c: Contestant, ctx: Context, source: str, sink: str, name: str, http_url: str | None
) -> tuple[Path, int]:
    """The contestant's topology file, and how many agents its events pass through."""
    from streamflow.topology.loader import load_integration
    from streamflow.topology.plan import compile_plan

    if c.pipeline == "http":
        assert http_url is not None
        body = http_step(http_url)
    elif c.pipeline == "split-100":
        body = SPLIT_100
    elif c.pipeline == "parallel-3":
        body = PARALLEL_3
    else:
        body = steps_yaml(c.steps)
    text = integration_yaml(
        name,
        trigger=f"{{type: kafka, topic: {source}}}",
        steps=body + publish_step(sink),
        concurrency=HTTP_CONCURRENCY if c.pipeline == "http" else None,
        guarantee=c.guarantee,
        commit_interval=f"{round(c.commit_interval * 1000)}ms",
        fuse=c.fuse,
        events=c.events,
        max_batch=BATCH,
        partitions=PARTITIONS,
    )
    path = ctx.settings.logdir / f"{c.name}.yaml"
    path.write_text(text)
    return path, agents_on_path(compile_plan(load_integration(path)).flows["f"])


def agents_on_path(plan: FlowPlan) -> int:
    """Agents an event of the (linear) bench flow passes through: the trigger's, and one
    more per hop through a topic (a fused trigger runs the first steps in-process)."""
    return 1 + sum(1 for _, topic, _ in plan.hops if topic)


def free_port() -> int:
    """A free TCP port: StreamFlow workers run as in production, with /metrics served."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_http_server(ctx: Context) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.http_server", "--delay", str(HTTP_DELAY_S)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=child_env(),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("PORT "):
        proc.kill()
        raise ContestantError(f"local HTTP server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{line.split()[1]}/ingest"


def output_count(watch: OutputWatch, transactional: bool) -> int:
    """Records in the output: the end offsets, or (a transactional writer: its commit
    markers occupy offsets too) the committed records counted as they become visible."""
    return watch.committed_count() if transactional else sum(watch.ends())


def wait_for(
    child: Child, watch: OutputWatch, transactional: bool, target: int, timeout: float, what: str
) -> tuple[float, float]:
    """Poll until the output holds ``target`` records: (perf_counter, child CPU) then."""
    deadline = time.monotonic() + timeout
    last = 0
    while True:
        last = output_count(watch, transactional)
        if last >= target:
            # Timed once the count is confirmed (after the watermark round trips), so a
            # fast contestant never reads as 0 s.
            return time.perf_counter(), child.cpu()
        if not child.alive():
            raise ContestantError(
                f"{what}: child exited ({child.status}) with {last}/{target} outputs:\n"
                + child.tail()
            )
        if time.monotonic() > deadline:
            raise ContestantError(
                f"{what}: {last}/{target} outputs after {timeout:.0f} s:\n" + child.tail()
            )
        time.sleep(0.01)


def check_shape(watch: OutputWatch, pipeline: str) -> None:
    for value in watch.sample(3):
        keys = frozenset(json.loads(value))
        if keys != OUTPUT_KEYS[pipeline]:
            raise ContestantError(
                f"output has keys {sorted(keys)}, expected {sorted(OUTPUT_KEYS[pipeline])}"
            )


class Trial:
    """One contestant's measurement: spawn and warm up, drain, latency, stop."""

    def __init__(self, c: Contestant, ctx: Context) -> None:
        s = ctx.settings
        self.c, self.ctx, self.s = c, ctx, s
        self.n = s.http_events if c.pipeline == "http" else s.events
        if c.pipeline == "split-100":  # each event is 100 child executions
            self.n = max(20, s.events // 100)
        self.name = f"{s.tag}-{c.name}"
        self.source, self.sink = f"{s.tag}.{c.name}.in", f"{s.tag}.{c.name}.out"
        self.transactional = c.guarantee == "exactly_once"
        self.server: subprocess.Popen[str] | None = None
        self.child: Child | None = None
        self.watch: OutputWatch | None = None
        self.row: dict[str, Any] = {
            "name": c.name,
            "label": c.label,
            "kind": c.kind,
            "pipeline": c.pipeline,
            "guarantee": c.guarantee,
            "commit_interval_s": s.peer_commit_interval if c.kind == "peer" else c.commit_interval,
            "fuse": c.fuse,
            "events": self.n,
            "ok": False,
            "error": None,
        }

    def run(self, latency: bool) -> dict[str, Any]:
        try:
            child, watch = self.start()
            seconds = self.drain(child, watch)
            if latency:
                self.latency(child, seconds)
            # VmHWM, not ru_maxrss: a child spawned with vfork inherits the harness's own
            # peak RSS into ru_maxrss at exec, VmHWM is its own address space's peak
            self.row["rss_peak_mb"] = child.rss_mb()[1]
            child.stop()
            assert child.rusage is not None
            self.row["exit_code"] = child.status
            self.row["cpu_total_s"] = round(child.rusage.ru_utime + child.rusage.ru_stime, 2)
            self.row["ok"] = True
        except ContestantError as exc:
            self.row["error"] = str(exc)
        except Exception as exc:
            self.row["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
        finally:
            self.cleanup()
        return self.row

    def start(self) -> tuple[Child, OutputWatch]:
        """Topics, warm-up events, the child; returns once the warm-up events are out."""
        c, s = self.c, self.s
        self.ctx.admin.create([self.source, self.sink], PARTITIONS)
        produce_all(s.bootstrap, self.source, self.ctx.warmup)
        if c.kind == "streamflow":
            url = None
            if c.pipeline == "http":
                self.server, url = start_http_server(self.ctx)
                # Little's law: at most `concurrency` requests in flight, each HTTP_DELAY_S
                self.row["http"] = {
                    "delay_ms": HTTP_DELAY_S * 1000,
                    "concurrency": HTTP_CONCURRENCY,
                    "littles_law_events_per_s": round(HTTP_CONCURRENCY / HTTP_DELAY_S),
                    # the same target and client library with nothing else: what they
                    # and the machine allow (before the contestant starts)
                    "bare_client": bare_client(
                        url, [v for _, v in self.ctx.data[:HTTP_PROBE]], HTTP_CONCURRENCY
                    ),
                }
            path, hops = streamflow_files(c, self.ctx, self.source, self.sink, self.name, url)
            self.row["agents_on_path"] = hops
            cmd = [
                sys.executable, "-m", "streamflow.cli.main", "--log-level", "warning",
                "worker", str(path), "--broker", f"kafka://{s.bootstrap}",
                "--worker-id", s.tag, "--metrics-port", str(free_port()),
            ]  # fmt: skip
        else:
            cmd = command(c, self.ctx, self.source, self.sink, self.name)
            self.row["agents_on_path"] = 1
        self.row["command"] = shlex.join(cmd)
        self.watch = watch = OutputWatch(s.bootstrap, self.sink, PARTITIONS)
        spawned = time.perf_counter()
        self.child = child = Child(cmd, s.logdir / f"{c.name}.log", child_env())
        self.row["log"] = str(child.log_path)
        ready, _ = wait_for(child, watch, self.transactional, len(self.ctx.warmup), 180, "warm-up")
        self.row["startup_s"] = round(ready - spawned, 6)  # > 0 however fast
        return child, watch

    def drain(self, child: Child, watch: OutputWatch) -> float:
        """Freeze the child, preload the backlog, thaw it, time until every event is out."""
        n = self.n
        child.signal(signal.SIGSTOP)
        try:
            self.row["preload_s"] = round(
                produce_all(self.s.bootstrap, self.source, self.ctx.data[:n]), 2
            )
            written0 = self.written()
        finally:
            cpu0, t0 = child.cpu(), time.perf_counter()
            child.signal(signal.SIGCONT)
        if self.row["preload_s"] > 5:
            self.row.setdefault("warnings", []).append(
                f"the backlog took {self.row['preload_s']} s to produce while the child was "
                "frozen: a consumer-group session may have expired (a rebalance in the drain)"
            )
        target = len(self.ctx.warmup) + n
        t1, cpu1 = wait_for(child, watch, self.transactional, target, max(120.0, n / 200), "drain")
        seconds = t1 - t0
        self.row["drain"] = {
            "seconds": round(seconds, 6),  # > 0 however fast
            "events_per_s": round(n / seconds),
            "cpu_s": round(cpu1 - cpu0, 2),
            "cpu_us_per_event": round((cpu1 - cpu0) / n * 1e6, 1),
            "cores_used": round((cpu1 - cpu0) / seconds, 2),
        }
        if "http" in self.row:
            http = self.row["http"]
            http["of_bound"] = round(n / seconds / http["littles_law_events_per_s"], 3)
            http["of_bare_client"] = round(n / seconds / http["bare_client"]["requests_per_s"], 3)
        self.row["rss_after_drain_mb"], self.row["rss_peak_drain_mb"] = child.rss_mb()
        check_shape(watch, self.c.pipeline)
        self.row["produced_per_event"] = self.produced_per_event(written0)
        return seconds

    def written(self) -> int:
        """Messages written so far to the output and to the contestant's own topics (a
        StreamFlow integration's are named after it: sf.<name>.*)."""
        return self.ctx.admin.records_matching([self.sink, self.name])

    def produced_per_event(self, before: int) -> float:
        """Messages the contestant produced per drained event (outputs, internal hops,
        execution events; transaction markers included), once the count stops growing
        (execution events may follow the outputs by a moment)."""
        after, deadline = self.written(), time.monotonic() + 5
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.written()
            if now == after:
                break
            after = now
        return round((after - before) / self.n, 2)

    def latency(self, child: Child, drain_seconds: float) -> None:
        s = self.s
        rate = max(50.0, self.n / drain_seconds / 2)
        cpu0, t0, (run0, wait0) = child.cpu(), time.perf_counter(), child.sched()
        lat = measure_latency(
            s.bootstrap, self.source, self.sink, PARTITIONS, self.ctx.templates, rate,
            s.latency_seconds, s.latency_warmup, max(5.0, 5 * self.row["commit_interval_s"]),
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        run1, wait1 = child.sched()
        lat["cores_used"] = round((child.cpu() - cpu0) / seconds, 2)
        # shares of the phase the child's main thread ran / waited for a CPU: a contestant
        # the machine keeps waiting shows it here, not in its code
        lat["main_thread_running"] = round((run1 - run0) / seconds, 3)
        lat["main_thread_runqueue_wait"] = round((wait1 - wait0) / seconds, 3)
        lat["p99_ms_per_hop"] = round(lat["p99_ms"] / self.row["agents_on_path"], 2)
        self.row["latency"] = lat
        if not child.alive():
            raise ContestantError(f"child exited during the latency phase:\n{child.tail()}")

    def cleanup(self) -> None:
        if self.child is not None and self.child.status is None:
            self.child.stop(10)
        if self.watch is not None:
            self.watch.close()
        if self.server is not None:
            self.server.terminate()
            self.server.wait(10)
        if not self.s.keep_topics:
            self.ctx.admin.delete_matching(self.name)
            self.ctx.admin.delete_matching(f"{self.s.tag}.{self.c.name}.")


def step_only(c: Contestant, ctx: Context) -> dict[str, Any]:
    """bench/throughput.py for the same flow: envelopes preloaded, steps only."""
    s = ctx.settings
    name = f"{s.tag}-{c.name}-steps"
    cmd = [
        sys.executable, "-m", "bench.throughput", "--broker", f"kafka://{s.bootstrap}",
        "--events", str(s.events), "--steps", str(c.steps), "--guarantee", c.guarantee,
        "--commit-interval", f"{round(c.commit_interval * 1000)}ms", "--name", name,
    ]  # fmt: skip
    if c.fuse is not None:
        cmd += ["--fuse", str(c.fuse).lower()]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=max(300.0, s.events / 200),
            cwd=REPO, env=child_env(), check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            return {"error": proc.stderr.strip()[-1500:], "command": shlex.join(cmd)}
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        out["command"] = shlex.join(cmd)
        return out
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": str(exc), "command": shlex.join(cmd)}
    finally:
        ctx.admin.delete_matching(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few events, short latency phase")
    ap.add_argument("--events", type=int, help="backlog size (default 200000; quick: 5000)")
    ap.add_argument("--http-events", type=int, help="backlog of the http row (default events/10)")
    ap.add_argument(
        "--only", help="comma-separated contestants: " + ",".join(c.name for c in CONTESTANTS)
    )
    ap.add_argument(
        "--no-peers", action="store_true", help="skip Quix Streams, Kafka Streams and faust"
    )
    ap.add_argument("--no-latency", action="store_true", help="skip the latency phase")
    ap.add_argument("--latency-seconds", type=float, help="paced phase (default 15; quick: 5)")
    ap.add_argument("--no-step-only", action="store_true", help="skip bench/throughput.py rows")
    ap.add_argument(
        "--peer-commit-interval", type=float, default=0.1,
        help="commit interval of the peers, seconds (default 0.1, as StreamFlow's)",
    )  # fmt: skip
    ap.add_argument("--results-dir", type=Path, default=RESULTS)
    ap.add_argument("--docs", type=Path, default=DOCS, help="markdown to (re)generate")
    ap.add_argument("--no-docs", action="store_true", help="do not write the markdown")
    ap.add_argument("--keep-topics", action="store_true", help="keep the run's topics")
    ap.add_argument("--seed", type=int, default=SEED)
    return ap.parse_args(argv)


def select(args: argparse.Namespace) -> list[Contestant]:
    chosen = CONTESTANTS
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown contestant(s): {', '.join(unknown)}")
        chosen = [c for c in CONTESTANTS if c.name in names]
    if args.no_peers:
        chosen = [c for c in chosen if c.kind != "peer"]
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    contestants = select(args)
    events = args.events or (5_000 if args.quick else 200_000)
    http_events = args.http_events or max(100, events // 10)
    started = datetime.now(UTC)
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    tag = f"bench{uuid.uuid4().hex[:6]}"
    bootstrap = bootstrap_servers()
    host = machine()  # load average at the start
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / "streamflow-bench" / f"{run_id}-{tag}"
    logdir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        bootstrap=bootstrap,
        events=events,
        http_events=http_events,
        latency_seconds=args.latency_seconds or (5.0 if args.quick else 15.0),
        latency_warmup=1.0,
        step_only=not args.no_step_only,
        peer_commit_interval=args.peer_commit_interval,
        keep_topics=args.keep_topics,
        tag=tag,
        logdir=logdir,
    )
    log(f"run {run_id} ({tag}) on {bootstrap}: {events} events, logs in {logdir}")
    rnd = random.Random(args.seed + 1)
    warmup = [encoded(event(-1 - i, rnd)) for i in range(WARMUP_EVENTS)]
    data = dataset(max(events, http_events), args.seed)
    ctx = Context(settings, Admin(bootstrap), data, warmup, latency_templates(data[:10_000]))
    peer_info: dict[str, Any] = {}
    for peer in sorted({c.peer for c in contestants if c.peer is not None}):
        java = peer == "kstreams"
        reqs = ["bench/peers/kstreams/pom.xml (Maven Central)"] if java else PEERS[peer]
        log(f"{'build' if java else 'virtualenv'} of {peer} ({', '.join(reqs)}) ...")
        env = ensure_java() if java else ensure(peer)
        ctx.peers[peer] = env
        peer_info[peer] = {
            "requirements": reqs,
            "versions": env.versions,
            "error": env.error,
            "created": env.created,
            "seconds": round(env.seconds, 1),
        }
        log(f"  {'made' if env.created else 'reused'} in {env.seconds:.0f} s"
            + (f": ERROR {env.error}" if env.error else ""))  # fmt: skip

    rows: list[dict[str, Any]] = []
    for c in contestants:
        log(f"{c.name} ...")
        row = Trial(c, ctx).run(latency=not args.no_latency)
        if c.kind == "streamflow" and c.pipeline in ("1-step", "3-step") and settings.step_only:
            row["step_only"] = step_only(c, ctx)
        rows.append(row)
        log("  " + report.one_line(row))

    if not settings.keep_topics:
        time.sleep(1)
        ctx.admin.delete_matching(tag)  # a last sweep: everything this run named

    results: dict[str, Any] = {
        "run_id": run_id,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench.run" + _argv_text(argv),
        "settings": {
            "events": events,
            "http_events": http_events,
            "event_bytes": round(sum(len(v) for _, v in data[:1000]) / min(1000, len(data))),
            "partitions": PARTITIONS,
            "batch": BATCH,
            "seed": args.seed,
            "warmup_events": WARMUP_EVENTS,
            "latency_seconds": settings.latency_seconds if not args.no_latency else None,
            "latency_warmup_s": settings.latency_warmup,
            "peer_commit_interval_s": settings.peer_commit_interval,
            "bootstrap": bootstrap,
        },
        "machine": {**host, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "versions": {**versions(broker_version()), "peers": peer_info},
        "rows": rows,
    }
    results["ratios"] = report.ratios(results)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{run_id}.json"
    text = json.dumps(results, indent=2) + "\n"
    out.write_text(text)
    (args.results_dir / "latest.json").write_text(text)
    log(f"results: {out}")
    if not args.no_docs:
        args.docs.write_text(report.render(results, source=_rel(out)))
        log(f"table: {args.docs}")
    print(report.summary(results))
    return 0


def _argv_text(argv: list[str] | None) -> str:
    parts = sys.argv[1:] if argv is None else argv
    return (" " + shlex.join(parts)) if parts else ""


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
