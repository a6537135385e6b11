"""The ``file_list`` step: the files of a folder (optionally of its subfolders).

The result is ``{folder, count, truncated, files: [{path, relative, name, size,
modified}]}`` (``modified`` ISO 8601 UTC; ``relative`` to the folder, ``/``-separated),
the payload unless ``replace_payload: false``. Only regular files are listed; hidden
entries (``.name``) are passed over, files and folders alike, and symbolic links to
folders are not followed. ``pattern`` is a glob on the file name (``*.csv``);
``sort`` orders by ``name`` (the relative path), ``modified`` or ``size`` (``descending``
reverses), then ``limit`` keeps the first N (``truncated`` says when more matched).

Paths resolve like ``file_read``'s: relative to ``base_dir`` (default: the topology's
folder), confined like them: a folder outside ``root`` (default: the folder written
before the path's first event-dependent ``${...}``) fails the event; with ``root`` set, a
listed file that resolves outside it (a symbolic link) is left out. A missing folder fails
the event; ``missing_ok: true`` gives an empty list instead.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from streamflow.connectors.connections import context_directory
from streamflow.connectors.files import Confinement
from streamflow.envelope import Envelope
from streamflow.errors import PoisonMessageError, RetriableError
from streamflow.steps.base import AsyncStep, Outcome, StepContext
from streamflow.topology.expressions import compile_value
from streamflow.topology.models import StepConfig
from streamflow.topology.registry import step_type

MAX_SCANNED = 1_000_000  # entries looked at in one listing, at most


class FileListConfig(StepConfig):
    """List the files of a folder (pattern, recursive, sort, limit)."""

    type: Literal["file_list"]
    path: str = Field(".", description="the folder (a template); relative to base_dir")
    pattern: str = Field("*", description="glob on file names, e.g. *.csv")
    recursive: bool = Field(False, description="also list the subfolders' files")
    sort: Literal["name", "modified", "size"] = Field("name", description="order of the list")
    descending: bool = Field(False, description="largest / newest / last name first")
    limit: int = Field(1000, ge=1, le=1_000_000, description="at most this many files")
    missing_ok: bool = Field(False, description="a missing folder gives an empty list")
    base_dir: str | None = Field(
        None, validate_default=True, description="default: the topology file's folder"
    )
    root: str | None = Field(
        None,
        description="refuse folders (and files) outside this one; default: the folder "
        "written before the first ${payload/steps/trigger/meta...} of path",
    )
    replace_payload: bool = Field(True, description="the list becomes the payload")

    @field_validator("base_dir", mode="after")
    @classmethod
    def _base(cls, v: str | None, info: ValidationInfo) -> str:
        directory = context_directory(info)
        return str(directory if v is None else directory / v)


@step_type(
    "file_list",
    FileListConfig,
    category="storage",
    since="0.1.0",
    example="""- id: todo
  type: file_list
  path: inbox/${payload.customer}
  pattern: "*.xlsx"
  recursive: true
  sort: modified
  descending: true
  limit: 10""",
)
class FileListStep(AsyncStep):
    def __init__(self, config: FileListConfig, ctx: StepContext) -> None:
        self.cfg = config
        self.ctx = ctx
        self.path = compile_value(config.path)
        self.base = Path(config.base_dir or ".")
        self.confined = Confinement(config.path, config.base_dir, config.root)
        self.root = self.confined.root

    async def process(self, env: Envelope) -> Outcome:
        scope = self.ctx.scope(env)
        raw = self.path.render(scope)
        folder = self.confined.check(raw if raw not in (None, "") else ".", scope)
        files, truncated = await asyncio.to_thread(self.list, folder)
        out = {"folder": str(folder), "count": len(files), "truncated": truncated,
               "files": files}  # fmt: skip
        note = f"{len(files)} file(s){' (limit)' if truncated else ''}"
        if self.cfg.replace_payload:
            return Outcome(out, {k: v for k, v in out.items() if k != "files"}, note=note)
        return Outcome(env.payload, out, note=note)

    def list(self, folder: Path) -> tuple[list[dict[str, Any]], bool]:
        if not folder.is_dir():
            if self.cfg.missing_ok and not folder.exists():
                return [], False
            what = "not a folder" if folder.exists() else "no such folder"
            raise PoisonMessageError(f"{folder}: {what}")
        found: list[dict[str, Any]] = []
        scanned = 0
        try:
            for dirpath, dirs, names in os.walk(folder, onerror=_raise):
                dirs[:] = (
                    sorted(d for d in dirs if not d.startswith(".")) if self.cfg.recursive else []
                )
                for name in names:
                    scanned += 1
                    if scanned > MAX_SCANNED:
                        raise PoisonMessageError(f"{folder}: more than {MAX_SCANNED} entries")
                    if name.startswith(".") or not fnmatch.fnmatchcase(name, self.cfg.pattern):
                        continue
                    entry = self.entry(folder, Path(dirpath) / name)
                    if entry is not None:
                        found.append(entry)
        except PermissionError as exc:
            raise PoisonMessageError(f"{folder}: {exc.strerror}") from None
        except OSError as exc:
            raise RetriableError(f"{folder}: {exc.strerror or exc}") from None
        key = {"name": "relative", "modified": "mtime", "size": "size"}[self.cfg.sort]
        found.sort(key=lambda f: (f[key], f["relative"]), reverse=self.cfg.descending)
        for f in found:
            del f["mtime"]
        return found[: self.cfg.limit], len(found) > self.cfg.limit

    def entry(self, folder: Path, path: Path) -> dict[str, Any] | None:
        try:
            st = path.stat()
        except FileNotFoundError:  # gone meanwhile, or a dangling link
            return None
        if not path.is_file():
            return None
        if self.root is not None and not path.resolve().is_relative_to(self.root):
            return None
        return {
            "path": str(path),
            "relative": path.relative_to(folder).as_posix(),
            "name": path.name,
            "size": st.st_size,
            "modified": datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC).isoformat(),
            "mtime": st.st_mtime_ns,
        }


def _raise(exc: OSError) -> None:
    raise exc
