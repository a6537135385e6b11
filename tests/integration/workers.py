"""Helpers for integration tests that run `streamflow` as real subprocesses on Kafka.

``Worker`` starts ``python -m streamflow.cli.main ... worker`` and keeps every stderr line
(in memory and in a log file, so a failing test can say what the worker did);
``assignments`` turns the Kafka transport's ``group G: assigned T[p], …`` log lines into
the partitions a worker holds right now. ``drain`` reads a topic with a fresh
``read_committed`` consumer group.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from streamflow.transport.base import Record, TopicPartition
from streamflow.transport.kafka import KafkaTransport

_ASSIGN = re.compile(r"group (\S+): (assigned|revoking|lost) (.*)$")
_PART = re.compile(r"^(.+)\[(\d+)\]$")


def streamflow_cmd(*args: str, log_level: str | None = None) -> list[str]:
    """The `streamflow` CLI of this interpreter (the venv the tests run in)."""
    pre = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "streamflow.cli.main", *pre, *args]


def run_cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        streamflow_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


class Worker:
    """One `streamflow worker` subprocess; restartable under the same --worker-id."""

    def __init__(
        self,
        topology: Path,
        broker: str,
        worker_id: str,
        log_dir: Path,
        *,
        log_level: str = "WARNING",
        extra: Sequence[str] = (),
    ) -> None:
        self.topology = topology
        self.broker = broker
        self.worker_id = worker_id
        self.log_dir = log_dir
        self.log_level = log_level
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0
        self.lines: list[str] = []
        self.start_line = 0  # index in ``lines`` where the latest start's output begins
        self.lock = threading.Lock()
        self._reader: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.worker_id}.log"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "worker still running"
        self.starts += 1
        with self.lock:
            self.start_line = len(self.lines)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            streamflow_cmd(
                "worker",
                str(self.topology),
                "--broker",
                self.broker,
                "--worker-id",
                self.worker_id,
                *self.extra,
                log_level=self.log_level,
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with self.log_path.open("a") as log:
            log.write(f"--- start {self.starts} (pid {proc.pid}) ---\n")
            for line in proc.stderr:
                log.write(line)
                log.flush()
                with self.lock:
                    self.lines.append(line.rstrip("\n"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL and reap: no clean shutdown, no commit, an open transaction left behind."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.wait(30)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not stop within ``timeout``. Never raises."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def snapshot(self) -> list[str]:
        with self.lock:
            return list(self.lines)

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.snapshot()[-n:])

    def assignments(self, group: str) -> set[TopicPartition]:
        """Partitions of ``group`` this worker holds according to its log (latest start)."""
        held: set[TopicPartition] = set()
        for line in self.snapshot()[self.start_line :]:
            m = _ASSIGN.search(line)
            if m is None or m.group(1) != group:
                continue
            parts = parse_parts(m.group(3))
            if m.group(2) == "assigned":
                held |= parts
            else:
                held -= parts
        return held

    def ever_assigned(self, group: str, since: int = 0) -> set[TopicPartition]:
        """Partitions of ``group`` named in ``assigned`` lines from log line ``since`` on."""
        got: set[TopicPartition] = set()
        for line in self.snapshot()[since:]:
            m = _ASSIGN.search(line)
            if m is not None and m.group(1) == group and m.group(2) == "assigned":
                got |= parse_parts(m.group(3))
        return got


def parse_parts(text: str) -> set[TopicPartition]:
    out: set[TopicPartition] = set()
    for item in text.split(", "):
        m = _PART.match(item.strip())
        if m is not None:
            out.add((m.group(1), int(m.group(2))))
    return out


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] = str
) -> None:
    """Poll ``condition`` until true; fail with ``what`` (and ``detail()``) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}\n{detail()}")
        time.sleep(0.2)


def drain(
    transport: KafkaTransport,
    topic: str,
    group: str,
    *,
    until: Callable[[list[Record]], bool],
    timeout: float,
    settle: float = 0.0,
) -> list[Record]:
    """Read ``topic`` from the start (a new group) until ``until(records)``, then ``settle``
    seconds more so that extra records would be seen too."""
    consumer = transport.consumer(group, [topic])
    out: list[Record] = []
    try:
        deadline = time.monotonic() + timeout
        while not until(out):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s reading {topic}: {len(out)} record(s)"
                )
            out.extend(consumer.poll(1000, 0.5))
        end = time.monotonic() + settle
        while time.monotonic() < end:
            out.extend(consumer.poll(1000, 0.5))
    finally:
        consumer.close()
    return out
