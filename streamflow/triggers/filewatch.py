"""The ``file`` trigger: files dropped into a folder become events, each file once.

The leader of ``sf.<integration>.<flow>.files`` scans the folder every ``every`` (see
``lease.py``). A file is taken when it is complete: its ``<name><ready_suffix>`` marker
exists, or (without a suffix) its size and modification time did not change between two
scans. Hidden files (``.name``) are never taken, so writers can write ``.x.tmp`` and
rename.

Per file (commit order)::

    1. read it, hash it (sha256); if the state already holds this name with this hash,
       it was emitted before the last stop: go to 3 without emitting
    2. one transaction: its envelope(s) and the state record f:<name> = {sha256, ...}
    3. only then move it to `processed/` (or delete it; `keep` leaves it, the state
       remembers it)

A crash between 2 and 3 leaves the file in place; the next leader finds its hash in the
state and only moves it. Execution ids are ``<flow>-<sha256 prefix>`` (``-<n>`` per record
with ``split``). A file that cannot be parsed is moved to ``failed/`` and recorded with
its error; a changed file (new content under a known name) is a new event.
"""

from __future__ import annotations

import asyncio
import csv
import fnmatch
import hashlib
import io
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streamflow import exactjson, textio
from streamflow.topology.expressions import compile_value
from streamflow.topology.triggers import FileTrigger
from streamflow.transport.base import Record
from streamflow.triggers.lease import LeaderTrigger, Outgoing, envelope_messages

log = logging.getLogger("streamflow.trigger")
FILE_PREFIX = b"f:"


class FileFormatError(ValueError):
    """The file's content does not parse per the trigger's format."""


@dataclass
class Found:
    path: Path
    size: int
    mtime_ns: int
    name: str = ""  # relative to the folder, /-separated (the state's key)

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name


def parse(data: bytes, trigger: FileTrigger) -> list[Any]:
    """The file's payload(s): one, or one per record with ``split``."""
    try:
        text = textio.decode(data, trigger.encoding)  # a BOM is not text
    except (UnicodeDecodeError, LookupError) as exc:
        raise FileFormatError(f"not {trigger.encoding} text: {exc}") from None
    fmt = trigger.format
    try:
        if fmt == "json":
            doc = exactjson.loads(text)
            if trigger.split:
                if not isinstance(doc, list):
                    raise FileFormatError("split: the JSON document is not an array")
                return list(doc)
            return [doc]
        if fmt == "ndjson":
            records = [exactjson.loads(line) for line in text.splitlines() if line.strip()]
            return records if trigger.split else [records]
        if fmt == "csv":
            opts = trigger.csv
            reader = csv.reader(
                io.StringIO(text), delimiter=opts.delimiter, quotechar=opts.quotechar
            )
            rows = [r for r in reader if r]
            if opts.header and rows:
                head, body = rows[0], rows[1:]
                rows_out: list[Any] = [dict(zip(head, r, strict=False)) for r in body]
            else:
                rows_out = list(rows)
            return rows_out if trigger.split else [rows_out]
        lines = [line for line in text.splitlines() if line.strip()]
        return lines if trigger.split else [text]
    except (exactjson.JSONDecodeError, csv.Error) as exc:
        raise FileFormatError(str(exc)) from None


