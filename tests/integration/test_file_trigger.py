"""The file trigger on a real folder: each dropped file is emitted once, across restarts
and across a crash between emitting and moving; partial files wait until complete.
Also: every trigger type can be fed by ``streamflow run --input``."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from streamflow.clock import ManualClock
from streamflow.envelope import Envelope, decode_record
from streamflow.ingress import FlowIngress
from streamflow.runtime.app import App
from streamflow.topology.loader import load_integration
from streamflow.topology.models import Integration
from streamflow.topology.plan import compile_plan
from streamflow.transport import open_transport
from streamflow.transport.base import Transport
from streamflow.triggers.filewatch import FileRunner
from tests.waiting import next_round


def file_integration(tmp_path: Path, trigger: str, name: str = "files") -> Integration:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"""
apiVersion: streamflow/v1
kind: Integration
name: {name}
flows:
  - name: inbox
    partitions: 1
    trigger: {trigger}
    steps:
      - {{id: keep, type: transform, output: "${{payload}}"}}
"""
    )
    return load_integration(path)


def emitted(transport: Transport, integration: Integration) -> list[Envelope]:
    topic = compile_plan(integration).flows["inbox"].first_topic
    return [decode_record(r) for r in transport.read_all(topic)]


class Watcher:
    """A FileRunner in this process; ``start``/``stop`` as a process restart would. Its
    clock is a ManualClock: a scan falls due only when the test moves it (``scans``)."""

    def __init__(self, integration: Integration, transport: Transport) -> None:
        self.integration, self.transport = integration, transport
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.clock = ManualClock()
        self.runner: FileRunner | None = None

    def start(self) -> None:
        flow = self.integration.flows["inbox"]
        ingress = FlowIngress(self.integration, flow, compile_plan(self.integration), {})
        self.stop_event = asyncio.Event()
        self.runner = FileRunner(ingress, self.transport, clock=self.clock)
        self.task = asyncio.create_task(self.runner.run(self.stop_event))

    async def stop(self) -> None:
        self.stop_event.set()
        assert self.task is not None
        await self.task

    async def scans(self, n: int = 1) -> None:
        """``n`` more scan intervals pass, and the watcher has scanned after each."""
        runner = self.runner
        assert runner is not None and self.task is not None
        for _ in range(n):
            await next_round(self.clock, runner, self.task, lambda: runner.next_scan)

    async def scan_until(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        """Scan after scan until ``condition()`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await self.scans(1)

    async def until(
        self, done: Callable[[list[Envelope]], bool], timeout: float = 30
    ) -> list[Envelope]:
        deadline = time.monotonic() + timeout
        while True:
            envs = await asyncio.to_thread(emitted, self.transport, self.integration)
            if done(envs):
                return envs
            assert time.monotonic() < deadline, f"timed out with {len(envs)} event(s)"
            await self.scans(1)


@pytest.fixture
def setup(tmp_path: Path) -> Callable[[str], tuple[Integration, Transport, Watcher]]:
    made: list[Transport] = []

    def make(trigger: str) -> tuple[Integration, Transport, Watcher]:
        integration = file_integration(tmp_path, trigger)
        transport = open_transport(f"local://{tmp_path / 'broker'}")
        made.append(transport)
        App(integration, transport, {}).deploy()
        return integration, transport, Watcher(integration, transport)

    return make


async def test_each_dropped_file_is_emitted_once_across_restarts(
    tmp_path: Path, setup: Callable[[str], tuple[Integration, Transport, Watcher]]
) -> None:
    inbox = tmp_path / "inbox"
    _, _, watcher = setup("{type: file, path: inbox, pattern: '*.json', every: 200ms}")
    inbox.mkdir()
    (inbox / "a.json").write_text(json.dumps({"n": 1}))
    (inbox / "b.json").write_text(json.dumps({"n": 2}))
    (inbox / "notes.txt").write_text("not matched")
    watcher.start()
    envs = await watcher.until(lambda e: len(e) >= 2)
    assert sorted(e.payload["n"] for e in envs) == [1, 2]
    a = next(e for e in envs if e.payload["n"] == 1)
    assert a.trigger["name"] == "a.json"
    assert a.trigger["size"] == len(json.dumps({"n": 1}))
    assert a.execution_id == f"inbox-{a.trigger['sha256'][:24]}"
    await watcher.scans(2)
    await watcher.stop()
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["a.json", "b.json"]
    assert (inbox / "notes.txt").exists()

    (inbox / "c.json").write_text(json.dumps({"n": 3}))
    watcher.start()
    envs = await watcher.until(lambda e: len(e) >= 3)
    await watcher.scans(3)  # processed/ is not watched: nothing is taken twice
    await watcher.stop()
    envs = emitted(watcher.transport, watcher.integration)
    assert sorted(e.payload["n"] for e in envs) == [1, 2, 3]


async def test_a_crash_between_emitting_and_moving_does_not_emit_again(
    tmp_path: Path, setup: Callable[[str], tuple[Integration, Transport, Watcher]]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _, transport, watcher = setup("{type: file, path: inbox, every: 200ms}")
    (inbox / "a.json").write_text('{"n": 1}')
    watcher.start()
    await watcher.until(lambda e: len(e) >= 1)
    await watcher.scan_until((inbox / "processed" / "a.json").exists)
    await watcher.stop()
    # as if the process had died after the transaction and before the move
    shutil.move(str(inbox / "processed" / "a.json"), str(inbox / "a.json"))
    watcher.start()
    await watcher.scan_until(lambda: not (inbox / "a.json").exists())  # moved, not emitted
    await watcher.stop()
    assert len(emitted(transport, watcher.integration)) == 1
    # the same name with new content is a new event
    (inbox / "a.json").write_text('{"n": 2}')
    watcher.start()
    envs = await watcher.until(lambda e: len(e) >= 2)
    await watcher.stop()
    assert [e.payload["n"] for e in envs] == [1, 2]


async def test_a_file_being_written_is_taken_only_when_complete(
    tmp_path: Path, setup: Callable[[str], tuple[Integration, Transport, Watcher]]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _, _, watcher = setup(
        "{type: file, path: inbox, pattern: '*.ndjson', format: ndjson, split: true, every: 400ms}"
    )
    watcher.start()
    await watcher.scans(1)  # it leads and has scanned the empty folder
    with (inbox / "big.ndjson").open("w") as f:
        for i in range(20):
            f.write(json.dumps({"i": i}) + "\n")
            f.flush()
            await watcher.scans(1)  # a write between any two scans: never complete yet
    envs = await watcher.until(lambda e: len(e) >= 20)
    await watcher.scans(2)
    await watcher.stop()
    assert [e.payload["i"] for e in envs] == list(range(20))
    assert [e.trigger["index"] for e in envs] == list(range(20))
    assert len({e.execution_id for e in envs}) == 20


async def test_ready_suffix_csv_split_and_a_bad_file(
    tmp_path: Path, setup: Callable[[str], tuple[Integration, Transport, Watcher]]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    integration, transport, watcher = setup(
        "{type: file, path: inbox, pattern: '*.csv', format: csv, split: true, "
        "ready_suffix: .done, every: 200ms}"
    )
    (inbox / "rows.csv").write_text("id,name\n1,Ada\n2,Grace\n")
    (inbox / "bad.csv").write_bytes(b"\xff\xfe not utf-8")
    watcher.start()
    await watcher.scans(3)
    assert emitted(transport, integration) == []  # no marker yet: not taken
    (inbox / "rows.csv.done").write_text("")
    (inbox / "bad.csv.done").write_text("")
    envs = await watcher.until(lambda e: len(e) >= 2)
    await watcher.scans(2)
    await watcher.stop()
    assert [e.payload for e in envs] == [{"id": "1", "name": "Ada"}, {"id": "2", "name": "Grace"}]
    assert sorted(p.name for p in (inbox / "processed").iterdir()) == ["rows.csv", "rows.csv.done"]
    assert sorted(p.name for p in (inbox / "failed").iterdir()) == ["bad.csv", "bad.csv.done"]


TRIGGERS = {
    "webhook": "{type: webhook}",
    "schedule": "{type: schedule, every: 1h}",
    "poll": "{type: poll, http: {url: 'http://127.0.0.1:9/x'}, cursor: {field: id}}",
    "file": "{type: file, path: inbox}",
    "s3": "{type: s3, bucket: drops, prefix: incoming/}",
}


@pytest.mark.parametrize("kind", sorted(TRIGGERS))
def test_every_trigger_type_can_be_fed_by_run_input(tmp_path: Path, kind: str) -> None:
    integration = file_integration(tmp_path, TRIGGERS[kind], name=f"fed-{kind}")
    events = tmp_path / "events.ndjson"
    events.write_text('{"id": 1}\n{"id": 2}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "streamflow.cli.main", "run", integration.file, "--input",
         str(events), "--broker", f"local://{tmp_path / 'broker'}", "--json"],
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    done = [e["payload"] for e in lines if e.get("event") == "completed"]
    assert sorted(d["id"] for d in done) == [1, 2], proc.stdout


def test_links_out_of_the_folder_are_not_taken_and_dirs_stay_inside(tmp_path: Path) -> None:
    """F3 for the file trigger: a symlink dropped in the folder that points outside it is
    never read; processed_dir/failed_dir cannot leave the folder."""
    from streamflow.errors import ValidationFailed

    integration = file_integration(tmp_path, "{type: file, path: inbox, pattern: '*.json'}")
    (tmp_path / "inbox").mkdir()
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    (tmp_path / "inbox" / "link.json").symlink_to(tmp_path / "secret.json")
    (tmp_path / "inbox" / "real.json").write_text('{"ok": 1}')
    (tmp_path / "inbox" / "alias.json").symlink_to(tmp_path / "inbox" / "real.json")
    transport = open_transport(f"local://{tmp_path / 'broker'}")
    try:
        flow = integration.flows["inbox"]
        ingress = FlowIngress(integration, flow, compile_plan(integration), {})
        runner = FileRunner(ingress, transport)
        runner.scan()  # the first scan records sizes; the second finds them unchanged
        ready = sorted(f.path.name for f in runner.scan())
        assert ready == ["alias.json", "real.json"]
    finally:
        transport.close()
    for bad in ("../elsewhere", "/tmp/x"):
        with pytest.raises(ValidationFailed, match="must be a folder inside path"):
            file_integration(
                tmp_path, f"{{type: file, path: inbox, processed_dir: '{bad}'}}", name="bad"
            )
