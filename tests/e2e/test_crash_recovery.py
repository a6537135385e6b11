"""``kill -9`` mid-stream loses nothing: a restarted ``streamflow serve`` finishes every
execution that was produced (at-least-once: intermediate steps may run twice).

The flow is slowed down on purpose (``concurrency: 1`` and a per-event delay, small
batches) so that the kill lands while most executions are still in flight; the test
checks that it did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from streamflow.observability.events import ExecutionEvent, decode_all
from streamflow.transport.base import TopicSpec
from streamflow.transport.local import LocalConsumer, LocalTransport

REPO = Path(__file__).resolve().parents[2]
TOTAL = 300
KILL_AFTER = 20  # completed executions seen before the kill
NAME = "crash-test"
OUT_TOPIC = "crash-test.out"

TOPOLOGY = f"""\
apiVersion: streamflow/v1
kind: Integration
name: {NAME}
flows:
  - name: numbers
    partitions: 3
    key: ${{payload.n}}
    concurrency: 1       # one event at a time in the delay agent: slow enough to catch
    max_batch: 10        # small batches: outputs become visible while the rest waits
    trigger: {{type: manual}}
    steps:
      - id: double
        type: transform
        output: {{n: "${{payload.n}}", doubled: "${{payload.n * 2}}"}}
      - id: wait
        type: delay
        duration: 10ms
      - id: finish
        type: transform
        output: {{n: "${{payload.n}}", result: "${{payload.doubled + 1}}"}}
      - id: publish      # the final output, readable by the test
        type: kafka_publish
        topic: {OUT_TOPIC}
        key: ${{payload.n}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "streamflow.cli.main", *map(str, args)]


@contextmanager
def serving(topo: Path, broker: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``streamflow serve`` in a subprocess, ready (``/healthz`` answers) when yielded.
    Killed on the way out if the test did not stop it."""
    port = free_port()
    with log.open("ab") as err:
        proc = subprocess.Popen(
            cli("serve", topo, "--broker", f"local://{broker}", "--port", str(port)),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"serve exited early:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"serve never got ready:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


class Follower:
    """Reads the executions topic of the integration from the start (its own group)."""

    def __init__(self, transport: LocalTransport) -> None:
        self.consumer: LocalConsumer = transport.consumer(
            f"test-follower-{uuid.uuid4().hex}", [f"sf.{NAME}.executions"]
        )
        self.events: list[ExecutionEvent] = []
        self.completed: set[str] = set()

    def poll(self, timeout: float = 0.05) -> int:
        records = self.consumer.poll(1000, timeout)
        for rec in records:
            for ev in decode_all(rec.value):
                self.events.append(ev)
                if ev.event == "completed":
                    self.completed.add(ev.execution_id)
        return len(records)

    def drain(self) -> None:
        while self.poll(0.2):
            pass

    def close(self) -> None:
        self.consumer.close()


def wait_until(
    cond: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"serve died while waiting for {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"


def stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        pytest.fail(f"serve did not stop on SIGTERM:\n{log.read_text()}")


@pytest.mark.slow
def test_kill_9_mid_stream_loses_nothing(tmp_path: Path) -> None:
    topo = tmp_path / "integration.yaml"
    topo.write_text(TOPOLOGY)
    broker = tmp_path / "broker"
    events = tmp_path / "events.ndjson"
    events.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(TOTAL)))
    log = tmp_path / "serve.log"

    with ExitStack() as cleanup:
        transport = LocalTransport(broker)
        cleanup.callback(transport.close)
        transport.ensure_topics([TopicSpec(OUT_TOPIC, 3)])  # the outside topic must exist

        # 1. serve, feed 300 events, SIGKILL once some (not all) have completed
        with serving(topo, broker, log) as first:
            produced = subprocess.run(
                cli("produce", topo, "--broker", f"local://{broker}", "--input", events),
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert produced.returncode == 0, produced.stderr
            ids = produced.stdout.split()
            assert len(ids) == TOTAL and len(set(ids)) == TOTAL

            follower = Follower(transport)  # the topic exists now: serve deployed it
            cleanup.callback(follower.close)
            wait_until(
                lambda: follower.poll() >= 0 and len(follower.completed) >= KILL_AFTER,
                first,
                log,
                60,
                f"{KILL_AFTER} completed executions",
            )
            os.kill(first.pid, signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL

        follower.drain()  # everything the killed process committed
        at_kill = len(follower.completed)
        assert KILL_AFTER <= at_kill < TOTAL, (
            f"{at_kill}/{TOTAL} executions had completed when serve was killed: "
            "the kill did not land mid-stream (raise the delay)"
        )
        assert follower.completed <= set(ids)

        # 2. restart: it picks up from the committed offsets and finishes the rest
        with serving(topo, broker, log) as second:
            wait_until(
                lambda: follower.poll() >= 0 and follower.completed >= set(ids),
                second,
                log,
                90,
                "every produced execution to complete",
            )
            assert stop(second, log) == 0, log.read_text()
        assert "stopped cleanly" in log.read_text()

        # 3. nothing lost, nothing failed; every final output is there and right
        follower.drain()
        assert follower.completed == set(ids)
        assert not [e for e in follower.events if e.event in ("failed", "filtered")]
        started = {e.execution_id for e in follower.events if e.event == "started"}
        assert started == set(ids)

        out = transport.consumer(f"test-out-{uuid.uuid4().hex}", [OUT_TOPIC])
        cleanup.callback(out.close)
        results: dict[int, set[int]] = {}
        outputs = 0
        while records := out.poll(1000, 0.2):
            for rec in records:
                value = json.loads(rec.value)
                assert rec.key == str(value["n"]).encode()
                results.setdefault(value["n"], set()).add(value["result"])
                outputs += 1
        assert sorted(results) == list(range(TOTAL))
        assert all(r == {2 * n + 1} for n, r in results.items())
        # and nothing doubled: on local:// outputs and offsets commit together in every
        # mode, at-least-once included (issue #12, field case F1)
        ended = [e.execution_id for e in follower.events if e.event == "completed"]
        assert len(ended) == len(set(ended)) == TOTAL
        assert outputs == TOTAL