class FileRunner(LeaderTrigger):
    kind = "files"

    def setup(self) -> None:
        self.trigger = trigger = self.config(FileTrigger)
        file = self.ingress.integration.file
        base = Path(file).resolve().parent if file else None
        folder = Path(str(compile_value(trigger.path).render(self.scope)))
        if not folder.is_absolute() and base is not None:
            folder = base / folder
        self.folder = folder
        self.done: dict[str, str] = {}  # file name -> sha256 of what was emitted
        self.last_scan: dict[str, tuple[int, int]] = {}  # name -> (size, mtime) at last scan
        self.next_scan = 0.0
        self.refused: set[str] = set()  # symlinks out of the folder, warned about once

    def reset(self) -> None:
        self.done = {}
        self.last_scan = {}

    def apply(self, rec: Record) -> None:
        if rec.key is not None and rec.key.startswith(FILE_PREFIX):
            self.done[rec.key[len(FILE_PREFIX) :].decode()] = exactjson.loads(rec.value)["sha256"]

    def on_term(self) -> None:
        self.next_scan = 0.0

    async def work(self) -> float:
        now = self.clock.now_ms() / 1000
        if now < self.next_scan:
            return self.next_scan - now
        self.next_scan = now + self.trigger.every
        try:
            ready = await asyncio.to_thread(self.scan)
        except OSError as exc:
            log.warning("%s: cannot scan %s: %s", self.topic, self.folder, exc)
            return self.trigger.every
        for found in ready:
            if not await self.take(found):
                self.next_scan = 0.0
                return 1.0
        return max(0.0, self.next_scan - self.clock.now_ms() / 1000)

    def scan(self) -> list[Found]:
        """Files that are complete now, oldest first."""
        self.folder.mkdir(parents=True, exist_ok=True)
        suffix = self.trigger.ready_suffix
        seen: dict[str, tuple[int, int]] = {}
        ready: list[Found] = []
        entries = self.entries()
        names = set(entries)
        for name in sorted(names):
            path = entries[name]
            base = path.name
            if base.startswith(".") or (suffix and base.endswith(suffix)):
                continue
            if not fnmatch.fnmatchcase(base, self.trigger.pattern):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file():
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(self.folder.resolve()):
                if name not in self.refused:  # a link out of the folder is never read
                    log.warning("%s: %s links outside %s; not taken", self.topic, name, self.folder)
                    self.refused.add(name)
                continue
            now = (st.st_size, st.st_mtime_ns)
            seen[name] = now
            complete = name + suffix in names if suffix else self.last_scan.get(name) == now
            if complete:
                ready.append(Found(path, st.st_size, st.st_mtime_ns, name))
        self.last_scan = seen
        return sorted(ready, key=lambda f: (f.mtime_ns, f.name))

    def entries(self) -> dict[str, Path]:
        """Relative name -> path of the folder's entries (with ``recursive``, of its
        subfolders too: hidden ones, ``processed_dir``, ``failed_dir`` and symbolic
        links to folders excepted)."""
        if not self.trigger.recursive:
            return {name: self.folder / name for name in os.listdir(self.folder)}
        skip = {
            (self.folder / self.trigger.processed_dir).resolve(),
            (self.folder / self.trigger.failed_dir).resolve(),
        }
        out: dict[str, Path] = {}
        for dirpath, dirs, files in os.walk(self.folder):
            here = Path(dirpath)
            dirs[:] = [
                d for d in dirs if not d.startswith(".") and (here / d).resolve() not in skip
            ]
            rel = here.relative_to(self.folder)
            for f in files:
                out[(rel / f).as_posix()] = here / f
        return out

    async def take(self, found: Found) -> bool:
        """Emit one file (unless it was emitted before), then move it away."""
        name = found.name
        try:
            digest, data = await asyncio.to_thread(_read, found.path, self.trigger)
        except FileNotFoundError:
            return True  # taken away meanwhile
        except OSError as exc:
            log.warning("%s: cannot read %s: %s", self.topic, found.path, exc)
            return True
        if self.done.get(name) == digest:
            await asyncio.to_thread(self._finish, found, failed=False)
            return True
        facts = self._facts(found, digest)
        error = ""
        payloads: list[Any] = []
        if self.trigger.format == "none":
            payloads = [facts]
        elif data is None:
            error = f"larger than max_bytes ({self.trigger.max_bytes})"
        else:
            try:
                payloads = parse(data, self.trigger)
            except FileFormatError as exc:
                error = f"not valid {self.trigger.format}: {exc}"
        messages: list[Outgoing] = []
        ident = f"{self.flow}-{digest[:24]}"
        for i, payload in enumerate(payloads):
            trigger = {"type": "file", **facts}
            if self.trigger.split:
                trigger.update(index=i, count=len(payloads))
            execution_id = f"{ident}-{i}" if self.trigger.split else ident
            env = self.ingress.envelope(payload, trigger=trigger, execution_id=execution_id)
            messages.extend(envelope_messages(self.ingress, env))
        state = {
            "sha256": digest,
            "size": found.size,
            "events": len(payloads),
            "ts": self.clock.now_ms(),
        }
        if error:
            state["error"] = error
        messages.append(self.state_record(FILE_PREFIX + name.encode(), state))
        if not await self.lease.commit(messages):
            return False
        self.done[name] = digest
        if error:
            log.error("%s: %s %s; moved to %s", self.topic, name, error, self.trigger.failed_dir)
        else:
            self.firings.inc(len(payloads))
            log.info("%s: %s emitted as %d event(s)", self.topic, name, len(payloads))
        await asyncio.to_thread(self._finish, found, failed=bool(error))
        return True

    def _facts(self, found: Found, digest: str) -> dict[str, Any]:
        modified = datetime.fromtimestamp(found.mtime_ns / 1e9, UTC).isoformat()
        path = found.path
        if self.trigger.after == "move":
            path = self.folder / self.trigger.processed_dir / found.name
        facts = {
            "path": str(path),
            "name": found.path.name,
            "size": found.size,
            "sha256": digest,
            "modified": modified,
        }
        if self.trigger.recursive:
            facts["relative"] = found.name
        return facts

    def _finish(self, found: Found, *, failed: bool) -> None:
        path = found.path
        marker = (
            path.with_name(path.name + self.trigger.ready_suffix)
            if self.trigger.ready_suffix
            else None
        )
        after = self.trigger.after
        if after == "keep" and not failed:
            return
        if after == "delete" and not failed:
            path.unlink(missing_ok=True)
            if marker is not None:
                marker.unlink(missing_ok=True)
            return
        target = self.folder / (self.trigger.failed_dir if failed else self.trigger.processed_dir)
        target = (target / found.name).parent  # recursive: the same subfolder inside
        target.mkdir(parents=True, exist_ok=True)
        for src in (path, marker):
            if src is None or not src.exists():
                continue
            dest = target / src.name
            if dest.exists():  # a file of that name was taken before: keep both
                dest = target / f"{src.name}.{self.clock.now_ms()}"
            shutil.move(str(src), str(dest))


def _read(path: Path, trigger: FileTrigger) -> tuple[str, bytes | None]:
    """sha256 of the file and its bytes (None for format none, or when it is larger
    than max_bytes)."""
    digest = hashlib.sha256()
    keep = trigger.format != "none"
    chunks: list[bytes] = []
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if keep and size <= trigger.max_bytes:
                chunks.append(chunk)
    data = b"".join(chunks) if keep and size <= trigger.max_bytes else None
    return digest.hexdigest(), data
